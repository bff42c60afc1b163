"""CIFAR ResNets (He et al. 2016, section 4.2): resnet20/32/56/110.

A 3x3 conv 3->16, three stages of n BasicBlocks with 16/32/64 channels (stride 2 at the first
block of stages 2 and 3), global average pool, linear 64->num_classes; depth = 6n + 2.

Module names follow akamaster/pytorch_resnet_cifar10 (conv1, bn1, layer{1,2,3}.{i}.conv1/bn1/
conv2/bn2, linear), so its checkpoints load after stripping DataParallel's `module.` prefix.

The default "option A" shortcut (subsample by 2, zero-pad the channels) has no parameters. It is
the module `ShortcutA`, with a pruning function registered for Torch-Pruning, so that channels
can be removed through it like through any other layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from prunekit.errors import UserError
from prunekit.structure import register_custom_pruner


class ShortcutA(nn.Module):
    """Parameter-free shortcut: keep every `stride`-th pixel, then route input channels to outputs.

    `index[j]` is the input channel copied to output channel j, or -1 for a zero channel. Built
    as akamaster's LambdaLayer: `in_channels` inputs in the middle, `(out - in) / 2` zero channels
    on each side.
    """

    def __init__(self, in_channels: int, out_channels: int, *, stride: int = 2) -> None:
        super().__init__()
        pad = out_channels - in_channels
        if pad < 0 or pad % 2:
            raise ValueError(f"option-A shortcut needs out_channels - in_channels even and >= 0, got {in_channels}->{out_channels}")
        index = [-1] * (pad // 2) + list(range(in_channels)) + [-1] * (pad // 2)
        self.in_channels = in_channels
        self.stride = stride
        # Not persistent: checkpoints of other code have no such key, and a pruned map is rebuilt
        # by replaying the pruning history.
        self.register_buffer("index", torch.tensor(index, dtype=torch.long), persistent=False)

    @property
    def out_channels(self) -> int:
        """Number of output channels (zero channels included)."""
        return int(self.index.numel())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A 1x1 average pool is an exact subsample and, unlike x[..., ::2, ::2], is not seen by
        # Torch-Pruning's tracer as a channel slice.
        if self.stride > 1:
            x = F.avg_pool2d(x, kernel_size=1, stride=self.stride)
        # One zero channel appended at position in_channels serves every -1 entry.
        x = F.pad(x, (0, 0, 0, 0, 0, 1))
        gather = torch.where(self.index < 0, torch.full_like(self.index, self.in_channels), self.index)
        return x.index_select(1, gather)

    def zero_out_channels(self, rows: torch.Tensor) -> None:
        """Make the given output channels zero channels (used by `structure.zero_channels`)."""
        self.index[rows.to(self.index.device)] = -1

    def extra_repr(self) -> str:
        return f"{self.in_channels}->{self.out_channels}, stride={self.stride}"


class ShortcutAPruner(tp.pruner.function.BasePruningFunc):
    """Torch-Pruning pruning function for `ShortcutA`.

    Removing an output channel drops its entry from the map; removing an input channel turns the
    outputs it fed into zero channels and re-indexes the remaining inputs. Inputs and outputs are
    not coupled inside the layer (as for a conv), so the two are separate functions.
    """

    def prune_out_channels(self, layer: ShortcutA, idxs: Sequence[int]) -> ShortcutA:
        keep = torch.ones(layer.out_channels, dtype=torch.bool)
        keep[list(idxs)] = False
        layer.index = layer.index[keep.to(layer.index.device)]
        return layer

    def prune_in_channels(self, layer: ShortcutA, idxs: Sequence[int]) -> ShortcutA:
        removed = torch.tensor(sorted(set(int(i) for i in idxs)), dtype=torch.long, device=layer.index.device)
        index = layer.index.clone()
        hit = torch.isin(index, removed)
        # Each surviving input moves down by the number of removed inputs below it.
        shift = torch.searchsorted(removed, index.clamp(min=0))
        index = torch.where(index >= 0, index - shift, index)
        index[hit] = -1
        layer.index = index
        layer.in_channels -= int(removed.numel())
        return layer

    def get_out_channels(self, layer: ShortcutA) -> int:
        return layer.out_channels

    def get_in_channels(self, layer: ShortcutA) -> int:
        return layer.in_channels


register_custom_pruner(ShortcutA, ShortcutAPruner())


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual shortcut (option "A" or "B" where the shape changes)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, *, stride: int = 1, shortcut: str = "A") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module
        if stride == 1 and in_planes == planes:
            self.shortcut = nn.Identity()
        elif shortcut == "A":
            self.shortcut = ShortcutA(in_planes, planes, stride=stride)
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet for 32x32 images: stem, three stages of `num_blocks` BasicBlocks, avg pool, linear."""

    def __init__(self, num_blocks: Sequence[int], *, num_classes: int = 10, shortcut: str = "A") -> None:
        super().__init__()
        if shortcut not in ("A", "B"):
            raise UserError(f"shortcut={shortcut!r} is not allowed; use 'A' (zero-padding, no parameters) or 'B' (1x1 conv + BN)")
        self.in_planes = 16
        self.conv1 = nn.Conv2d(3, 16, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._make_layer(16, num_blocks[0], stride=1, shortcut=shortcut)
        self.layer2 = self._make_layer(32, num_blocks[1], stride=2, shortcut=shortcut)
        self.layer3 = self._make_layer(64, num_blocks[2], stride=2, shortcut=shortcut)
        self.linear = nn.Linear(64, num_classes)
        # As akamaster's _weights_init: Kaiming-normal convs and linear, default BN.
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def _make_layer(self, planes: int, n: int, *, stride: int, shortcut: str) -> nn.Sequential:
        blocks = []
        for s in [stride] + [1] * (n - 1):
            blocks.append(BasicBlock(self.in_planes, planes, stride=s, shortcut=shortcut))
            self.in_planes = planes
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


#: depth -> blocks per stage (depth = 6n + 2).
CIFAR_RESNET_DEPTHS = {20: 3, 32: 5, 44: 7, 56: 9, 110: 18}


def cifar_resnet(depth: int, *, num_classes: int = 10, shortcut: str = "A") -> CifarResNet:
    """Return a CIFAR ResNet of the given depth (20, 32, 44, 56 or 110) with random weights."""
    n = CIFAR_RESNET_DEPTHS[depth]
    return CifarResNet([n, n, n], num_classes=num_classes, shortcut=shortcut)
