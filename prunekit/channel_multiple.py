"""round_to="auto": the channel multiple a device's kernels run well, measured and cached.

Kernels process channels in blocks; a conv with 65 channels can cost what one with 72 costs.
`measure_channel_multiple` times one representative conv at a range of channel counts on the
named runtime (eager PyTorch, ONNX Runtime, torch.compile) and finds the block size where its
time steps. The result is cached per (device, runtime, dtype): in the process and on disk in the
user cache directory (`~/.cache/prunekit/channel_multiple.json`, written atomically), so it is
measured once per machine; PRUNEKIT_CHANNEL_MULTIPLE pins it without measuring.
`resolve_round_to` turns a method's `round_to` setting (None, an integer, "auto") into the value used.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit import limits, structure
from prunekit.errors import UserError
from prunekit.planner import LayerSpec
from prunekit.runtimes import DeviceTimer, Timer, check_runtime, model_device, timer_override
from prunekit.targets import Target

#: candidate channel multiples, smallest first (1 = no rounding)
MULTIPLES = (2, 4, 8, 16, 32, 64)
#: environment variable that pins round_to="auto" (skips the measurement): an integer >= 1
ENV_MULTIPLE = "PRUNEKIT_CHANNEL_MULTIPLE"
#: file name of the on-disk cache, in the user cache directory
CACHE_FILE = "channel_multiple.json"

_MULTIPLE_CACHE: dict[str, int] = {}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cache_key(device: str | torch.device, runtime: str = "eager") -> str:
    """Return the cache key of a measured multiple: device (CPU model or GPU name), runtime and dtype."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(dev)}|{runtime}|bfloat16"
    return f"cpu:{_cpu_name()}|{runtime}|float32"


def cache_path() -> Path:
    """Return the on-disk cache file of measured multiples (in the user cache directory)."""
    from prunekit.data.paths import user_cache_home

    return user_cache_home() / CACHE_FILE


def _disk_cache() -> dict[str, Any]:
    try:
        data = json.loads(cache_path().read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _store(key: str, multiple: int) -> None:
    _MULTIPLE_CACHE[key] = multiple
    try:
        from prunekit.atomic import atomic_write

        data = _disk_cache()
        data[key] = {"multiple": multiple, "torch": torch.__version__}
        atomic_write(cache_path(), json.dumps(data, indent=1, sort_keys=True))
    except OSError:  # a read-only home: the in-process cache still holds it
        pass


def cached_multiple(device: str | torch.device, runtime: str = "eager") -> int | None:
    """Return the cached multiple for (device, runtime, dtype) (process, then disk), or None."""
    key = cache_key(device, runtime)
    if key in _MULTIPLE_CACHE:
        return _MULTIPLE_CACHE[key]
    entry = _disk_cache().get(key)
    if isinstance(entry, dict) and isinstance(entry.get("multiple"), int) and entry["multiple"] >= 1:
        _MULTIPLE_CACHE[key] = entry["multiple"]
        return entry["multiple"]
    return None


def pinned_multiple() -> int | None:
    """Return the multiple PRUNEKIT_CHANNEL_MULTIPLE pins, or None (a bad value is a `UserError`)."""
    pinned = os.environ.get(ENV_MULTIPLE)
    if not pinned:
        return None
    value = limits.positive_int_text(pinned)
    if value is None:
        raise UserError(f"environment variable {ENV_MULTIPLE}={pinned!r} must be a positive integer")
    return value


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
    *, device: str | torch.device = "cpu", runtime: str = "eager", timer: Timer | None = None,
    passes: int | None = None, flat: float = 0.95, cache: bool = True,
) -> int:
    """Return the channel multiple the device runs well on `runtime` (1, 2, 4, ... 64), measured.

    A 3x3 conv (c -> c channels, 28x28, batch 1 on the CPU with one thread, 64 in bf16 on CUDA) is
    timed at the counts of `channel_probe`; a multiple m is *flat* when, over its blocks, the
    median of time(first) / time(last) is at least `flat` (rounding up to m costs nothing); the
    largest flat multiple is returned. Interleaved passes (the minimum per count is kept) keep
    other processes' noise out. The result is cached per (device, runtime, dtype) in the process
    and on disk (`cache=False` measures again); PRUNEKIT_CHANNEL_MULTIPLE pins it without
    measuring. A `timer` (or `use_timer`) measures without the cache. CPU cost: about 2 s.
    """
    dev = torch.device(device)
    runtime = check_runtime(runtime, dev)
    pinned = pinned_multiple()
    if pinned is not None:
        return pinned
    timer = timer or timer_override()
    cacheable = timer is None
    if cacheable and cache:
        hit = cached_multiple(dev, runtime)
        if hit is not None:
            return hit
    if timer is None:
        # One thread on the CPU: the kernels' blocking is the same at any thread count, and a
        # single thread is far less disturbed by other processes on a shared machine.
        timer = DeviceTimer(device=dev, runtime=runtime, batch_size=1 if dev.type == "cpu" else 64, repeats=3, warmup=1,
                            num_threads=1 if dev.type == "cpu" else None, min_sample_ms=0.5)
    spec, counts, pairs = channel_probe(dev)
    spec = spec.with_batch(getattr(timer, "batch_size", spec.batch_size))
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
        _store(cache_key(dev, runtime), multiple)
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
    runtime: str = "eager",
    timer: Timer | None = None,
    graph: Any = None,
) -> RoundTo:
    """Return the channel multiple to use for `round_to` (None, a positive integer or "auto").

    "auto" measures the device's multiple (`measure_channel_multiple`) and then keeps it only
    where it fits the model: the largest power of two not above the measured multiple and not
    above a quarter of the smallest prunable group (a 16-channel group keeps multiples of 4,
    never 0 channels). A `channels=` target is a per-group fraction that rounding would change,
    so "auto" leaves it exact (pass an integer to round anyway). The multiple is measured on
    `runtime` (eager, onnxruntime, compile: where the model will run). `graph`: the model's
    `structure.build_graph`, when the caller has one (the group sizes are read from it, no trace).
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
    measured = measure_channel_multiple(device=dev, runtime=runtime, timer=timer)
    sizes = [g.size for g in structure.channel_groups(model, example_inputs, ignore=ignore, graph=graph)]
    if not sizes:
        return RoundTo(asked="auto", value=None, measured=measured, reason="no prunable groups")
    limit = max(1, min(sizes) // 4)
    value = 1
    while value * 2 <= min(measured, limit):
        value *= 2
    reason = f"measured multiple {measured} on {dev.type}, {runtime}"
    if value < measured:
        reason += f"; smallest prunable group has {min(sizes)} channels, so {value}"
    return RoundTo(asked="auto", value=value if value > 1 else None, measured=measured, reason=reason)
