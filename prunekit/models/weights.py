"""Reading weight files made by other code, without ever unpickling code."""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from torch import nn

from prunekit.errors import UserError
from prunekit.safe_load import read_torch_file  # noqa: F401  (moved to prunekit.safe_load; re-exported)

# Prefixes that wrappers add to every key: DataParallel/DDP and torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


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


def check_fit(model: nn.Module, sd: Mapping[str, torch.Tensor], *, source: str, allow_missing: tuple[str, ...] = ()) -> None:
    """Raise `UserError` unless state dict `sd` fits `model` (BatchNorm counters and `allow_missing` may be absent).

    The message names `source` and the first missing, unexpected or shape-mismatched keys.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked") and k not in allow_missing]
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
        raise UserError(f"{source}: weights do not fit {type(model).__name__}: " + "; ".join(problems))


def with_versions(model: nn.Module, sd: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
    """Return `sd`, or (when it has none) a copy carrying `model`'s per-module state-dict versions.

    `Module.state_dict()` records each module's `_version` in a `_metadata` attribute that a plain
    dict of tensors (a prunekit file, a rebuilt or filtered state dict) does not keep; modules
    whose `_load_from_state_dict` reads it (torchvision's MNASNet refuses version None) then fail.
    The model was built by the current code, so its own versions are the ones the tensors have.
    """
    if getattr(sd, "_metadata", None) is not None:
        return sd
    from collections import OrderedDict

    out = OrderedDict(sd)
    out._metadata = getattr(model.state_dict(), "_metadata", None)  # type: ignore[attr-defined]
    return out


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
    check_fit(model, sd, source=os.fspath(path))
    model.load_state_dict(with_versions(model, sd), strict=False)
    return model
