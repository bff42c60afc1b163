"""Unstructured masks, built on `torch.nn.utils.prune`.

A mask lives as `weight_mask` next to `weight_orig`; the forward sees `weight = weight_orig *
weight_mask`, so masked weights stay exactly zero whatever the optimizer does to `weight_orig`
(momentum, weight decay). Scores come from the methods (magnitude, SNIP, GraSP, SynFlow); this
module turns scores into masks and attaches, reads and bakes them.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.utils import prune

from prunekit.errors import UserError

_PRUNABLE = (nn.modules.conv._ConvNd, nn.Linear)


def exclude_globs(value: object, method: str) -> tuple[str, ...]:
    """Return a method's `exclude` option as a tuple of module-name globs: one glob or a list of
    them; anything else (a number, a mapping, a list holding a non-string) is a `UserError`."""
    globs = (value,) if isinstance(value, str) else value
    if not isinstance(globs, (list, tuple)) or not all(isinstance(g, str) and g for g in globs):
        raise UserError(f"method {method!r}: exclude={value!r} must be a module-name glob or a list of them (e.g. ['conv1', 'fc'])")
    return tuple(globs)


def prunable_layers(model: nn.Module, *, exclude: Sequence[str] = ()) -> dict[str, nn.Module]:
    """Return the conv/linear layers whose weights may be masked, by name, minus `exclude` globs.

    A glob that matches no prunable layer name is a `UserError`.
    """
    layers = {n: m for n, m in model.named_modules() if isinstance(m, _PRUNABLE)}
    for pattern in exclude:
        hit = [n for n in layers if fnmatch.fnmatchcase(n, pattern)]
        if not hit:
            raise UserError(f"exclude pattern {pattern!r} matches no conv/linear layer (e.g. {', '.join(list(layers)[:6])})")
        for n in hit:
            layers.pop(n)
    return layers


def is_masked(module: nn.Module) -> bool:
    """Return True when `module.weight` carries a torch.nn.utils.prune mask."""
    return hasattr(module, "weight_mask") and hasattr(module, "weight_orig")


def weight_of(module: nn.Module) -> torch.Tensor:
    """Return the weight as the forward sees it (masked when a mask is attached)."""
    if is_masked(module):
        return module.weight_orig * module.weight_mask
    return module.weight


def masks_from_scores(scores: dict[str, torch.Tensor], *, sparsity: float, scope: str = "global") -> dict[str, torch.Tensor]:
    """Return {name: 0/1 mask} keeping the highest scores, zeroing a `sparsity` fraction.

    `scope="global"`: one ranking over all layers (exactly round(sparsity * N) weights zeroed);
    `scope="layer"`: each layer zeroes round(sparsity * n_layer) of its own weights.
    """
    if not 0.0 <= sparsity < 1.0:
        raise UserError(f"sparsity={sparsity} must be in [0, 1)")
    if scope == "layer":
        return {name: _keep_top(s.flatten(), sparsity).view_as(s) for name, s in scores.items()}
    if scope != "global":
        raise UserError(f"scope {scope!r} is not one of global, layer")
    flat = torch.cat([s.detach().flatten().float() for s in scores.values()])
    keep = _keep_top(flat, sparsity)
    out, offset = {}, 0
    for name, s in scores.items():
        out[name] = keep[offset : offset + s.numel()].view_as(s)
        offset += s.numel()
    return out


def _keep_top(flat: torch.Tensor, sparsity: float) -> torch.Tensor:
    n_keep = flat.numel() - int(round(sparsity * flat.numel()))
    mask = torch.zeros_like(flat, dtype=torch.float32)
    if n_keep > 0:
        mask[torch.topk(flat.float(), n_keep, sorted=False).indices] = 1.0
    return mask


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Attach (or replace) the 0/1 `masks` on the named layers' weights."""
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        module = modules[name]
        mask = mask.to(device=module.weight.device, dtype=module.weight.dtype)
        if is_masked(module):
            module.weight_mask.copy_(mask)
            module.weight = module.weight_orig * module.weight_mask
        else:
            prune.custom_from_mask(module, "weight", mask)


def get_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Return the attached masks by layer name (empty when the model is dense)."""
    return {n: m.weight_mask.detach().clone() for n, m in model.named_modules() if is_masked(m)}


def attach_identity_masks(model: nn.Module, names: Sequence[str]) -> None:
    """Attach all-ones masks on the named layers, so a saved masked state dict can be loaded (resume)."""
    modules = dict(model.named_modules())
    apply_masks(model, {n: torch.ones_like(modules[n].weight) for n in names if not is_masked(modules[n])})


def make_permanent(model: nn.Module) -> nn.Module:
    """Bake every mask into its weight (zeros become plain zeros) and return `model`."""
    for module in model.modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, prune.BasePruningMethod):
                prune.remove(module, hook._tensor_name)
    return model


def sparsity(model: nn.Module) -> float:
    """Return the fraction of conv/linear weights that are zero."""
    total = zeros = 0
    for m in model.modules():
        if isinstance(m, _PRUNABLE):
            w = weight_of(m)
            total += w.numel()
            zeros += w.numel() - int(torch.count_nonzero(w))
    return zeros / total if total else 0.0
