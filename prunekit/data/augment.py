"""Batch augmentation on the device: random crop with zero padding, horizontal flip, normalisation.

One gather per batch does crop and flip together (no per-image Python or PIL work), so the same
code keeps an H100 busy and runs on a CPU. The semantics match torchvision's
`RandomCrop(size, padding=pad)` (zero fill) followed by `RandomHorizontalFlip()`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def crop_flip(images: torch.Tensor, *, offsets_y: torch.Tensor, offsets_x: torch.Tensor, flips: torch.Tensor, pad: int) -> torch.Tensor:
    """Return `images` (N x C x H x W, any dtype) zero-padded by `pad`, cropped back to H x W at the
    given per-image offsets (0..2*pad) and mirrored where `flips` is True.

    The result has the input's shape and dtype, in channels_last memory layout.
    """
    n, _, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad)) if pad else images
    dev = images.device
    rows = offsets_y.to(dev)[:, None] + torch.arange(h, device=dev)  # N x H
    ar = torch.arange(w, device=dev)
    cols = offsets_x.to(dev)[:, None] + torch.where(flips.to(dev)[:, None], w - 1 - ar, ar)  # N x W
    batch = torch.arange(n, device=dev)[:, None, None]
    # advanced indices around a slice put their dimensions first: N x H x W x C
    return padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def random_params(n: int, *, pad: int, flip: bool, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (offsets_y, offsets_x, flips) for `n` images, drawn from `generator` (CPU)."""
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5 if flip else torch.zeros(n, dtype=torch.bool)
    return oy, ox, flips


class Normalize:
    """Turns uint8 batches into float32 (x / 255 - mean) / std on the device, per channel."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> None:
        m = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        s = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.scale = 1.0 / (255.0 * s)
        self.shift = m / s

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Return the normalised float32 batch (same memory layout as `images`)."""
        return images.float().mul_(self.scale).sub_(self.shift)
