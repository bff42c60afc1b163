"""One channel planner: how many channels leave each coupled group, counted before anything is cut.

A *plan* is a list of removed-channel counts, one per channel group of `structure.channel_groups`.
`ChannelPlanner` knows, from one trace of the model, which group cuts which conv/linear layer's
inputs and outputs (and which norm layers' per-channel parameters), so it counts the params and
MACs a plan leaves **analytically**, without building a pruned copy: a target search evaluates
hundreds of plans in milliseconds. `structure.remove_planned` then removes the plan once through
Torch-Pruning's DependencyGraph.

Every method's counting rule is a parameter of the one planner:

- the per-group cap: `MAX_REMOVED` (no group loses more than 95 % of its channels, and every group
  keeps at least one), the one constant every method and the latency search use;
- the rounding direction with `round_to`: `"down"` rounds the kept count down to a multiple
  (Torch-Pruning's rule; slimming adds `min_kept=round_to` so no group is emptied, autorate
  lets a rate that would empty a group be refused), `"up"` rounds it up (SFP), `"best"` picks,
  per group, up or down so that the total lands on a params/MACs target (`prune_to_target`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from prunekit.errors import UserError
from prunekit.gcpause import paused_gc

#: the most of one channel group any plan removes (every group also keeps at least one channel)
MAX_REMOVED = 0.95

DIRECTIONS = ("down", "up", "best")


# --------------------------------------------------------------------------------------------
# per-group counting rules


def max_removed(size: int, max_ratio: float = MAX_REMOVED) -> int:
    """Return the most channels a group of `size` may lose: floor(max_ratio * size), keeping at least one."""
    return max(0, min(size - 1, int(math.floor(max_ratio * size + 1e-9))))


def rate_count(size: int, rate: float, *, rule: str = "round") -> int:
    """Return the channels a `rate` removes from `size`: "round" = round(rate * size) (autorate, SFP),
    "keep_floor" = size - floor(size * (1 - rate)) (Torch-Pruning's kept count, channels targets)."""
    if rule == "round":
        return int(round(float(rate) * size))
    if rule == "keep_floor":
        return size - int(math.floor(size * (1.0 - float(rate)) + 1e-9))
    raise ValueError(f"unknown rate rule {rule!r}")


def round_removed(size: int, removed: int, round_to: int | None, *, direction: str = "down", min_kept: int = 0) -> int:
    """Return `removed` adjusted so the kept count is a multiple of `round_to`.

    "down" rounds the kept count down (more removed; Torch-Pruning's rule), never below `min_kept`
    (a group too small to keep a positive multiple of `min_kept` then loses nothing); "up" rounds
    it up (fewer removed; SFP's rule), never above `size`. No rounding without `round_to` or when
    nothing is removed.
    """
    if not round_to or round_to <= 1 or removed <= 0:
        return max(0, removed)
    kept = size - removed
    if direction == "up":
        kept = min(size, -(-kept // round_to) * round_to)
    elif direction == "down":
        if min_kept and size <= min_kept:
            return 0
        kept = max(min_kept, kept - kept % round_to)
    else:
        raise ValueError(f"round_removed direction {direction!r} is not down or up")
    return max(0, size - kept)


def global_counts(scores: Sequence[torch.Tensor], count: int, caps: Sequence[int]) -> list[int]:
    """Return per-group counts for the `count` lowest `scores` over all groups (one threshold),
    each group capped at `caps[i]` (a capped group's next channels go to the next lowest scores)."""
    if not scores:
        return []
    # a group's channels past its cap can never go: keep only each group's `cap` lowest, then rank
    kept = [torch.sort(torch.as_tensor(s, dtype=torch.float64).flatten()).values[: max(0, int(c))] for s, c in zip(scores, caps)]
    flat = torch.cat(kept)
    owner = torch.cat([torch.full((len(k),), i, dtype=torch.long) for i, k in enumerate(kept)])
    take = torch.argsort(flat, stable=True)[: max(0, min(int(count), len(flat)))]
    return torch.bincount(owner[take], minlength=len(scores)).tolist()


# --------------------------------------------------------------------------------------------
# what a layer is: the shapes the planner counts and the latency search times


@dataclass(frozen=True)
class LayerSpec:
    """One conv or linear layer as it is counted and timed standalone: shapes, hyper-parameters, batch.

    `input_size` is the spatial size (H, W) for a conv, and the extra leading dimensions (usually
    none) for a linear layer. `kind` is "conv" or "linear".
    """

    kind: str
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    padding: Any = ()
    dilation: tuple[int, ...] = ()
    groups: int = 1
    bias: bool = False
    input_size: tuple[int, ...] = ()
    batch_size: int = 1

    @classmethod
    def of(cls, module: nn.Module, input_shape: Sequence[int], *, batch_size: int) -> "LayerSpec":
        """Return the spec of `module` (an nn.ConvNd or nn.Linear) for inputs shaped `input_shape` (with batch)."""
        if isinstance(module, nn.Linear):
            return cls("linear", module.in_features, module.out_features, bias=module.bias is not None,
                       input_size=tuple(int(d) for d in input_shape[1:-1]), batch_size=batch_size)
        return cls(
            "conv", module.in_channels, module.out_channels, kernel_size=tuple(module.kernel_size),
            stride=tuple(module.stride), padding=module.padding if isinstance(module.padding, str) else tuple(module.padding),
            dilation=tuple(module.dilation), groups=module.groups, bias=module.bias is not None,
            input_size=tuple(int(d) for d in input_shape[2:]), batch_size=batch_size,
        )

    def with_channels(self, in_channels: int, out_channels: int, groups: int | None = None) -> "LayerSpec":
        """Return this spec with other channel counts (and group count)."""
        return LayerSpec(self.kind, in_channels, out_channels, self.kernel_size, self.stride, self.padding,
                         self.dilation, self.groups if groups is None else groups, self.bias, self.input_size, self.batch_size)

    def with_batch(self, batch_size: int) -> "LayerSpec":
        """Return this spec at another batch size."""
        return LayerSpec(self.kind, self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
                         self.dilation, self.groups, self.bias, self.input_size, int(batch_size))

    def out_positions(self) -> int:
        """Return the number of output positions per sample (1 for a plain linear layer)."""
        if self.kind == "linear":
            return math.prod(self.input_size)
        n = 1
        for size, k, s, p, d in zip(self.input_size, self.kernel_size, self.stride, self._padding(), self.dilation):
            n *= (size + 2 * p - d * (k - 1) - 1) // s + 1
        return n

    def macs(self) -> int:
        """Return the layer's multiply-accumulates for the whole batch (output positions x weight per output)."""
        if self.kind == "linear":
            return self.batch_size * self.out_positions() * self.in_channels * self.out_channels
        return self.batch_size * self.out_positions() * self.out_channels * (self.in_channels // self.groups) * math.prod(self.kernel_size)

    def params(self) -> int:
        """Return the layer's parameter count (weight and bias)."""
        if self.kind == "linear":
            return self.in_channels * self.out_channels + (self.out_channels if self.bias else 0)
        return self.out_channels * (self.in_channels // self.groups) * math.prod(self.kernel_size) + (self.out_channels if self.bias else 0)

    def _padding(self) -> tuple[int, ...]:
        if isinstance(self.padding, str):  # "same" keeps the size; "valid" is no padding
            return tuple((d * (k - 1)) // 2 for k, d in zip(self.kernel_size, self.dilation)) if self.padding == "same" else (0,) * len(self.kernel_size)
        return tuple(self.padding)

    def build(self) -> tuple[nn.Module, torch.Tensor]:
        """Return a fresh module with this spec and a random input batch for it (on the CPU)."""
        if self.kind == "linear":
            return nn.Linear(self.in_channels, self.out_channels, bias=self.bias), torch.randn(self.batch_size, *self.input_size, self.in_channels)
        conv_cls = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[len(self.kernel_size)]
        module = conv_cls(self.in_channels, self.out_channels, self.kernel_size, stride=self.stride, padding=self.padding,
                          dilation=self.dilation, groups=self.groups, bias=self.bias)
        return module, torch.randn(self.batch_size, self.in_channels, *self.input_size)


@dataclass
class PlannedLayer:
    """A conv/linear layer as the planner sees it: its spec and which groups cut its inputs/outputs."""

    module: nn.Module
    name: str
    spec: LayerSpec
    depthwise: bool
    ins: list[tuple[int, float]] = field(default_factory=list)   # (group index, in-dims per group channel)
    outs: list[tuple[int, float]] = field(default_factory=list)  # (group index, out-dims per group channel)

    def spec_at(self, removed: Sequence[int], override: tuple[int, int] | None = None) -> LayerSpec:
        """Return the layer's spec once `removed[g]` channels left every group g (`override`: (g, count) instead)."""
        def cut(pairs: list[tuple[int, float]]) -> int:
            total = 0
            for g, scale in pairs:
                r = override[1] if override is not None and override[0] == g else removed[g]
                total += int(round(r * scale))
            return total

        cin = self.spec.in_channels - cut(self.ins)
        cout = self.spec.out_channels - cut(self.outs)
        if self.depthwise:
            c = min(cin, cout)
            return self.spec.with_channels(c, c, groups=c)
        return self.spec.with_channels(cin, cout)


# --------------------------------------------------------------------------------------------
# the planner


class ChannelPlanner:
    """The coupled channel groups of a model and an analytic count of what a plan leaves.

    Built from one dependency graph (`structure.build_graph`, which also records each layer's
    input shape). `groups` are `structure.channel_groups`; a plan is a list of removed counts,
    one per group. `counts(plan)` returns {"params", "macs", "channels"} left by the plan
    (params: every parameter of the model minus the conv/linear weights and per-channel norm
    parameters the plan cuts; MACs: conv and linear layers, as `metrics.measure` counts them
    for CNNs), `removed_fraction(plan, unit)` the fraction removed.
    """

    @paused_gc()  # tens of thousands of small objects: see prunekit.gcpause
    def __init__(self, model: nn.Module, example_inputs: Any, *, ignore: Sequence[Any] = (), graph: Any = None,
                 protected: Sequence[Any] | None = None) -> None:
        from prunekit import structure

        self.model = model
        self.example_inputs = example_inputs
        self.graph = graph if graph is not None else structure.build_graph(model, example_inputs)
        #: qualified names of the layers whose output size must not change (default: the output layers)
        self.protected = structure.protected_names(model, example_inputs, protected, graph=self.graph)
        self.groups = structure.channel_groups(model, example_inputs, ignore=ignore, graph=self.graph,
                                               protected=self.protected)
        self.sizes = [g.size for g in self.groups]
        self.index = {g.root_name: i for i, g in enumerate(self.groups)}
        shapes = structure.input_shapes(model, example_inputs, graph=self.graph)
        names = structure.module_names(model)
        layer_of: dict[nn.Module, PlannedLayer] = {}
        for m, shape in shapes.items():
            if type(m) in (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear):
                depthwise = isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1 and m.groups == m.in_channels == m.out_channels
                layer_of[m] = PlannedLayer(m, names.get(m, "?"), LayerSpec.of(m, shape, batch_size=1), depthwise)
        self.layers = list(layer_of.values())
        position = {id(layer): i for i, layer in enumerate(self.layers)}
        self.touch: list[list[int]] = []          # group -> layers it cuts
        self.out_layers: list[int] = []           # group -> number of conv/linear layers whose outputs it indexes
        self.norm_params: list[float] = []        # group -> params of norm-like layers per group channel
        self.ch_groups: list[int] = []            # group -> channel grouping (grouped convs, GroupNorm)
        for gi, g in enumerate(self.groups):
            seen: set[tuple[int, bool]] = set()
            touched: set[int] = set()
            extra = 0.0
            ch = 1
            for dep, idxs in g.group:
                target = dep.target.module
                if not isinstance(target, nn.Module):
                    continue
                is_out = bool(self.graph.is_out_channel_pruning_fn(dep.handler))
                key = (id(target), is_out)
                if key in seen:
                    continue
                seen.add(key)
                ch = max(ch, _channel_groups(self.graph, target, is_out))
                layer = layer_of.get(target)
                scale = len(idxs) / g.size
                if layer is not None:
                    (layer.outs if is_out else layer.ins).append((gi, scale))
                    touched.add(position[id(layer)])
                elif is_out:
                    extra += scale * _params_per_channel(target)
            self.touch.append(sorted(touched))
            self.out_layers.append(max(1, sum(1 for layer in self.layers if any(o[0] == gi for o in layer.outs))))
            self.norm_params.append(extra)
            self.ch_groups.append(ch)
        self.total_params = sum(p.numel() for p in model.parameters())
        self._base_layer = [(layer.spec.params(), layer.spec.macs()) for layer in self.layers]
        self.base = {"params": self.total_params, "macs": sum(m for _, m in self._base_layer), "channels": sum(self.sizes)}

    # counting ------------------------------------------------------------------------------------
    def empty(self) -> list[int]:
        """Return the plan that removes nothing."""
        return [0] * len(self.groups)

    def counts(self, plan: Sequence[int]) -> dict[str, float]:
        """Return {"params", "macs", "channels"} that `plan` leaves (analytic, see the class docstring)."""
        params = self.total_params
        macs = 0
        for layer, (p0, _m0) in zip(self.layers, self._base_layer):
            spec = layer.spec_at(plan)
            params += spec.params() - p0
            macs += spec.macs()
        params -= sum(n * r for n, r in zip(self.norm_params, plan))
        return {"params": params, "macs": macs, "channels": sum(self.sizes) - sum(plan)}

    def removed_fraction(self, plan: Sequence[int], unit: str) -> float:
        """Return the fraction of `unit` (params, macs or channels) that `plan` removes."""
        base = self.base[unit]
        return 1.0 - self.counts(plan)[unit] / base if base else 0.0

    # plans ---------------------------------------------------------------------------------------
    def caps(self, max_ratio: float = MAX_REMOVED) -> list[int]:
        """Return each group's most removable channels (`max_removed`, a multiple of its channel grouping)."""
        return [max_removed(n, max_ratio) // c * c for n, c in zip(self.sizes, self.ch_groups)]

    def _grouped(self, plan: Sequence[int]) -> list[int]:
        return [n // c * c for n, c in zip(plan, self.ch_groups)]

    def uniform(self, ratio: float, *, max_ratio: float = MAX_REMOVED, rule: str = "keep_floor") -> list[int]:
        """Return the plan removing `ratio` of every group (Torch-Pruning's kept-count rule by default), capped."""
        return self._grouped([min(cap, rate_count(n, ratio, rule=rule)) for n, cap in zip(self.sizes, self.caps(max_ratio))])

    def by_rates(self, rates: dict[str, float], *, max_ratio: float = MAX_REMOVED, rule: str = "keep_floor") -> list[int]:
        """Return the plan removing `rates[root name]` of each named group (others untouched), capped."""
        plan = self.empty()
        caps = self.caps(max_ratio)
        for name, r in rates.items():
            if name not in self.index:
                raise UserError(f"per-layer rate names unknown or unprunable layer {name!r}")
            i = self.index[name]
            plan[i] = min(caps[i], rate_count(self.sizes[i], r, rule=rule))
        return self._grouped(plan)

    def rounded(self, plan: Sequence[int], round_to: int | None, *, direction: str = "down", min_kept: int = 0,
                max_ratio: float = MAX_REMOVED) -> list[int]:
        """Return `plan` with every group's kept count rounded to a multiple of `round_to` ("down" or "up"),
        never past a group's cap (a group whose rounding would pass it is rounded up instead)."""
        if not round_to or round_to <= 1:
            return list(plan)
        out = []
        for n, size, cap in zip(plan, self.sizes, self.caps(max_ratio)):
            r = round_removed(size, n, round_to, direction=direction, min_kept=min_kept)
            if r > cap:
                r = round_removed(size, n, round_to, direction="up")
            out.append(r)
        return self._grouped(out)

    def land(self, plan: Sequence[int], round_to: int | None, *, unit: str, value: float, max_ratio: float = MAX_REMOVED,
             min_kept: int | None = None, base: float | None = None) -> list[int]:
        """Round every group of `plan` to a kept multiple of `round_to`, choosing per group up or down so
        the fraction of `unit` removed lands as close to `value` as the choices allow.

        Each group starts at its nearer rounding; then, as long as it helps, the one group whose
        switch to its other rounding brings the total closest to `value` switches (a local search
        over the 2^groups choices, a few passes in practice).
        """
        if not round_to or round_to <= 1:
            return list(plan)
        min_kept = round_to if min_kept is None else min_kept
        up = self.rounded(plan, round_to, direction="up")
        down = self.rounded(plan, round_to, direction="down", min_kept=min_kept, max_ratio=max_ratio)
        current = [d if (d - n) <= (n - u) else u for n, u, d in zip(plan, up, down)]
        tracker = _Tracker(self, current, base=base)
        err = abs(tracker.removed_fraction(unit) - value)
        movable = [i for i in range(len(plan)) if down[i] != up[i]]
        for _ in range(4 * len(movable) + 1):
            best: tuple[float, int] | None = None
            for i in movable:
                old = tracker.plan[i]
                tracker.set(i, down[i] if old == up[i] else up[i])
                e = abs(tracker.removed_fraction(unit) - value)
                tracker.set(i, old)
                if e < err - 1e-12 and (best is None or e < best[0]):
                    best = (e, i)
            if best is None:
                break
            err, i = best
            tracker.set(i, down[i] if tracker.plan[i] == up[i] else up[i])
        return list(tracker.plan)

    def fraction(self, plan: Sequence[int], unit: str, *, base: float | None = None) -> float:
        """Return the fraction of `unit` removed by `plan`; for channels, of `base` channels when given
        (e.g. only the scored groups' channels)."""
        if unit == "channels" and base:
            return sum(plan) / base
        return self.removed_fraction(plan, unit)

    def search(self, make: Any, lo: float, hi: float, *, unit: str, value: float, integer: bool = False,
               iterations: int = 40, base: float | None = None, at_least: bool = False) -> tuple[list[int], float]:
        """Bisect `t` in [lo, hi] so that `make(t)` (a plan, monotone in t) removes `value` of `unit`;
        return (the closest plan seen, its fraction removed); `at_least`: the plan of the smallest
        t that removes at least `value` (the closest if none does)."""
        best: tuple[float, list[int], float] | None = None
        first: tuple[float, list[int], float] | None = None  # (t, plan, got) of the smallest t reaching value
        for _ in range(iterations):
            mid = (lo + hi) // 2 if integer else (lo + hi) / 2
            plan = make(mid)
            got = self.fraction(plan, unit, base=base)
            if best is None or abs(got - value) < best[0]:
                best = (abs(got - value), plan, got)
            if at_least and got >= value - 1e-12 and (first is None or mid < first[0]):
                first = (mid, plan, got)
            if got < value:
                lo = mid + 1 if integer else mid
            else:
                hi = mid - 1 if integer else mid
            if (integer and lo > hi) or (not integer and hi - lo < 1e-5):
                break
        assert best is not None
        if first is not None:
            return first[1], first[2]
        return best[1], best[2]

    def plan(self, scores: Sequence[torch.Tensor | None], *, unit: str, value: float, allocation: str = "uniform",
             round_to: int | None = None, direction: str = "best", min_kept: int | None = None,
             max_ratio: float = MAX_REMOVED) -> list[int]:
        """Return the plan that removes `value` of `unit` (channels, params, macs) from the scored groups.

        `scores[i]` (one per channel of group i, or None: the group is not pruned) rank channels for
        "global" allocation (the lowest over all scored groups go first, one threshold; each group
        capped); "uniform" removes the same fraction of every scored group. A channels target is
        the fraction of the scored channels. With `round_to`, `direction` "down"/"up" rounds every
        group's kept count that way inside the search (`min_kept` bounds "down"), "best" chooses
        up or down per group after it so the total lands on the target (`land`).
        """
        if allocation not in ("uniform", "global"):
            raise UserError(f"allocation {allocation!r} is not one of uniform, global")
        if direction not in DIRECTIONS:
            raise ValueError(f"direction {direction!r} is not one of {', '.join(DIRECTIONS)}")
        scored = [i for i, s in enumerate(scores) if s is not None]
        caps = self.caps(max_ratio)
        total = sum(self.sizes[i] for i in scored)
        if min_kept is None:
            min_kept = round_to or 0
        rounding = bool(round_to and round_to > 1)
        if allocation == "global":
            def exact(t: float) -> list[int]:
                plan = self.empty()
                for i, n in zip(scored, global_counts([scores[i] for i in scored], int(t), [caps[i] for i in scored])):
                    plan[i] = n
                return self._grouped(plan)
            lo, hi, integer = 0, total, True
        else:
            def exact(t: float, rule: str = "round") -> list[int]:
                plan = self.empty()
                for i in scored:
                    plan[i] = min(caps[i], rate_count(self.sizes[i], t, rule=rule))
                return self._grouped(plan)
            lo, hi, integer = 0.0, 1.0, False
        if rounding and direction != "best":
            def make(t: float) -> list[int]:
                return self.rounded(exact(t), round_to, direction=direction, min_kept=min_kept, max_ratio=max_ratio)
        else:
            make = exact
        if unit == "channels" and allocation == "uniform" and not (rounding and direction == "best"):
            plan = make(value) if make is not exact else exact(value, "keep_floor")  # an exact per-group fraction
        else:
            # a channels target rounded one way is met at least (slimming's rule); others as close as can be
            at_least = unit == "channels" and rounding and direction != "best"
            plan, _ = self.search(make, lo, hi, unit=unit, value=value, integer=integer, base=total, at_least=at_least)
        if rounding and direction == "best":
            plan = self.land(plan, round_to, unit=unit, value=value, max_ratio=max_ratio, min_kept=min_kept, base=total)
        return plan


class _Tracker:
    """Incremental counts of a plan that changes one group at a time (for `ChannelPlanner.land`)."""

    def __init__(self, planner: ChannelPlanner, plan: Sequence[int], *, base: float | None = None) -> None:
        self.p = planner
        self.channel_base = base
        self.plan = list(plan)
        self.layer = [layer.spec_at(self.plan) for layer in planner.layers]
        self.params = planner.counts(self.plan)["params"]
        self.macs = sum(s.macs() for s in self.layer)

    def set(self, gi: int, removed: int) -> None:
        p = self.p
        self.params -= p.norm_params[gi] * (removed - self.plan[gi])
        self.plan[gi] = removed
        for li in p.touch[gi]:
            new = p.layers[li].spec_at(self.plan)
            self.params += new.params() - self.layer[li].params()
            self.macs += new.macs() - self.layer[li].macs()
            self.layer[li] = new

    def removed_fraction(self, unit: str) -> float:
        if unit == "channels" and self.channel_base:
            return sum(self.plan) / self.channel_base
        base = self.p.base[unit]
        now = {"params": self.params, "macs": self.macs, "channels": sum(self.p.sizes) - sum(self.plan)}[unit]
        return 1.0 - now / base if base else 0.0


def _channel_groups(graph: Any, module: nn.Module, is_out: bool) -> int:
    # As Torch-Pruning's MetaPruner: grouped convs (not depthwise) and GroupNorm keep their groups equal.
    if isinstance(module, nn.modules.conv._ConvNd) and module.groups == module.out_channels:
        return 1
    try:
        pruner = graph.get_pruner_of_module(module)
        n = pruner.get_out_channel_groups(module) if is_out else pruner.get_in_channel_groups(module)
    except Exception:  # a layer without a pruner has no grouping
        return 1
    return int(n) if n and n > 1 else 1


def _params_per_channel(module: nn.Module) -> float:
    # Parameters a norm-like layer (BatchNorm, LayerNorm over channels, PReLU...) loses per channel removed.
    total = 0.0
    for p in module.parameters(recurse=False):
        if p.dim() >= 1 and p.shape[0] > 0:
            total += p.numel() / p.shape[0]
    return total
