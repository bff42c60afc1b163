"""Measured latency on a named runtime: warm-up, repeats, median.

Runtimes (`prunekit.runtimes`): `eager` (default; PyTorch, timed with `torch.utils.benchmark`; on
CUDA cudnn.benchmark, bf16 autocast and channels_last, as deployment would run it),
`onnxruntime` (the model exported to ONNX and run by an ONNX Runtime CPU session; the `onnx`
extra) and `compile` (torch.compile). The number is measured on this machine, device and runtime;
label it so wherever it is printed (`describe`).
"""

from __future__ import annotations

import logging
import statistics
import time

import torch
from torch import nn

from prunekit import inputs
from prunekit.runtimes import RUNTIMES, check_runtime, forward_fn

__all__ = ["latency", "describe", "RUNTIMES"]


def latency(
    model: nn.Module,
    example_inputs: torch.Tensor | tuple[torch.Tensor, ...],
    *,
    device: str = "cpu",
    batch_size: int = 1,
    repeats: int = 20,
    warmup: int = 3,
    runtime: str = "eager",
    compile: bool = False,
    num_threads: int | None = None,
) -> float:
    """Return the median forward latency in milliseconds for one batch of `batch_size` on `runtime`.

    `example_inputs` gives the per-sample shape (its batch dimension is replaced). The model is
    copied, put in eval mode and moved to `device`; the caller's model is not touched. `runtime`
    is "eager", "onnxruntime" (CPU) or "compile"; `compile=True` is the older spelling of
    runtime="compile". `num_threads` (CPU) defaults to torch's current setting.
    """
    if compile and runtime == "eager":
        runtime = "compile"
    runtime = check_runtime(runtime, device)
    dev = torch.device(device)
    x = inputs.like(example_inputs, batch_size=batch_size, fill="randn", device="cpu")
    threads = num_threads or torch.get_num_threads()
    before = torch.get_num_threads()
    if dev.type == "cpu":
        torch.set_num_threads(threads)
    try:
        forward = forward_fn(model, x, runtime=runtime, device=dev, threads=threads)
        for _ in range(warmup):
            forward()
        if runtime == "onnxruntime":
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                forward()
                times.append(time.perf_counter() - t0)
        else:
            # torch.utils.benchmark imports cpp_extension, which warns about CUDA_HOME on CPU-only
            # machines; that line is noise for a user timing a model.
            logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
            from torch.utils import benchmark

            timer = benchmark.Timer(stmt="forward()", globals={"forward": forward}, num_threads=threads)
            times = [timer.timeit(number=1).median for _ in range(repeats)]
    finally:
        if dev.type == "cpu":
            torch.set_num_threads(before)
    return statistics.median(times) * 1e3


def describe(*, device: str = "cpu", runtime: str = "eager", batch_size: int = 1, threads: int | None = None) -> str:
    """Return the label every printed latency carries, e.g. "cpu, eager, batch 1, 1 thread"."""
    parts = [str(device), runtime or "eager", f"batch {batch_size}"]
    if str(device).startswith("cpu"):
        n = threads or torch.get_num_threads()
        parts.append(f"{n} thread{'s' if n != 1 else ''}")
    elif runtime != "onnxruntime":
        parts.append("bf16, channels_last")
    return ", ".join(parts)
