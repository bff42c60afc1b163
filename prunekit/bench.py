"""Measured latency: warm-up, repeats, median, with `torch.utils.benchmark`.

On CUDA: cudnn.benchmark, bf16 autocast and channels_last, as deployment would run it. The
number is measured on this machine and device; label it so wherever it is printed.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import statistics

import torch
from torch import nn

# torch.utils.benchmark imports cpp_extension, which warns about CUDA_HOME on CPU-only machines;
# that line is noise for a user timing a model.
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
from torch.utils import benchmark  # noqa: E402

from prunekit import inputs  # noqa: E402


def _channels_last(x):
    if isinstance(x, torch.Tensor):
        return x.to(memory_format=torch.channels_last) if x.dim() == 4 else x
    return type(x)(_channels_last(v) for v in x)


def latency(
    model: nn.Module,
    example_inputs: torch.Tensor | tuple[torch.Tensor, ...],
    *,
    device: str = "cpu",
    batch_size: int = 1,
    repeats: int = 20,
    warmup: int = 3,
    compile: bool = False,
    num_threads: int | None = None,
) -> float:
    """Return the median forward latency in milliseconds for one batch of `batch_size`.

    `example_inputs` gives the per-sample shape (its batch dimension is replaced). The model is
    copied, put in eval mode and moved to `device`; the caller's model is not touched.
    """
    dev = torch.device(device)
    net = copy.deepcopy(model).eval().to(dev)
    x = inputs.like(example_inputs, batch_size=batch_size, fill="randn", device=dev)
    cuda = dev.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
        net = net.to(memory_format=torch.channels_last)
        x = _channels_last(x)
    if compile:
        net = torch.compile(net)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()

    def forward() -> None:
        with torch.inference_mode(), autocast:
            inputs.call(net, x)

    for _ in range(warmup):
        forward()
    timer = benchmark.Timer(
        stmt="forward()",
        globals={"forward": forward},
        num_threads=num_threads or torch.get_num_threads(),
    )
    times = [timer.timeit(number=1).median for _ in range(repeats)]
    return statistics.median(times) * 1e3
