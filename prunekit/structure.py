"""Coupled channel groups and physical channel removal, over Torch-Pruning's DependencyGraph.

Every structural change in prunekit goes through this module, so that it is (1) real removal,
(2) correct across residual adds, concatenation, depthwise/grouped convs and norms (the
DependencyGraph couples them), and (3) recorded on the model as a replayable op for
`prunekit.save` / `prunekit.load`.
"""

from __future__ import annotations

import torch_pruning as tp
from torch import nn

#: module type -> Torch-Pruning pruning function, for prunekit's own layers (e.g. option-A shortcuts).
CUSTOM_PRUNERS: dict[type[nn.Module], "tp.pruner.function.BasePruningFunc"] = {}


def register_custom_pruner(module_type: type[nn.Module], pruner: "tp.pruner.function.BasePruningFunc") -> None:
    """Teach every dependency graph prunekit builds how to prune `module_type` (duplicates raise)."""
    if module_type in CUSTOM_PRUNERS:
        raise KeyError(f"a pruner for {module_type.__name__} is already registered")
    CUSTOM_PRUNERS[module_type] = pruner
