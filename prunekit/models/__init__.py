"""Models by name: torchvision classifiers, CIFAR ResNets and VGGs, timm models when installed.

`create(name, ...)` builds a model with random weights (or loads a local weight file) and
attaches the recipe to rebuild it, `model.prunekit_builder`, which `prunekit.io.save` stores.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from torch import nn

from prunekit.errors import UserError
from prunekit.models.cifar_resnet import CIFAR_RESNET_DEPTHS, CifarResNet, ShortcutA, ShortcutAPruner, cifar_resnet
from prunekit.models.cifar_vgg import VGG_CIFAR_CFGS, CifarVGG, cifar_vgg
from prunekit.models.imagenet import build_pretrained, is_imagenet
from prunekit.models.retinaface import retinaface_mnet025
from prunekit.models.stem import adapt_small_input, check_small_input_supported
from prunekit.models.timm_models import PREFIX as TIMM_PREFIX
from prunekit.models.timm_models import create_timm, timm_names
from prunekit.models.torchvision_models import torchvision_builder, torchvision_names
from prunekit.models.weights import load_weights, read_torch_file
from prunekit.registry import Registry

__all__ = [
    "MODELS", "create", "create_on_meta", "list_models", "load_weights", "read_torch_file", "register_model",
    "adapt_small_input", "CifarResNet", "CifarVGG", "ShortcutA", "ShortcutAPruner",
]

#: name -> builder `f(*, num_classes, small_input, **kwargs) -> nn.Module`.
MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


def register_model(name: str, builder: Callable[..., nn.Module]) -> None:
    """Register `builder(*, num_classes, small_input, **kwargs) -> nn.Module` as `name` (duplicates raise)."""
    MODELS.add(name, builder)


# The CIFAR nets are 32x32 nets already: small_input is accepted (it is what they are) and ignored.
def _cifar_resnet_builder(depth: int) -> Callable[..., nn.Module]:
    def builder(*, num_classes: int, small_input: bool, shortcut: str = "A") -> nn.Module:
        return cifar_resnet(depth, num_classes=num_classes, shortcut=shortcut)

    builder.__name__ = builder.__doc__ = f"resnet{depth} (CIFAR, He et al. 2016)"
    return builder


def _cifar_vgg_builder(depth: int) -> Callable[..., nn.Module]:
    def builder(*, num_classes: int, small_input: bool) -> nn.Module:
        return cifar_vgg(depth, num_classes=num_classes)

    builder.__name__ = builder.__doc__ = f"vgg{depth}_cifar (network slimming, Liu et al. 2017)"
    return builder


for _name in torchvision_names():
    register_model(_name, torchvision_builder(_name))
for _depth in CIFAR_RESNET_DEPTHS:
    register_model(f"resnet{_depth}", _cifar_resnet_builder(_depth))
for _depth in VGG_CIFAR_CFGS:
    register_model(f"vgg{_depth}_cifar", _cifar_vgg_builder(_depth))
register_model("retinaface_mnet025", retinaface_mnet025)


def list_models() -> list[str]:
    """Return every model name `create` accepts, sorted (timm's, prefixed `timm/`, only when installed)."""
    return MODELS.names() + timm_names()


def _check_num_classes(num_classes: object) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise UserError(f"num_classes={num_classes!r} is not allowed; give a positive integer")
    return num_classes


def create(name: str, *, num_classes: int | None = None, small_input: bool = False,
           weights: str | os.PathLike | None = None, **kwargs: Any) -> nn.Module:
    """Return model `name` with random weights, the weights of the local file `weights`, or ImageNet's.

    `small_input=True` adapts an ImageNet stem to 32x32 images (3x3 stride-1 first conv, no stem
    max-pool). Other keyword arguments go to the builder. `weights="imagenet"` (torchvision
    architectures) loads torchvision's ImageNet weights from the torch hub cache, downloading them
    only when they are not there, and replaces the classifier for `num_classes` (see
    `prunekit.models.imagenet`); a local file is never downloaded. The returned
    model carries `prunekit_builder = {"name": ..., "kwargs": {...}}`, the plain-data recipe that
    rebuilds it (weights excluded), and starts in training mode.
    """
    if num_classes is None:  # a builder may declare its own default (a face detector: 2), else 1000
        default = None if name.startswith(TIMM_PREFIX) or name not in MODELS else getattr(MODELS.get(name), "default_num_classes", None)
        num_classes = default or 1000
    num_classes = _check_num_classes(num_classes)
    if weights is not None and not isinstance(weights, (str, os.PathLike)):
        raise UserError(f"weights={weights!r} is not allowed; give the path of a local weight file or 'imagenet'")
    pretrained = is_imagenet(weights)
    if weights is not None and not pretrained and not os.path.isfile(weights):
        raise UserError(f"{os.fspath(weights)}: no such file (weights= takes the path of a local weight file, or 'imagenet')")
    if small_input:
        check_small_input_supported(name)
    if pretrained:
        model = build_pretrained(name, num_classes=num_classes, small_input=small_input, weights=weights, **kwargs)
        weights = None
    elif name.startswith(TIMM_PREFIX):
        model = create_timm(name[len(TIMM_PREFIX):], num_classes=num_classes, small_input=small_input, **kwargs)
    else:
        builder = MODELS.get(name)
        try:
            model = builder(num_classes=num_classes, small_input=small_input, **kwargs)
        except TypeError as e:
            # An unknown keyword for this builder is the user's mistake, not a bug.
            if "unexpected keyword argument" in str(e):
                raise UserError(f"model {name!r}: {str(e).splitlines()[0]}") from None
            raise
    if weights is not None:
        load_weights(model, weights)
    model.prunekit_builder = {"name": name, "kwargs": {"num_classes": num_classes, "small_input": bool(small_input), **kwargs}}
    return model


def create_on_meta(name: str, **kwargs: Any) -> nn.Module:
    """Return model `name` (`create`'s arguments, no `weights`) with every parameter and buffer on
    the meta device: shapes only, nothing allocated, no random init.

    A builder that computes with tensors while it builds (RegNet turns its stage widths into a
    list) cannot run under the meta device; it is then built on the CPU with each parameter and
    buffer moved to the meta device as it is registered, before its initialisation touches it.
    """
    import torch
    from torch.nn.modules import module as torch_module

    try:
        with torch.device("meta"):
            return create(name, **kwargs)
    except NotImplementedError as err:
        if "meta tensor" not in str(err):
            raise

    def to_meta(_module: nn.Module, _name: str, tensor: Any) -> Any:
        if tensor is None:
            return None
        meta = tensor.to("meta")
        return nn.Parameter(meta, requires_grad=tensor.requires_grad) if isinstance(tensor, nn.Parameter) else meta

    hooks = [torch_module.register_module_parameter_registration_hook(to_meta),
             torch_module.register_module_buffer_registration_hook(to_meta)]
    try:
        return create(name, **kwargs)
    finally:
        for h in hooks:
            h.remove()
