"""Channel importance: one score per channel of a group's root layer (higher = more important).

Scoring lives apart from removal (`prunekit.structure`), as in Torch-Pruning: an importance is
any callable `importance(group) -> Tensor`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch_pruning as tp
from torch import nn


def _plain_idxs(idxs: Sequence[Any]) -> list[int]:
    return [int(getattr(i, "idx", i)) for i in idxs]



class MagnitudeImportance:
    """Norm of each channel's weights summed over the coupled group (Li et al. 2017 for p=1).

    Wraps Torch-Pruning's `GroupMagnitudeImportance`; `normalizer` ("mean" or None) makes scores
    comparable across groups for global ranking.
    """

    def __init__(self, *, p: int = 1, normalizer: str | None = "mean") -> None:
        self._imp = tp.importance.GroupMagnitudeImportance(p=p, group_reduction="mean", normalizer=normalizer)
        self.p = p

    def __call__(self, group: Any) -> torch.Tensor:
        fast = self._fast(group)
        return fast if fast is not None else self._imp(group)

    @torch.no_grad()
    def _fast(self, group: Any) -> torch.Tensor | None:
        # The same sums as Torch-Pruning's GroupMagnitudeImportance for plain convs, linears and
        # BatchNorms, without its transposed copies of every weight (a third of ResNet-50's pruning
        # time); any other layer in the group falls back to Torch-Pruning.
        fn = tp.pruner.function
        plain = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
        mag = (lambda w: w.abs()) if self.p == 1 else (lambda w: w.abs().pow(self.p))
        parts: list[tuple[torch.Tensor, list[int]]] = []
        for i, (dep, idxs) in enumerate(group):
            layer, prune_fn, root_idxs = dep.layer, dep.pruning_fn, group[i].root_idxs
            if not isinstance(layer, tuple(self._imp.target_types)):
                continue
            if prune_fn in (fn.prune_conv_out_channels, fn.prune_linear_out_channels):
                if type(layer) not in plain:
                    return None
                imp = self._sums(layer, mag)[0][torch.as_tensor(_plain_idxs(idxs), device=layer.weight.device)]
            elif prune_fn in (fn.prune_conv_in_channels, fn.prune_linear_in_channels):
                if type(layer) not in plain or getattr(layer, "groups", 1) != 1:
                    return None
                imp = self._sums(layer, mag)[1][torch.as_tensor(_plain_idxs(idxs), device=layer.weight.device)]
            elif prune_fn == fn.prune_batchnorm_out_channels:
                if not layer.affine:
                    continue
                imp = mag(layer.weight.detach()[torch.as_tensor(_plain_idxs(idxs), device=layer.weight.device)])
            else:
                return None
            if any(r is None for r in root_idxs):
                continue
            parts.append((imp, root_idxs))
        if not parts:
            return None
        reduced = torch.zeros_like(parts[0][0], dtype=torch.float32)
        for imp, root_idxs in parts:
            reduced.scatter_add_(0, torch.tensor(root_idxs, device=reduced.device), imp.to(reduced.device, torch.float32))
        reduced /= len(parts)
        return self._imp._normalize(reduced, self._imp.normalizer)

    def _sums(self, layer: nn.Module, mag: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        # |w|^p summed per output row and per input column, once per weight version (a layer is in
        # one group by its outputs and in another by its inputs)
        w = layer.weight
        key = (id(w), w._version, tuple(w.shape), w.data_ptr())
        cache = self.__dict__.setdefault("_cache", {})
        if key not in cache:
            m = mag(w.detach())
            cache[key] = (m.flatten(1).sum(1), m.sum(dim=[d for d in range(m.dim()) if d != 1]))
            if len(cache) > 4096:
                cache.clear()
        return cache[key]


class RandomImportance:
    """Uniform random scores from a seeded generator (the structured random baseline)."""

    def __init__(self, *, seed: int = 0) -> None:
        self._gen = torch.Generator().manual_seed(seed)

    def __call__(self, group: Any) -> torch.Tensor:
        n = len(group[0].idxs)
        return torch.rand(n, generator=self._gen)
