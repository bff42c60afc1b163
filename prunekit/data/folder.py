"""Large datasets read image by image: ImageFolder-style trees (imagenet, caltech101, imagefolder:PATH).

Items decode to uint8 RGB tensors (C x H x W) and go through torchvision transforms v2 in
DataLoader workers; normalisation happens on the training device, on whole batches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset

from prunekit.data.readers import IMAGE_SUFFIXES
from prunekit.errors import UserError


class FolderDataset(Dataset):
    """Image files with labels; items are (transform(uint8 RGB C x H x W tensor), label)."""

    def __init__(self, samples: Sequence[tuple[str, int]], classes: Sequence[str], transform: Callable | None = None) -> None:
        self.samples = list(samples)
        self.classes = list(classes)
        self.transform = transform

    @property
    def targets(self) -> torch.Tensor:
        """Return the labels, one per sample, as an int64 tensor."""
        return torch.tensor([label for _, label in self.samples], dtype=torch.long)

    @property
    def num_classes(self) -> int:
        """Return the number of classes."""
        return len(self.classes)

    def class_counts(self) -> list[int]:
        """Return the number of images of each class, in class order."""
        return torch.bincount(self.targets, minlength=self.num_classes).tolist()

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        image = decode_rgb(path)
        return (self.transform(image) if self.transform else image), label

    def select(self, indices: torch.Tensor) -> FolderDataset:
        """Return the dataset restricted to `indices`, keeping the transform."""
        return FolderDataset([self.samples[i] for i in indices.tolist()], self.classes, self.transform)

    def with_transform(self, transform: Callable | None) -> FolderDataset:
        """Return the same samples with another transform."""
        return FolderDataset(self.samples, self.classes, transform)


def decode_rgb(path: str) -> torch.Tensor:
    """Return the image at `path` as a uint8 RGB tensor (3 x H x W); PIL for formats libjpeg/libpng lack."""
    import warnings

    import numpy as np
    from PIL import Image

    try:
        from torchvision.io import ImageReadMode, decode_image, read_file

        with warnings.catch_warnings():  # torchvision 0.29's notice that its codecs move to torchcodec
            warnings.simplefilter("ignore", DeprecationWarning)
            return decode_image(read_file(path), mode=ImageReadMode.RGB)
    except (ImportError, RuntimeError):
        try:
            with Image.open(path) as im:
                return torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1).contiguous()
        except OSError as err:
            raise UserError(f"cannot decode image {path}: {err}") from None


def scan_folder(path: Path, *, skip: Sequence[str] = ()) -> FolderDataset:
    """Return the images of `path/<class>/*` (classes and files sorted by name), without transform."""
    classes = sorted(d.name for d in path.iterdir() if d.is_dir() and d.name not in skip)
    samples = []
    for label, cls in enumerate(classes):
        files = sorted(p for p in (path / cls).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        samples += [(str(p), label) for p in files]
    if not samples:
        raise UserError(f"{path} holds no images in <class>/ folders ({', '.join(IMAGE_SUFFIXES)})")
    return FolderDataset(samples, classes)


def train_transform(size: int, *, flip: bool):
    """Return the training transform: random resized crop to `size` (and a horizontal flip)."""
    from torchvision.transforms import v2

    steps = [v2.RandomResizedCrop(size, antialias=True)]
    if flip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose(steps)


def eval_transform(size: int):
    """Return the evaluation transform: resize the short side to size / 0.875, centre crop `size`."""
    from torchvision.transforms import v2

    return v2.Compose([v2.Resize(round(size / 0.875), antialias=True), v2.CenterCrop(size)])
