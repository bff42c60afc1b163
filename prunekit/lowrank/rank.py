"""Low-rank maths: constants, parameter counts, rank by kept energy, the penalties, an exact SVD."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from prunekit.errors import UserError

MODES = ("channel", "spatial")
INITS = ("svd", "random")
SPARSITY_PENALTIES = ("l1", "hoyer", "hoyer_square")
FORMS = ("svd", "pair", "dense")

_EPS = 1e-12


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def factorisable(module: nn.Module) -> str | None:
    """Return why `module` cannot be factorised, or None when it can (a Conv2d or Linear)."""
    if isinstance(module, nn.Linear):
        return None
    if not isinstance(module, nn.Conv2d):
        return f"{type(module).__name__} is not a Conv2d or Linear"
    if module.groups != 1:
        return f"grouped conv (groups={module.groups})"
    if module.padding_mode != "zeros":
        return f"padding_mode={module.padding_mode!r} (only zeros)"
    if isinstance(module.padding, str) and module.padding != "valid":
        return f"padding={module.padding!r} (give numbers)"
    return None


def pair_params(m: int, n: int, rank: int) -> int:
    """Return the weight count of the two-layer form of an m x n matrix at `rank` (bias not counted)."""
    return rank * (m + n)


def saves_params(m: int, n: int, rank: int) -> bool:
    """Return True when the two-layer form at `rank` has fewer weights than the dense m x n layer."""
    return pair_params(m, n, rank) < m * n


def rank_for_energy(s: torch.Tensor, energy: float) -> int:
    """Return the fewest singular values (largest |s| first) whose sum of squares holds >= `energy` of the total.

    `energy` is the KEPT fraction of sum s^2, in (0, 1]; at least 1 is kept.
    """
    if not 0.0 < energy <= 1.0:
        raise UserError(f"energy={energy} must be in (0, 1]: the fraction of sum s^2 kept")
    sq = torch.sort(s.detach().cpu().double().abs(), descending=True).values ** 2
    total = float(sq.sum())
    if total <= 0.0:
        return 1
    cum = torch.cumsum(sq, 0)
    # a relative slack of 1e-9 so that an energy exactly on a boundary keeps that boundary's count
    need = energy * total * (1.0 - 1e-9)
    k = int(torch.searchsorted(cum, torch.tensor(need, dtype=cum.dtype)).item()) + 1
    return max(1, min(k, s.numel()))


def sparsity_penalty(s: torch.Tensor, kind: str) -> torch.Tensor:
    """Return R(s): "l1" ||s||_1, "hoyer" ||s||_1 / ||s||_2, or "hoyer_square" ||s||_1^2 / ||s||_2^2 (unitless)."""
    a = s.abs()
    if kind == "l1":
        return a.sum()
    l2sq = (s * s).sum() + _EPS
    if kind == "hoyer":
        return a.sum() / l2sq.sqrt()
    if kind == "hoyer_square":
        return a.sum() ** 2 / l2sq
    raise UserError(f"sparsity penalty {kind!r} is not one of {', '.join(SPARSITY_PENALTIES)}")


def orthogonality_penalty(u: torch.Tensor, vh: torch.Tensor) -> torch.Tensor:
    """Return (||U^T U - I||_F^2 + ||Vh Vh^T - I||_F^2) / r^2 for U (m x r) and Vh (r x n)."""
    r = u.shape[1]
    eye = torch.eye(r, device=u.device, dtype=u.dtype)
    return (((u.T @ u) - eye).pow(2).sum() + ((vh @ vh.T) - eye).pow(2).sum()) / (r * r)


def exact_svd(mat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return the thin SVD (U, s, Vh) of `mat` in float64, on its device."""
    mat = mat.to(torch.float64)
    threads = torch.get_num_threads()
    if mat.device.type == "cpu":
        # LAPACK's threaded SVD stalls on a busy CPU (measured on 2 shared cores: 20 SVDs of
        # 576 x 64 took 11 s with 2 threads, 0.1 s with 1); layer-sized matrices gain little from threads.
        torch.set_num_threads(1)
    try:
        if mat.shape[0] < mat.shape[1]:
            # LAPACK is several times faster on the tall orientation: SVD the transpose and swap.
            u, s, vh = torch.linalg.svd(mat.T, full_matrices=False)
            return vh.T, s, u.T
        return torch.linalg.svd(mat, full_matrices=False)
    finally:
        torch.set_num_threads(threads)
