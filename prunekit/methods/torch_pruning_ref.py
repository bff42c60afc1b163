"""`tp_group_l2`: Torch-Pruning's own MetaPruner at its defaults, the peer a user would pick instead.

GroupMagnitudeImportance (group L2, mean reduction, mean normalizer), one uniform pruning ratio for
every group, no rounding of channel counts; the ratio is bisected on the real count of a pruned copy
so that a `macs=`/`params=` target is met the way a Torch-Pruning user would meet it. The classifier
(or a task's protected outputs) is ignored, as every Torch-Pruning example does by hand. It exists so
that results tables can put prunekit's methods beside the library users would otherwise use, at the
same target and the same fine-tune.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from prunekit import structure
from prunekit.errors import UserError
from prunekit.methods.base import Batches, Method, register
from prunekit.metrics import measure

#: bisection steps on the uniform ratio (2^-14 of the ratio range: far below one channel)
_BISECTION_STEPS = 14


def _pruned_copy(model: nn.Module, example_inputs: Any, ratio: float, protected: list[str]) -> tuple[nn.Module, tp.DependencyGraph]:
    net = copy.deepcopy(model).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner = tp.pruner.MetaPruner(
            net, example_inputs, importance=tp.importance.GroupMagnitudeImportance(), pruning_ratio=ratio,
            ignored_layers=structure.protected_layers(net, example_inputs, protected) + structure.fixed_layers(net),
            customized_pruners=dict(structure.CUSTOM_PRUNERS),
        )
        with torch.no_grad():
            pruner.step()
    return net, pruner.DG


@register
class TorchPruningGroupL2(Method):
    name = "tp_group_l2"
    kind = "structured"
    units = ("params", "macs")
    description = "reference: Torch-Pruning's MetaPruner defaults (group L2, uniform ratio, no rounding)"

    def configure(self, *, bisection_steps: int = _BISECTION_STEPS, **options: Any) -> dict[str, Any]:
        if isinstance(bisection_steps, bool) or not isinstance(bisection_steps, int) or not 1 <= bisection_steps <= 64:
            raise UserError(f"method {self.name!r}: bisection_steps must be an integer in 1..64, got {bisection_steps!r}")
        return {"bisection_steps": bisection_steps, **super().configure(**options)}

    def finalize(self, model: nn.Module, *, example_inputs: Any, data: Batches | None = None) -> nn.Module:
        if self.target is None:
            raise UserError(f"method {self.name!r} needs a target, e.g. macs=0.5")
        if self.round_to not in (None, 1):
            raise UserError(f"method {self.name!r} runs Torch-Pruning's defaults, which do not round channels; drop round_to")
        unit, goal = self.target.unit, self.target.value
        base = getattr(measure(model, example_inputs), unit)
        protected = self.protected(model, example_inputs)
        shapes = structure.output_shapes(model, example_inputs)
        lo, hi, best = 0.0, 0.95, None
        for _ in range(self.options["bisection_steps"]):
            mid = (lo + hi) / 2
            net, graph = _pruned_copy(model, example_inputs, mid, protected)
            got = 1.0 - getattr(measure(net, example_inputs), unit) / base
            if best is None or abs(got - goal) < best[0]:
                best = (abs(got - goal), mid, net, graph)
            lo, hi = (mid, hi) if got < goal else (lo, mid)
        _, ratio, net, graph = best
        structure.check_outputs(net, example_inputs, before=shapes, what=self.name)
        self.info["tp_ratio"] = ratio
        # the copy's surgery is recorded for save/load, then the caller's object becomes the copy
        structure._record(net, graph, example_inputs)
        model.__dict__.update(net.__dict__)
        return model
