"""Small datasets held in memory as one uint8 tensor, and their on-disk cache.

An `ArrayDataset` is what the small datasets (CIFAR, MNIST, SVHN, synthetic) decode to: images
as one uint8 tensor (N, C, H, W) and labels as one int64 tensor. It is decoded once, cached as a
`.pt` file (tensors only, read back with `weights_only=True`) and moved whole to the training
device, where `prunekit.data.augment` crops and flips a batch at a time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset

from prunekit.errors import UserError


class ArrayDataset(Dataset):
    """In-memory images (uint8, N x C x H x W) with int64 labels; items are (image, label)."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, classes: Sequence[str]) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 N x C x H x W, got {images.dtype} {tuple(images.shape)}")
        if targets.shape != (images.shape[0],):
            raise ValueError(f"{images.shape[0]} images but labels of shape {tuple(targets.shape)}")
        self.images = images
        self.targets = targets.long()
        self.classes = list(classes)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.targets[index])

    @property
    def num_classes(self) -> int:
        """Return the number of classes."""
        return len(self.classes)

    def class_counts(self) -> list[int]:
        """Return the number of images of each class, in class order."""
        return torch.bincount(self.targets.cpu(), minlength=self.num_classes).tolist()

    def select(self, indices: torch.Tensor) -> ArrayDataset:
        """Return the dataset restricted to `indices` (a view-free copy of those rows)."""
        indices = indices.to(self.images.device)
        return ArrayDataset(self.images[indices], self.targets[indices], self.classes)

    def to(self, device: torch.device | str) -> ArrayDataset:
        """Return the dataset with images and labels on `device` (self if already there)."""
        device = torch.device(device)
        if self.images.device == device:
            return self
        return ArrayDataset(self.images.to(device), self.targets.to(device), self.classes)


def first_per_class(targets: torch.Tensor, n: int, num_classes: int) -> torch.Tensor:
    """Return the sorted indices of the first `n` items of every class (all of a class with fewer)."""
    targets = targets.cpu()
    picked = [torch.nonzero(targets == c).flatten()[:n] for c in range(num_classes)]
    return torch.sort(torch.cat(picked)).values


def stratified_holdout(targets: torch.Tensor, fraction: float, *, seed: int, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split indices into (kept, held_out), holding out round(fraction * n_c) random items of each class.

    The choice depends only on `seed` and the labels, so every run with the same seed holds out the
    same images. Both index tensors are sorted.
    """
    if not 0.0 <= fraction < 1.0:
        raise UserError(f"val_fraction must be in [0, 1), got {fraction}")
    targets = targets.cpu()
    gen = torch.Generator().manual_seed(seed)
    kept, held = [], []
    for c in range(num_classes):
        idx = torch.nonzero(targets == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        k = int(round(fraction * len(idx)))
        held.append(idx[:k])
        kept.append(idx[k:])
    return torch.sort(torch.cat(kept)).values, torch.sort(torch.cat(held)).values


def parse_subset(subset: int | dict | None, split: str) -> int | None:
    """Return the per-class image count asked for `split`: an int applies to every split, a mapping per split."""
    if subset is None:
        return None
    value = subset.get(split) if isinstance(subset, dict) else subset
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise UserError(f"subset must be a positive number of images per class (or a mapping split -> number), got {subset!r}")
    return value


# -- cache ------------------------------------------------------------------------------------


def fingerprint(path: Path) -> str:
    """Return a short key that changes when the file or folder at `path` is replaced or edited."""
    st = path.stat()
    return hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]


def save_arrays(path: Path, dataset: ArrayDataset) -> None:
    """Write `dataset` to `path` atomically (temp file in the same folder + os.replace)."""
    from prunekit.io import atomic_torch_save

    atomic_torch_save({"images": dataset.images.cpu(), "targets": dataset.targets.cpu(), "classes": dataset.classes}, path)


def load_arrays(path: Path) -> ArrayDataset | None:
    """Return the cached dataset at `path`, or None when there is none (or it is unreadable)."""
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, weights_only=True, map_location="cpu")
        return ArrayDataset(blob["images"], blob["targets"], blob["classes"])
    except Exception:  # a truncated or foreign file: decode again rather than fail
        return None
