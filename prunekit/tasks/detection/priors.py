"""Prior (anchor) boxes of RetinaFace, as the reference's `cfg_mnet` defines them.

For every level k (stride `steps[k]`), every cell (i, j) of its ceil(H/s) x ceil(W/s) grid, and
every size in `min_sizes[k]`, one square prior centred on the cell: (cx, cy, w, h) as fractions
of the image width and height. The order (level, row, column, size) is the order in which the
model's heads emit their predictions. For a 640x640 image: sum over s in (8, 16, 32) of
(640 / s)^2 * 2 = 16800 priors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PriorConfig:
    """Prior sizes (pixels) per level, the level strides and the box-coding variances."""

    min_sizes: tuple[tuple[int, ...], ...] = ((16, 32), (64, 128), (256, 512))
    steps: tuple[int, ...] = (8, 16, 32)
    variances: tuple[float, float] = (0.1, 0.2)
    clip: bool = False


MNET = PriorConfig()


def feature_sizes(height: int, width: int, config: PriorConfig = MNET) -> list[tuple[int, int]]:
    """Return (rows, columns) of every level's grid for an image of `height` x `width`."""
    return [(math.ceil(height / s), math.ceil(width / s)) for s in config.steps]


def count_priors(height: int, width: int, config: PriorConfig = MNET) -> int:
    """Return the number of priors for an image of `height` x `width`."""
    return sum(r * c * len(m) for (r, c), m in zip(feature_sizes(height, width, config), config.min_sizes))


def make_priors(height: int, width: int, config: PriorConfig = MNET, *, device: torch.device | str = "cpu") -> torch.Tensor:
    """Return the priors of an image of `height` x `width`: P x 4 (cx, cy, w, h), fractions of the image."""
    out = []
    for (rows, cols), sizes, step in zip(feature_sizes(height, width, config), config.min_sizes, config.steps):
        cy = (torch.arange(rows, dtype=torch.float32, device=device) + 0.5) * step / height
        cx = (torch.arange(cols, dtype=torch.float32, device=device) + 0.5) * step / width
        gy, gx = torch.meshgrid(cy, cx, indexing="ij")  # rows x cols
        n = len(sizes)
        w = torch.tensor([s / width for s in sizes], device=device)
        h = torch.tensor([s / height for s in sizes], device=device)
        level = torch.stack([
            gx[..., None].expand(rows, cols, n), gy[..., None].expand(rows, cols, n),
            w.expand(rows, cols, n), h.expand(rows, cols, n),
        ], dim=-1)
        out.append(level.reshape(-1, 4))
    priors = torch.cat(out)
    return priors.clamp_(0, 1) if config.clip else priors


_CACHE: dict[tuple, torch.Tensor] = {}


def priors_for(height: int, width: int, config: PriorConfig = MNET, *, device: torch.device | str = "cpu") -> torch.Tensor:
    """Return `make_priors`, cached per (size, config, device) (do not modify the result)."""
    key = (int(height), int(width), config, str(device))
    if key not in _CACHE:
        if len(_CACHE) > 64:
            _CACHE.clear()
        _CACHE[key] = make_priors(height, width, config, device=device)
    return _CACHE[key]
