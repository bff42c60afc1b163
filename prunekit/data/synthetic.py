"""`synthetic`: random images that a tiny network can learn, for tests and smoke runs.

Every class has a fixed smooth colour pattern (a random 4 x 4 grid per channel, upsampled); an
image is its class's pattern plus strong per-pixel noise, so the task is learnable but not trivial
and survives 4-pixel crops and flips. The patterns depend only on `seed`, so train and test agree.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from prunekit.data.arrays import ArrayDataset
from prunekit.errors import UserError

DEFAULTS = {"num_classes": 10, "image_size": 32, "channels": 3, "train_size": 512, "test_size": 256}


def make_synthetic(split: str, *, seed: int, num_classes: int, image_size: int, channels: int, train_size: int, test_size: int) -> ArrayDataset:
    """Return `train_size` (split "train") or `test_size` (split "test") images, classes balanced in turn."""
    for key, value in (("num_classes", num_classes), ("image_size", image_size), ("channels", channels), ("train_size", train_size), ("test_size", test_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"synthetic option {key} must be a positive integer, got {value!r}")
    if split not in ("train", "test"):
        raise UserError(f"dataset 'synthetic' has splits train, test; not {split!r}")
    gen = torch.Generator().manual_seed(seed)
    grid = torch.rand(num_classes, channels, 4, 4, generator=gen)
    patterns = F.interpolate(grid, size=(image_size, image_size), mode="bilinear", align_corners=False)
    n = train_size if split == "train" else test_size
    gen = torch.Generator().manual_seed(seed * 2 + (1 if split == "train" else 2))
    labels = torch.arange(n) % num_classes
    labels = labels[torch.randperm(n, generator=gen)]
    noise = torch.randn(n, channels, image_size, image_size, generator=gen)
    images = (patterns[labels] * 160 + 48 + noise * 40).round().clamp(0, 255).to(torch.uint8)
    return ArrayDataset(images, labels, [f"class{c}" for c in range(num_classes)])
