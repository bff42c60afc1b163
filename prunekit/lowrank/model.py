"""Model-level low-rank operations: factorise, truncate, convert to plain layers, costs, the
regularizer, the plain pairs left in place, and the replay of a recorded "lowrank" op."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from prunekit import inputs
from prunekit.errors import UserError
from prunekit.lowrank.geometry import ConvGeometry, LinearGeometry
from prunekit.lowrank.layers import SVD_TYPES, SVDConv2d, SVDLinear, _SVDLayer, geometry_of
from prunekit.lowrank.rank import FORMS, INITS, MODES, _EPS, factorisable, orthogonality_penalty, pair_params, saves_params, sparsity_penalty


def svd_layers(model: nn.Module) -> dict[str, _SVDLayer]:
    """Return the factorised (training-form) layers of `model` by qualified name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, SVD_TYPES)}


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _record(model: nn.Module, layers: list[dict[str, Any]]) -> None:
    if layers:
        model.prunekit_ops = [*getattr(model, "prunekit_ops", []), {"op": "lowrank", "layers": layers}]


def factorise(model: nn.Module, *, mode: str = "channel", init: str = "svd", skip: Sequence[nn.Module] = (),
              seed: int = 0) -> dict[str, str]:
    """Replace every factorisable Conv2d and Linear of `model` (in place) by its full-rank training form.

    `skip` lists modules to leave as they are. Returns {name: why} for the conv/linear layers
    left dense (grouped convs, non-zero padding modes, `skip`). The change is recorded on
    `model.prunekit_ops` so that `prunekit.save` / `load` rebuild it.
    """
    if mode not in MODES:
        raise UserError(f"mode {mode!r} is not one of {', '.join(MODES)}")
    if init not in INITS:
        raise UserError(f"init {init!r} is not one of {', '.join(INITS)}")
    gen = torch.Generator().manual_seed(seed)
    skipped_ids = {id(m) for m in skip}
    left: dict[str, str] = {}
    done: list[dict[str, Any]] = []
    for name, module in list(model.named_modules()):
        if not isinstance(module, (nn.Conv2d, nn.Linear)) or isinstance(module, SVD_TYPES):
            continue
        why = "ignored" if id(module) in skipped_ids else factorisable(module)
        if why:
            left[name] = why
            continue
        if isinstance(module, nn.Linear):
            new = SVDLinear.from_linear(module, mode=mode, init=init, generator=gen)
        else:
            new = SVDConv2d.from_conv(module, mode=mode, init=init, generator=gen)
        new.train(module.training)
        _set_module(model, name, new)
        done.append({"name": name, "form": "svd", "mode": mode, "rank": new.rank})
    _record(model, done)
    return left


def truncate(model: nn.Module, *, ranks: dict[str, int]) -> None:
    """Truncate the named factorised layers of `model` to the given ranks, in place."""
    layers = svd_layers(model)
    for name, r in ranks.items():
        layers[name].truncate_(r)
    _record(model, [{"name": n, "form": "svd", "mode": layers[n].mode, "rank": int(r)} for n, r in ranks.items()])


def to_plain(model: nn.Module, *, form: str | None = None) -> dict[str, dict[str, Any]]:
    """Replace every factorised layer of `model` by plain modules (in place): by default the pair where
    it saves parameters, else one dense layer with the low-rank weight; `form` ("pair" or "dense")
    forces one form.

    Returns {name: {"mode", "rank", "form"}} and records the change on `model.prunekit_ops`.
    """
    done: list[dict[str, Any]] = []
    forced = form
    for name, layer in svd_layers(model).items():
        form = forced or ("pair" if layer.saves_params() else "dense")
        plain = layer.to_plain(form=form)
        plain.train(layer.training)
        _set_module(model, name, plain)
        done.append({"name": name, "form": form, "mode": layer.mode, "rank": layer.rank})
    _record(model, done)
    return {d["name"]: {k: d[k] for k in ("mode", "rank", "form")} for d in done}


@torch.no_grad()
def layer_shapes(model: nn.Module, example_inputs: Any) -> dict[str, tuple[torch.Size, torch.Size]]:
    """Return {name: (input shape, output shape)} of the factorised layers for one eval forward of `example_inputs`."""
    shapes: dict[str, tuple[torch.Size, torch.Size]] = {}
    hooks = [layer.register_forward_hook(lambda mod, i, o, name=name: shapes.__setitem__(name, (i[0].shape, o.shape)))
             for name, layer in svd_layers(model).items()]
    was_training = model.training
    model.eval()
    try:
        inputs.call(model, example_inputs)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return shapes


def plain_cost(layer: nn.Module, rank: int, *, in_shape: Sequence[int], out_shape: Sequence[int]) -> tuple[int, int]:
    """Return (weights, MACs per sample) of the plain form `to_plain` gives `layer` at `rank` (bias not counted).

    MACs follow prunekit.metrics: output elements x inputs per output. The spatial pair's first
    conv runs at the output height and the input width.
    """
    m, n = layer.geometry.matrix_shape()
    batch = int(out_shape[0])
    if isinstance(layer.geometry, LinearGeometry):
        positions = math.prod(out_shape) // (batch * layer.geometry.out_features)
    else:
        positions = int(out_shape[-2]) * int(out_shape[-1])
    if not saves_params(m, n, rank):
        return m * n, m * n * positions
    if isinstance(layer.geometry, ConvGeometry) and layer.mode == "spatial":
        return pair_params(m, n, rank), rank * n * int(out_shape[-2]) * int(in_shape[-1]) + rank * m * positions
    return pair_params(m, n, rank), pair_params(m, n, rank) * positions


def regularizer(model: nn.Module, *, lambda_o: float, lambda_s: float, penalty: str = "hoyer") -> torch.Tensor | None:
    """Return lambda_o * sum_l orthogonality_l + lambda_s * sum_l R(s_l) over the factorised layers (None if none)."""
    layers = list(svd_layers(model).values())
    if not layers:
        return None
    total = layers[0].s.new_zeros(())
    for layer in layers:
        if lambda_o:
            total = total + lambda_o * layer.orthogonality()
        if lambda_s:
            total = total + lambda_s * sparsity_penalty(layer.s, penalty)
    return total


def pair_orthogonality(first: nn.Module, second: nn.Module) -> torch.Tensor:
    """Return the orthogonality penalty of a plain pair, read as U diag(s) Vh.

    U is the second layer's weight (its rank-index columns); s_i and the rows of Vh are the norms
    and directions of the first layer's rank-index rows. This is the same quantity as
    `orthogonality_penalty` for the factorisation the pair computes.
    """
    r = first.weight.shape[0]
    a = first.weight.reshape(r, -1)
    vh = a / a.norm(dim=1, keepdim=True).clamp_min(_EPS)
    u = second.weight.transpose(0, 1).reshape(r, -1).T
    return orthogonality_penalty(u, vh)


def factored_pairs(model: nn.Module) -> dict[str, nn.Sequential]:
    """Return the plain pairs that lowrank ops of `model.prunekit_ops` left in place, by name."""
    names: dict[str, str] = {}
    for op in getattr(model, "prunekit_ops", []):
        if op.get("op") == "lowrank":
            for entry in op["layers"]:
                names[entry["name"]] = entry["form"]
    out = {}
    for name, form in names.items():
        if form != "pair":
            continue
        try:
            module = model.get_submodule(name)
        except AttributeError:
            continue
        if isinstance(module, nn.Sequential) and len(module) == 2:
            out[name] = module
    return out


# ------------------------------------------------------------------------------------------- replay

def replay_lowrank(model: nn.Module, op: dict[str, Any]) -> nn.Module:
    """Re-apply a recorded "lowrank" op on a freshly built model (used by `prunekit.load`); return it.

    Each entry names a layer, its form ("svd", "pair" or "dense"), mode and rank; the layer's
    geometry is read from the module found there (plain or training form).
    """
    for entry in op["layers"]:
        name, form, mode, rank = entry["name"], entry["form"], entry["mode"], int(entry["rank"])
        module = model.get_submodule(name)
        bias = module.bias is not None
        g = geometry_of(module, mode=mode)
        if form == "svd":
            if isinstance(g, ConvGeometry):
                new = SVDConv2d(g.in_channels, g.out_channels, g.kernel_size, stride=g.stride, padding=g.padding,
                                dilation=g.dilation, bias=bias, mode=mode, rank=rank)
            else:
                new = SVDLinear(g.in_features, g.out_features, bias=bias, mode=mode, rank=rank)
        elif form == "pair":
            new = g.build_pair(rank, bias=bias)
        elif form == "dense":
            if not isinstance(module, SVD_TYPES):
                continue  # a plain layer already has the dense layer's shape
            new = g.build_dense(bias=bias)
        else:
            raise UserError(f"lowrank op: form {form!r} is not one of {', '.join(FORMS)}")
        _set_module(model, name, new)
    return model
