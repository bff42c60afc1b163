"""Network slimming (Liu et al. 2017): L1 on BatchNorm scales while training, then one global threshold.

Training adds the subgradient of `sparsity_lambda * sum |gamma|` to every prunable BatchNorm's
gamma gradient (`after_backward`: grad += lambda * sign(gamma), as the paper's `updateBN`).
`finalize` ranks every channel of every prunable group by |gamma| (summed over the BatchNorms a
residual add couples, un-normalised), removes the lowest below ONE global threshold chosen to reach
the target (channels, params or macs), and lets `prunekit.structure` remove them physically.

The global-threshold planner (`prune_channels_by_scores`) is shared with `snip_channel`: it
decides how many channels each group loses from precomputed per-channel scores, caps every group
(at least one channel and 5% kept, so no layer vanishes) and hands per-group fractions to
`structure.remove_planned` (through `prunekit.planner`). Torch-Pruning's own global mode skips a group entirely when its
threshold would empty it, which breaks both the target and the threshold; planning here avoids that.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from prunekit import planner, structure
from prunekit.errors import UserError
from prunekit.methods.base import Batches, Method, register
from prunekit.targets import Target

#: the most of one group a plan removes (the planner's one cap: no layer loses all its channels)
MAX_RATIO = planner.MAX_REMOVED


# ----------------------------------------------------------------------------------------------
# scoring


class BNScaleImportance:
    """Per channel of a group: |gamma| summed over the group's BatchNorms (un-normalised).

    Returns None for a group without an affine BatchNorm (slimming has nothing to rank there).
    """

    def __call__(self, group: Any) -> torch.Tensor | None:
        n = len(group[0].idxs)
        imp = torch.zeros(n, dtype=torch.float64)
        found = False
        for i, (dep, idxs) in enumerate(group):
            layer = dep.target.module
            if not (isinstance(layer, nn.modules.batchnorm._BatchNorm) and layer.affine):
                continue
            root_idxs = group[i].root_idxs
            if any(r is None for r in root_idxs):
                continue
            gamma = layer.weight.detach().abs().double().cpu()[torch.as_tensor([int(j) for j in idxs])]
            imp.scatter_add_(0, torch.as_tensor([int(r) for r in root_idxs]), gamma)
            found = True
        return imp if found else None


def group_scores(model: nn.Module, example_inputs: Any, *, importance: Any, ignore: Sequence[str | nn.Module] = (),
                 protected: structure.Protected = None) -> dict[str, torch.Tensor]:
    """Return {root layer name: one score per channel} for every prunable group `importance` scores.

    Groups for which `importance` returns None are left out (they will not be pruned).
    """
    scores = {}
    for g in structure.channel_groups(model, example_inputs, ignore=ignore, protected=protected):
        s = importance(g.group)
        if s is not None:
            scores[g.root_name] = s.detach().double().cpu().flatten()
    return scores


# ----------------------------------------------------------------------------------------------
# planning: how many channels each group loses (prunekit.planner, slimming's rule)


def plan_removal(scores: dict[str, torch.Tensor], *, count: int, allocation: str = "global", max_ratio: float = MAX_RATIO,
                 round_to: int | None = None) -> dict[str, int]:
    """Return {root name: channels removed} for `count` channels removed in all.

    "global": the `count` lowest scores over all groups (one threshold), each group capped so it
    keeps at least one channel and (1 - max_ratio) of its channels; "uniform": the same fraction
    count / total from every group. With `round_to`, a pruned group keeps a multiple of it (at
    least `round_to`; rounded down, as Torch-Pruning). The result may differ from `count` where
    caps and rounding bind.
    """
    names = list(scores)
    sizes = [len(scores[n]) for n in names]
    caps = [planner.max_removed(n, max_ratio) for n in sizes]
    total = sum(sizes)
    if allocation == "uniform":
        frac = count / total if total else 0.0
        per_group = [min(c, int(round(frac * n))) for n, c in zip(sizes, caps)]
    elif allocation == "global":
        per_group = planner.global_counts([scores[n] for n in names], count, caps)
    else:
        raise UserError(f"allocation {allocation!r} is not one of uniform, global")
    return {name: planner.round_removed(n, k, round_to, direction="down", min_kept=round_to or 0)
            for name, n, k in zip(names, sizes, per_group)}


def prune_channels_by_scores(
    model: nn.Module,
    example_inputs: torch.Tensor,
    *,
    scores: dict[str, torch.Tensor],
    target: Target | str,
    ignore: Sequence[str | nn.Module] = (),
    round_to: int | None = None,
    allocation: str = "global",
    tolerance: float = 0.02,
    protected: structure.Protected = None,
) -> dict[str, int]:
    """Remove channels of `model` in place, lowest `scores` first, to reach `target`; return the plan.

    `scores` maps each group's root layer name (as `group_scores` returns) to one score per channel.
    `target` is channels (fraction of all scored channels removed), params or macs (fraction of
    the model's count removed, counted on the plan by `prunekit.planner`, within `tolerance`).
    The plan is {root name: channels removed}; with `round_to` kept counts are rounded down to
    multiples of it (never below it), so a few more may go.
    """
    target = Target.parse(target)
    if not scores:
        raise UserError("no prunable channel group could be scored (nothing to prune)")
    plans = planner.ChannelPlanner(model, example_inputs, ignore=ignore, protected=protected)
    per_group: list[torch.Tensor | None] = []
    for g in plans.groups:
        s = scores.get(g.root_name)
        per_group.append(s.detach().double().cpu().flatten() if s is not None and len(s) == g.size else None)
    if target.unit not in ("channels", "params", "macs"):
        raise UserError(f"structured pruning takes a target in channels, params or macs, not {target.unit!r}")
    plan = plans.plan(per_group, unit=target.unit, value=target.value, allocation=allocation, round_to=round_to,
                      direction="down", min_kept=round_to or 0, max_ratio=MAX_RATIO)
    if target.unit != "channels":
        got = plans.removed_fraction(plan, target.unit)
        if abs(got - target.value) > tolerance:
            warnings.warn(f"target {target} reached only within {abs(got - target.value) * 100:.1f} points (channel granularity and caps)", stacklevel=2)
    structure.remove_planned(model, example_inputs, planner=plans, plan=plan, scores=per_group)
    by_name = {g.root_name: n for g, n in zip(plans.groups, plan)}
    return {name: by_name.get(name, 0) for name in scores}


# ----------------------------------------------------------------------------------------------
# the method


def prunable_batchnorms(model: nn.Module, example_inputs: Any, *, ignore: Sequence[str | nn.Module] = (),
                        protected: structure.Protected = None) -> list[str]:
    """Return the names of the affine BatchNorms whose channels belong to a prunable group."""
    names = structure.module_names(model)
    found: list[str] = []
    for g in structure.channel_groups(model, example_inputs, ignore=ignore, protected=protected):
        for dep, _ in g.group:
            layer = dep.target.module
            if isinstance(layer, nn.modules.batchnorm._BatchNorm) and layer.affine and names.get(layer) not in found:
                found.append(names[layer])
    return found


@register
class Slimming(Method):
    """Network slimming (Liu et al. 2017). Options: `sparsity_lambda` (default 1e-4)."""

    name = "slimming"
    kind = "structured"
    units = ("channels", "params", "macs")
    description = "L1 on BatchNorm scales while training, one global |gamma| threshold, channels removed (Liu et al. 2017)"

    def configure(self, *, sparsity_lambda: float = 1e-4, **options: Any) -> dict[str, Any]:
        try:
            lam = float(sparsity_lambda)
        except (TypeError, ValueError):
            lam = -1.0
        if not 0 <= lam < float("inf"):
            raise UserError(f"method 'slimming': sparsity_lambda={sparsity_lambda!r} must be a finite number >= 0 (paper: 1e-4 VGG, 1e-5 ResNet)")
        self._bn_names: list[str] | None = None
        return {"sparsity_lambda": lam, **super().configure(**options)}

    def at_init(self, model: nn.Module, *, example_inputs: torch.Tensor, data: Batches | None = None) -> nn.Module:
        self._bn_names = prunable_batchnorms(model, example_inputs, ignore=self.ignore,
                                             protected=self.protected(model, example_inputs))
        if not self._bn_names:
            raise UserError("method 'slimming' needs BatchNorm layers in prunable channel groups; this model has none")
        self.info["batchnorms"] = len(self._bn_names)
        return model

    def _batchnorms(self, model: nn.Module) -> list[nn.BatchNorm2d]:
        modules = dict(model.named_modules())
        if self._bn_names is None:  # hooks used without at_init: every affine BatchNorm
            return [m for m in modules.values() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine]
        return [modules[n] for n in self._bn_names if n in modules]

    @torch.no_grad()
    def after_backward(self, model: nn.Module) -> None:
        lam = self.options["sparsity_lambda"]
        if lam == 0:
            return
        for bn in self._batchnorms(model):
            if bn.weight.grad is not None:
                bn.weight.grad.add_(torch.sign(bn.weight.detach()), alpha=lam)

    def finalize(self, model: nn.Module, *, example_inputs: torch.Tensor, data: Batches | None = None) -> nn.Module:
        if self.target is None:
            raise UserError("method 'slimming' needs a target, e.g. channels=0.5")
        protected = self.protected(model, example_inputs)
        scores = group_scores(model, example_inputs, importance=BNScaleImportance(), ignore=self.ignore, protected=protected)
        if not scores:
            raise UserError("method 'slimming' needs BatchNorm layers in prunable channel groups; this model has none")
        round_to = self.resolve_round_to(model, example_inputs)  # default: no rounding
        plan = prune_channels_by_scores(model, example_inputs, scores=scores, target=self.target, ignore=self.ignore,
                                        round_to=round_to, allocation="global", protected=protected)
        removed = {n: k for n, k in plan.items() if k}
        removed_scores = [torch.sort(scores[n]).values[: plan[n]] for n in removed]
        self.info.update({
            "channels_scored": int(sum(len(s) for s in scores.values())),
            "channels_removed": int(sum(plan.values())),
            # the global threshold: the largest (summed) |gamma| that was removed
            "threshold_gamma": float(torch.cat(removed_scores).max()) if removed_scores else None,
            "removed_per_group": removed,
        })
        return model

    def state_dict(self) -> dict[str, Any]:
        return {"batchnorms": list(self._bn_names or [])}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._bn_names = list(state.get("batchnorms", [])) or None
