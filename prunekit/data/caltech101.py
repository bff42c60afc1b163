"""Caltech-101 (Fei-Fei, Fergus, Perona 2004) as a memory dataset at the recipe's image size.

Where: the first of `<root>/caltech101-128px/101_ObjectCategories` (the re-saved copy in
../shared/data), `<root>/caltech101/101_ObjectCategories` (torchvision's download layout) and
`<root>/101_ObjectCategories`. `BACKGROUND_Google` is left out, as torchvision's `Caltech101`
does: 101 classes, 8677 images, class labels in sorted folder-name order.

Decoded once: every image is resized (shorter side to `image_size`, antialiased) and centre-cropped
to `image_size` x `image_size`, and the whole set is cached as one uint8 tensor
(`caltech101-<fingerprint>-<size>px.pt` in the cache folder, 106 MB at 64 px); training then crops
(zero padding `pad`) and flips on the device like CIFAR.

The split (the literature's protocol: 30 training images per class, the rest, at most 50 per
class, for testing): in each class the images (sorted by file name) are permuted by a generator
seeded with `split_seed`; the first `train_per_class` are train, the next `test_per_class` (null:
all the rest) test. Every class keeps at least one test image. The same seed gives the same split
on every machine; train and test never share an image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from prunekit.data import paths
from prunekit.data.arrays import ArrayDataset, first_per_class, fingerprint, load_arrays, save_arrays
from prunekit.errors import UserError

FOLDERS = ("caltech101-128px/101_ObjectCategories", "caltech101/101_ObjectCategories", "101_ObjectCategories")
SKIP = ("BACKGROUND_Google",)
DEFAULTS = {"image_size": 224, "train_per_class": 30, "test_per_class": 50, "split_seed": 0}


def locate(root: Path) -> Path | None:
    """Return the first `101_ObjectCategories` folder under `root` that exists, else None."""
    return next((root / f for f in FOLDERS if (root / f).is_dir()), None)


def resize_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    """Return a uint8 C x H x W image resized (shorter side `size`, antialiased) and centre-cropped to size x size."""
    from torchvision.transforms.v2 import functional as F

    return F.center_crop(F.resize(image, size, antialias=True), [size, size]).contiguous()


def read_folder(folder: Path, size: int, *, progress: bool = True) -> ArrayDataset:
    """Decode every image of `folder/<class>/` (BACKGROUND_Google skipped) at `size` px into one ArrayDataset."""
    from prunekit.data.folder import decode_rgb, scan_folder
    from prunekit.data.readers import _progress

    listing = scan_folder(folder, skip=SKIP)
    images = torch.empty(len(listing), 3, size, size, dtype=torch.uint8)
    with _progress(progress) as bar:
        task = bar.add_task(f"decoding {folder.parent.name} at {size} px", total=len(listing))
        for i, (path, _) in enumerate(listing.samples):
            images[i] = resize_crop(decode_rgb(path), size)
            bar.advance(task)
    return ArrayDataset(images, listing.targets, listing.classes)


def split_indices(targets: torch.Tensor, *, train_per_class: int, test_per_class: int | None, seed: int,
                  num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return sorted (train, test) indices: per class, a seeded permutation cut into train, then test."""
    gen = torch.Generator().manual_seed(seed)
    train, test = [], []
    for c in range(num_classes):
        idx = torch.nonzero(targets.cpu() == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        k = min(train_per_class, max(len(idx) - 1, 0))  # keep one image of every class for testing
        train.append(idx[:k])
        test.append(idx[k:] if test_per_class is None else idx[k:k + test_per_class])
    return torch.sort(torch.cat(train)).values, torch.sort(torch.cat(test)).values


def _count(options: dict[str, Any], key: str, *, allow_none: bool = False) -> int | None:
    value = options.get(key, DEFAULTS[key])
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"caltech101: {key} must be a positive integer{' or null' if allow_none else ''}, got {value!r}")
    return value


def build(req: Any, wants: dict[str, int | None]) -> dict[str, ArrayDataset]:
    """The catalog's build function: {split: ArrayDataset} for `wants` = {split: first N per class or None}."""
    size = _count(req.options, "image_size")
    if size > 1024:
        raise UserError(f"caltech101: image_size {size} is larger than this loader allows (1024)")
    train_n, test_n = _count(req.options, "train_per_class"), _count(req.options, "test_per_class", allow_none=True)
    seed = req.options.get("split_seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise UserError(f"caltech101: split_seed must be an integer, got {seed!r}")
    folder = locate(req.root)
    if folder is None:
        if req.download:
            from prunekit.data.catalog import _tv_class_download

            try:
                req.root.mkdir(parents=True, exist_ok=True)
                _tv_class_download("Caltech101")(req)
            except Exception as err:  # network and disk failures alike end as one line
                raise UserError(f"downloading 'caltech101' into {req.root} failed ({type(err).__name__}: "
                                f"{' '.join(str(err).split())[:200]}); provide the files by hand") from None
            folder = locate(req.root)
        if folder is None:
            raise paths.missing("caltech101", [req.root / f for f in FOLDERS],
                                hint="the 101_ObjectCategories/<class>/image_NNNN.jpg layout", downloadable=True)
    cache = paths.cache_dir(req.root, req.cache_dir) / f"caltech101-{fingerprint(folder)}-{size}px.pt"
    whole = load_arrays(cache)
    if whole is None:
        whole = read_folder(folder, size, progress=req.progress)
        save_arrays(cache, whole)
    train_idx, test_idx = split_indices(whole.targets, train_per_class=train_n, test_per_class=test_n, seed=seed,
                                        num_classes=whole.num_classes)
    out = {}
    for split, n in wants.items():
        ds = whole.select(train_idx if split == "train" else test_idx)
        out[split] = ds if n is None else ds.select(first_per_class(ds.targets, n, ds.num_classes))
    return out
