"""Save and load models as data (no pickled code) and export to ONNX.

A saved model is one torch file holding only plain data and tensors:

    {"format": "prunekit.model/1", "prunekit_version": str,
     "builder": {"name": str, "kwargs": {...}},      # how prunekit.models.create rebuilds it
     "ops": [{"op": str, ...}, ...],                  # structural changes, replayed in order
     "state_dict": {str: Tensor}}

`load` rebuilds the model with `prunekit.models.create`, replays each op with the function
registered for it (`register_replay`), then loads the state dict strictly. The file reads with
`torch.load(path, weights_only=True)`; prunekit never unpickles a module.

Atomic file writes live in `prunekit.atomic` (re-exported here as `atomic_write` and
`atomic_torch_save`); the replay registry in `prunekit.replays`.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from prunekit import lowrank, models  # noqa: F401  (importing them registers the "prune" and "lowrank" replays)
from prunekit._version import __version__
from prunekit.atomic import atomic_torch_save, atomic_write
from prunekit import safe_load
from prunekit.errors import UserError
from prunekit.replays import REPLAYS, register_replay

__all__ = ["FORMAT", "REPLAYS", "atomic_torch_save", "atomic_write", "export_onnx", "load", "register_replay", "save"]

FORMAT = "prunekit.model/1"


# --------------------------------------------------------------------------- save / load

def _bake_masks(model: nn.Module) -> nn.Module:
    """Return `model`, or a deep copy with every torch.nn.utils.prune mask made permanent."""
    from torch.nn.utils import prune

    def reparametrised(m: nn.Module) -> list[str]:
        return [h._tensor_name for h in m._forward_pre_hooks.values() if isinstance(h, prune.BasePruningMethod)]

    if not any(reparametrised(m) for m in model.modules()):
        return model
    model = copy.deepcopy(model)
    for m in model.modules():
        for name in reparametrised(m):
            prune.remove(m, name)
    return model


def save(model: nn.Module, path: str | os.PathLike) -> str:
    """Save `model` to `path` as plain data + tensors (atomically); return the path written.

    The model must have been built by `prunekit.models.create` (it carries `prunekit_builder`);
    its structural changes are read from `model.prunekit_ops`. Pruning masks of
    torch.nn.utils.prune are made permanent in the saved copy (the model itself is untouched).
    """
    builder = getattr(model, "prunekit_builder", None)
    if not isinstance(builder, dict) or "name" not in builder:
        raise UserError(f"cannot save {type(model).__name__} to {os.fspath(path)}: it has no prunekit_builder; build it with prunekit.models.create so that it can be rebuilt without pickle")
    err = safe_load.plain_data_error(builder, "builder")
    if err:
        raise UserError(f"cannot save to {os.fspath(path)}: {err}, not plain data; build the model with plain-data arguments (numbers, strings, lists) so that it can be rebuilt without pickle")
    ops = list(getattr(model, "prunekit_ops", []))
    for i, op in enumerate(ops):
        if not isinstance(op, dict) or not isinstance(op.get("op"), str):
            raise TypeError(f"prunekit_ops[{i}] must be a dict with a string 'op', got {op!r:.80}")
        err = safe_load.plain_data_error(op, f"prunekit_ops[{i}]")
        if err:
            raise TypeError(f"{err}, not plain data")
        REPLAYS.get(op["op"])  # fail now, not at load time, if nothing can replay it
    model = _bake_masks(model)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {"format": FORMAT, "prunekit_version": __version__, "builder": copy.deepcopy(builder),
               "ops": copy.deepcopy(ops), "state_dict": state}
    return atomic_torch_save(payload, path)


def load(path: str | os.PathLike) -> nn.Module:
    """Return the model saved in `path` by `save`: rebuilt, structural ops replayed, weights loaded.

    Raises `UserError` for a missing file, a file that is not prunekit's format, or one that would
    need arbitrary unpickling. The model is returned in training mode, as `create` returns it.
    """
    path = os.fspath(path)
    obj = models.read_torch_file(path)
    fmt = obj.get("format") if isinstance(obj, dict) else None
    if fmt != FORMAT:
        hint = f"its format is {fmt!r}" if isinstance(fmt, str) else "it has no 'format' entry"
        raise UserError(f"{path}: not a prunekit model file ({hint}; expected {FORMAT!r}, written by prunekit.save); for a plain state dict use prunekit.models.load_weights")
    safe_load.check_model_file(obj, path)  # structure and sizes, before anything is built
    builder, ops, state = obj.get("builder"), obj.get("ops"), obj.get("state_dict")
    if not isinstance(builder, dict) or not isinstance(builder.get("name"), str) or not isinstance(ops, list) or not isinstance(state, dict):
        raise UserError(f"{path}: damaged prunekit model file (builder, ops or state_dict missing or of the wrong type)")
    model = models.create(builder["name"], **builder.get("kwargs", {}))
    for i, op in enumerate(ops):
        name = op.get("op") if isinstance(op, dict) else None
        if name not in REPLAYS:
            raise UserError(f"{path}: op {i} is {name!r}, which nothing registered can replay (known: {', '.join(REPLAYS.names()) or 'none'}); import the module that defines it")
        with safe_load.damaged(path, f"op {i} ({name})"):
            model = REPLAYS.get(name)(model, op)
    model.prunekit_ops = list(ops)
    try:
        model.load_state_dict(models.weights.with_versions(model, state), strict=True)
    except RuntimeError as e:
        raise UserError(f"{path}: the stored weights do not fit the rebuilt {builder['name']} ({str(e).splitlines()[0][:200]} ...)") from None
    return model


# --------------------------------------------------------------------------- ONNX

def export_onnx(model: nn.Module, path: str | os.PathLike, *, example_inputs: torch.Tensor | Sequence[torch.Tensor],
                opset: int = 18) -> str:
    """Export `model` (in eval mode, on a copy) to an ONNX file at `path`; return the path written.

    `example_inputs` is one tensor or a sequence of them; the batch dimension of each is exported
    as dynamic. Uses torch's torch.export-based exporter, which implements opset 18 and later (a
    lower `opset` is down-converted by onnxscript where it can be). Needs the `onnx` extra (onnx,
    onnxscript; onnxruntime to run the file).
    """
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise UserError(f"ONNX export needs the onnx extra ({e.name} is missing): pip install prunekit[onnx]") from None
    args = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    baked = _bake_masks(model)
    model = (baked if baked is not model else copy.deepcopy(model)).eval()
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    batch = torch.export.Dim("batch")
    dynamic_shapes = tuple({0: batch} for _ in args)
    with torch.no_grad():
        program = torch.onnx.export(model, args, dynamo=True, opset_version=opset, verbose=False,
                                    dynamic_shapes=dynamic_shapes, external_data=False)
    return atomic_write(path, program.model_proto.SerializeToString())
