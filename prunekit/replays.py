"""The registry of structural ops that `prunekit.io.load` replays to rebuild a pruned model.

A module that changes a model's structure (`prunekit.structure`: channel removal,
`prunekit.lowrank`: factorised layers) records an op dict in `model.prunekit_ops` and registers
the function that re-applies it here. This module depends only on the registry, so those modules
can register at import time and `prunekit.io` can import them without an import cycle.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from prunekit.registry import Registry

#: op name -> `fn(model, op: dict) -> nn.Module` that re-applies the structural change `op`.
REPLAYS: Registry[Callable[[nn.Module, dict], nn.Module]] = Registry("structural op")


def register_replay(op_name: str, fn: Callable[[nn.Module, dict], nn.Module]) -> None:
    """Register `fn(model, op) -> model` to replay ops named `op_name` on load (duplicates raise)."""
    REPLAYS.add(op_name, fn)
