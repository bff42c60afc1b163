"""ImageNet weights for torchvision architectures: `models.create(name, weights="imagenet")`.

The weights come through torchvision's own weights API (`get_model_weights(name)`), so the file
is the one torchvision itself uses, looked up where torchvision looks: the torch hub cache,
`$TORCH_HOME/hub/checkpoints/<file>` (TORCH_HOME defaults to ~/.cache/torch). Three cases:

- the file is there: it is loaded (nothing touches the network);
- it is not, and the network allows: torch.hub downloads it there (hash checked), then loads it;
- neither: one `UserError` line naming the file, its URL and the folder to put it in.

`"imagenet"` means the architecture's original ImageNet-1k weights, `IMAGENET1K_V1` (what the
papers used, and the file in ../shared/weights for mobilenet_v2); `"imagenet:NAME"` picks another
member of torchvision's enum, e.g. `imagenet:IMAGENET1K_V2` or `imagenet:DEFAULT`.

The classifier: for `num_classes != 1000` the **last `nn.Linear`** of the model (mobilenet_v2
`classifier.1`, mobilenet_v3 `classifier.3`, resnet/regnet/shufflenet `fc`, vgg `classifier.6`,
efficientnet `classifier.1`, densenet `classifier`, convnext `classifier.2`) is not loaded: it
keeps the initialisation torchvision's builder gave it for `num_classes` outputs (for
mobilenet_v2, normal(0, 0.01) weights and zero bias). Everything else is the pretrained
weights, BatchNorm running statistics included.

`small_input=True` is allowed: the weights are loaded into the ImageNet architecture and the stem
is adapted afterwards (`prunekit.models.stem`). Where the adapted stem conv has the pretrained
kernel's shape (3x3 stems: mobilenet_v2/v3, efficientnet, regnet, mnasnet, vgg) the pretrained
kernel is kept and only the stride becomes 1; where it does not (resnet's 7x7), the stem conv is
freshly initialised and the rest stays pretrained.

googlenet and inception_v3: torchvision builds them with `transform_input=True` for its weights;
pass it yourself (`model.kwargs: {transform_input: true}`), so that a saved model rebuilds the same.
"""

from __future__ import annotations

import os
import socket
import urllib.error
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit.errors import UserError

#: the value of `weights=` that asks for ImageNet weights (optionally "imagenet:ENUM_MEMBER")
IMAGENET = "imagenet"
DEFAULT_MEMBER = "IMAGENET1K_V1"
#: auxiliary heads present in the pretrained files but not in prunekit's builds (aux_logits=False)
_AUX_PREFIXES = ("AuxLogits.", "aux1.", "aux2.")
_DOWNLOAD_TIMEOUT_S = 30


def is_imagenet(weights: object) -> bool:
    """Return True when `weights` asks for ImageNet weights ("imagenet" or "imagenet:MEMBER")."""
    return isinstance(weights, str) and (weights == IMAGENET or weights.startswith(IMAGENET + ":"))


def weights_enum(name: str, weights: str = IMAGENET) -> Any:
    """Return torchvision's weights enum member for model `name` and `weights` ("imagenet[:MEMBER]")."""
    import torchvision

    if name not in torchvision.models.list_models(module=torchvision.models):
        raise UserError(f"weights='imagenet' is available for torchvision architectures; {name!r} is not one "
                        "(give a local weight file instead)")
    enum = torchvision.models.get_model_weights(name)
    member = weights.partition(":")[2] or DEFAULT_MEMBER
    if member == "DEFAULT":
        return enum.DEFAULT
    if member not in enum.__members__:
        if weights == IMAGENET:  # no V1 for this architecture: its default
            return enum.DEFAULT
        raise UserError(f"model {name!r} has no ImageNet weights {member!r} (torchvision has: {', '.join(enum.__members__)}, DEFAULT)")
    return enum[member]


def hub_checkpoints() -> Path:
    """Return the folder torch.hub keeps downloaded weights in: `$TORCH_HOME/hub/checkpoints`."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def weights_file(name: str, weights: str = IMAGENET) -> Path:
    """Return the path where the ImageNet weights file of model `name` is (or would be) cached."""
    url = weights_enum(name, weights).url
    return hub_checkpoints() / os.path.basename(url.split("?")[0])


def download(url: str, *, progress: bool) -> None:
    """Download `url` into the hub cache (torch.hub; hash checked). Tests replace this function."""
    torch.hub.load_state_dict_from_url(url, progress=progress, check_hash=True, map_location="cpu", weights_only=True)


def imagenet_state_dict(name: str, weights: str = IMAGENET, *, progress: bool = True) -> dict[str, torch.Tensor]:
    """Return the ImageNet state dict of torchvision model `name`: from the hub cache, else downloaded.

    Offline without the file this is one `UserError` naming the file and where to put it.
    """
    from prunekit.models.weights import extract_state_dict, read_torch_file

    member = weights_enum(name, weights)
    path = weights_file(name, weights)
    if not path.is_file():
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(_DOWNLOAD_TIMEOUT_S)
        try:
            download(member.url, progress=progress)
        except (urllib.error.URLError, OSError, RuntimeError, ValueError) as err:  # offline, DNS, timeout, bad hash, full disk
            reason = " ".join(str(getattr(err, "reason", err)).split())[:160]
            raise UserError(
                f"ImageNet weights of {name} ({type(member).__name__}.{member.name}) are not in {path.parent} "
                f"and could not be downloaded ({type(err).__name__}: {reason}); put {path.name} (from {member.url}) "
                f"in {path.parent}/ (set TORCH_HOME to use another folder)"
            ) from None
        finally:
            socket.setdefaulttimeout(previous)
        if not path.is_file():
            raise UserError(f"downloading {member.url} did not leave {path}; put the file there by hand")
    return extract_state_dict(read_torch_file(path), path=path)


def classifier_name(model: nn.Module) -> str:
    """Return the qualified name of the model's classifier: its last `nn.Linear` in module order."""
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise UserError(f"{type(model).__name__} has no nn.Linear classifier to replace for another number of classes")
    return linears[-1]


def _first_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    return next((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d))


def build_pretrained(name: str, *, num_classes: int, small_input: bool, weights: str = IMAGENET,
                     progress: bool = True, **kwargs: Any) -> nn.Module:
    """Return torchvision model `name` with ImageNet weights and a classifier for `num_classes`.

    See the module docstring for which layer is re-initialised and how `small_input` is handled.
    """
    from prunekit.models.stem import adapt_small_input
    from prunekit.models.torchvision_models import torchvision_builder
    from prunekit.models.weights import check_fit

    state = imagenet_state_dict(name, weights, progress=progress)
    model = torchvision_builder(name)(num_classes=num_classes, small_input=False, **kwargs)
    state = {k: v for k, v in state.items() if not k.startswith(_AUX_PREFIXES)}
    if num_classes != 1000:
        head = classifier_name(model)
        state = {k: v for k, v in state.items() if k not in (f"{head}.weight", f"{head}.bias")}
        skip = (f"{head}.weight", f"{head}.bias")
    else:
        skip = ()
    check_fit(model, state, source=f"ImageNet weights of {name}", allow_missing=skip)
    model.load_state_dict(state, strict=False)
    if small_input:
        conv_name, old = _first_conv(model)
        adapt_small_input(model, name=name)
        new_name, new = _first_conv(model)
        if new_name == conv_name and new is not old and new.weight.shape == old.weight.shape:
            with torch.no_grad():
                new.weight.copy_(old.weight)
                if new.bias is not None and old.bias is not None:
                    new.bias.copy_(old.bias)
    return model
