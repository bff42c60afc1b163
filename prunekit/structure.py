"""Coupled channel groups and physical channel removal, over Torch-Pruning's DependencyGraph.

Every structural change goes through this module: (1) real removal, (2) correct across residual
adds, concatenation, depthwise/grouped convs and norms (Torch-Pruning's DependencyGraph couples
them), (3) recorded as a replayable op (`model.prunekit_ops`) for `prunekit.save` / `prunekit.load`.

Scoring lives apart from removal, as in Torch-Pruning: an importance is any callable
`importance(group) -> Tensor` with one score per channel of the group's root layer.
"""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch_pruning as tp
from torch import nn

from prunekit import inputs
from prunekit.errors import UserError
from prunekit.gcpause import paused_gc
from prunekit.importance import MagnitudeImportance, RandomImportance  # noqa: F401  (scorers, re-exported)
from prunekit.protection import (  # noqa: F401  (part of structure's API)
    Protected, check_outputs, classifier_layers, out_sizes, output_shapes, outputs_follow_sizes, protected_layers,
    protected_names,
)
from prunekit.replays import register_replay
from prunekit.targets import Target

if TYPE_CHECKING:
    from prunekit.planner import ChannelPlanner

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


# graph and groups ---------------------------------------------------------------------------

def _recorder(model: nn.Module) -> tuple[dict[nn.Module, tuple[int, ...]], list[nn.Module], list[Any]]:
    # Hooks recording every conv/linear layer's input shape (the last call wins) and the run order.
    shapes: dict[nn.Module, tuple[int, ...]] = {}
    order: list[nn.Module] = []

    def record(module: nn.Module, args: Any, _output: Any) -> None:
        if args and isinstance(args[0], torch.Tensor):
            shapes[module] = tuple(args[0].shape)
        order.append(module)

    return shapes, order, [m.register_forward_hook(record) for m in model.modules() if isinstance(m, ROOT_TYPES)]


@paused_gc()  # see prunekit.gcpause
def build_graph(model: nn.Module, example_inputs: Any) -> tp.DependencyGraph:
    """Return Torch-Pruning's DependencyGraph of `model`, traced with `example_inputs` (a tensor or a
    tuple of the model's positional inputs).

    The trace (eval mode, autograd on) also records, on the graph, every conv/linear layer's input
    shape and the order in which they ran (`input_shapes`), the output layers (`protected_layers`)
    and the output shapes (`remove_planned`), so none of them runs the model again.
    """
    from prunekit.tasks.base import OutputLayerRecorder

    shapes, order, hooks = _recorder(model)
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings(), OutputLayerRecorder(model) as outputs:
            warnings.simplefilter("ignore")
            # forward_fn: one traced forward, model(x) or model(*x) for a tuple (Torch-Pruning's own
            # fallback would first try model(*x), an unbatched forward for a bare tensor).
            graph = tp.DependencyGraph().build_dependency(
                model, example_inputs=example_inputs, forward_fn=inputs.call, customized_pruners=dict(CUSTOM_PRUNERS),
                verbose=False,
            )
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    graph.prunekit_shapes, graph.prunekit_order = shapes, order
    graph.prunekit_output_layers = outputs.layers()
    graph.prunekit_outputs_walked = outputs.walked
    graph.prunekit_output_shapes = inputs.output_shapes(outputs.outputs)
    return graph


def _forward_record(model: nn.Module, example_inputs: Any) -> tuple[dict[nn.Module, tuple[int, ...]], list[nn.Module]]:
    shapes, order, hooks = _recorder(model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            inputs.call(model, example_inputs)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return shapes, order


def input_shapes(model: nn.Module, example_inputs: Any, *, graph: tp.DependencyGraph | None = None) -> dict[nn.Module, tuple[int, ...]]:
    """Return {conv/linear layer: the shape of its first input} (from `graph`'s trace when given)."""
    if graph is not None and getattr(graph, "prunekit_shapes", None) is not None:
        return graph.prunekit_shapes
    return _forward_record(model, example_inputs)[0]


def ignored_layers(model: nn.Module, example_inputs: Any, *, ignore: Sequence[str | nn.Module] = (),
                   graph: tp.DependencyGraph | None = None, protected: Protected = None) -> list[nn.Module]:
    """Return every layer whose output channels must not change: the user's `ignore`, the `protected`
    layers (default: every output layer, see `protected_layers`) and the builder-fixed layers. The one
    place that decides it (every planner and removal path uses it)."""
    return resolve_ignore(model, ignore) + protected_layers(model, example_inputs, protected, graph=graph) + fixed_layers(model)


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
    ignored = ignored_layers(model, example_inputs, ignore=ignore, graph=graph, protected=protected)
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


@paused_gc()
def group_scores(planner: "ChannelPlanner", importance: Importance) -> list[torch.Tensor | None]:
    """Return one score tensor per group of `planner` (None where `importance` does not score the group)."""
    out: list[torch.Tensor | None] = []
    for g in planner.groups:
        s = importance(g.group)
        if s is None:
            out.append(None)
            continue
        s = torch.as_tensor(s).detach().flatten().double().cpu()
        out.append(s if s.numel() == g.size else None)
    return out


def _lowest(scores: torch.Tensor, n: int, ch_groups: int) -> list[int]:
    # The n lowest-scored channels; with channel grouping (grouped convs, GroupNorm) the same
    # positions in every group, ranked by the mean score over groups (as Torch-Pruning does).
    if ch_groups > 1 and scores.numel() % ch_groups == 0:
        size = scores.numel() // ch_groups
        dim = scores.view(ch_groups, size).mean(0)
        base = torch.argsort(dim, stable=True)[: n // ch_groups]
        return sorted(int(i) + j * size for j in range(ch_groups) for i in base.tolist())
    return sorted(torch.argsort(scores, stable=True)[:n].tolist())


@paused_gc()  # Torch-Pruning's index bookkeeping: see prunekit.gcpause
def remove_planned(
    model: nn.Module,
    example_inputs: Any,
    *,
    planner: "ChannelPlanner",
    plan: Sequence[int],
    scores: Sequence[torch.Tensor | None] | None = None,
    importance: Importance | None = None,
    check: bool = True,
) -> nn.Module:
    """Remove `plan[i]` channels (the lowest `scores[i]`, or `importance`'s) from each group of `planner`, in place.

    The one removal path: every target search, method and the latency search plan first and end
    here, on the planner's dependency graph (no second trace). Groups without scores are left
    whole. The planner's protected layers keep their output size and, with `check`, a change of the
    model's output shapes raises a `UserError` naming the module. The change is appended to
    `model.prunekit_ops` for save/load.
    """
    if planner.model is not model:
        raise ValueError("remove_planned: the planner was built on another model")
    if scores is None:
        if importance is None:
            raise ValueError("remove_planned needs scores or an importance")
        scores = [s if n > 0 else None for s, n in zip(group_scores(planner, importance), plan)]
    graph = planner.graph
    if check and any(n > 0 for n in plan):
        sizes = out_sizes(model, planner.protected)
        before = getattr(graph, "prunekit_output_shapes", None) or output_shapes(model, example_inputs)
        shapes_follow_sizes = outputs_follow_sizes(model, graph, planner.protected)
    else:
        check = False
    was_training = model.training
    model.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        for g, n, s, ch in zip(planner.groups, plan, scores, planner.ch_groups):
            if n <= 0 or s is None:
                continue
            idxs = _lowest(s, int(n), ch)
            if not idxs:
                continue
            group = graph.get_pruning_group(g.root, g.group[0].dep.handler, idxs)
            if graph.check_pruning_group(group):
                group.prune()
    model.train(was_training)
    if check:
        check_outputs(model, example_inputs, before=before, sizes=sizes, what="removing channels",
                      after=before if shapes_follow_sizes else None)
    _record(model, graph, example_inputs)
    return model


def remove_counts(
    model: nn.Module,
    example_inputs: Any,
    *,
    counts: dict[str, int],
    importance: Importance,
    ignore: Sequence[str | nn.Module] = (),
    protected: Protected = None,
) -> nn.Module:
    """Remove exactly `counts[root name]` channels from each named group (lowest `importance` first), in place."""
    from prunekit.planner import ChannelPlanner

    planner = ChannelPlanner(model, example_inputs, ignore=ignore, protected=protected)
    plan = planner.empty()
    for name, n in counts.items():
        if n <= 0:
            continue
        if name not in planner.index:
            raise UserError(f"per-layer count names unknown or unprunable layer {name!r}")
        plan[planner.index[name]] = int(n)
    return remove_planned(model, example_inputs, planner=planner, plan=plan, importance=importance)


def _check_round_to(round_to: Any) -> None:
    if round_to is not None and (isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1):
        raise UserError(f"round_to={round_to!r} must be a positive integer")


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
    max_ratio: float | None = None,
    protected: Protected = None,
) -> nn.Module:
    """Physically remove channels from `model` in place and return it.

    `ratio` is the fraction of channels removed per group (uniform allocation) or overall (global
    allocation: one ranking of normalised scores across groups); `ratios` maps root-layer names
    to per-layer fractions (automatic rates). A ratio keeps floor(size * (1 - ratio)) channels
    (Torch-Pruning's rule); kept counts are rounded down to multiples of `round_to` (never below
    it). No layer loses all its channels (at most `max_ratio`, default `planner.MAX_REMOVED`);
    `protected` layers (default: every layer feeding a model output) keep their output size, and if
    the model's output shapes changed anyway a `UserError` names the module. The change is appended
    to `model.prunekit_ops` for save/load.
    """
    from prunekit.planner import MAX_REMOVED, ChannelPlanner, global_counts, rate_count

    if allocation not in ("uniform", "global"):
        raise UserError(f"allocation {allocation!r} is not one of uniform, global")
    _check_round_to(round_to)
    max_ratio = MAX_REMOVED if max_ratio is None else max_ratio
    planner = ChannelPlanner(model, example_inputs, ignore=ignore, protected=protected)
    scores = group_scores(planner, importance)
    if ratios:
        plan = planner.by_rates({n: r for n, r in ratios.items() if r > 0}, max_ratio=max_ratio)
    elif allocation == "global":
        scored = [i for i, s in enumerate(scores) if s is not None]
        total = sum(planner.sizes[i] for i in scored)
        count = rate_count(total, ratio, rule="keep_floor")
        caps = planner.caps(max_ratio)
        plan = planner.empty()
        for i, n in zip(scored, global_counts([scores[i] for i in scored], count, [caps[i] for i in scored])):
            plan[i] = n
    else:
        plan = planner.uniform(ratio, max_ratio=max_ratio)
    plan = planner.rounded(plan, round_to, direction="down", min_kept=round_to or 0, max_ratio=max_ratio)
    return remove_planned(model, example_inputs, planner=planner, plan=plan, scores=scores)


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
    tolerance: float = 0.01,
    max_ratio: float | None = None,
    info: dict[str, Any] | None = None,
    protected: Protected = None,
    graph: tp.DependencyGraph | None = None,
) -> nn.Module:
    """Remove channels until `target` (channels, params or macs, fraction removed) is met; return the model.

    One plan, then one removal: the planner (`prunekit.planner.ChannelPlanner`) counts params and
    MACs of candidate plans analytically, the per-group ratio (uniform) or the global count
    (global: one ranking of normalised scores) is bisected on that count, and with `round_to`
    every group's kept count is rounded up or down, chosen per group, so the total lands on the
    target (within `tolerance`, absolute, where the channel granularity allows; a warning says
    otherwise). `info`, when given, receives the planned and the counted fraction. `graph`: the
    model's `build_graph` when the caller already traced it.
    """
    from prunekit.planner import MAX_REMOVED, ChannelPlanner

    target = Target.parse(target)
    if allocation not in ("uniform", "global"):
        raise UserError(f"allocation {allocation!r} is not one of uniform, global")
    if target.unit not in ("channels", "params", "macs"):
        raise UserError(f"structured pruning takes a target in channels, params or macs, not {target.unit!r}")
    _check_round_to(round_to)
    max_ratio = MAX_REMOVED if max_ratio is None else max_ratio
    planner = ChannelPlanner(model, example_inputs, ignore=ignore, protected=protected, graph=graph)
    scores = group_scores(planner, importance)
    unit, value = target.unit, target.value
    plan = planner.plan(scores, unit=unit, value=value, allocation=allocation, round_to=round_to, direction="best",
                        max_ratio=max_ratio)
    got = planner.removed_fraction(plan, unit)
    if info is not None:
        info.update({"unit": unit, "asked": value, "planned": got, "groups": len(planner.groups)})
    if abs(got - value) > tolerance and unit != "channels":
        warnings.warn(
            f"target {target} reached only within {abs(got - value) * 100:.1f} points (channel granularity"
            f"{', round_to=' + str(round_to) if round_to else ''}); see the achieved figures",
            stacklevel=2,
        )
    return remove_planned(model, example_inputs, planner=planner, plan=plan, scores=scores)


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
