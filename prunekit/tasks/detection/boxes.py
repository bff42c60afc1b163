"""Box coding between priors and boxes (SSD / RetinaFace style).

Boxes are x1, y1, x2, y2; priors are cx, cy, w, h; both in the same frame (fractions of the
image in training). A box is encoded against its prior as
  ((bcx - pcx) / (v0 pw), (bcy - pcy) / (v0 ph), log(bw / pw) / v1, log(bh / ph) / v1)
and a landmark point as ((x - pcx) / (v0 pw), (y - pcy) / (v0 ph)); `decode` inverts it.
"""

from __future__ import annotations

import torch


def prior_corners(priors: torch.Tensor) -> torch.Tensor:
    """Return priors (cx, cy, w, h) as corners (x1, y1, x2, y2)."""
    return torch.cat([priors[:, :2] - priors[:, 2:] / 2, priors[:, :2] + priors[:, 2:] / 2], dim=1)


def encode(boxes: torch.Tensor, priors: torch.Tensor, variances: tuple[float, float]) -> torch.Tensor:
    """Return the regression targets of `boxes` (P x 4 corners) against `priors` (P x 4)."""
    centre = ((boxes[:, :2] + boxes[:, 2:]) / 2 - priors[:, :2]) / (variances[0] * priors[:, 2:])
    size = ((boxes[:, 2:] - boxes[:, :2]).clamp_min(1e-12) / priors[:, 2:]).log() / variances[1]
    return torch.cat([centre, size], dim=1)


def decode(deltas: torch.Tensor, priors: torch.Tensor, variances: tuple[float, float]) -> torch.Tensor:
    """Return corner boxes from `deltas` (... x P x 4) and `priors` (P x 4): the inverse of `encode`."""
    centre = priors[:, :2] + deltas[..., :2] * variances[0] * priors[:, 2:]
    size = priors[:, 2:] * torch.exp(deltas[..., 2:] * variances[1])
    return torch.cat([centre - size / 2, centre + size / 2], dim=-1)


def encode_landmarks(points: torch.Tensor, priors: torch.Tensor, variances: tuple[float, float]) -> torch.Tensor:
    """Return the targets of `points` (P x 10: five x, y pairs) against `priors` (P x 4)."""
    p = points.reshape(-1, 5, 2)
    return ((p - priors[:, None, :2]) / (variances[0] * priors[:, None, 2:])).reshape(-1, 10)


def decode_landmarks(deltas: torch.Tensor, priors: torch.Tensor, variances: tuple[float, float]) -> torch.Tensor:
    """Return landmark points (... x P x 10) from `deltas` (... x P x 10): the inverse of `encode_landmarks`."""
    d = deltas.reshape(*deltas.shape[:-1], 5, 2)
    pts = priors[:, None, :2] + d * variances[0] * priors[:, None, 2:]
    return pts.reshape(*deltas.shape)
