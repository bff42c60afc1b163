"""ShuffleNetV2 made prunable: its channel shuffle becomes a module Torch-Pruning can see.

torchvision's `InvertedResidual` shuffles channels with a functional view/transpose/view, which
Torch-Pruning's tracer cannot map (it fails with ZeroDivisionError, Torch-Pruning issue #14).
Here the shuffle is a fixed channel map (`ChannelShuffle`, a `ShortcutA` with stride 1 and a
permutation), so the graph can be traced; the function is unchanged. The next block splits the
shuffled channels into two equal halves with `chunk(2)`, which pruning cannot keep even, so the
convs that produce a block's output are marked `prunekit_fixed_out` and pruning works inside the
branches (the 1x1 -> depthwise -> 1x1 middle channels, where most MACs are) and on the last conv.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.shufflenetv2 import InvertedResidual

from prunekit.models.cifar_resnet import ShortcutA, ShortcutAPruner
from prunekit.structure import register_custom_pruner


class ChannelShuffle(ShortcutA):
    """Channel shuffle with `groups` groups as a channel map: output j reads input (j % g) * (C / g) + j // g."""

    def __init__(self, channels: int, groups: int = 2) -> None:
        super().__init__(channels, channels, stride=1)
        per_group = channels // groups
        self.index = torch.tensor([(j % groups) * per_group + j // groups for j in range(channels)], dtype=torch.long)


register_custom_pruner(ChannelShuffle, ShortcutAPruner())


class PrunableInvertedResidual(InvertedResidual):
    """torchvision's ShuffleNetV2 block with the shuffle as the `shuffle` submodule."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return self.shuffle(out)


def make_shuffle_prunable(model: nn.Module) -> nn.Module:
    """Swap every ShuffleNetV2 block of `model` for the prunable form in place; return `model`."""
    for block in model.modules():
        if type(block) is InvertedResidual:
            channels = block.branch2[-3].out_channels * 2  # both halves join before the shuffle
            block.__class__ = PrunableInvertedResidual
            block.shuffle = ChannelShuffle(channels, 2)
            for branch in (block.branch1, block.branch2):
                convs = [m for m in branch.modules() if isinstance(m, nn.Conv2d)]
                if convs:
                    convs[-1].prunekit_fixed_out = True
    model.conv1[0].prunekit_fixed_out = True  # feeds the first block's two branches directly
    return model
