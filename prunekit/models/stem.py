"""Adapt an ImageNet CNN's stem to 32x32 images (the `small_input=True` option of `create`).

An ImageNet stem divides the resolution by 4 (a strided 7x7 conv and a max-pool), which leaves a
32x32 image 8x8 before the first stage. The usual CIFAR adaptation, done here: the first conv
becomes 3x3 stride 1 padding 1 (same channels, groups and bias), and a max-pool that directly
follows it (only norms and activations in between) becomes nn.Identity. A first conv that is
already 3x3 stride 1 (VGG) is left alone, pools included.

The rule is generic (modules in registration order, which for torchvision's CNNs is the order of
execution in the stem); families whose stem has further layers before its pool are listed in
`EXTRA_STEM_POOLS`.
"""

from __future__ import annotations

from torch import nn

from prunekit.errors import UserError

# Norms and activations that may sit between the stem conv and its pool.
_PASS_THROUGH = (
    nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm, nn.ReLU, nn.ReLU6, nn.SiLU, nn.Hardswish,
    nn.GELU, nn.LeakyReLU, nn.PReLU, nn.Identity, nn.Dropout,
)

#: Model-name prefix -> names of stem pools that the generic rule does not reach (convs sit
#: between them and the first conv) but that a 32x32 input cannot afford.
EXTRA_STEM_POOLS: dict[str, tuple[str, ...]] = {
    "inception_v3": ("maxpool1",),
}

#: Vision transformers: their patch embedding is not a CNN stem (and ViT checks the image size).
UNSUPPORTED_PREFIXES = ("vit_", "swin_", "maxvit_")


def _is_norm_like(m: nn.Module) -> bool:
    # LayerNorm2d (convnext) and timm's BatchNormAct2d subclass the torch norms or are named so.
    return isinstance(m, _PASS_THROUGH) or "Norm" in type(m).__name__


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def check_small_input_supported(name: str) -> None:
    """Raise `UserError` when `small_input=True` cannot apply to model `name` (vision transformers)."""
    if name.split("/")[-1].startswith(UNSUPPORTED_PREFIXES):
        raise UserError(f"small_input=True adapts CNN stems; {name!r} is a vision transformer (build it with small_input=False and its own image_size option where it has one)")


def adapt_small_input(model: nn.Module, *, name: str) -> nn.Module:
    """Return `model` (changed in place) with its stem adapted to 32x32 inputs.

    The new 3x3 stem conv is freshly initialised (Kaiming normal, fan_out, as torchvision's ResNets
    do), so load pretrained weights after adapting, never before.
    """
    check_small_input_supported(name)
    leaves = [(n, m) for n, m in model.named_modules() if not list(m.children())]
    first = next(((i, n, m) for i, (n, m) in enumerate(leaves) if isinstance(m, nn.Conv2d)), None)
    if first is None:
        raise UserError(f"small_input=True needs a model with a Conv2d stem; {name!r} has none")
    i, conv_name, conv = first
    # A stem that is already 3x3 stride 1 (VGG) is a CIFAR-style stem: its pools are stages' pools.
    if (conv.kernel_size, conv.stride, conv.padding) != ((3, 3), (1, 1), (1, 1)):
        new = nn.Conv2d(conv.in_channels, conv.out_channels, kernel_size=3, stride=1, padding=1,
                        groups=conv.groups, bias=conv.bias is not None, padding_mode=conv.padding_mode)
        nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
        if new.bias is not None:
            nn.init.zeros_(new.bias)
        _set_submodule(model, conv_name, new)
        for n, m in leaves[i + 1:]:
            if isinstance(m, nn.MaxPool2d):
                _set_submodule(model, n, nn.Identity())
                break
            if not _is_norm_like(m):
                break
    for prefix, pools in EXTRA_STEM_POOLS.items():
        if name.startswith(prefix):
            for pool in pools:
                _set_submodule(model, pool, nn.Identity())
    return model
