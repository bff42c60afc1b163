"""Counting what a model costs: parameters, non-zero parameters, MACs, non-zero MACs, size; NetScore.

Conventions (stated wherever they are printed):
- MACs are multiply-accumulates per image (one sample) of conv, linear and matmul ops, counted
  by `torch.utils.flop_counter.FlopCounterMode` (FLOPs / 2), the fvcore convention: norms,
  activations and additions are not counted.
- `nonzero_macs` counts, for conv and linear layers, only the MACs of non-zero weights
  (dense MACs x the layer's weight density); other ops count in full.
- A unstructured zero reduces non-zero params and MACs, not dense latency.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from prunekit import inputs

_COUNTED = (nn.modules.conv._ConvNd, nn.Linear)


@dataclass(frozen=True)
class LayerCount:
    """Cost of one conv/linear layer, per image: `macs` dense, `nonzero_macs` of non-zero weights."""

    name: str
    kind: str
    out_channels: int
    params: int
    nonzero_params: int
    weights: int
    nonzero_weights: int
    macs: int
    nonzero_macs: int

    @property
    def density(self) -> float:
        """Fraction of this layer's weights (bias excluded) that are non-zero (1.0 = dense)."""
        return self.nonzero_weights / self.weights if self.weights else 1.0


@dataclass(frozen=True)
class Measurement:
    """What a model costs, per image. Counts are absolute numbers; `size_bytes` is dense storage.

    `channels` is the sum of output channels of every conv/linear layer (a structure proxy);
    `layers` holds the per-layer breakdown (`by_module()`).
    """

    params: int
    nonzero_params: int
    macs: int
    nonzero_macs: int
    channels: int
    size_bytes: int
    layers: tuple[LayerCount, ...] = field(default=(), repr=False, compare=False)
    #: the shapes of the model's output tensors in the measured forward (for shape checks)
    output_shapes: tuple[tuple[int, ...], ...] = field(default=(), repr=False, compare=False)

    def by_module(self) -> dict[str, LayerCount]:
        """Return the per-layer counts keyed by qualified module name."""
        return {layer.name: layer for layer in self.layers}

    @property
    def sparsity(self) -> float:
        """Fraction of conv/linear weights that are zero (0.0 for a dense model)."""
        total = sum(layer.weights for layer in self.layers)
        nz = sum(layer.nonzero_weights for layer in self.layers)
        return 1.0 - nz / total if total else 0.0

    def to_dict(self) -> dict[str, Any]:
        """Return the totals as a JSON-able dict (without the per-layer breakdown)."""
        d = asdict(self)
        d.pop("layers")
        d.pop("output_shapes")
        d["sparsity"] = self.sparsity
        return d


def _effective_tensors(module: nn.Module) -> list[torch.Tensor]:
    """The module's own parameters as the forward sees them (masked weights, not `*_orig`)."""
    out = []
    for pname, param in module._parameters.items():
        if param is None:
            continue
        if pname.endswith("_orig") and hasattr(module, pname[: -len("_orig")] + "_mask"):
            out.append(getattr(module, pname[: -len("_orig")]))
        else:
            out.append(param)
    return out


def _weight(module: nn.Module) -> torch.Tensor:
    return module.weight  # masked weight when torch.nn.utils.prune is attached


@torch.no_grad()
def measure(model: nn.Module, example_inputs: Any) -> Measurement:
    """Return the `Measurement` of `model` for inputs shaped like `example_inputs` (any batch size;
    a tensor or a tuple of the model's inputs, the batch size read from the first).

    Runs one forward pass in eval mode; MACs are divided by the batch size (per image).
    """
    batch = inputs.batch_size(example_inputs)
    out_shapes: dict[nn.Module, torch.Size] = {}
    hooks = [
        m.register_forward_hook(lambda mod, _i, out: out_shapes.__setitem__(mod, out.shape))
        for m in model.modules()
        if isinstance(m, _COUNTED)
    ]
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            outputs = inputs.call(model, example_inputs)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    total_macs = counter.get_total_flops() // 2 // batch

    layers = []
    saved_macs = 0
    for name, m in model.named_modules():
        if not isinstance(m, _COUNTED) or m not in out_shapes:
            continue
        w = _weight(m)
        params = sum(t.numel() for t in _effective_tensors(m))
        nonzero = sum(int(torch.count_nonzero(t)) for t in _effective_tensors(m))
        out = out_shapes[m]
        if isinstance(m, nn.Linear):
            macs = math.prod(out) // batch * m.in_features
            out_ch = m.out_features
        else:
            # each output element takes (C_in / groups) * prod(kernel) MACs
            macs = math.prod(out) // batch * (w.shape[1] * math.prod(w.shape[2:]))
            out_ch = m.out_channels
        nz_weights = int(torch.count_nonzero(w))
        nz_macs = int(round(macs * nz_weights / w.numel())) if w.numel() else macs
        saved_macs += macs - nz_macs
        layers.append(LayerCount(name, type(m).__name__, out_ch, params, nonzero, w.numel(), nz_weights, macs, nz_macs))

    params = nonzero_params = size = 0
    for module in model.modules():
        for t in _effective_tensors(module):
            params += t.numel()
            nonzero_params += int(torch.count_nonzero(t))
            size += t.numel() * t.element_size()
        for bname, buf in module._buffers.items():
            if buf is not None and not bname.endswith("_mask"):
                size += buf.numel() * buf.element_size()
    return Measurement(
        params=params,
        nonzero_params=nonzero_params,
        macs=int(total_macs),
        nonzero_macs=int(total_macs - saved_macs),
        channels=sum(layer.out_channels for layer in layers),
        size_bytes=size,
        layers=tuple(layers),
        output_shapes=tuple(inputs.output_shapes(outputs)),
    )


def achieved(before: Measurement, after: Measurement) -> dict[str, float]:
    """Return the fraction removed in every unit: channels, params, macs, nonzero_params, nonzero_macs,
    and `sparsity` (fraction of conv/linear weights that are zero in `after`)."""

    def frac(a: int, b: int) -> float:
        return 1.0 - b / a if a else 0.0

    return {
        "channels": frac(before.channels, after.channels),
        "params": frac(before.params, after.params),
        "macs": frac(before.macs, after.macs),
        "nonzero_params": frac(before.nonzero_params, after.nonzero_params),
        "nonzero_macs": frac(before.nonzero_macs, after.nonzero_macs),
        "sparsity": after.sparsity,
    }


def netscore(top1_percent: float, params: float, macs: float) -> float:
    """Return NetScore (Wong 2019) in dB: 20 * log10(a^2 / (sqrt(p) * sqrt(m))).

    `a` is top-1 accuracy in percent (0-100), `p` the parameter count in millions and `m` the
    MACs in billions; pass `params` and `macs` as absolute counts (they are scaled here).
    Higher is better. Returns NaN when any input is not positive.
    """
    p = params / 1e6
    m = macs / 1e9
    if top1_percent <= 0 or p <= 0 or m <= 0:
        return float("nan")
    return 20.0 * math.log10(top1_percent**2 / (math.sqrt(p) * math.sqrt(m)))
