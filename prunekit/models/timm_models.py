"""timm models by name (`timm/<name>`), when timm is installed. timm is imported lazily."""

from __future__ import annotations

from typing import Any

from torch import nn

from prunekit.errors import UserError, unknown_name
from prunekit.models.stem import adapt_small_input

PREFIX = "timm/"


def timm_available() -> bool:
    """Return True when timm can be imported."""
    try:
        import timm  # noqa: F401
    except ImportError:
        return False
    return True


def timm_names() -> list[str]:
    """Return timm's model names with the `timm/` prefix, or [] when timm is not installed."""
    if not timm_available():
        return []
    import timm

    return [PREFIX + n for n in timm.list_models()]


def create_timm(name: str, *, num_classes: int, small_input: bool, **kwargs: Any) -> nn.Module:
    """Return timm's model `name` (without the prefix) with random weights (pretrained=False)."""
    try:
        import timm
    except ImportError:
        raise UserError(f"model {PREFIX}{name} needs timm, which is not installed (pip install timm)") from None
    known = timm.list_models()
    if name not in known:
        raise unknown_name("timm model", name, known)
    model = timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    if small_input:
        adapt_small_input(model, name=PREFIX + name)
    return model
