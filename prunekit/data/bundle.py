"""`create` (a raw dataset) and `load` (ready-to-train batches on a device) by dataset name."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from prunekit.data.arrays import ArrayDataset, parse_subset, stratified_holdout
from prunekit.data.augment import Normalize
from prunekit.data.catalog import DATASETS, DatasetSpec, Request, imagefolder_spec
from prunekit.data.folder import FolderDataset, eval_transform, train_transform
from prunekit.data.loaders import DeviceLoader, WorkerLoader
from prunekit.data.paths import data_root
from prunekit.errors import UserError, unknown_name

#: options every dataset accepts besides its own
COMMON_OPTIONS = ("download", "cache_dir")
#: options every in-memory dataset's loader takes (normalisation and on-device augmentation, see `load`)
LOADER_OPTIONS = ("mean", "std", "pad", "flip")


def default_task(name: str) -> str:
    """Return the task a recipe or `prunekit evaluate` uses on dataset `name` when none is named
    (its spec's: detection for widerface; classification for a name prunekit does not know, whose
    own error comes later)."""
    try:
        return dataset_spec(name).task
    except UserError:
        return "classification"


def list_datasets() -> list[str]:
    """Return the registered dataset names, sorted (`imagefolder:PATH` is accepted besides these)."""
    return DATASETS.names()


def dataset_spec(name: str) -> DatasetSpec:
    """Return the spec of dataset `name` (`imagefolder:PATH` included); unknown names raise `UserError`."""
    if not isinstance(name, str):
        raise UserError(f"a dataset name must be a string, got {name!r}")
    if name.startswith("imagefolder:"):
        if not name.split(":", 1)[1]:
            raise UserError("imagefolder:PATH needs a path after the colon, e.g. imagefolder:/data/flowers")
        return imagefolder_spec(name.split(":", 1)[1])
    if name not in DATASETS:
        raise unknown_name("dataset", name, [*DATASETS.names(), "imagefolder:PATH"])
    return DATASETS.get(name)


def _request(name: str, root: Any, seed: int, options: dict[str, Any], progress: bool) -> tuple[DatasetSpec, Request]:
    spec = dataset_spec(name)
    unknown = sorted(set(options) - set(spec.options) - set(COMMON_OPTIONS))
    if unknown:
        allowed = ", ".join([*spec.options, *COMMON_OPTIONS])
        raise UserError(f"dataset {name!r} has no option(s) {', '.join(unknown)} (its options: {allowed})")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise UserError(f"seed must be an integer, got {seed!r}")
    req = Request(
        name=spec.name,
        root=data_root(root),
        seed=seed,
        options={**spec.options, **{k: v for k, v in options.items() if k not in COMMON_OPTIONS}},
        download=bool(options.get("download", False)),
        progress=progress,
        cache_dir=options.get("cache_dir"),
        path=Path(name.split(":", 1)[1]).expanduser() if name.startswith("imagefolder:") else None,
    )
    return spec, req


def create(name: str, *, root: str | os.PathLike | None = None, split: str = "train", subset: int | dict | None = None,
           seed: int = 0, progress: bool = True, **options: Any) -> ArrayDataset | FolderDataset:
    """Return the raw `split` of dataset `name`: an `ArrayDataset` (uint8 N x C x H x W in memory)
    for small datasets, a `FolderDataset` (items decode to uint8 C x H x W) for large ones.

    `subset` keeps the first N images of every class (an int, or {split: N}); only those are
    decoded. `options` are the dataset's own (see `dataset_spec(name).options`) plus `download`
    (let torchvision fetch it; off by default, so nothing hangs offline) and `cache_dir`.
    """
    spec, req = _request(name, root, seed, options, progress)
    if split not in spec.splits:
        raise UserError(f"dataset {name!r} has splits {', '.join(spec.splits)}; not {split!r}")
    return spec.build(req, {split: parse_subset(subset, split)})[split]


@dataclass
class DataBundle:
    """Everything a training run needs from a dataset.

    `train` yields augmented (inputs, labels) batches already on the device, reshuffled every
    epoch, `len(train)` batches per epoch; `val` (None without `val_fraction`) and `test` are not
    augmented. Inputs are float32, normalised with `mean`/`std`, N x C x H x W.
    """

    train: Iterable[tuple[torch.Tensor, torch.Tensor]]
    val: Iterable[tuple[torch.Tensor, torch.Tensor]] | None
    test: Iterable[tuple[torch.Tensor, torch.Tensor]]
    num_classes: int
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str = ""
    classes: list[str] = field(default_factory=list)
    device: str = "cpu"

    def example_inputs(self, batch_size: int = 1) -> torch.Tensor:
        """Return zeros of shape (batch_size, C, H, W) on the bundle's device (no RNG is consumed)."""
        return torch.zeros(batch_size, *self.input_shape, device=self.device)


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{name} must be a positive integer, got {value!r}")
    return value


def _device(device: str | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UserError(f"unknown device {device!r} (use cpu, cuda or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} asked but CUDA is not available here; use device cpu")
    return dev


def _stats(label: str, value: Any, channels: int) -> tuple[float, ...]:
    try:
        stats = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise UserError(f"{label} must be a list of numbers, got {value!r}") from None
    if len(stats) not in (1, channels) or (label == "std" and min(stats) <= 0):
        raise UserError(f"{label} must hold 1 or {channels} {'positive ' if label == 'std' else ''}numbers, got {value!r}")
    return stats


def load(name: str, *, root: str | os.PathLike | None = None, batch_size: int = 128, eval_batch_size: int = 512,
         device: str | torch.device = "cpu", subset: int | dict | None = None, val_fraction: float = 0.0, seed: int = 0,
         num_workers: int | None = None, augment: bool = True, progress: bool = True, **options: Any) -> DataBundle:
    """Return a `DataBundle` of dataset `name` with batches on `device`.

    Small datasets sit on the device as uint8 and are cropped (zero padding `pad`, default 4),
    flipped (`flip`, default: where it keeps the label) and normalised there a batch at a time.
    Large ones use `num_workers` DataLoader workers (default min(8, CPUs)) with transforms v2
    (random resized crop to `image_size`). `mean`/`std` override the normalisation (cifar10 and
    cifar100 default to the ImageNet statistics, as the pretrained CIFAR ResNets expect).
    `val_fraction` holds out that fraction of every class of train, chosen by `seed`, which also
    seeds the shuffling and augmentation. Other `options` go to `create`.
    """
    mean, std = options.pop("mean", None), options.pop("std", None)
    pad, flip = options.pop("pad", 4), options.pop("flip", None)
    _positive_int("batch_size", batch_size)
    _positive_int("eval_batch_size", eval_batch_size)
    if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
        raise UserError(f"pad must be a non-negative integer, got {pad!r}")
    if not isinstance(val_fraction, (int, float)) or not 0 <= val_fraction < 1:
        raise UserError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    dev = _device(device)
    spec, req = _request(name, root, seed, options, progress)
    if spec.kind == "detection":  # images of any size with box targets: the dataset's own loaders
        from prunekit.data.widerface import load_bundle

        return load_bundle(spec, req, batch_size=batch_size, device=dev, subset=subset, seed=seed, augment=augment,
                           num_workers=num_workers)
    test_split = spec.test_split
    sets = spec.build(req, {"train": parse_subset(subset, "train"), test_split: parse_subset(subset, test_split)})
    train_ds, test_ds = sets["train"], sets[test_split]
    val_ds = None
    if val_fraction > 0:
        keep, held = stratified_holdout(train_ds.targets, float(val_fraction), seed=seed, num_classes=train_ds.num_classes)
        if len(held) == 0 or len(keep) == 0:
            raise UserError(f"val_fraction {val_fraction} of {len(train_ds)} training images leaves an empty split")
        train_ds, val_ds = train_ds.select(keep), train_ds.select(held)
    flip = spec.flip if flip is None else bool(flip)

    if spec.kind == "memory":
        shape = tuple(train_ds.images.shape[1:])
        m, s = _stats("mean", mean or spec.mean, shape[0]), _stats("std", std or spec.std, shape[0])
        normalize = Normalize(m, s, dev)

        def evaluation(ds: ArrayDataset) -> DeviceLoader:
            return DeviceLoader(ds.to(dev), batch_size=eval_batch_size, normalize=normalize)

        train = DeviceLoader(train_ds.to(dev), batch_size=batch_size, normalize=normalize, shuffle=True, drop_last=True,
                             augment=augment, pad=pad, flip=flip, seed=seed)
    else:
        size = _positive_int("image_size", req.options["image_size"])
        shape = (3, size, size)
        m, s = _stats("mean", mean or spec.mean, 3), _stats("std", std or spec.std, 3)
        normalize = Normalize(m, s, dev)
        workers = min(8, os.cpu_count() or 1) if num_workers is None else num_workers
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise UserError(f"num_workers must be a non-negative integer, got {num_workers!r}")

        def evaluation(ds: FolderDataset) -> WorkerLoader:
            return WorkerLoader(ds.with_transform(eval_transform(size)), batch_size=eval_batch_size, normalize=normalize,
                                device=dev, num_workers=workers)

        tf = train_transform(size, flip=flip) if augment else eval_transform(size)
        train = WorkerLoader(train_ds.with_transform(tf), batch_size=batch_size, normalize=normalize, device=dev,
                             shuffle=True, drop_last=True, num_workers=workers, seed=seed)
    return DataBundle(
        train=train,
        val=evaluation(val_ds) if val_ds is not None else None,
        test=evaluation(test_ds),
        num_classes=train_ds.num_classes,
        input_shape=shape,
        mean=m,
        std=s,
        name=spec.name,
        classes=list(train_ds.classes),
        device=str(dev),
    )
