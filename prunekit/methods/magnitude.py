"""Magnitude pruning (Han et al. 2015): zero the weights of smallest |w|, globally or per layer.

Unstructured: the zeros cut non-zero parameters and non-zero MACs, not dense latency.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from prunekit import masks
from prunekit.errors import UserError
from prunekit.methods.base import Batches, Method, register


@register
class Magnitude(Method):
    name = "magnitude"
    kind = "unstructured"
    units = ("sparsity",)
    description = "zero the smallest-|w| weights, global or per layer, one-shot (Han et al. 2015)"

    def configure(self, *, scope: str = "global", exclude: tuple[str, ...] | list[str] = (), **options: Any) -> dict[str, Any]:
        if scope not in ("global", "layer"):
            raise UserError(f"method 'magnitude': scope {scope!r} is not one of global, layer")
        return {"scope": scope, "exclude": tuple(exclude), **super().configure(**options)}

    def prune_to(self, model: nn.Module, sparsity: float) -> None:
        """Mask `model` so that a `sparsity` fraction of its prunable weights is zero."""
        layers = masks.prunable_layers(model, exclude=self.options["exclude"] + tuple(i for i in self.ignore if isinstance(i, str)))
        scores = {name: masks.weight_of(m).detach().abs() for name, m in layers.items()}
        masks.apply_masks(model, masks.masks_from_scores(scores, sparsity=sparsity, scope=self.options["scope"]))

    def finalize(self, model: nn.Module, *, example_inputs: torch.Tensor, data: Batches | None = None) -> nn.Module:
        if self.target is None:
            raise UserError("method 'magnitude' needs a target, e.g. sparsity=0.9")
        self.prune_to(model, self.target.value)
        return model
