"""RetinaFace (Deng et al. 2019) with a MobileNetV1-0.25 backbone, as in biubug6/Pytorch_Retinaface.

Layout (module names follow the reference checkpoint, so its file loads strictly):

- `body.stage1..3`: MobileNetV1 width 0.25 (a 3x3 stem conv, then depthwise-separable blocks);
  the three stages end at strides 8, 16, 32 with 64, 128, 256 channels.
- `fpn`: 1x1 lateral convs to 64 channels (`output1..3`), nearest upsampling + add, 3x3 merges.
- `ssh1..3`: one SSH context module per level: a 3x3 branch of half the channels, a "5x5" branch
  (two 3x3) and a "7x7" branch (three 3x3, sharing the first with the 5x5) of a quarter each,
  concatenated, ReLU.
- heads per level: `ClassHead.i`, `BboxHead.i`, `LandmarkHead.i` (1x1 convs, 2 anchors per
  location), their outputs concatenated over the levels.

`forward(x)` takes BGR images minus the mean (104, 117, 123) on the 0-255 scale, N x 3 x H x W,
any H and W, and returns a tuple `(box_deltas N x P x 4, class_logits N x P x num_classes,
landmark_deltas N x P x 10)` (the last only with `landmarks=True`), P = the number of priors
(`prunekit.tasks.detection.priors`). Logits are raw (no softmax) in train and eval mode alike.

**Activation.** `activation="relu"` (default) uses plain ReLU everywhere, which is what the
shipped checkpoint (the reference's first commit) was trained with. `"leaky"` is the reference's
later code: LeakyReLU(0.1) in the stem, every backbone block, the FPN and the SSH inner branches.
Loading a ReLU checkpoint into the leaky model (or the reverse) gives no key error, only
misplaced boxes; `activation_check(model, images)` compares each BatchNorm's batch statistics on
real images with its stored running statistics, which tells the two apart on real faces (see
docs/detection.md), and nothing can tell them apart from the weights alone.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from prunekit.errors import UserError

#: BGR mean the reference subtracts (0-255 scale)
BGR_MEAN = (104.0, 117.0, 123.0)
ACTIVATIONS = ("relu", "leaky")
LEAKY_SLOPE = 0.1
ANCHORS_PER_LOCATION = 2


def _act(activation: str) -> nn.Module:
    return nn.LeakyReLU(LEAKY_SLOPE, inplace=True) if activation == "leaky" else nn.ReLU(inplace=True)


def _conv_bn(cin: int, cout: int, *, k: int = 3, stride: int = 1, groups: int = 1, act: str | None = "relu") -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(_act(act))
    return nn.Sequential(*layers)


def _dw_block(cin: int, cout: int, stride: int, act: str) -> nn.Sequential:
    """Depthwise 3x3 + BN + act, pointwise 1x1 + BN + act (indices 0..5, as the checkpoint)."""
    return nn.Sequential(
        nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin), _act(act),
        nn.Conv2d(cin, cout, 1, 1, 0, bias=False), nn.BatchNorm2d(cout), _act(act),
    )


class MobileNetV1Body(nn.Module):
    """MobileNetV1 width 0.25, the three stages only (the ImageNet classifier is dropped)."""

    def __init__(self, activation: str = "relu") -> None:
        super().__init__()
        a = activation
        self.stage1 = nn.Sequential(
            _conv_bn(3, 8, stride=2, act=a), _dw_block(8, 16, 1, a), _dw_block(16, 32, 2, a),
            _dw_block(32, 32, 1, a), _dw_block(32, 64, 2, a), _dw_block(64, 64, 1, a),
        )
        self.stage2 = nn.Sequential(_dw_block(64, 128, 2, a), *[_dw_block(128, 128, 1, a) for _ in range(5)])
        self.stage3 = nn.Sequential(_dw_block(128, 256, 2, a), _dw_block(256, 256, 1, a))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        c1 = self.stage1(x)
        c2 = self.stage2(c1)
        c3 = self.stage3(c2)
        return [c1, c2, c3]


class FPN(nn.Module):
    """Three lateral 1x1 convs to `out` channels, top-down nearest upsampling, two 3x3 merges."""

    def __init__(self, in_channels: tuple[int, int, int], out: int, activation: str) -> None:
        super().__init__()
        self.output1 = _conv_bn(in_channels[0], out, k=1, act=activation)
        self.output2 = _conv_bn(in_channels[1], out, k=1, act=activation)
        self.output3 = _conv_bn(in_channels[2], out, k=1, act=activation)
        self.merge1 = _conv_bn(out, out, act=activation)
        self.merge2 = _conv_bn(out, out, act=activation)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        p1, p2, p3 = self.output1(feats[0]), self.output2(feats[1]), self.output3(feats[2])
        p2 = self.merge2(p2 + F.interpolate(p3, size=p2.shape[-2:], mode="nearest"))
        p1 = self.merge1(p1 + F.interpolate(p2, size=p1.shape[-2:], mode="nearest"))
        return [p1, p2, p3]


class SSH(nn.Module):
    """Single Stage Headless context module (Najibi et al. 2017): 3x3 / "5x5" / "7x7" branches."""

    def __init__(self, cin: int, cout: int, activation: str) -> None:
        super().__init__()
        if cout % 4:
            raise UserError(f"SSH output channels must be a multiple of 4, got {cout}")
        q = cout // 4
        self.conv3X3 = _conv_bn(cin, cout // 2, act=None)
        self.conv5X5_1 = _conv_bn(cin, q, act=activation)
        self.conv5X5_2 = _conv_bn(q, q, act=None)
        self.conv7X7_2 = _conv_bn(q, q, act=activation)
        self.conv7x7_3 = _conv_bn(q, q, act=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.conv3X3(x)
        t = self.conv5X5_1(x)
        b5 = self.conv5X5_2(t)
        b7 = self.conv7x7_3(self.conv7X7_2(t))
        return F.relu(torch.cat([b3, b5, b7], dim=1))


class _Head(nn.Module):
    """A 1x1 conv giving `per_anchor` numbers for each of the anchors at every location."""

    def __init__(self, cin: int, per_anchor: int, anchors: int = ANCHORS_PER_LOCATION) -> None:
        super().__init__()
        self.per_anchor = per_anchor
        self.conv1x1 = nn.Conv2d(cin, anchors * per_anchor, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1x1(x).permute(0, 2, 3, 1)
        return out.reshape(out.shape[0], -1, self.per_anchor)


class RetinaFace(nn.Module):
    """RetinaFace-MobileNet0.25; see the module docstring for inputs and outputs."""

    def __init__(self, *, num_classes: int = 2, activation: str = "relu", landmarks: bool = True, width: int = 64) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise UserError(f"activation={activation!r} is not allowed; use one of {', '.join(ACTIVATIONS)}")
        if num_classes < 2:
            raise UserError(f"num_classes={num_classes} is not allowed for a detector; give 2 or more (class 0 is background)")
        self.activation = activation
        self.num_classes = num_classes
        self.has_landmarks = bool(landmarks)
        self.body = MobileNetV1Body(activation)
        self.fpn = FPN((64, 128, 256), width, activation)
        self.ssh1 = SSH(width, width, activation)
        self.ssh2 = SSH(width, width, activation)
        self.ssh3 = SSH(width, width, activation)
        self.ClassHead = nn.ModuleList(_Head(width, num_classes) for _ in range(3))
        self.BboxHead = nn.ModuleList(_Head(width, 4) for _ in range(3))
        if self.has_landmarks:
            self.LandmarkHead = nn.ModuleList(_Head(width, 10) for _ in range(3))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        p = self.fpn(self.body(x))
        feats = [self.ssh1(p[0]), self.ssh2(p[1]), self.ssh3(p[2])]
        boxes = torch.cat([h(f) for h, f in zip(self.BboxHead, feats)], dim=1)
        logits = torch.cat([h(f) for h, f in zip(self.ClassHead, feats)], dim=1)
        if not self.has_landmarks:
            return boxes, logits
        marks = torch.cat([h(f) for h, f in zip(self.LandmarkHead, feats)], dim=1)
        return boxes, logits, marks

    def head_convs(self) -> list[nn.Conv2d]:
        """Return the 1x1 prediction convs (6, or 9 with landmarks): what pruning must not change."""
        heads = [self.ClassHead, self.BboxHead] + ([self.LandmarkHead] if self.has_landmarks else [])
        return [h.conv1x1 for group in heads for h in group]

    # -- weights ----------------------------------------------------------------------------------
    def prunekit_load_state_dict(self, sd: Mapping[str, torch.Tensor], path: str | os.PathLike) -> bool:
        """Hook of `prunekit.models.load_weights`: load a bare MobileNetV1-0.25 ImageNet file
        (keys `stage1.*`..`stage3.*`, `fc.*`) into `body` strictly (the classifier dropped), and
        drop `LandmarkHead.*` from a full checkpoint when the model has no landmark head. Returns
        True when it loaded `sd` itself, False to let the generic strict loading go on."""
        keys = list(sd)
        if keys and all(k.startswith(("stage1.", "stage2.", "stage3.", "fc.")) for k in keys):
            body = {k: v for k, v in sd.items() if not k.startswith("fc.")}
            own = self.body.state_dict()
            missing = [k for k in own if k not in body and not k.endswith("num_batches_tracked")]
            bad = [k for k in body if k not in own or body[k].shape != own[k].shape]
            if missing or bad:
                raise UserError(f"{os.fspath(path)}: a backbone file that does not fit MobileNetV1-0.25 "
                                f"(missing {missing[:3]}, unexpected or mis-shaped {bad[:3]})")
            self.body.load_state_dict(body, strict=False)
            return True
        if not self.has_landmarks and any(k.startswith("LandmarkHead.") for k in keys):
            sd = {k: v for k, v in sd.items() if not k.startswith("LandmarkHead.")}
            from prunekit.models.weights import load_state_dict_strict

            load_state_dict_strict(self, sd, path)
            return True
        return False


def retinaface_mnet025(*, num_classes: int = 2, small_input: bool = False, activation: str = "relu",
                       landmarks: bool = True) -> RetinaFace:
    """retinaface_mnet025 (RetinaFace, MobileNet-0.25, Deng et al. 2019; biubug6 layout)."""
    if small_input:
        raise UserError("retinaface_mnet025 takes images of any size; small_input does not apply")
    return RetinaFace(num_classes=num_classes, activation=activation, landmarks=landmarks)


retinaface_mnet025.default_num_classes = 2  # type: ignore[attr-defined]


@torch.no_grad()
def activation_check(model: nn.Module, images: torch.Tensor) -> float:
    """Return how far the BatchNorm batch statistics of `model` on `images` are from its stored
    running statistics: the mean over BN layers of |batch mean - running mean| / sqrt(running var).

    On real images (prepared as the model expects) a checkpoint run with the activation it was
    trained with gives a clearly smaller value than with the wrong one (measured in
    docs/detection.md); on random inputs the number means nothing. Compare the two activations
    on the same images rather than reading one value against a fixed threshold.
    """
    stats: list[float] = []

    def hook(module: nn.BatchNorm2d, inputs: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
        x = inputs[0].float()
        mean = x.mean(dim=(0, 2, 3))
        scale = module.running_var.clamp_min(1e-5).sqrt()
        stats.append(((mean - module.running_mean).abs() / scale).mean().item())

    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    was = model.training
    model.eval()
    try:
        model(images)
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
    if not stats:
        warnings.warn("activation_check: the model has no BatchNorm layers", stacklevel=2)
        return float("nan")
    return sum(stats) / len(stats)
