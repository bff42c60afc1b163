"""Hardware-aware allocation: measured latency targets and channel multiples the device runs well.

Counting MACs does not tell how fast a pruned network runs: a conv with 65 channels can cost as
much as one with 72 (the kernels work in blocks of 8, 16, 32 or 64 channels), and a channel in a
high-resolution layer costs more time than one in a 7x7 layer. Everything here is *measured* on
the device at hand (CPU or CUDA), never assumed:

- `measure_channel_multiple` times one representative conv at a range of channel counts and
  finds the block size where its time steps (`round_to="auto"`).
- `prune_to_latency` builds a lookup table of measured per-layer times (NetAdapt-style: one
  standalone conv/linear per channel configuration, cached), removes, one step at a time, the
  channels of the group that buys the most predicted time per unit of importance, then prunes
  the real network and times it; the prediction is re-calibrated on the measured time until the
  measured latency target is met.
- `profile_layers` attributes the measured forward time to the model's layers (forward hooks),
  for `prunekit analyze --latency`.

Timing goes through a *timer* object (`DeviceTimer`, or any object with `layer_ms(spec)` and
`model_ms(model, example_inputs)`), so tests can pass a deterministic one (`use_timer`).
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import statistics
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from prunekit import inputs, structure
from prunekit.errors import UserError
from prunekit.targets import Target

#: candidate channel multiples, smallest first (1 = no rounding)
MULTIPLES = (2, 4, 8, 16, 32, 64)
#: environment variable that pins round_to="auto" (skips the measurement): an integer >= 1
ENV_MULTIPLE = "PRUNEKIT_CHANNEL_MULTIPLE"


# --------------------------------------------------------------------------------------------
# what we time


@dataclass(frozen=True)
class LayerSpec:
    """One conv or linear layer as it is timed standalone: shapes, hyper-parameters, batch.

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

    def macs(self) -> int:
        """Return the layer's multiply-accumulates for the whole batch (output positions x weight per output)."""
        if self.kind == "linear":
            return self.batch_size * math.prod(self.input_size) * self.in_channels * self.out_channels
        out_positions = 1
        for size, k, s, p, d in zip(self.input_size, self.kernel_size, self.stride, self._padding(), self.dilation):
            out_positions *= (size + 2 * p - d * (k - 1) - 1) // s + 1
        return self.batch_size * out_positions * self.out_channels * (self.in_channels // self.groups) * math.prod(self.kernel_size)

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


class Timer(Protocol):
    """What allocation needs from a timer: milliseconds per forward of one layer and of a model."""

    batch_size: int

    def layer_ms(self, spec: LayerSpec) -> float: ...

    def model_ms(self, model: nn.Module, example_inputs: torch.Tensor) -> float: ...


class DeviceTimer:
    """Measures forward time on `device` (inference mode; bf16 autocast and channels_last on CUDA).

    On the CPU a sample is the mean of enough back-to-back calls to last `min_sample_ms`, and the
    result is the *fastest* of `repeats` samples: other processes only ever add time, so the
    minimum is the least noisy estimate of the work itself on a shared machine. On CUDA samples
    are timed with CUDA events and the median is returned. `num_threads` (CPU) defaults to
    torch's current setting; `layer_threads` (CPU) is used for standalone layers (`layer_ms`):
    a lookup table only has to rank layers, and one thread ranks them far more reliably than
    several threads that wait on each other when other processes hold the cores. All results are
    milliseconds per forward of a `batch_size` batch.
    """

    def __init__(
        self,
        *,
        device: str | torch.device = "cpu",
        batch_size: int = 1,
        repeats: int = 5,
        warmup: int = 2,
        num_threads: int | None = None,
        layer_threads: int | None = None,
        min_sample_ms: float = 1.0,
        statistic: str | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.repeats = max(1, int(repeats))
        self.warmup = max(1, int(warmup))
        self.num_threads = num_threads
        self.layer_threads = layer_threads
        self.min_sample_ms = float(min_sample_ms)
        self.cuda = self.device.type == "cuda"
        self.statistic = statistic or ("median" if self.cuda else "min")
        if self.statistic not in ("min", "median"):
            raise UserError(f"timer statistic {self.statistic!r} is not one of min, median")
        if self.cuda:
            # as deployment runs: cuDNN picks the fastest kernel per shape (during the warm-up)
            torch.backends.cudnn.benchmark = True

    # ------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _threads(self, threads: int | None) -> Iterator[None]:
        if self.cuda or not threads:
            yield
            return
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    def _prepare(self, module: nn.Module, x: torch.Tensor) -> tuple[nn.Module, torch.Tensor]:
        module = module.eval().to(self.device)
        x = x.to(self.device)
        if self.cuda and x.dim() == 4:
            module = module.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        return module, x

    def time_call(self, fn: Callable[[], Any], *, threads: int | None = None) -> float:
        """Return the time of one call of `fn` in milliseconds (see the class docstring for the statistic).

        `threads` (CPU) overrides `num_threads` for this measurement.
        """
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if self.cuda else contextlib.nullcontext()
        with self._threads(threads or self.num_threads), torch.inference_mode(), autocast:
            for _ in range(self.warmup):
                fn()
            if self.cuda:
                torch.cuda.synchronize(self.device)
                samples = []
                for _ in range(self.repeats):
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    for _ in range(4):
                        fn()
                    end.record()
                    end.synchronize()
                    samples.append(start.elapsed_time(end) / 4)
            else:
                t0 = time.perf_counter()
                fn()
                first_ms = (time.perf_counter() - t0) * 1e3
                number = max(1, min(100, math.ceil(self.min_sample_ms / max(first_ms, 1e-3))))
                samples = []
                for _ in range(self.repeats):
                    t0 = time.perf_counter()
                    for _ in range(number):
                        fn()
                    samples.append((time.perf_counter() - t0) * 1e3 / number)
        return min(samples) if self.statistic == "min" else statistics.median(samples)

    def layer_ms(self, spec: LayerSpec) -> float:
        """Return the measured time of one standalone layer built from `spec`, in milliseconds."""
        module, x = spec.build()
        module, x = self._prepare(module, x)
        return self.time_call(lambda: module(x), threads=self.layer_threads)

    def model_ms(self, model: nn.Module, example_inputs: torch.Tensor) -> float:
        """Return the measured forward time of a copy of `model` on a `batch_size` batch, in milliseconds."""
        net = copy.deepcopy(model)
        x = inputs.like(example_inputs, batch_size=self.batch_size, fill="randn", device="cpu")
        if isinstance(x, torch.Tensor):
            net, x = self._prepare(net, x)
        else:
            net, x = net.eval().to(self.device), inputs.to(x, self.device)
        return self.time_call(lambda: inputs.call(net, x))


_TIMER_OVERRIDE: list[Timer] = []


@contextlib.contextmanager
def use_timer(timer: Timer) -> Iterator[Timer]:
    """Within the `with` block, measure with `timer` wherever no timer is passed (tests, custom devices).

    Nothing measured with it is cached.
    """
    _TIMER_OVERRIDE.append(timer)
    try:
        yield timer
    finally:
        _TIMER_OVERRIDE.pop()


def default_timer(device: str | torch.device, *, batch_size: int | None = None) -> Timer:
    """Return the timer in force (`use_timer`) or a `DeviceTimer` for `device`.

    The default batch is 1 on the CPU (latency) and 128 on CUDA (throughput, as deployed); on the
    CPU standalone layers are timed on one thread (see `DeviceTimer`).
    """
    if _TIMER_OVERRIDE:
        return _TIMER_OVERRIDE[-1]
    dev = torch.device(device)
    cpu = dev.type == "cpu"
    return DeviceTimer(device=dev, batch_size=batch_size or (1 if cpu else 128), layer_threads=1 if cpu else None)


def model_device(model: nn.Module) -> torch.device:
    """Return the device of `model`'s first parameter (CPU for a model without parameters)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


# --------------------------------------------------------------------------------------------
# round_to="auto": the channel multiple where time steps


_MULTIPLE_CACHE: dict[str, int] = {}


def _device_key(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu:{torch.get_num_threads()}"


def channel_probe(device: str | torch.device, *, base: int | None = None) -> tuple[LayerSpec, list[int], dict[int, list[tuple[int, int]]]]:
    """Return the probe of `measure_channel_multiple`: (conv spec, channel counts to time, {multiple: [(first, last)]}).

    For a multiple m the blocks are (base + k m + 1, base + (k + 1) m): if the conv's time is a
    staircase with steps every m channels, the first and the last count of a block cost the same.
    Small multiples get more blocks (their ratios are close to 1 either way, so noise matters
    more); the CPU probe stays under 100 channels to keep it cheap.
    """
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    base = base if base is not None else (64 if cuda else 32)
    spec = LayerSpec("conv", base, base, (3, 3), (1, 1), (1, 1), (1, 1), 1, False, (28, 28), 64 if cuda else 1)
    pairs: dict[int, list[tuple[int, int]]] = {}
    counts: set[int] = set()
    for m in MULTIPLES:
        n = 6 if m <= 8 else 4 if m == 16 else 2 if (cuda or m == 32) else 1
        pairs[m] = [(base + k * m + 1, base + (k + 1) * m) for k in range(n)]
        for a, b in pairs[m]:
            counts.update((a, b))
    return spec, sorted(counts), pairs


def measure_channel_multiple(
    *, device: str | torch.device = "cpu", timer: Timer | None = None, passes: int | None = None, flat: float = 0.95
) -> int:
    """Return the channel multiple the device runs well (1, 2, 4, ... 64), measured.

    A 3x3 conv (c -> c channels, 28x28, batch 1 on the CPU with one thread, 64 in bf16 on CUDA) is
    timed at the counts of `channel_probe`; a multiple m is *flat* when, over its blocks, the
    median of time(first) / time(last) is at least `flat` (rounding up to m costs nothing); the
    largest flat multiple is returned. Interleaved passes (the minimum per count is kept) keep
    other processes' noise out. The result is cached per device for the process; the environment
    variable PRUNEKIT_CHANNEL_MULTIPLE pins it without measuring. CPU cost: well under 2 s.
    """
    dev = torch.device(device)
    pinned = os.environ.get(ENV_MULTIPLE)
    if pinned:
        try:
            value = int(pinned)
        except ValueError:
            value = 0
        if value < 1:
            raise UserError(f"environment variable {ENV_MULTIPLE}={pinned!r} must be a positive integer")
        return value
    timer = timer or (_TIMER_OVERRIDE[-1] if _TIMER_OVERRIDE else None)
    cacheable = timer is None
    key = _device_key(dev)
    if cacheable and key in _MULTIPLE_CACHE:
        return _MULTIPLE_CACHE[key]
    if timer is None:
        # One thread on the CPU: the kernels' blocking is the same at any thread count, and a
        # single thread is far less disturbed by other processes on a shared machine.
        timer = DeviceTimer(device=dev, batch_size=1 if dev.type == "cpu" else 64, repeats=3, warmup=1,
                            num_threads=1 if dev.type == "cpu" else None, min_sample_ms=0.5)
    spec, counts, pairs = channel_probe(dev)
    spec = LayerSpec(spec.kind, spec.in_channels, spec.out_channels, spec.kernel_size, spec.stride, spec.padding,
                     spec.dilation, spec.groups, spec.bias, spec.input_size, getattr(timer, "batch_size", spec.batch_size))
    passes = passes or (3 if dev.type == "cpu" else 2)
    times = {c: math.inf for c in counts}
    for _ in range(passes):
        for c in counts:
            times[c] = min(times[c], timer.layer_ms(spec.with_channels(c, c)))
    multiple = 1
    for m in MULTIPLES:
        ratios = [times[a] / times[b] for a, b in pairs[m] if times[b] > 0]
        if ratios and statistics.median(ratios) >= flat:
            multiple = m
    if cacheable:
        _MULTIPLE_CACHE[key] = multiple
    return multiple


@dataclass(frozen=True)
class RoundTo:
    """How a `round_to` setting was resolved: `value` (None = no rounding), what was measured, and why."""

    asked: Any
    value: int | None
    measured: int | None = None
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Return the resolution as plain data (for metrics.json)."""
        return asdict(self)


def resolve_round_to(
    round_to: int | str | None,
    *,
    model: nn.Module,
    example_inputs: torch.Tensor,
    target: Target | str | None = None,
    ignore: Sequence[str | nn.Module] = (),
    device: str | torch.device | None = None,
    timer: Timer | None = None,
) -> RoundTo:
    """Return the channel multiple to use for `round_to` (None, a positive integer or "auto").

    "auto" measures the device's multiple (`measure_channel_multiple`) and then keeps it only
    where it fits the model: the largest power of two not above the measured multiple and not
    above a quarter of the smallest prunable group (a 16-channel group keeps multiples of 4,
    never 0 channels). A `channels=` target is a per-group fraction that rounding would change,
    so "auto" leaves it exact (pass an integer to round anyway).
    """
    if round_to is None:
        return RoundTo(asked=None, value=None, reason="no rounding asked")
    if isinstance(round_to, bool):
        raise UserError(f"round_to={round_to!r} must be a positive integer or 'auto'")
    if isinstance(round_to, int):
        if round_to < 1:
            raise UserError(f"round_to={round_to!r} must be a positive integer or 'auto'")
        return RoundTo(asked=round_to, value=round_to if round_to > 1 else None, reason="given")
    if round_to != "auto":
        raise UserError(f"round_to={round_to!r} must be a positive integer or 'auto'")
    if target is not None and Target.parse(target).unit == "channels":
        return RoundTo(asked="auto", value=None, reason="a channels target is exact per group; not rounded")
    dev = torch.device(device) if device is not None else model_device(model)
    measured = measure_channel_multiple(device=dev, timer=timer)
    sizes = [g.size for g in structure.channel_groups(model, example_inputs, ignore=ignore)]
    if not sizes:
        return RoundTo(asked="auto", value=None, measured=measured, reason="no prunable groups")
    limit = max(1, min(sizes) // 4)
    value = 1
    while value * 2 <= min(measured, limit):
        value *= 2
    reason = f"measured multiple {measured} on {dev.type}"
    if value < measured:
        reason += f"; smallest prunable group has {min(sizes)} channels, so {value}"
    return RoundTo(asked="auto", value=value if value > 1 else None, measured=measured, reason=reason)


# --------------------------------------------------------------------------------------------
# latency targets


def exact_fraction(removed: int, size: int) -> float:
    """Return the ratio that makes Torch-Pruning remove exactly `removed` of `size` channels.

    MetaPruner keeps int(size * (1 - ratio)) channels; aiming half a channel past the count
    makes float rounding harmless.
    """
    if removed <= 0:
        return 0.0
    return (removed - 0.5) / size


@dataclass
class _Layer:
    module: nn.Module
    spec: LayerSpec
    depthwise: bool
    ins: list[tuple[int, float]] = field(default_factory=list)   # (group index, in-dims per group channel)
    outs: list[tuple[int, float]] = field(default_factory=list)  # (group index, out-dims per group channel)

    def spec_at(self, removed: Sequence[int], override: tuple[int, int] | None = None) -> LayerSpec:
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


class _Plan:
    """The layers' lookup-table view of a model: which group cuts which layer's inputs and outputs."""

    def __init__(self, model: nn.Module, example_inputs: torch.Tensor, *, importance: structure.Importance,
                 ignore: Sequence[str | nn.Module], round_to: int | None, batch_size: int, max_ratio: float,
                 protected: structure.Protected = None) -> None:
        graph = structure.build_graph(model, example_inputs)
        self.groups = [g for g in structure.channel_groups(model, example_inputs, ignore=ignore, graph=graph, protected=protected)
                       if g.root_name != "?"]
        self.protected = protected
        shapes = _input_shapes(model, example_inputs)
        index: dict[nn.Module, _Layer] = {}
        for m, shape in shapes.items():
            if type(m) in (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear):
                depthwise = isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1 and m.groups == m.in_channels == m.out_channels
                index[m] = _Layer(m, LayerSpec.of(m, shape, batch_size=batch_size), depthwise)
        self.layers = list(index.values())
        self.touch: list[list[int]] = []
        self.kept: list[torch.Tensor] = []
        self.weight: list[int] = []
        self.step: list[int] = []
        self.min_keep: list[int] = []
        position = {id(layer): i for i, layer in enumerate(self.layers)}
        p = round_to or 1
        for gi, g in enumerate(self.groups):
            seen: set[tuple[int, bool]] = set()
            touched: set[int] = set()
            for dep, idxs in g.group:
                target = dep.target.module
                layer = index.get(target) if isinstance(target, nn.Module) else None
                if layer is None:
                    continue
                is_out = bool(graph.is_out_channel_pruning_fn(dep.handler))
                key = (id(target), is_out)
                if key in seen:
                    continue
                seen.add(key)
                (layer.outs if is_out else layer.ins).append((gi, len(idxs) / g.size))
                touched.add(position[id(layer)])
            self.touch.append(sorted(touched))
            # every conv/linear whose outputs the group indexes loses those features
            self.weight.append(max(1, sum(1 for layer in self.layers if any(o[0] == gi for o in layer.outs))))
            scores = importance(g.group)
            scores = torch.as_tensor(scores, dtype=torch.float64).detach().flatten().cpu().clamp(min=0)
            if scores.numel() != g.size or not scores.sum() > 0:
                scores = torch.ones(g.size, dtype=torch.float64)
            # kept[r] = importance left after removing the r least important channels
            ordered = torch.sort(scores).values
            self.kept.append(ordered.sum() - torch.cat([ordered.new_zeros(1), ordered.cumsum(0)]))
            self.step.append(p * max(1, round(g.size / (16 * p))))
            self.min_keep.append(max(p, math.ceil(g.size * (1 - max_ratio)), 1))

    def next_removed(self, gi: int, removed: int) -> int | None:
        size = self.groups[gi].size
        kept = size - removed
        q = self.step[gi]
        nxt = ((kept - 1) // q) * q
        if nxt < self.min_keep[gi]:
            return None
        return size - nxt


def _input_shapes(model: nn.Module, example_inputs: torch.Tensor) -> dict[nn.Module, tuple[int, ...]]:
    shapes: dict[nn.Module, tuple[int, ...]] = {}

    def record(module: nn.Module, args: Any, _output: Any) -> None:
        shapes.setdefault(module, tuple(args[0].shape))

    hooks = [
        m.register_forward_hook(record)
        for m in model.modules()
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))
    ]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            inputs.call(model, example_inputs)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return shapes


@dataclass
class LatencyReport:
    """What `prune_to_latency` measured: times in milliseconds on `device` at `batch_size`."""

    device: str
    batch_size: int
    target: float
    before_ms: float
    after_ms: float
    achieved: float
    predicted_before_ms: float
    predicted_after_ms: float
    attempts: list[dict[str, float]] = field(default_factory=list)
    kept: dict[str, int] = field(default_factory=dict)
    layer_timings: int = 0
    noise: float = 0.0  # max / min - 1 of the unpruned model's repeated measurements

    def to_dict(self) -> dict[str, Any]:
        """Return the report as plain data (for metrics.json)."""
        return asdict(self)


def prune_to_latency(
    model: nn.Module,
    example_inputs: torch.Tensor,
    *,
    importance: structure.Importance,
    target: Target | str | float,
    ignore: Sequence[str | nn.Module] = (),
    round_to: int | None = None,
    device: str | torch.device | None = None,
    batch_size: int | None = None,
    timer: Timer | None = None,
    tolerance: float = 0.02,
    max_ratio: float = 0.9,
    max_attempts: int = 6,
    pairs: int = 3,
    report: dict[str, Any] | None = None,
    protected: structure.Protected = None,
) -> nn.Module:
    """Remove channels from `model` in place until its *measured* latency drops by `target`; return it.

    `target` is `latency=F` (or F): the fraction of the forward time removed, measured on `device`
    (default: where the model is) at `batch_size` (default 1 on the CPU, 128 on CUDA). The
    channels removed are those that buy the most time per unit of importance lost (the log of
    the share of its group's importance a step removes, once per layer the group feeds), one
    group step at a time (steps are multiples of `round_to`), predicted from a cached table
    of measured per-layer times; the real pruned network is then
    timed (alternating with the original `pairs` times, the fastest of each kept) and the
    prediction re-calibrated, up to `max_attempts` times, until the measured fraction removed
    is at least target - `tolerance`. No group loses more than `max_ratio` of
    its channels. When `report` (a dict) is given it is filled with a `LatencyReport`'s data.
    `protected` modules (default: every output layer) keep their output size.
    """
    value = _latency_value(target)
    protected = structure.protected_names(model, example_inputs, protected)
    dev = torch.device(device) if device is not None else model_device(model)
    timer = timer or default_timer(dev, batch_size=batch_size)
    plan = _Plan(model, example_inputs, importance=importance, ignore=ignore, round_to=round_to,
                 batch_size=getattr(timer, "batch_size", 1), max_ratio=max_ratio, protected=protected)
    table: dict[LayerSpec, float] = {}

    def layer_time(spec: LayerSpec) -> float:
        if spec not in table:
            table[spec] = float(timer.layer_ms(spec))
        return table[spec]

    removed = [0] * len(plan.groups)
    current = [layer_time(layer.spec_at(removed)) for layer in plan.layers]
    predicted0 = sum(current)
    before_ms = math.inf
    goal = predicted0 * (1 - value)
    attempts: list[dict[str, float]] = []
    base_times: list[float] = []
    best: tuple[float, list[int], float] | None = None  # (achieved, removed, ms)

    def candidate(gi: int) -> tuple[float, int] | None:
        nxt = plan.next_removed(gi, removed[gi])
        if nxt is None:
            return None
        saved = 0.0
        for li in plan.touch[gi]:
            layer = plan.layers[li]
            saved += current[li] - layer_time(layer.spec_at(removed, override=(gi, nxt)))
        # The price of a step is the log of the share of the group's importance it removes, once
        # per layer whose outputs the group indexes: a few unimportant channels are cheap, a
        # residual stream feeding many layers is dear, and emptying a group costs without bound.
        before, after = float(plan.kept[gi][removed[gi]]), float(plan.kept[gi][nxt])
        lost = plan.weight[gi] * math.log(before / after) if after > 0 else math.inf
        return saved / max(lost, 1e-12), nxt

    for _ in range(max_attempts):
        while sum(current) > goal:
            options = [(c, gi) for gi in range(len(plan.groups)) if (c := candidate(gi)) is not None]
            if not options:
                break
            positive = [o for o in options if o[0][0] > 0]
            (score, nxt), gi = max(positive or options, key=lambda o: o[0][0])
            removed[gi] = nxt
            for li in plan.touch[gi]:
                current[li] = layer_time(plan.layers[li].spec_at(removed))
        trial = copy.deepcopy(model)
        _remove(trial, example_inputs, plan, removed, importance, ignore)
        # Time the original and the candidate alternately, keeping each one's fastest: load that
        # comes and goes on a shared machine then hits both alike.
        base_now, ms = math.inf, math.inf
        for _ in range(pairs):
            base_times.append(float(timer.model_ms(model, example_inputs)))
            base_now = min(base_now, base_times[-1])
            ms = min(ms, float(timer.model_ms(trial, example_inputs)))
        before_ms = min(before_ms, base_now)
        achieved = 1.0 - ms / before_ms if before_ms > 0 else 0.0
        attempts.append({"predicted_ms": sum(current), "measured_ms": ms, "achieved": achieved})
        if best is None or achieved > best[0]:
            best = (achieved, list(removed), ms)
        if achieved >= value - tolerance or all(plan.next_removed(gi, removed[gi]) is None for gi in range(len(plan.groups))):
            break
        # The table misses what the layers do not time (norms, activations, adds): scale the goal
        # by what the measurement says is still missing (at most halving it per attempt, so one
        # disturbed measurement cannot empty the network).
        goal = sum(current) * max(0.5, (before_ms * (1 - value)) / ms)
    assert best is not None
    achieved, removed, ms = best
    noise = max(base_times) / min(base_times) - 1 if base_times and min(base_times) > 0 else 0.0
    if noise > 0.25:
        warnings.warn(
            f"the unpruned model's measured time varied by {noise:.0%} between repeats on {dev.type}: the device is "
            "busy, and the latency reached (and so the channels removed) is not reliable", stacklevel=2,
        )
    if achieved < value - tolerance:
        warnings.warn(
            f"latency target {value:g} reached only {achieved:.3f} (measured on {dev.type}; "
            f"no group can lose more than {max_ratio:.0%} of its channels)", stacklevel=2,
        )
    _remove(model, example_inputs, plan, removed, importance, ignore)
    if report is not None:
        report.update(LatencyReport(
            device=str(dev), batch_size=getattr(timer, "batch_size", 1), target=value, before_ms=before_ms, after_ms=ms,
            achieved=achieved, predicted_before_ms=predicted0,
            predicted_after_ms=sum(layer_time(layer.spec_at(removed)) for layer in plan.layers),
            attempts=attempts, kept={g.root_name: g.size - r for g, r in zip(plan.groups, removed)}, layer_timings=len(table),
            noise=noise,
        ).to_dict())
    return model


def _latency_value(target: Target | str | float) -> float:
    if isinstance(target, (int, float)) and not isinstance(target, bool):
        target = Target("latency", float(target))
    target = Target.parse(target)
    if target.unit != "latency":
        raise UserError(f"prune_to_latency takes a latency=FRACTION target, not {target}")
    return target.value


def _remove(model: nn.Module, example_inputs: torch.Tensor, plan: _Plan, removed: list[int],
            importance: structure.Importance, ignore: Sequence[str | nn.Module]) -> None:
    ratios = {g.root_name: exact_fraction(r, g.size) for g, r in zip(plan.groups, removed) if r > 0}
    if ratios:
        structure.remove_channels(model, example_inputs, importance=importance, ratios=ratios, ignore=ignore, round_to=None,
                                  protected=plan.protected)


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
    model: nn.Module, example_inputs: torch.Tensor, *, device: str | torch.device = "cpu", repeats: int = 10, warmup: int = 2
) -> tuple[list[LayerTime], float]:
    """Return (per-leaf-module times, total forward ms), measured with forward hooks on `device`.

    Each leaf module's time is taken between its pre- and post-forward hooks (with a CUDA
    synchronisation around it on GPUs), summed per pass, median over `repeats` passes; `share` is
    its fraction of the median total. Time outside leaf modules (functional adds, reshapes) is
    the total minus the layers' sum. A copy of the model is timed, in eval mode.
    """
    dev = torch.device(device)
    net = copy.deepcopy(model).eval().to(dev)
    x = example_inputs.to(dev)
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
                net(x)
            for _ in range(max(1, repeats)):
                spent.clear()
                sync()
                t0 = time.perf_counter()
                net(x)
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
