"""Reading weight files made by other code, without ever unpickling code."""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping

import torch
from torch import nn

from prunekit.errors import UserError

# Prefixes that wrappers add to every key: DataParallel/DDP and torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def read_torch_file(path: str | os.PathLike) -> object:
    """Return the object stored in a torch file, read with `weights_only=True` onto the CPU.

    Raises `UserError` when the file is missing, unreadable, or holds pickled Python objects
    beyond tensors and plain containers (which only arbitrary unpickling could restore).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file")
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if found:
            raise UserError(
                f"{path}: refused: the file holds the pickled Python object {found.group(1)}, which only "
                f"arbitrary unpickling could restore, and prunekit never unpickles code"
            ) from None
        reason = re.search(r"WeightsUnpickler error:\s*(.+)", str(e))
        raise UserError(f"{path}: not a torch file that loads safely with weights_only=True ({reason.group(1).strip() if reason else 'unpickling failed'})") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise UserError(f"{path}: not a readable torch file ({type(e).__name__}: {first})") from None


def extract_state_dict(obj: object, *, path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Return the state dict inside `obj`: itself, or its "state_dict" or "model" entry.

    Wrapper prefixes (`module.` from DataParallel, `_orig_mod.` from torch.compile) are stripped.
    """
    sd = obj
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                sd = obj[key]
                break
    if not isinstance(sd, Mapping) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UserError(f"{os.fspath(path)}: no state dict found (expected a dict of tensors, or a dict with a 'state_dict' or 'model' entry)")
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def _listing(keys: list[str], n: int = 4) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def load_weights(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load the weights in `path` into `model` (in place) and return `model`.

    Accepts a bare state dict or a dict with "state_dict"/"model"; strips `module.` prefixes;
    tolerates missing BatchNorm `num_batches_tracked` counters. Any other missing, unexpected or
    shape-mismatched key raises `UserError` naming the file and the first keys concerned. A
    model with a `prunekit_load_state_dict(sd, path) -> bool` method may load the file itself
    (e.g. a backbone-only file into a detector); False hands it back to the strict loading.
    """
    sd = extract_state_dict(read_torch_file(path), path=path)
    hook = getattr(model, "prunekit_load_state_dict", None)  # a model may read foreign files itself
    if callable(hook) and hook(sd, path):
        return model
    return load_state_dict_strict(model, sd, path)


def load_state_dict_strict(model: nn.Module, sd: Mapping[str, torch.Tensor], path: str | os.PathLike) -> nn.Module:
    """Load `sd` into `model`: every key must fit (missing `num_batches_tracked` tolerated), else `UserError`."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in own]
    mismatched = [f"{k} {tuple(sd[k].shape)} in file vs {tuple(own[k].shape)} in model"
                  for k in own if k in sd and sd[k].shape != own[k].shape]
    problems = []
    if missing:
        problems.append(f"missing keys {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_listing(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatch {_listing(mismatched, 2)}")
    if problems:
        raise UserError(f"{os.fspath(path)}: weights do not fit {type(model).__name__}: " + "; ".join(problems))
    model.load_state_dict(sd, strict=False)
    return model
