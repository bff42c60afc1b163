"""The dataset registry: where each dataset's files may be, how to decode them, its statistics.

A `DatasetSpec` is either "memory" (decoded once into an `ArrayDataset`, cached as uint8, augmented
on the device) or "folder" (a `FolderDataset` read by DataLoader workers). Register more with
`DATASETS.add(name, DatasetSpec(...))`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunekit.data import caltech101, paths, readers
from prunekit.data.arrays import ArrayDataset, fingerprint, first_per_class, load_arrays, save_arrays, stratified_holdout
from prunekit.data.folder import FolderDataset, scan_folder
from prunekit.data.synthetic import DEFAULTS as SYNTHETIC_DEFAULTS, make_synthetic
from prunekit.errors import UserError
from prunekit.registry import Registry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: CIFAR's own per-channel statistics, for `load(..., mean=..., std=...)`
CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
CIFAR100_STATS = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))


@dataclass
class Request:
    """What `create`/`load` asked for: dataset name, resolved root, seed and dataset options."""

    name: str
    root: Path
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    download: bool = False
    progress: bool = True
    cache_dir: str | None = None
    path: Path | None = None  # for imagefolder:PATH


@dataclass(frozen=True)
class Source:
    """A located copy of a dataset: its format and path (a file or folder)."""

    format: str
    path: Path


@dataclass(frozen=True)
class DatasetSpec:
    """How to find, read and normalise one dataset.

    `build(request, wants)` returns {split: dataset} for `wants` = {split: images per class or None}.
    """

    name: str
    kind: str  # "memory" | "folder" | "detection" (batches of images and target dicts, see data.widerface)
    description: str
    splits: tuple[str, ...]
    test_split: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    flip: bool  # whether a horizontal flip keeps the label (not for digits)
    build: Callable[[Request, dict[str, int | None]], dict[str, Any]]
    options: dict[str, Any] = field(default_factory=dict)  # dataset-specific options and defaults
    task: str = "classification"  # the task a recipe or `prunekit evaluate` uses when none is named


DATASETS: Registry[DatasetSpec] = Registry("dataset")


# -- memory datasets: locate, decode once, cache ----------------------------------------------


def _memory(
    locate: Callable[[Request], Source],
    decode: Callable[[Source, dict[str, int | None], Request], dict[str, ArrayDataset]],
) -> Callable[[Request, dict[str, int | None]], dict[str, ArrayDataset]]:
    """Return a build function that serves splits from the uint8 cache and decodes only what is missing."""

    def build(req: Request, wants: dict[str, int | None]) -> dict[str, ArrayDataset]:
        source = locate(req)
        cache = paths.cache_dir(req.root, req.cache_dir)
        key = f"{req.name}-{source.format}-{fingerprint(source.path)}"
        out, todo = {}, {}
        for split, n in wants.items():
            full = load_arrays(cache / f"{key}-{split}.pt")
            if full is not None:
                out[split] = full if n is None else full.select(first_per_class(full.targets, n, full.num_classes))
                continue
            part = load_arrays(cache / f"{key}-{split}-first{n}.pt") if n else None
            if part is not None:
                out[split] = part
            else:
                todo[split] = n
        if todo:
            # an image tree decodes only the images asked for; other formats are read whole anyway,
            # so their whole split is cached and the subset cut from it
            asked = todo if source.format == "tree" else dict.fromkeys(todo)
            for split, ds in decode(source, asked, req).items():
                n = asked[split]
                save_arrays(cache / (f"{key}-{split}.pt" if n is None else f"{key}-{split}-first{n}.pt"), ds)
                if todo[split] is not None and n is None:
                    ds = ds.select(first_per_class(ds.targets, todo[split], ds.num_classes))
                out[split] = ds
        return out

    return build


def _first_existing(req: Request, candidates: list[tuple[str, Path]], *, hint: str = "", download: Callable[[Request], None] | None = None) -> Source:
    for fmt, path in candidates:
        if path.exists():
            return Source(fmt, path)
    if req.download and download is not None:
        req = dataclasses.replace(req, download=False)
        try:
            req.root.mkdir(parents=True, exist_ok=True)
            download(req)
        except Exception as err:  # network and disk failures alike end as one line
            reason = " ".join(str(err).split())[:200]
            raise UserError(f"downloading {req.name!r} into {req.root} failed ({type(err).__name__}: {reason}); "
                            "provide the files by hand") from None
        return _first_existing(req, candidates, hint=hint)  # no download this time: a miss is an error
    raise paths.missing(req.name, [p for _, p in candidates], hint=hint, downloadable=download is not None)


def _decode_tree_or(reader: Callable[[Source, str], ArrayDataset]):
    """Return a decoder that reads image trees itself and delegates other formats to `reader`."""

    def decode(source: Source, wants: dict[str, int | None], req: Request) -> dict[str, ArrayDataset]:
        if source.format == "tree":
            return readers.read_image_tree(source.path, wants, progress=req.progress)
        return {split: reader(source, split) for split in wants}

    return decode


def _tv_archive_download(cls_name: str) -> Callable[[Request], None]:
    def download(req: Request) -> None:
        import torchvision.datasets as tvd
        from torchvision.datasets.utils import download_and_extract_archive

        cls = getattr(tvd, cls_name)
        download_and_extract_archive(cls.url, str(req.root), filename=cls.filename, md5=cls.tgz_md5)

    return download


def _tv_class_download(cls_name: str, **kwargs: Any) -> Callable[[Request], None]:
    def download(req: Request) -> None:
        import torchvision.datasets as tvd

        getattr(tvd, cls_name)(str(req.root), download=True, **kwargs)

    return download


def _cifar(name: str, tv_folder: str, *, fine: bool, tv_class: str) -> Callable:
    def locate(req: Request) -> Source:
        r = req.root
        return _first_existing(
            req,
            [("torchvision", r / tv_folder), ("tree", r / f"{name}-jpeg.tar.xz"), ("tree", r / f"{name}-jpeg")],
            download=_tv_archive_download(tv_class),
        )

    return _memory(locate, _decode_tree_or(lambda src, split: readers.read_cifar_batches(src.path, split, fine=fine)))


def _idx(name: str, folders: list[str], classes: list[str], tv_class: str) -> Callable:
    def files(folder: Path, split: str) -> tuple[Path, Path]:
        stem = "train" if split == "train" else "t10k"
        found = []
        for kind in ("images-idx3", "labels-idx1"):
            base = folder / f"{stem}-{kind}-ubyte"
            found.append(base if base.exists() else base.with_name(base.name + ".gz"))
        return found[0], found[1]

    def locate(req: Request) -> Source:
        folders_ = [req.root / f for f in folders]
        if name == "fashion_mnist":  # Debian's dataset-fashion-mnist package puts the files here
            folders_.append(Path("/usr/share/datasets/fashion-mnist"))
        src = _first_existing(req, [("idx", files(f, "train")[0]) for f in folders_], download=_tv_class_download(tv_class))
        return Source("idx", src.path.parent)

    def read(source: Source, split: str) -> ArrayDataset:
        images, labels = files(source.path, split)
        if not images.exists() or not labels.exists():
            raise UserError(f"{source.path} lacks {images.name} or {labels.name}")
        return ArrayDataset(readers.read_idx(images).unsqueeze(1), readers.read_idx(labels).long(), classes)

    return _memory(locate, lambda src, wants, req: {s: read(src, s) for s in wants})


def _svhn() -> Callable:
    def locate(req: Request) -> Source:
        r = req.root
        cands = [("mat", r / "train_32x32.mat"), ("mat", r / "svhn" / "train_32x32.mat"), ("tree", r / "svhn-jpeg.tar.xz"), ("tree", r / "svhn-jpeg")]
        src = _first_existing(req, cands, download=lambda q: [_tv_class_download("SVHN", split=s)(q) for s in ("train", "test")])
        return Source("mat", src.path.parent) if src.format == "mat" else src

    return _memory(locate, _decode_tree_or(lambda src, split: readers.read_svhn_mat(src.path / f"{split}_32x32.mat")))


def _build_synthetic(req: Request, wants: dict[str, int | None]) -> dict[str, ArrayDataset]:
    opts = {k: req.options.get(k, v) for k, v in SYNTHETIC_DEFAULTS.items()}
    out = {}
    for split, n in wants.items():
        ds = make_synthetic(split, seed=req.seed, **opts)
        out[split] = ds if n is None else ds.select(first_per_class(ds.targets, n, ds.num_classes))
    return out


# -- folder datasets --------------------------------------------------------------------------


def _folder_splits(req: Request, path: Path, wants: dict[str, int | None], *, named: dict[str, Path] | None, skip=()) -> dict[str, FolderDataset]:
    """Return the wanted splits, from named split folders or a seeded per-class split of one folder."""
    out = {}
    if named is not None:
        for split, n in wants.items():
            ds = scan_folder(named[split], skip=skip)
            out[split] = ds if n is None else ds.select(first_per_class(ds.targets, n, ds.num_classes))
        return out
    whole = scan_folder(path, skip=skip)
    frac = req.options.get("test_fraction", 0.2)
    if not isinstance(frac, (int, float)) or not 0 < frac < 1:
        raise UserError(f"test_fraction must be in (0, 1), got {frac!r}")
    train_idx, test_idx = stratified_holdout(whole.targets, float(frac), seed=int(req.options.get("split_seed", 0)), num_classes=whole.num_classes)
    for split, n in wants.items():
        ds = whole.select(train_idx if split == "train" else test_idx)
        out[split] = ds if n is None else ds.select(first_per_class(ds.targets, n, ds.num_classes))
    return out


def _build_imagenet(req: Request, wants: dict[str, int | None]) -> dict[str, FolderDataset]:
    candidates = [req.root / "imagenet", req.root / "ILSVRC2012", req.root]
    for base in candidates:
        if (base / "train").is_dir() and (base / "val").is_dir():
            return _folder_splits(req, base, wants, named={"train": base / "train", "val": base / "val"})
    raise paths.missing("imagenet", [c / "train" for c in candidates], hint="ImageFolder layout: train/<class>/*.JPEG and val/<class>/*.JPEG", downloadable=False)


def build_imagefolder(req: Request, wants: dict[str, int | None]) -> dict[str, FolderDataset]:
    """Build `imagefolder:PATH`: PATH/train + PATH/val (or test), else a seeded split of PATH/<class>/."""
    path = req.path
    if path is None or not path.is_dir():
        raise paths.missing(req.name, [path or Path("?")], hint="imagefolder:PATH needs PATH/<class>/*.jpg or PATH/train and PATH/val", downloadable=False)
    test_dir = next((path / s for s in ("val", "test") if (path / s).is_dir()), None)
    if (path / "train").is_dir() and test_dir is not None:
        named = {"train": path / "train", "test": test_dir, "val": test_dir}
        return _folder_splits(req, path, wants, named=named)
    return _folder_splits(req, path, wants, named=None)


def _register() -> None:
    # CIFAR defaults to ImageNet statistics: the pretrained CIFAR ResNets (akamaster) were trained
    # with them, so a pretrained start works out of the box; CIFAR10_STATS is the data's own.
    memory = dict(kind="memory", splits=("train", "test"), test_split="test")
    DATASETS.add("cifar10", DatasetSpec(
        name="cifar10", description="CIFAR-10, 10 classes, 32x32 (torchvision format or cifar10-jpeg.tar.xz)",
        mean=IMAGENET_MEAN, std=IMAGENET_STD, flip=True, build=_cifar("cifar10", "cifar-10-batches-py", fine=False, tv_class="CIFAR10"), **memory))
    DATASETS.add("cifar100", DatasetSpec(
        name="cifar100", description="CIFAR-100, 100 classes, 32x32 (torchvision format or cifar100-jpeg.tar.xz)",
        mean=IMAGENET_MEAN, std=IMAGENET_STD, flip=True, build=_cifar("cifar100", "cifar-100-python", fine=True, tv_class="CIFAR100"), **memory))
    DATASETS.add("svhn", DatasetSpec(
        name="svhn", description="SVHN digits, 10 classes, 32x32 (torchvision .mat files; needs scipy)",
        mean=(0.4377, 0.4438, 0.4728), std=(0.1980, 0.2010, 0.1970), flip=False, build=_svhn(),
        **{**memory, "splits": ("train", "test", "extra")}))
    DATASETS.add("mnist", DatasetSpec(
        name="mnist", description="MNIST digits, 10 classes, 1x28x28 (IDX files)",
        mean=(0.1307,), std=(0.3081,), flip=False,
        build=_idx("mnist", ["MNIST/raw", "mnist"], [str(d) for d in range(10)], "MNIST"), **memory))
    DATASETS.add("fashion_mnist", DatasetSpec(
        name="fashion_mnist", description="Fashion-MNIST, 10 classes, 1x28x28 (IDX files)",
        mean=(0.2860,), std=(0.3530,), flip=True,
        build=_idx("fashion_mnist", ["FashionMNIST/raw", "fashion-mnist", "fashion_mnist"],
                   ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"], "FashionMNIST"),
        **memory))
    DATASETS.add("synthetic", DatasetSpec(
        name="synthetic", description="random learnable class patterns, for tests (no files)",
        mean=(0.5,), std=(0.25,), flip=True, build=_build_synthetic, options=dict(SYNTHETIC_DEFAULTS), **memory))
    folder = dict(kind="folder", mean=IMAGENET_MEAN, std=IMAGENET_STD, flip=True)
    DATASETS.add("imagenet", DatasetSpec(
        name="imagenet", description="ImageNet-1k as ImageFolder (imagenet/train, imagenet/val)",
        splits=("train", "val"), test_split="val", build=_build_imagenet, options={"image_size": 224}, **folder))
    DATASETS.add("caltech101", DatasetSpec(
        name="caltech101", description="Caltech-101, 101 classes at image_size px; seeded 30 train / up to 50 test per class",
        mean=IMAGENET_MEAN, std=IMAGENET_STD, flip=True, build=caltech101.build, options=dict(caltech101.DEFAULTS), **memory))


def _register_detection() -> None:
    from prunekit.data import widerface

    DATASETS.add("widerface", DatasetSpec(
        name="widerface", kind="detection", description="WIDER FACE face detection, official layout (train/val, bbx_gt.txt, keep-list .mat)",
        splits=("train", "val"), test_split="val", mean=(104.0, 117.0, 123.0), std=(1.0, 1.0, 1.0), flip=True,
        build=widerface.build, options=dict(widerface.OPTIONS), task="detection"))


def imagefolder_spec(path: str) -> DatasetSpec:
    """Return the spec of `imagefolder:PATH` (ImageNet statistics, 224-pixel crops by default)."""
    return DatasetSpec(
        name=f"imagefolder:{path}", kind="folder", description="a folder of <class>/ image folders",
        splits=("train", "test", "val"), test_split="test", mean=IMAGENET_MEAN, std=IMAGENET_STD, flip=True,
        build=build_imagefolder, options={"image_size": 224, "test_fraction": 0.2, "split_seed": 0})


_register()
_register_detection()
