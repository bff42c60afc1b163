"""Soft filter pruning (He et al., IJCAI 2018): zero the weakest filters, keep training them, remove at the end.

After every `every`-th epoch (`after_epoch`; with `zero_at_init=True` also before training),
each prunable channel group loses its `rate` fraction of lowest-L2-norm channels: their weights
are set to zero in place, not masked, so the optimizer keeps updating them and a zeroed filter can
grow back if training favours it. `finalize` zeroes once more and removes exactly the zero
channels through Torch-Pruning's dependency graph.

`rate` is the fraction PRUNED (the original code's `--rate` was the fraction kept).

Channels are decided per dependency group (`structure.channel_groups`): the channels joined by a
residual add are one group, scored by the L2 norm of all their coupled filters, so every layer of
the group keeps the same set. Zeroing goes through `structure.zero_channels`, which clears the
coupled filters, biases and norm-layer affine entries: the soft-pruned network then computes
exactly what the network after removal computes, and regrowth comes from the optimizer's
momentum (a zero filter behind a zero BN scale has no gradient of its own for one step).

Momentum is also why zeroing before training is off by default (the paper's Algorithm 1 zeroes after
each epoch's update): the trainer builds a fresh optimizer after `at_init`, and in a ReLU network
a channel zeroed then has neither a gradient nor momentum, stays exactly zero, and is selected
again at every epoch (the lowest norm), so SFP would degenerate into pruning at initialisation.

The paper zeroes only the conv filters (`zero_norm=False` here): BatchNorm then renormalises a
regrowing filter at once (its gradient is scaled by 1/sqrt(eps) while its output is zero), so
filters come back faster, but the soft network differs from the removed one by the BN shifts of
the zeroed channels; `finalize` always zeroes whole groups before removing them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from prunekit import inputs, planner, structure
from prunekit.errors import UserError
from prunekit.methods.base import Batches, Method, register
from prunekit.metrics import measure

SCOPES = ("layer", "global")
#: no group loses more than this fraction (the planner's one cap)
MAX_RATIO = planner.MAX_REMOVED


def filter_norms(group: structure.ChannelGroup) -> torch.Tensor:
    """Return the L2 norm of each channel of `group` over all its coupled conv/linear filters (one value per root channel)."""
    sq = torch.zeros(group.size, dtype=torch.float64)
    graph = group.group._DG
    for dep, idxs in group.group:
        module = dep.target.module
        if not isinstance(module, structure.ROOT_TYPES) or not graph.is_out_channel_pruning_fn(dep.handler):
            continue
        w = module.weight.detach()
        if isinstance(module, nn.modules.conv._ConvTransposeNd):
            w = w.transpose(0, 1)
        rows = torch.tensor([int(getattr(i, "idx", i)) for i in idxs], dtype=torch.long, device=w.device)
        roots = torch.tensor([int(getattr(i, "root_idx", k)) for k, i in enumerate(idxs)], dtype=torch.long)
        per_row = w.index_select(0, rows).flatten(1).double().pow(2).sum(1).cpu()
        sq.index_add_(0, roots, per_row)
    return sq.sqrt()


def n_pruned(size: int, rate: float, *, round_to: int | None = None) -> int:
    """Return how many of `size` channels a layer loses at `rate`: round(rate * size), capped at 95%,
    with the kept count rounded UP to a multiple of `round_to` (the planner's "up" direction)."""
    n = min(planner.rate_count(size, rate), planner.max_removed(size, MAX_RATIO))
    return planner.round_removed(size, n, round_to, direction="up")


@register
class SoftFilterPruning(Method):
    """Soft filter pruning; options `rate` (fraction pruned, default 0.3, or a channels target),
    `every` (zero every k epochs, default 1), `scope` ("layer" default, or "global") and
    `zero_at_init` (also zero in `at_init`, before training; default False) and `zero_norm` (zero the
    coupled norm layers' scale and shift too; default True; False = the paper: filters only); see
    the module docstring."""

    name = "sfp"
    kind = "structured"
    units = ("channels",)
    description = "soft filter pruning: zero the lowest-L2 filters every epoch, keep training them (they may regrow), remove at the end (He et al. 2018)"

    def configure(self, *, rate: float | None = None, every: int = 1, scope: str = "layer", zero_at_init: bool = False,
                  zero_norm: bool = True, **options: Any) -> dict[str, Any]:
        given = rate
        if rate is None:
            rate = self.target.value if self.target is not None else 0.3
        if isinstance(rate, bool):
            rate = "a boolean"
        try:
            rate = float(rate)
        except (TypeError, ValueError):
            raise UserError(f"method 'sfp': rate={given!r} must be a number in (0, {MAX_RATIO}] (the fraction of filters pruned)") from None
        if given is not None and self.target is not None and abs(rate - self.target.value) > 1e-12:
            raise UserError(f"method 'sfp': option rate={given} contradicts target {self.target}; give one of them")
        if not 0.0 < rate <= MAX_RATIO:
            raise UserError(f"method 'sfp': rate={rate} must be in (0, {MAX_RATIO}] (the fraction of filters pruned)")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise UserError(f"method 'sfp': every={every!r} must be a positive integer (zero every k epochs)")
        if scope not in SCOPES:
            raise UserError(f"method 'sfp': scope {scope!r} is not one of {', '.join(SCOPES)}")
        if self.round_to == "auto":
            # as prunekit.allocation does for channels targets: a per-group fraction stays exact
            self.round_to = None
        if self.round_to is not None and (isinstance(self.round_to, bool) or not isinstance(self.round_to, int) or self.round_to < 1):
            raise UserError(f"method 'sfp': round_to={self.round_to!r} must be a positive integer or auto")
        for key, value in (("zero_at_init", zero_at_init), ("zero_norm", zero_norm)):
            if not isinstance(value, bool):
                raise UserError(f"method 'sfp': {key}={value!r} must be true or false")
        super().configure(**options)
        return {"rate": rate, "every": every, "scope": scope, "zero_at_init": zero_at_init, "zero_norm": zero_norm}

    def __init__(self, **kwargs: Any) -> None:
        self._example: Any = None
        self._groups: list[structure.ChannelGroup] | None = None
        self._groups_model: int | None = None
        self.zeroings = 0
        self._last_chosen: dict[str, list[int]] = {}
        super().__init__(**kwargs)

    # selection ---------------------------------------------------------------------------------
    def _groups_of(self, model: nn.Module) -> list[structure.ChannelGroup]:
        if self._example is None:
            raise RuntimeError("sfp: call at_init(model, example_inputs=...) before the training hooks")
        cached = self._groups is not None and self._groups_model == id(model)
        if cached:
            modules = dict(model.named_modules())
            cached = all(modules.get(g.root_name) is g.root for g in self._groups)
        if not cached:
            x = inputs.to(self._example, next(model.parameters()).device)
            with torch.enable_grad():  # Torch-Pruning traces with autograd; a hook may run under no_grad
                self._groups = structure.channel_groups(model, x, ignore=self.ignore, protected=self.protected(model, x))
            self._groups_model = id(model)
        return self._groups

    def select(self, model: nn.Module) -> dict[str, list[int]]:
        """Return {root layer name: channel indices to zero}, the lowest-L2 channels of each group at `rate`."""
        groups = self._groups_of(model)
        norms = [filter_norms(g) for g in groups]
        rate = self.options["rate"]
        if self.options["scope"] == "layer":
            counts = [n_pruned(g.size, rate, round_to=self.round_to) for g in groups]
        else:
            counts = self._global_counts(groups, norms, rate)
        chosen = {}
        for g, norm, n in zip(groups, norms, counts):
            if n > 0:
                chosen[g.root_name] = sorted(torch.argsort(norm, stable=True)[:n].tolist())
        return chosen

    def _global_counts(self, groups: list[structure.ChannelGroup], norms: list[torch.Tensor], rate: float) -> list[int]:
        # One ranking of norms divided by their group's mean (layers differ in scale), at most
        # MAX_RATIO of any group.
        scaled = [n / n.mean().clamp_min(1e-12) for n in norms]
        caps = [n_pruned(g.size, MAX_RATIO) for g in groups]
        total = int(round(rate * sum(g.size for g in groups)))
        counts = planner.global_counts(scaled, total, caps)
        if self.round_to:
            counts = [n_pruned(g.size, c / g.size, round_to=self.round_to) for g, c in zip(groups, counts)]
        return counts

    def soft_prune(self, model: nn.Module, *, whole_group: bool | None = None) -> dict[str, list[int]]:
        """Zero the selected channels of `model` in place and return them.

        `whole_group` (default: option `zero_norm`) zeroes the coupled filters, biases and norm
        affines (`structure.zero_channels`); otherwise only the coupled conv/linear filters and biases.
        """
        chosen = self.select(model)
        whole_group = self.options["zero_norm"] if whole_group is None else whole_group
        if chosen:
            x = inputs.to(self._example, next(model.parameters()).device)
            with torch.enable_grad():
                structure.zero_channels(model, x, history=[[name, True, idxs] for name, idxs in chosen.items()],
                                        filters_only=not whole_group)
        self.zeroings += 1
        self.info["zeroed_channels"] = {name: len(idxs) for name, idxs in chosen.items()}
        if self._last_chosen:
            # how soft it was: the share of the previous zeroing's channels chosen again (1.0: none won back)
            again = sum(len(set(self._last_chosen.get(name, ())) & set(idxs)) for name, idxs in chosen.items())
            total = sum(len(idxs) for idxs in self._last_chosen.values())
            self.info.setdefault("rezeroed_fraction", []).append(round(again / total, 4) if total else 1.0)
        self._last_chosen = chosen
        return chosen

    # hooks ---------------------------------------------------------------------------------------
    def at_init(self, model: nn.Module, *, example_inputs: torch.Tensor, data: Batches | None = None) -> nn.Module:
        self._example = _first(example_inputs)
        if self.options["zero_at_init"]:
            self.soft_prune(model)
        return model

    def after_epoch(self, model: nn.Module, *, epoch: int) -> None:
        if (epoch + 1) % self.options["every"] == 0:
            self.soft_prune(model)

    def finalize(self, model: nn.Module, *, example_inputs: torch.Tensor, data: Batches | None = None) -> nn.Module:
        """Zero once more, then remove exactly the zero channels through the dependency graph; return the model."""
        self._example = _first(example_inputs)
        x = inputs.to(self._example, next(model.parameters()).device)
        before = measure(model, x)
        chosen = self.soft_prune(model, whole_group=True)  # the exact network that removal keeps
        if chosen:
            structure.remove_counts(
                model, x, counts={name: len(idxs) for name, idxs in chosen.items()},
                importance=_ChosenFirst(model, chosen), ignore=self.ignore,
                protected=self.protected(model, x),
            )
        self._groups = None
        after = measure(model, x)
        self.info.update({
            "rate": self.options["rate"],
            "scope": self.options["scope"],
            "every": self.options["every"],
            "zeroings": self.zeroings,
            "removed_channels": {name: len(idxs) for name, idxs in chosen.items()},
            "params_before": before.params, "params_after": after.params,
            "macs_before": before.macs, "macs_after": after.macs,
            "achieved": {"params": 1 - after.params / before.params, "macs": 1 - after.macs / before.macs if before.macs else 0.0},
        })
        return model

    # resume --------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"zeroings": self.zeroings}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.zeroings = int(state.get("zeroings", 0))


def _first(example_inputs: Any) -> Any:
    """One example (batch 1) of the inputs, detached and copied: a tensor or a tuple of tensors."""
    return _clone(inputs.take(example_inputs, 1))


def _clone(x: Any) -> Any:
    return x.clone() if isinstance(x, torch.Tensor) else type(x)(_clone(v) for v in x)


class _ChosenFirst:
    """Importance that scores the chosen channels of each group 0 and the others 1 (lowest are removed)."""

    def __init__(self, model: nn.Module, chosen: dict[str, list[int]]) -> None:
        self._chosen = {model.get_submodule(name): idxs for name, idxs in chosen.items()}

    def __call__(self, group: Any) -> torch.Tensor:
        root = group[0].dep.target.module
        scores = torch.ones(len(group[0].idxs))
        idxs = self._chosen.get(root)
        if idxs:
            scores[torch.tensor(idxs, dtype=torch.long)] = 0.0
        return scores
