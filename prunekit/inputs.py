"""Example inputs that may be one tensor or a tuple of tensors (a model with several inputs).

Everything that traces, measures or times a model takes `example_inputs` in either form and
goes through these helpers instead of slicing or reading `.shape` itself:

    inputs.batch_size(x)                  # the first tensor's batch dimension
    inputs.take(x, 1)                     # the first sample of every tensor
    inputs.shapes(x)                      # per-sample shapes: [3, 32, 32] or [[3, 32, 32], [4]]
    inputs.like(x, batch_size=8, fill="randn", device="cuda")   # same structure, new tensors
    inputs.call(model, x)                 # model(x), or model(*x) for a tuple
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

Inputs = Any  # a tensor, or a tuple/list of tensors


def _is_multi(x: Inputs) -> bool:
    return isinstance(x, (tuple, list))


def first(x: Inputs) -> torch.Tensor:
    """Return the first tensor of `x` (x itself when it is a tensor)."""
    while _is_multi(x):
        if not x:
            raise ValueError("example inputs are an empty tuple")
        x = x[0]
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"example inputs must be a tensor or a tuple of tensors, got {type(x).__name__}")
    return x


def batch_size(x: Inputs) -> int:
    """Return the batch dimension of `x`'s first tensor (1 for a 0-d tensor)."""
    t = first(x)
    return int(t.shape[0]) if t.dim() > 0 else 1


def take(x: Inputs, n: int) -> Inputs:
    """Return the first `n` samples of every tensor of `x`, detached, in the same structure."""
    if isinstance(x, torch.Tensor):
        return x[:n].detach()
    if _is_multi(x):
        return type(x)(take(v, n) for v in x)
    return x


def to(x: Inputs, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> Inputs:
    """Return `x` with every tensor on `device` (floating tensors also cast to `dtype` when given)."""
    if isinstance(x, torch.Tensor):
        if dtype is not None and x.is_floating_point():
            return x.to(device=device, dtype=dtype)
        return x.to(device) if device is not None else x
    if _is_multi(x):
        return type(x)(to(v, device, dtype) for v in x)
    return x


def shapes(x: Inputs) -> list[int] | list[list[int]]:
    """Return the per-sample shape of `x` (batch dimension dropped): a list of ints for one tensor,
    a list of such lists for a tuple."""
    if isinstance(x, torch.Tensor):
        return [int(d) for d in x.shape[1:]]
    return [shapes(v) for v in x]


def like(x: Inputs, *, batch_size: int, fill: str = "randn", device: str | torch.device | None = None,
         dtype: torch.dtype | None = None) -> Inputs:
    """Return new inputs with `x`'s structure and per-sample shapes, `batch_size` samples each.

    `fill` is "randn", "zeros" or "ones" for floating tensors; integer tensors (e.g. token ids) are
    zeros of their dtype.
    """
    if _is_multi(x):
        return type(x)(like(v, batch_size=batch_size, fill=fill, device=device, dtype=dtype) for v in x)
    dev = x.device if device is None else torch.device(device)
    shape = (batch_size, *x.shape[1:])
    if not x.is_floating_point():
        return torch.zeros(shape, dtype=x.dtype, device=dev)
    kind = dtype or x.dtype
    if fill == "randn":
        return torch.randn(shape, dtype=kind, device=dev)
    if fill == "ones":
        return torch.ones(shape, dtype=kind, device=dev)
    return torch.zeros(shape, dtype=kind, device=dev)


def from_shapes(op: dict[str, Any]) -> Inputs:
    """Return zero inputs (batch 1) for a recorded op: `input_shapes` (a tuple of inputs) or `input_shape` (one)."""
    if "input_shapes" in op:
        return tuple(torch.zeros(1, *s) for s in op["input_shapes"])
    return torch.zeros(1, *op["input_shape"])


def record_shapes(x: Inputs) -> dict[str, Any]:
    """Return the shape fields an op records: {"input_shape": [...]} for one tensor (as before), or
    {"input_shapes": [[...], ...]} for a tuple of inputs."""
    if isinstance(x, torch.Tensor):
        return {"input_shape": shapes(x)}
    return {"input_shapes": shapes(x)}


def call(model: nn.Module, x: Inputs) -> Any:
    """Return `model(x)`, unpacking a tuple of inputs into positional arguments."""
    return model(*x) if isinstance(x, tuple) else model(x)


def tensors(outputs: Any) -> list[torch.Tensor]:
    """Return every tensor in `outputs` (a tensor, tuples, lists, dicts, dataclasses), in order."""
    if isinstance(outputs, torch.Tensor):
        return [outputs]
    if isinstance(outputs, dict):
        outputs = list(outputs.values())
    if isinstance(outputs, (tuple, list)):
        return [t for v in outputs for t in tensors(v)]
    if hasattr(outputs, "__dataclass_fields__"):
        return [t for k in outputs.__dataclass_fields__ for t in tensors(getattr(outputs, k))]
    return []


def output_shapes(outputs: Any) -> list[tuple[int, ...]]:
    """Return the shapes of every tensor in `outputs` (see `tensors`), in order."""
    return [tuple(t.shape) for t in tensors(outputs)]
