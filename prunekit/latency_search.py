"""Latency targets (`latency=F`): remove channels until the *measured* forward time drops by F.

NetAdapt-style: a lookup table of measured per-layer times (one standalone conv/linear per
channel configuration, cached by shape, on the runtime the user names) predicts what each step
of channels buys; a greedy search over the planner's channel groups removes, one step at a time,
the channels that buy the most predicted time per unit of importance lost; the real pruned
network is then timed on the runtime and the goal re-calibrated on what was measured, until the
target is met, the MACs bound (`max_macs_removed`) would be passed, or nothing is left to cut.
When the target cannot be met within the bound, a warning (and the report) says what limits the
speed: the time no amount of channel removal takes away (per-layer overhead, the time outside
the timed layers) and the layers that hold most of it.

`profile_layers` attributes the measured forward time to the model's layers (forward hooks),
for `prunekit analyze --latency`.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from prunekit import inputs, structure
from prunekit.errors import UserError
from prunekit.planner import MAX_REMOVED, ChannelPlanner, LayerSpec
from prunekit.runtimes import Timer, check_runtime, default_timer, model_device
from prunekit.targets import Target

#: default bound on the MACs a latency target may remove (a quarter of the network always stays)
MAX_MACS_REMOVED = 0.75


def exact_fraction(removed: int, size: int) -> float:
    """Return the ratio that makes a Torch-Pruning-style kept count (floor(size * (1 - ratio))) remove
    exactly `removed` of `size` channels (kept for callers of the former API)."""
    if removed <= 0:
        return 0.0
    return (removed - 0.5) / size


@dataclass
class LatencyReport:
    """What `prune_to_latency` measured: times in milliseconds on `device` and `runtime` at `batch_size`."""

    device: str
    batch_size: int
    target: float
    before_ms: float
    after_ms: float
    achieved: float
    predicted_before_ms: float
    predicted_after_ms: float
    runtime: str = "eager"
    max_macs_removed: float = MAX_MACS_REMOVED
    macs_removed: float = 0.0
    attempts: list[dict[str, float]] = field(default_factory=list)
    kept: dict[str, int] = field(default_factory=dict)
    layer_timings: int = 0
    noise: float = 0.0  # max / min - 1 of the unpruned model's repeated measurements
    reached: bool = True
    limit: dict[str, Any] = field(default_factory=dict)  # what limits the speed, when the target is missed
    warning: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the report as plain data (for metrics.json)."""
        return asdict(self)


class _Search:
    """The lookup table, the plan being built and the per-step price, over one `ChannelPlanner`."""

    def __init__(self, planner: ChannelPlanner, timer: Timer, importance: structure.Importance, round_to: int | None,
                 max_ratio: float) -> None:
        self.p = planner
        self.timer = timer
        self.batch = int(getattr(timer, "batch_size", 1))
        self.table: dict[LayerSpec, float] = {}
        self.scores = structure.group_scores(planner, importance)
        q = round_to or 1
        caps = planner.caps(max_ratio)
        self.kept_importance: list[torch.Tensor] = []
        self.step: list[int] = []
        self.min_keep: list[int] = []
        for g, s, ch, cap in zip(planner.groups, self.scores, planner.ch_groups, caps):
            s = (s if s is not None else torch.ones(g.size, dtype=torch.float64)).clamp(min=0)
            if not s.sum() > 0:
                s = torch.ones(g.size, dtype=torch.float64)
            ordered = torch.sort(s).values
            # kept[r] = importance left after removing the r least important channels
            self.kept_importance.append(ordered.sum() - torch.cat([ordered.new_zeros(1), ordered.cumsum(0)]))
            unit = q * ch // math.gcd(q, ch)
            self.step.append(unit * max(1, round(g.size / (16 * unit))))
            self.min_keep.append(max(unit, g.size - cap, 1))
        planner._scores = self.scores  # the removal at the end reuses them
        self.reset()
        self.base_macs = max(1, sum(self.macs))

    def reset(self) -> None:
        """Start the plan again from the whole model (the measured layer times are kept)."""
        self.removed = self.p.empty()
        self.current = [self.layer_time(layer.spec_at(self.removed)) for layer in self.p.layers]
        self.macs = [layer.spec.macs() for layer in self.p.layers]

    def layer_time(self, spec: LayerSpec) -> float:
        spec = spec.with_batch(self.batch)
        if spec not in self.table:
            self.table[spec] = float(self.timer.layer_ms(spec))
        return self.table[spec]

    def next_removed(self, gi: int) -> int | None:
        size = self.p.sizes[gi]
        kept = size - self.removed[gi]
        q = self.step[gi]
        nxt = ((kept - 1) // q) * q
        if nxt < self.min_keep[gi]:
            return None
        return size - nxt

    def macs_removed(self) -> float:
        return 1.0 - sum(self.macs) / self.base_macs

    def candidate(self, gi: int, max_macs_removed: float = 1.0) -> tuple[float, int] | None:
        nxt = self.next_removed(gi)
        if nxt is None:
            return None
        saved = 0.0
        macs_cut = 0
        for li in self.p.touch[gi]:
            layer = self.p.layers[li]
            spec = layer.spec_at(self.removed, override=(gi, nxt))
            saved += self.current[li] - self.layer_time(spec)
            macs_cut += self.macs[li] - spec.macs()
        if 1.0 - (sum(self.macs) - macs_cut) / self.base_macs > max_macs_removed + 1e-9:
            return None
        # The price of a step is the log of the share of the group's importance it removes, once
        # per layer whose outputs the group indexes: a few unimportant channels are cheap, a
        # residual stream feeding many layers is dear, and emptying a group costs without bound.
        before, after = float(self.kept_importance[gi][self.removed[gi]]), float(self.kept_importance[gi][nxt])
        lost = self.p.out_layers[gi] * math.log(before / after) if after > 0 else math.inf
        return saved / max(lost, 1e-12), nxt

    def saved(self, gi: int, nxt: int) -> float:
        """Return the predicted time (ms) that removing group `gi` down to `nxt` removed channels saves."""
        return sum(self.current[li] - self.layer_time(self.p.layers[li].spec_at(self.removed, override=(gi, nxt)))
                   for li in self.p.touch[gi])

    def take(self, gi: int, nxt: int) -> None:
        self.removed[gi] = nxt
        for li in self.p.touch[gi]:
            spec = self.p.layers[li].spec_at(self.removed)
            self.current[li] = self.layer_time(spec)
            self.macs[li] = spec.macs()

    def floor_ms(self) -> list[float]:
        """Each layer's predicted time with every group at its smallest width: what pruning cannot remove."""
        smallest = [size - self.min_keep[gi] if self.min_keep[gi] < size else 0 for gi, size in enumerate(self.p.sizes)]
        return [self.layer_time(layer.spec_at(smallest)) for layer in self.p.layers]


def _latency_value(target: Target | str | float) -> float:
    if isinstance(target, (int, float)) and not isinstance(target, bool):
        target = Target("latency", float(target))
    target = Target.parse(target)
    if target.unit != "latency":
        raise UserError(f"prune_to_latency takes a latency=FRACTION target, not {target}")
    return target.value


def prune_to_latency(
    model: nn.Module,
    example_inputs: Any,
    *,
    importance: structure.Importance,
    target: Target | str | float,
    ignore: Sequence[str | nn.Module] = (),
    round_to: int | None = None,
    device: str | torch.device | None = None,
    runtime: str = "eager",
    batch_size: int | None = None,
    timer: Timer | None = None,
    tolerance: float = 0.02,
    overshoot: float = 0.05,
    max_ratio: float = MAX_REMOVED,
    max_macs_removed: float = MAX_MACS_REMOVED,
    max_attempts: int = 6,
    pairs: int = 3,
    report: dict[str, Any] | None = None,
    protected: structure.Protected = None,
    graph: Any = None,
) -> nn.Module:
    """Remove channels from `model` in place until its *measured* latency drops by `target`; return it.

    `target` is `latency=F` (or F): the fraction of the forward time removed, measured on `device`
    (default: where the model is) and `runtime` (eager, onnxruntime, compile) at `batch_size`
    (default 1 on the CPU, 128 on CUDA). The channels removed are those that buy the most time
    per unit of importance lost (the log of the share of its group's importance a step removes,
    once per layer the group feeds), one group step at a time (steps are multiples of
    `round_to`), predicted from a cached table of measured per-layer times; the real pruned
    network is then timed (alternating with the original `pairs` times, the fastest of each
    kept) and the prediction re-calibrated, up to `max_attempts` times, until the measured
    fraction removed is at least target - `tolerance`, and at most target + `overshoot` (a plan
    that overshoots is searched again from the whole model with a re-calibrated goal; the attempt
    closest to the target is kept, with a warning when even it overshoots). No group loses more than `max_ratio` of
    its channels, and no plan removes more than `max_macs_removed` of the MACs (default 0.75):
    when the target cannot be met within that, a warning says what limits the speed. When
    `report` (a dict) is given it is filled with a `LatencyReport`'s data. `protected` modules
    (default: every output layer) keep their output size. `graph`: the model's
    `structure.build_graph` when the caller already traced it.
    """
    value = _latency_value(target)
    if not 0.0 < max_macs_removed <= 1.0:
        raise UserError(f"max_macs_removed={max_macs_removed!r} must be in (0, 1]")
    dev = torch.device(device) if device is not None else model_device(model)
    runtime = check_runtime(runtime, dev)
    timer = timer or default_timer(dev, batch_size=batch_size, runtime=runtime)
    planner = ChannelPlanner(model, example_inputs, ignore=ignore, protected=protected, graph=graph)
    search = _Search(planner, timer, importance, round_to, max_ratio)
    predicted0 = sum(search.current)
    before_ms = math.inf
    goal = predicted0 * (1 - value)
    attempts: list[dict[str, float]] = []
    base_times: list[float] = []
    tried: list[tuple[float, list[int], float]] = []  # (achieved, removed, ms) of every attempt
    bound_hit = False

    for _ in range(max_attempts):
        while sum(search.current) > goal:
            options = [(c, gi) for gi in range(len(planner.groups)) if (c := search.candidate(gi, max_macs_removed)) is not None]
            if not options:
                bound_hit = bound_hit or any(search.next_removed(gi) is not None for gi in range(len(planner.groups)))
                break
            positive = [o for o in options if o[0][0] > 0] or options
            (_score, nxt), gi = max(positive, key=lambda o: o[0][0])
            # the step that crosses the goal is the one that crosses it least (coarse channel steps
            # would otherwise overshoot the target by a whole step of the most efficient group)
            need = sum(search.current) - goal
            finishing = [(saved, g, n) for (_s, n), g in positive if (saved := search.saved(g, n)) >= need]
            if finishing:
                _, gi, nxt = min(finishing, key=lambda f: f[0])
            search.take(gi, nxt)
        trial = copy.deepcopy(model)
        _remove(trial, example_inputs, planner, search.removed, importance, ignore)
        # Time the original and the candidate alternately, keeping each one's fastest: load that
        # comes and goes on a shared machine then hits both alike.
        base_now, ms = math.inf, math.inf
        for _ in range(pairs):
            base_times.append(float(timer.model_ms(model, example_inputs)))
            base_now = min(base_now, base_times[-1])
            ms = min(ms, float(timer.model_ms(trial, example_inputs)))
        before_ms = min(before_ms, base_now)
        achieved = 1.0 - ms / before_ms if before_ms > 0 else 0.0
        attempts.append({"predicted_ms": sum(search.current), "measured_ms": ms, "achieved": achieved,
                         "macs_removed": planner.removed_fraction(search.removed, "macs")})
        tried.append((achieved, list(search.removed), ms))
        exhausted = bound_hit or all(search.next_removed(gi) is None for gi in range(len(planner.groups)))
        if value - tolerance <= achieved <= value + overshoot or (achieved < value - tolerance and exhausted):
            break
        if achieved > value + overshoot:
            # Faster than the table predicted: the plan removed more than needed. Plan again from
            # the whole model towards a goal scaled up by what was measured (at most doubled).
            goal = sum(search.current) * min(2.0, (before_ms * (1 - value)) / max(ms, 1e-12))
            search.reset()
            bound_hit = False
            continue
        # The table misses what the layers do not time (norms, activations, adds): scale the goal
        # by what the measurement says is still missing (at most halving it per attempt, so one
        # disturbed measurement cannot empty the network).
        goal = sum(search.current) * max(0.5, (before_ms * (1 - value)) / ms)
    achieved, removed, ms = _closest(tried, value, tolerance)
    noise = max(base_times) / min(base_times) - 1 if base_times and min(base_times) > 0 else 0.0
    if noise > 0.25:
        warnings.warn(
            f"the unpruned model's measured time varied by {noise:.0%} between repeats on {dev.type}: the device is "
            "busy, and the latency reached (and so the channels removed) is not reliable", stacklevel=2,
        )
    reached = achieved >= value - tolerance
    limit: dict[str, Any] = {}
    message = None
    if not reached:
        limit = _limits(search, planner, before_ms, predicted0)
        why = (f"max_macs_removed={max_macs_removed:g} reached" if bound_hit else
               f"no group can lose more than {max_ratio:.0%} of its channels")
        message = (
            f"latency target {value:g} not met on {dev.type}/{runtime}: reached {achieved:.3f} ({why}, "
            f"{planner.removed_fraction(removed, 'macs'):.0%} of MACs removed). What limits the speed: "
            f"{limit['fixed_share']:.0%} of the time does not shrink with channels ({limit['outside_share']:.0%} outside the "
            f"timed conv/linear layers: norms, activations, adds, per-op overhead; the rest per-layer overhead at the "
            f"smallest widths), most in {', '.join(limit['layers'][:4])}"
        )
        warnings.warn(message, stacklevel=2)
    if reached and achieved > value + overshoot:
        message = (f"latency target {value:g} overshot on {dev.type}/{runtime}: reached {achieved:.3f} in {len(tried)} "
                   f"attempt(s), {planner.removed_fraction(removed, 'macs'):.0%} of MACs removed (more than asked: the "
                   "channel steps are coarse here or the timings are noisy; see noise in the report)")
        warnings.warn(message, stacklevel=2)
    _remove(model, example_inputs, planner, removed, importance, ignore)
    if report is not None:
        report.update(LatencyReport(
            device=str(dev), batch_size=int(getattr(timer, "batch_size", 1)), target=value, before_ms=before_ms, after_ms=ms,
            achieved=achieved, predicted_before_ms=predicted0,
            predicted_after_ms=sum(search.layer_time(layer.spec_at(removed)) for layer in planner.layers),
            runtime=str(getattr(timer, "runtime", runtime)), max_macs_removed=max_macs_removed,
            macs_removed=planner.removed_fraction(removed, "macs"), attempts=attempts,
            kept={g.root_name: g.size - r for g, r in zip(planner.groups, removed)}, layer_timings=len(search.table),
            noise=noise, reached=reached, limit=limit, warning=message,
        ).to_dict())
    return model


def prune_to_target_by_time(
    model: nn.Module,
    example_inputs: Any,
    *,
    importance: structure.Importance,
    target: Target | str,
    ignore: Sequence[str | nn.Module] = (),
    round_to: int | None = None,
    device: str | torch.device | None = None,
    runtime: str = "eager",
    timer: Timer | None = None,
    max_ratio: float = MAX_REMOVED,
    protected: structure.Protected = None,
    graph: Any = None,
    info: dict[str, Any] | None = None,
) -> nn.Module:
    """Remove channels until a `macs=` or `params=` target (fraction removed) is met, in place; return the model.

    Each step is the latency search's: the channels that save the most predicted time on `device`
    and `runtime` (the per-layer table, `timer`) per unit of importance lost, so the MACs that go are
    the ones that cost the most time (on depthwise networks: the wide inner channels that also feed
    the depthwise conv, norms and activations, before the residual streams). The step that crosses
    the target is the one that crosses it least. `info` receives the planned fraction and the
    predicted times (ms).
    """
    target = Target.parse(target)
    if target.unit not in ("macs", "params"):
        raise UserError(f"allocation 'time' takes a macs= or params= target, not {target.unit}=")
    dev = torch.device(device) if device is not None else model_device(model)
    runtime = check_runtime(runtime, dev)
    timer = timer or default_timer(dev, runtime=runtime)
    planner = ChannelPlanner(model, example_inputs, ignore=ignore, protected=protected, graph=graph)
    search = _Search(planner, timer, importance, round_to, max_ratio)
    unit, value = target.unit, target.value
    predicted0 = sum(search.current)
    while planner.removed_fraction(search.removed, unit) < value:
        options = [(c, gi) for gi in range(len(planner.groups)) if (c := search.candidate(gi)) is not None]
        if not options:
            break
        positive = [o for o in options if o[0][0] > 0] or options
        (_score, nxt), gi = max(positive, key=lambda o: o[0][0])
        finishing = []
        for (_s, n), g in positive:
            trial = list(search.removed)
            trial[g] = n
            if (got := planner.removed_fraction(trial, unit)) >= value:
                finishing.append((got, g, n))
        if finishing:
            _, gi, nxt = min(finishing, key=lambda f: f[0])
        search.take(gi, nxt)
    got = planner.removed_fraction(search.removed, unit)
    if abs(got - value) > 0.01:
        warnings.warn(f"target {target} reached only within {abs(got - value) * 100:.1f} points (channel granularity); "
                      "see the achieved figures", stacklevel=2)
    if info is not None:
        info.update({"unit": unit, "asked": value, "planned": got, "groups": len(planner.groups), "allocation": "time",
                     "runtime": runtime, "predicted_before_ms": predicted0, "predicted_after_ms": sum(search.current),
                     "layer_timings": len(search.table)})
    _remove(model, example_inputs, planner, search.removed, importance, ignore)
    return model


def _closest(tried: list[tuple[float, list[int], float]], value: float, tolerance: float) -> tuple[float, list[int], float]:
    # The attempt that met the target with the least overshoot, else the one that came closest.
    met = [t for t in tried if t[0] >= value - tolerance]
    return min(met, key=lambda t: t[0]) if met else max(tried, key=lambda t: t[0])


def _limits(search: _Search, planner: ChannelPlanner, before_ms: float, predicted0: float) -> dict[str, Any]:
    # The time that stays when every group is at its smallest width, and where it sits.
    floor = search.floor_ms()
    outside = max(0.0, before_ms - predicted0) if math.isfinite(before_ms) else 0.0
    total = max(before_ms if math.isfinite(before_ms) else predicted0, 1e-12)
    ranked = sorted(range(len(floor)), key=lambda i: -floor[i])
    return {
        "fixed_share": min(1.0, (sum(floor) + outside) / total),
        "outside_share": min(1.0, outside / total),
        "layers_floor_ms": sum(floor),
        "layers": [f"{planner.layers[i].name} ({floor[i]:.3g} ms)" for i in ranked[:8]],
    }


def _remove(model: nn.Module, example_inputs: Any, planner: ChannelPlanner, removed: list[int],
            importance: structure.Importance, ignore: Sequence[str | nn.Module]) -> None:
    counts = {g.root_name: r for g, r in zip(planner.groups, removed) if r > 0}
    if not counts:
        return
    if model is planner.model:
        structure.remove_planned(model, example_inputs, planner=planner, plan=removed, scores=planner_scores(planner, importance))
    else:
        structure.remove_counts(model, example_inputs, counts=counts, importance=importance, ignore=ignore,
                                protected=planner.protected)


def planner_scores(planner: ChannelPlanner, importance: structure.Importance) -> list[torch.Tensor | None]:
    """Return the importance of every group of `planner` (cached on it: the model is unchanged until removal)."""
    cached = getattr(planner, "_scores", None)
    if cached is None:
        cached = structure.group_scores(planner, importance)
        planner._scores = cached
    return cached


# --------------------------------------------------------------------------------------------
# time per layer (prunekit analyze --latency)

@dataclass(frozen=True)
class LayerTime:
    """Measured time of one leaf module inside the model's forward: median ms over the timed passes."""

    name: str
    kind: str
    ms: float
    share: float


def profile_layers(
    model: nn.Module, example_inputs: Any, *, device: str | torch.device = "cpu", repeats: int = 10, warmup: int = 2
) -> tuple[list[LayerTime], float]:
    """Return (per-leaf-module times, total forward ms), measured with forward hooks on `device`.

    Each leaf module's time is taken between its pre- and post-forward hooks (with a CUDA
    synchronisation around it on GPUs), summed per pass, median over `repeats` passes; `share` is
    its fraction of the median total. Time outside leaf modules (functional adds, reshapes) is
    the total minus the layers' sum. A copy of the model is timed, in eval mode.
    """
    dev = torch.device(device)
    net = copy.deepcopy(model).eval().to(dev)
    x = inputs.to(example_inputs, dev)
    cuda = dev.type == "cuda"
    names = {m: n for n, m in net.named_modules() if n}
    leaves = [m for m in names if not any(True for _ in m.children())]
    starts: dict[int, float] = {}
    spent: dict[nn.Module, float] = {}

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(dev)

    def pre(module: nn.Module, _inputs: Any) -> None:
        sync()
        starts[id(module)] = time.perf_counter()

    def post(module: nn.Module, _inputs: Any, _output: Any) -> None:
        sync()
        spent[module] = spent.get(module, 0.0) + (time.perf_counter() - starts.pop(id(module)))

    per_pass: dict[nn.Module, list[float]] = {m: [] for m in leaves}
    totals: list[float] = []
    handles = [h for m in leaves for h in (m.register_forward_pre_hook(pre), m.register_forward_hook(post))]
    try:
        with torch.inference_mode():
            for _ in range(max(0, warmup)):
                inputs.call(net, x)
            for _ in range(max(1, repeats)):
                spent.clear()
                sync()
                t0 = time.perf_counter()
                inputs.call(net, x)
                sync()
                totals.append((time.perf_counter() - t0) * 1e3)
                for m in leaves:
                    per_pass[m].append(spent.get(m, 0.0) * 1e3)
    finally:
        for h in handles:
            h.remove()
    total = statistics.median(totals)
    rows = [
        LayerTime(names[m], type(m).__name__, statistics.median(v), statistics.median(v) / total if total > 0 else 0.0)
        for m, v in per_pass.items()
        if any(t > 0 for t in v)
    ]
    return rows, total
