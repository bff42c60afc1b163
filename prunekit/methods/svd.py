"""SVD low-rank training (Yang et al., CVPRW 2020): train every layer as U diag(s) Vh, truncate the spectrum.

`at_init` replaces each Conv2d/Linear (minus `ignore`) by its full-rank factorised form
(`prunekit.lowrank`), from the SVD of the current weight (`init="svd"`: the network keeps its
function) or from random orthogonal factors (`init="random"`). During training the loss gets

    lambda_o * sum_l (||U^T U - I||_F^2 + ||Vh Vh^T - I||_F^2) / r_l^2  +  lambda_s * sum_l R(s_l)

with R one of l1, hoyer (||s||_1 / ||s||_2) or hoyer_square (||s||_1^2 / ||s||_2^2).
`finalize` keeps, per layer, the fewest singular values holding at least `energy` of sum s^2
(KEPT energy; Yang's code passes the pruned fraction 1 - energy), or, with a params/macs target,
the one energy for all layers that meets the target, and turns every layer into plain modules:
two layers where that saves parameters, else one dense layer with the low-rank weight.
Fine-tuning (`finetune_hooks`) keeps the orthogonality term only, applied to the plain pairs read
as U diag(s) Vh (`lowrank.pair_orthogonality`).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from prunekit import inputs, lowrank, structure
from prunekit.errors import UserError
from prunekit.methods.base import Batches, Method, register, seed_option
from prunekit.metrics import measure


@register
class SVDLowRank(Method):
    """SVD training; options `mode` (channel|spatial), `init` (svd|random), `energy` (kept fraction of
    sum s^2, default 0.99), `lambda_o` (1.0), `lambda_s` (0.01), `penalty` (hoyer|hoyer_square|l1),
    `finetune_orthogonality` (True), `seed` (random init)."""

    name = "svd"
    kind = "lowrank"
    units = ("params", "macs")
    description = "train layers as U diag(s) V^T with orthogonality + sparsity, truncate by energy (Yang et al. 2020)"

    def configure(self, *, mode: str = "channel", init: str = "svd", energy: float | None = None, lambda_o: float = 1.0,
                  lambda_s: float = 0.01, penalty: str = "hoyer", finetune_orthogonality: bool = True,
                  seed: int = 0, **options: Any) -> dict[str, Any]:
        super().configure(**options)
        if energy is not None and self.target is not None:
            raise UserError(f"method 'svd': give energy={energy} or target {self.target}, not both")
        if energy is None:
            energy = 0.99
        if self.round_to is not None:
            raise UserError(f"method 'svd': round_to={self.round_to!r} does not apply (it truncates ranks, not channels)")
        if mode not in lowrank.MODES:
            raise UserError(f"method 'svd': mode {mode!r} is not one of {', '.join(lowrank.MODES)}")
        if init not in lowrank.INITS:
            raise UserError(f"method 'svd': init {init!r} is not one of {', '.join(lowrank.INITS)}")
        if penalty not in lowrank.SPARSITY_PENALTIES:
            raise UserError(f"method 'svd': penalty {penalty!r} is not one of {', '.join(lowrank.SPARSITY_PENALTIES)}")
        numbers = {}
        for key, value in (("energy", energy), ("lambda_o", lambda_o), ("lambda_s", lambda_s)):
            try:
                numbers[key] = float(value)
            except (TypeError, ValueError):
                raise UserError(f"method 'svd': {key}={value!r} is not a number") from None
        if not 0.0 < numbers["energy"] <= 1.0:
            raise UserError(f"method 'svd': energy={energy} must be in (0, 1] (the fraction of sum s^2 KEPT)")
        for key in ("lambda_o", "lambda_s"):
            # NaN and inf would pass a plain `< 0` check and turn every loss into NaN/inf
            if not 0.0 <= numbers[key] < float("inf"):
                raise UserError(f"method 'svd': {key}={numbers[key]!r} must be a finite number >= 0")
        if not isinstance(finetune_orthogonality, bool):
            raise UserError(f"method 'svd': finetune_orthogonality={finetune_orthogonality!r} must be true or false")
        return {"mode": mode, "init": init, **numbers, "penalty": penalty,
                "finetune_orthogonality": finetune_orthogonality, "seed": seed_option(self.name, seed)}

    # hooks -------------------------------------------------------------------------------------
    def at_init(self, model: nn.Module, *, example_inputs: torch.Tensor, data: Batches | None = None) -> nn.Module:
        """Factorise every Conv2d/Linear of `model` in place (full rank) and return it."""
        skip = structure.resolve_ignore(model, self.ignore)
        if lowrank.svd_layers(model):
            return model  # already factorised (e.g. a resumed run)
        before = structure.output_shapes(model, example_inputs)
        left = lowrank.factorise(model, mode=self.options["mode"], init=self.options["init"], skip=skip,
                                 seed=self.options["seed"])
        structure.check_outputs(model, example_inputs, before=before, what="svd factorisation")
        self.info["left_dense"] = left
        return model

    def regularizer(self, model: nn.Module) -> torch.Tensor | None:
        o = self.options
        return lowrank.regularizer(model, lambda_o=o["lambda_o"], lambda_s=o["lambda_s"], penalty=o["penalty"])

    def finalize(self, model: nn.Module, *, example_inputs: torch.Tensor, data: Batches | None = None) -> nn.Module:
        """Truncate each factorised layer by energy (or to the target), convert to plain modules; return the model."""
        layers = lowrank.svd_layers(model)
        if not layers:
            raise UserError("method 'svd': the model has no factorised layers; finalize runs after at_init")
        x = inputs.take(example_inputs, 1)
        before = structure.output_shapes(model, x)
        full = {name: layer.rank for name, layer in layers.items()}
        energy = self.options["energy"] if self.target is None else self._energy_for_target(model, x)
        ranks = {name: lowrank.rank_for_energy(layer.s, energy) for name, layer in layers.items()}
        lowrank.truncate(model, ranks=ranks)
        forms = lowrank.to_plain(model)
        structure.check_outputs(model, x, before=before, what="svd truncation")  # factors keep out_channels
        self.info.update({
            "energy": energy,
            "energy_convention": "fraction of sum s^2 kept",
            "mode": self.options["mode"],
            "ranks": {name: {"rank": ranks[name], "full_rank": full[name], "form": forms[name]["form"]} for name in layers},
        })
        return model

    def _energy_for_target(self, model: nn.Module, x: torch.Tensor) -> float:
        """Return the largest kept energy (one for all layers) whose plain model removes at least the
        target fraction of params or MACs (bisection on the per-layer cost formula)."""
        unit = self.target.unit
        pick = 0 if unit == "params" else 1
        dense = copy.deepcopy(model)
        lowrank.to_plain(dense, form="dense")
        base = getattr(measure(dense, x), unit)
        layers = lowrank.svd_layers(model)
        shapes = lowrank.layer_shapes(model, x)
        full = {name: lowrank.plain_cost(layer, layer.rank, in_shape=shapes[name][0], out_shape=shapes[name][1])[pick]
                for name, layer in layers.items()}

        def removed(e: float) -> float:
            saved = 0
            for name, layer in layers.items():
                r = lowrank.rank_for_energy(layer.s, e)
                saved += full[name] - lowrank.plain_cost(layer, r, in_shape=shapes[name][0], out_shape=shapes[name][1])[pick]
            return saved / base

        lo, hi = 0.0, 1.0  # removed(e) falls as e grows
        for _ in range(30):
            mid = (lo + hi) / 2
            if removed(mid) >= self.target.value:
                lo = mid
            else:
                hi = mid
        if lo == 0.0:
            raise UserError(f"method 'svd': target {self.target} cannot be reached even at rank 1 in every layer")
        return lo

    def finetune_hooks(self) -> Any | None:
        """Return the fine-tuning hooks: the orthogonality term on the plain pairs (None when disabled or lambda_o = 0)."""
        if not self.options["finetune_orthogonality"] or self.options["lambda_o"] == 0:
            return None
        return PairOrthogonality(lambda_o=self.options["lambda_o"])


class PairOrthogonality(Method):
    """Fine-tuning hooks after `svd`: lambda_o * sum over the model's plain pairs of their orthogonality penalty."""

    name = "svd_finetune"
    kind = "lowrank"

    def __init__(self, *, lambda_o: float) -> None:
        super().__init__()
        self.lambda_o = float(lambda_o)

    def regularizer(self, model: nn.Module) -> torch.Tensor | None:
        pairs = lowrank.factored_pairs(model)
        if not pairs:
            return None
        return self.lambda_o * sum(lowrank.pair_orthogonality(p[0], p[1]) for p in pairs.values())
