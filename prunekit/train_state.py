"""The trainer's state on disk: seeding and the global generators' state, the checkpoint file
(`save_checkpoint`, `load_checkpoint`, `CHECKPOINT_FORMAT`), restoring a model from one (masks
included) and the config check on resume.

`prunekit.train` re-exports every name here (`prunekit.train.save_checkpoint` etc.).
"""

from __future__ import annotations

import dataclasses
import os
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from prunekit.errors import UserError

if TYPE_CHECKING:
    from prunekit.train import TrainConfig

CHECKPOINT_FORMAT = "prunekit.train/1"


def seed_everything(seed: int) -> None:
    """Seed python's, numpy's and torch's (CPU and CUDA) generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Return the state of every global generator, as tensors and plain data (safe to `torch.load`)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` returned."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write `payload` to `path` atomically: a temp file in the same folder, then os.replace."""
    from prunekit.io import atomic_torch_save

    atomic_torch_save(payload, path)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Return a checkpoint written by `train` (read with weights_only=True, tensors on the CPU)."""
    from prunekit.safe_load import read_torch_file  # every failure one line, torch's advice never repeated

    blob = read_torch_file(path, what="a prunekit training checkpoint")
    if not isinstance(blob, dict) or blob.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path} is not a prunekit training checkpoint (format {CHECKPOINT_FORMAT})")
    return blob


def _restore_model(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Load `state` into `model`, first re-creating torch.nn.utils.prune masks the model lacks."""
    from torch.nn.utils import prune

    own = model.state_dict()
    modules = dict(model.named_modules())
    for key, mask in state.items():
        if key.endswith("_mask") and key not in own:
            module_name, _, pname = key[: -len("_mask")].rpartition(".")
            module = modules.get(module_name)
            if module is not None and isinstance(getattr(module, pname, None), torch.Tensor):
                prune.custom_from_mask(module, pname, mask.to(getattr(module, pname).device))
    from prunekit.models.weights import with_versions

    try:
        model.load_state_dict(with_versions(model, state))
    except RuntimeError as err:
        detail = " ".join(str(err).split())[:300]
        raise UserError(f"checkpoint {path} does not fit this model ({detail}); rebuild the model it was trained with") from None


def _config_differences(saved: dict[str, Any], config: TrainConfig) -> list[str]:
    now = dataclasses.asdict(config)
    diffs = []
    for key, value in now.items():
        old = saved.get(key)
        if key == "compile":  # does not change the numbers
            continue
        if (list(old) if isinstance(old, (tuple, list)) else old) != (list(value) if isinstance(value, (tuple, list)) else value):
            diffs.append(f"{key}: {old!r} -> {value!r}")
    return diffs
