"""Coupled channel groups and physical channel removal, over Torch-Pruning's DependencyGraph.

Every structural change in prunekit goes through this module, so that it is (1) real removal,
(2) correct across residual adds, concatenation, depthwise/grouped convs and norms (Torch-Pruning's
DependencyGraph couples them; we do not write another), and (3) recorded on the model as a
replayable op (`model.prunekit_ops`) for `prunekit.save` / `prunekit.load`.

Scoring lives apart from removal, as in Torch-Pruning: an importance is any callable
`importance(group) -> Tensor` with one score per channel of the group's root layer.
"""

from __future__ import annotations

import copy
import fnmatch
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from prunekit import inputs
from prunekit.errors import UserError
from prunekit.protection import (  # noqa: F401  (part of structure's API)
    Protected, check_outputs, classifier_layers, out_sizes, output_shapes, protected_layers, protected_names,
)
from prunekit.replays import register_replay
from prunekit.targets import Target

#: module type -> Torch-Pruning pruning function, for prunekit's own layers (e.g. option-A shortcuts).
CUSTOM_PRUNERS: dict[type[nn.Module], "tp.pruner.function.BasePruningFunc"] = {}

#: layer types that root a channel group (their output channels are what we remove)
ROOT_TYPES = (nn.modules.conv._ConvNd, nn.Linear)

Importance = Callable[[Any], torch.Tensor]


def register_custom_pruner(module_type: type[nn.Module], pruner: "tp.pruner.function.BasePruningFunc") -> None:
    """Teach every dependency graph prunekit builds how to prune `module_type` (duplicates raise)."""
    if module_type in CUSTOM_PRUNERS:
        raise KeyError(f"a pruner for {module_type.__name__} is already registered")
    CUSTOM_PRUNERS[module_type] = pruner


# --------------------------------------------------------------------------------------------
# graph and groups


def build_graph(model: nn.Module, example_inputs: Any) -> tp.DependencyGraph:
    """Return Torch-Pruning's DependencyGraph of `model`, traced with `example_inputs` (a tensor or a
    tuple of the model's positional inputs)."""
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return tp.DependencyGraph().build_dependency(
                model, example_inputs=example_inputs, forward_fn=inputs.call, customized_pruners=dict(CUSTOM_PRUNERS),
                verbose=False,
            )
    finally:
        model.train(was_training)


def fixed_layers(model: nn.Module) -> list[nn.Module]:
    """Return layers whose output channels a model builder marked as fixed (`prunekit_fixed_out`).

    Builders mark layers whose outputs meet an op the dependency graph cannot follow (e.g. the
    even split of ShuffleNetV2's channel shuffle), so their channel count must not change.
    """
    return [m for m in model.modules() if getattr(m, "prunekit_fixed_out", False)]


def resolve_ignore(model: nn.Module, ignore: Sequence[str | nn.Module]) -> list[nn.Module]:
    """Return the modules named by `ignore` (module-name globs or modules).

    Raises `UserError` for a glob that matches no module name, listing a few names.
    """
    names = {module: name for name, module in model.named_modules()}
    found: list[nn.Module] = []
    for item in ignore:
        if isinstance(item, nn.Module):
            found.append(item)
            continue
        matched = [m for m, name in names.items() if name and fnmatch.fnmatchcase(name, item)]
        if not matched:
            sample = ", ".join(list(n for n in names.values() if n)[:8])
            raise UserError(f"ignore pattern {item!r} matches no module name (names look like: {sample}, ...)")
        found.extend(matched)
    return found


def module_names(model: nn.Module) -> dict[nn.Module, str]:
    """Return a module -> qualified name map for `model`."""
    return {m: n for n, m in model.named_modules()}


@dataclass
class ChannelGroup:
    """One set of coupled channels that must be removed together.

    `root` is the layer whose output channels index the group; `layers` names every layer whose
    output dimension is cut with it (e.g. the convs and BNs joined by a residual add).
    """

    root: nn.Module
    root_name: str
    size: int
    layers: list[str]
    group: Any  # torch_pruning Group with full indices

    def __len__(self) -> int:
        return self.size


def channel_groups(
    model: nn.Module, example_inputs: Any, *, ignore: Sequence[str | nn.Module] = (), graph: tp.DependencyGraph | None = None,
    protected: Protected = None,
) -> list[ChannelGroup]:
    """Return the prunable channel groups of `model`; `protected` layers (default: every output
    layer, see `protected_layers`) and `ignore`d layers are left out."""
    graph = graph or build_graph(model, example_inputs)
    ignored = resolve_ignore(model, ignore) + protected_layers(model, example_inputs, protected) + fixed_layers(model)
    names = module_names(model)
    groups = []
    for group in graph.get_all_groups(ignored_layers=ignored, root_module_types=ROOT_TYPES):
        root = group[0].dep.target.module
        out_layers = [
            names.get(dep.target.module, "?")
            for dep, _ in group
            if graph.is_out_channel_pruning_fn(dep.handler) and isinstance(dep.target.module, nn.Module)
        ]
        size = graph.get_out_channels(root)
        if size is None or size < 2:
            continue
        groups.append(ChannelGroup(root=root, root_name=names.get(root, "?"), size=size, layers=out_layers, group=group))
    return groups


# --------------------------------------------------------------------------------------------
# importance (one score per channel; higher = more important)


class MagnitudeImportance:
    """Norm of each channel's weights summed over the coupled group (Li et al. 2017 for p=1).

    Wraps Torch-Pruning's `GroupMagnitudeImportance`; `normalizer` ("mean" or None) makes scores
    comparable across groups for global ranking.
    """

    def __init__(self, *, p: int = 1, normalizer: str | None = "mean") -> None:
        self._imp = tp.importance.GroupMagnitudeImportance(p=p, group_reduction="mean", normalizer=normalizer)

    def __call__(self, group: Any) -> torch.Tensor:
        return self._imp(group)


class RandomImportance:
    """Uniform random scores from a seeded generator (the structured random baseline)."""

    def __init__(self, *, seed: int = 0) -> None:
        self._gen = torch.Generator().manual_seed(seed)

    def __call__(self, group: Any) -> torch.Tensor:
        n = len(group[0].idxs)
        return torch.rand(n, generator=self._gen)


# --------------------------------------------------------------------------------------------
# removal


def _plain_idxs(idxs: Sequence[Any]) -> list[int]:
    return [int(getattr(i, "idx", i)) for i in idxs]


def _record(model: nn.Module, graph: tp.DependencyGraph, example_inputs: Any) -> None:
    history = [[name, bool(is_out), _plain_idxs(idxs)] for name, is_out, idxs in graph.pruning_history()]
    if not history:
        return
    ops = list(getattr(model, "prunekit_ops", []))
    ops.append({"op": "prune", **inputs.record_shapes(example_inputs), "history": history})
    model.prunekit_ops = ops


def remove_channels(
    model: nn.Module,
    example_inputs: Any,
    *,
    importance: Importance,
    ratio: float = 0.0,
    ratios: dict[str, float] | None = None,
    ignore: Sequence[str | nn.Module] = (),
    round_to: int | None = None,
    allocation: str = "uniform",
    max_ratio: float = 0.95,
    protected: Protected = None,
) -> nn.Module:
    """Physically remove channels from `model` in place and return it.

    `ratio` is the fraction of channels removed per group (uniform allocation) or overall (global
    allocation: one ranking of normalised scores across groups); `ratios` maps root-layer names
    to per-layer fractions (automatic rates). Kept channel counts are multiples of `round_to`.
    No layer loses all its channels (at most `max_ratio` of a group goes); `protected` layers
    (default: every layer feeding a model output) keep their output size, and if the model's
    output shapes changed anyway a `UserError` names the module. The change is appended to
    `model.prunekit_ops` for save/load.
    """
    if allocation not in ("uniform", "global"):
        raise UserError(f"allocation {allocation!r} is not one of uniform, global")
    if round_to is not None and (not isinstance(round_to, int) or round_to < 1):
        raise UserError(f"round_to={round_to!r} must be a positive integer")
    guarded = protected_layers(model, example_inputs, protected)
    ignored = resolve_ignore(model, ignore) + guarded + fixed_layers(model)
    names = module_names(model)
    sizes = out_sizes(model, [names[m] for m in guarded if m in names])
    before = output_shapes(model, example_inputs)
    by_name = dict(model.named_modules())
    ratio_dict = {}
    for name, r in (ratios or {}).items():
        if name not in by_name:
            raise UserError(f"per-layer rate names unknown layer {name!r}")
        if r > 0:
            ratio_dict[by_name[name]] = float(min(r, max_ratio))
    was_training = model.training
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner = tp.pruner.MetaPruner(
            model,
            example_inputs,
            importance=importance,
            global_pruning=allocation == "global",
            pruning_ratio=float(ratio) if not ratios else 0.0,
            pruning_ratio_dict=ratio_dict or None,
            max_pruning_ratio=max_ratio,
            ignored_layers=ignored,
            round_to=round_to,
            customized_pruners=dict(CUSTOM_PRUNERS),
            forward_fn=inputs.call,
        )
        with torch.no_grad():
            pruner.step()
    model.train(was_training)
    check_outputs(model, example_inputs, before=before, sizes=sizes, what="removing channels")
    _record(model, pruner.DG, example_inputs)
    return model


def zero_channels(
    model: nn.Module, example_inputs: Any, *, history: Sequence[Sequence[Any]], filters_only: bool = False
) -> nn.Module:
    """Zero, instead of removing, the channels a pruning `history` names; return `model`.

    For each history entry the whole coupled group is looked up and every layer whose output
    channels it cuts gets those weight rows (and bias, BN/LN affine entries) set to zero. On
    architectures where a zero channel stays zero downstream (ReLU-style activations), the
    result computes the same function as the physically pruned model: tests use this, and
    soft filter pruning zeroes coupled channels this way. `filters_only` zeroes the conv/linear
    layers' rows and biases alone (norm layers and channel maps untouched), as the SFP paper does.
    """
    graph = build_graph(model, example_inputs)
    by_name = dict(model.named_modules())
    with torch.no_grad():
        for name, is_out, idxs in history:
            if not is_out:
                continue
            module = by_name[name]
            pruner = graph.get_pruner_of_module(module)
            group = graph.get_pruning_group(module, pruner.prune_out_channels, list(idxs))
            for dep, dep_idxs in group:
                target = dep.target.module
                if not graph.is_out_channel_pruning_fn(dep.handler) or not isinstance(target, nn.Module):
                    continue
                if filters_only and not isinstance(target, ROOT_TYPES):
                    continue
                rows = torch.tensor(_plain_idxs(dep_idxs), dtype=torch.long)
                if hasattr(target, "zero_out_channels"):  # prunekit's parameter-free channel maps
                    target.zero_out_channels(rows)
                    continue
                for pname in ("weight", "bias"):
                    param = getattr(target, pname, None)
                    if not isinstance(param, torch.Tensor) or param.dim() == 0:
                        continue
                    if isinstance(target, nn.modules.conv._ConvTransposeNd) and pname == "weight":
                        param[:, rows] = 0
                    else:
                        param[rows] = 0
    return model


def replay_prune(model: nn.Module, op: dict[str, Any]) -> nn.Module:
    """Re-apply a recorded "prune" op on a freshly built model (used by `prunekit.load`)."""
    example = inputs.from_shapes(op)
    graph = build_graph(model, example)
    history = [(name, bool(is_out), list(idxs)) for name, is_out, idxs in op["history"]]
    with torch.no_grad():
        graph.load_pruning_history(history)
    ops = list(getattr(model, "prunekit_ops", []))
    ops.append(op)
    model.prunekit_ops = ops
    return model


# --------------------------------------------------------------------------------------------
# targets in explicit units


def prune_to_target(
    model: nn.Module,
    example_inputs: Any,
    *,
    importance: Importance,
    target: Target | str,
    ignore: Sequence[str | nn.Module] = (),
    round_to: int | None = None,
    allocation: str = "uniform",
    tolerance: float = 0.02,
    max_iter: int = 14,
    protected: Protected = None,
) -> nn.Module:
    """Remove channels until `target` (channels, params or macs, fraction removed) is met; return the model.

    For params and macs the per-group channel ratio is found by bisection on the real count of
    a pruned copy (stopping within `tolerance`, absolute).
    """
    from prunekit.metrics import measure

    target = Target.parse(target)
    protected = protected_names(model, example_inputs, protected)  # names: the trials are copies
    kwargs = dict(ignore=ignore, round_to=round_to, allocation=allocation, protected=protected)
    if target.unit == "channels":
        return remove_channels(model, example_inputs, importance=importance, ratio=target.value, **kwargs)
    if target.unit not in ("params", "macs"):
        raise UserError(f"structured pruning takes a target in channels, params or macs, not {target.unit!r}")

    base = getattr(measure(model, example_inputs), target.unit)

    def removed_at(r: float, ratios: dict[str, float] | None) -> tuple[float, nn.Module]:
        trial = copy.deepcopy(model)
        remove_channels(trial, example_inputs, importance=importance, ratio=r, ratios=ratios, **kwargs)
        return 1.0 - getattr(measure(trial, example_inputs), target.unit) / base, trial

    lo, hi = 0.0, 0.95
    best: tuple[float, nn.Module] | None = None  # (error, pruned copy)
    for _ in range(max_iter):
        mid = (lo + hi) / 2
        got, trial = removed_at(mid, None)
        err = abs(got - target.value)
        if best is None or err < best[0]:
            best = (err, trial)
        if err <= tolerance / 4:
            break
        if got < target.value:
            lo = mid
        else:
            hi = mid
        if hi - lo < 0.004:  # finer ratios no longer change whole channels
            break
    assert best is not None
    if best[0] > tolerance and allocation == "uniform":
        # Channel granularity (round_to, small layers) makes every group jump at once. Between
        # the uniform ratios just under (lo) and over (hi) the target, move groups one at a time
        # from lo to hi: k groups at hi is monotone in k, so bisect on k.
        roots = [g.root_name for g in channel_groups(model, example_inputs, ignore=ignore, protected=protected)]
        k_lo, k_hi = 0, len(roots)
        while k_hi - k_lo > 1:
            k = (k_lo + k_hi) // 2
            got, trial = removed_at(lo, {root: (hi if i < k else lo) for i, root in enumerate(roots)})
            err = abs(got - target.value)
            if err < best[0]:
                best = (err, trial)
            if err <= tolerance / 4:
                break
            if got < target.value:
                k_lo = k
            else:
                k_hi = k
    if best[0] > tolerance:
        warnings.warn(
            f"target {target} reached only within {best[0] * 100:.1f} points (channel granularity"
            f"{', round_to=' + str(round_to) if round_to else ''}); see the achieved figures",
            stacklevel=2,
        )
    pruned = best[1]
    _adopt(model, pruned)
    return model


def _adopt(model: nn.Module, pruned: nn.Module) -> None:
    """Make `model` (the caller's object) become `pruned`, so pruning stays in place."""
    model.__dict__.update(pruned.__dict__)


def kept_channels(model: nn.Module) -> dict[str, int]:
    """Return each conv/linear layer's output channel count, by qualified name."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            out[name] = m.out_channels
        elif isinstance(m, nn.Linear):
            out[name] = m.out_features
    return out



register_replay("prune", replay_prune)  # `prunekit.io.load` replays the recorded ops
