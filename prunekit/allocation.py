"""Hardware-aware allocation: measured latency targets and channel multiples the device runs well.

Counting MACs does not tell how fast a pruned network runs: a conv with 65 channels can cost as
much as one with 72 (the kernels work in blocks of 8, 16, 32 or 64 channels), and a channel in a
high-resolution layer costs more time than one in a 7x7 layer. Everything here is *measured* on
the device and runtime at hand (CPU or CUDA; eager, ONNX Runtime or torch.compile), never assumed.

This module gathers the public names of three modules, one concern each:

- `prunekit.runtimes`: runtimes and timers (`DeviceTimer`, `use_timer`, `forward_fn`, `RUNTIMES`);
- `prunekit.channel_multiple`: `round_to="auto"` (`measure_channel_multiple`, `resolve_round_to`,
  cached per device, runtime and dtype);
- `prunekit.latency_search`: `latency=` targets (`prune_to_latency`) and `profile_layers`.
"""

from prunekit.channel_multiple import (  # noqa: F401
    ENV_MULTIPLE,
    MULTIPLES,
    RoundTo,
    cache_key,
    cache_path,
    cached_multiple,
    channel_probe,
    measure_channel_multiple,
    resolve_round_to,
)
from prunekit.latency_search import (  # noqa: F401
    MAX_MACS_REMOVED,
    LatencyReport,
    LayerTime,
    exact_fraction,
    profile_layers,
    prune_to_latency,
)
from prunekit.planner import LayerSpec  # noqa: F401
from prunekit.runtimes import (  # noqa: F401
    RUNTIMES,
    DeviceTimer,
    Timer,
    check_runtime,
    default_timer,
    forward_fn,
    model_device,
    use_timer,
)

__all__ = [
    "ENV_MULTIPLE", "MULTIPLES", "RoundTo", "cache_key", "cache_path", "cached_multiple", "channel_probe",
    "measure_channel_multiple", "resolve_round_to", "MAX_MACS_REMOVED", "LatencyReport", "LayerTime", "exact_fraction",
    "profile_layers", "prune_to_latency", "LayerSpec", "RUNTIMES", "DeviceTimer", "Timer", "check_runtime",
    "default_timer", "forward_fn", "model_device", "use_timer",
]
