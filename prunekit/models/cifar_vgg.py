"""VGG with BatchNorm for 32x32 images, as in network slimming (Liu et al. 2017).

Configuration (channels, "M" = 2x2 max-pool), 3x3 convs without bias, each followed by BN and
ReLU; then global average pooling and one linear layer. The reference code pools with
AvgPool2d(2) on the 2x2 map left by a 32x32 input; adaptive pooling to 1x1 is the same there and
also accepts other sizes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

VGG_CIFAR_CFGS: dict[int, list[int | str]] = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512],
}


class CifarVGG(nn.Module):
    """`features` (conv-BN-ReLU stacks and max-pools), global average pool, `classifier` (linear)."""

    def __init__(self, cfg: Sequence[int | str], *, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(in_channels, int(v), kernel_size=3, padding=1, bias=False),
                           nn.BatchNorm2d(int(v)), nn.ReLU(inplace=True)]
                in_channels = int(v)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(in_channels, num_classes)
        # The slimming reference's init: He-normal convs (fan_out), BN gamma 0.5, linear N(0, 0.01).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 0.5)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


def cifar_vgg(depth: int, *, num_classes: int = 10) -> CifarVGG:
    """Return the network-slimming VGG of the given depth (11, 13, 16 or 19) with random weights."""
    return CifarVGG(VGG_CIFAR_CFGS[depth], num_classes=num_classes)
