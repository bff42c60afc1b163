"""Every torchvision classification builder, with random weights (nothing is downloaded)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torchvision
from torch import nn

from prunekit.models.shufflenet import make_shuffle_prunable
from prunekit.models.stem import adapt_small_input

# Builders that warn and fall back to a slow scipy init unless told which init to use, and whose
# auxiliary heads return a tuple in training mode.
_INCEPTION_DEFAULTS = {"googlenet": {"aux_logits": False, "init_weights": True},
                       "inception_v3": {"aux_logits": False, "init_weights": True}}


def torchvision_names() -> list[str]:
    """Return the names of torchvision's classification builders (torchvision.models, top level)."""
    return list(torchvision.models.list_models(module=torchvision.models))


def torchvision_builder(name: str) -> Callable[..., nn.Module]:
    """Return a builder `f(*, num_classes, small_input, **kwargs) -> nn.Module` for torchvision's `name`."""
    def build(*, num_classes: int, small_input: bool, **kwargs: Any) -> nn.Module:
        kwargs = {**_INCEPTION_DEFAULTS.get(name, {}), **kwargs}
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
        if small_input:
            adapt_small_input(model, name=name)
        if name.startswith("shufflenet_v2"):
            make_shuffle_prunable(model)
        return model

    build.__name__ = name
    build.__doc__ = f"torchvision {name}, random weights."
    return build
