"""Detection batches: preparing images for RetinaFace, the training augmentation, evaluation
resizing, collation with padding and a loader that moves (images, target dicts) to the device.

The rules are described in `prunekit.data.widerface` (which uses these for its bundles).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from prunekit.models.retinaface import BGR_MEAN


# -- preparing images -------------------------------------------------------------------------


def to_model_input(image: torch.Tensor) -> torch.Tensor:
    """Return a uint8 RGB image (3 x H x W) as the RetinaFace input: float BGR minus (104, 117, 123)."""
    mean = torch.tensor(BGR_MEAN, dtype=torch.float32).view(3, 1, 1)
    return image.flip(0).float() - mean


def _iof_inside(boxes: torch.Tensor, roi: tuple[int, int, int, int]) -> torch.Tensor:
    x1, y1, x2, y2 = roi
    return (boxes[:, 0] >= x1) & (boxes[:, 1] >= y1) & (boxes[:, 2] <= x2) & (boxes[:, 3] <= y2)


class TrainTransform:
    """The reference's training augmentation on one (uint8 image, target) pair; see the module doc."""

    SCALES = (0.3, 0.45, 0.6, 0.8, 1.0)

    def __init__(self, size: int = 640) -> None:
        self.size = size

    @staticmethod
    def photometric(image: torch.Tensor) -> torch.Tensor:
        """The reference's distortion, each part with probability 1/2, in linear float ops (fast;
        torchvision's HSV hue shift costs about a second per image on a CPU): brightness +-32,
        contrast x0.5-1.5 (before or after the colour changes), saturation x0.5-1.5 (blend with
        the grey image), hue rotated by up to +-36 degrees (+-18 of OpenCV's 180, in YIQ space)."""
        x = image.float()
        contrast_first = random.random() < 0.5
        if random.random() < 0.5:
            x = x + random.uniform(-32, 32)
        if contrast_first and random.random() < 0.5:
            x = x * random.uniform(0.5, 1.5)
        if random.random() < 0.5:
            grey = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None]
            x = grey + (x - grey) * random.uniform(0.5, 1.5)
        if random.random() < 0.5:
            a = math.radians(random.uniform(-36, 36))
            to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
            rot = torch.tensor([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
            m = torch.linalg.inv(to_yiq) @ rot @ to_yiq
            x = torch.einsum("ij,jhw->ihw", m, x)
        if not contrast_first and random.random() < 0.5:
            x = x * random.uniform(0.5, 1.5)
        return x.clamp_(0, 255).round_().to(torch.uint8)

    def _crop(self, image: torch.Tensor, t: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor], bool]:
        h, w = image.shape[-2:]
        boxes = t["boxes"]
        for _ in range(250):
            side = int(random.choice(self.SCALES) * min(h, w))
            if side < 1:
                break
            left = 0 if w == side else random.randrange(w - side)
            top = 0 if h == side else random.randrange(h - side)
            roi = (left, top, left + side, top + side)
            if boxes.numel() == 0 or not _iof_inside(boxes, roi).any():
                continue
            centre = (boxes[:, :2] + boxes[:, 2:]) / 2
            inside = (centre[:, 0] > roi[0]) & (centre[:, 0] < roi[2]) & (centre[:, 1] > roi[1]) & (centre[:, 1] < roi[3])
            if not inside.any():
                continue
            offset = torch.tensor([left, top, left, top], dtype=torch.float32)
            nb = (boxes[inside] - offset).clamp(min=0)
            nb[:, 2:] = nb[:, 2:].clamp(max=side)
            keep = (nb[:, 2] > nb[:, 0]) & (nb[:, 3] > nb[:, 1])
            if not keep.any():
                continue
            out = {k: v[inside][keep] for k, v in t.items()}
            out["boxes"] = nb[keep]
            if "landmarks" in out:
                out["landmarks"] = (out["landmarks"].reshape(-1, 5, 2) - offset[:2]).clamp(min=0).clamp(max=side).reshape(-1, 10)
            return image[:, top:top + side, left:left + side], out, True
        return image, t, False

    def __call__(self, image: torch.Tensor, target: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        from torchvision.transforms.v2 import functional as TF

        image, target, cropped = self._crop(image, target)
        image = self.photometric(image)
        h, w = image.shape[-2:]
        if not cropped:  # pad to a square with the mean colour (RGB order here)
            side = max(h, w)
            canvas = torch.tensor(BGR_MEAN[::-1], dtype=torch.uint8).view(3, 1, 1).expand(3, side, side).clone()
            canvas[:, :h, :w] = image
            image, h, w = canvas, side, side
        boxes = target["boxes"].clone()
        if random.random() < 0.5:
            image = image.flip(-1)
            boxes[:, [0, 2]] = w - boxes[:, [2, 0]]
            if "landmarks" in target:
                lm = target["landmarks"].reshape(-1, 5, 2).clone()
                lm[..., 0] = w - lm[..., 0]
                lm = lm[:, [1, 0, 2, 4, 3]]  # left/right eye and mouth corners swap
                target = {**target, "landmarks": lm.reshape(-1, 10)}
        image = TF.resize(image, [self.size, self.size], antialias=True)
        sx, sy = self.size / w, self.size / h
        factor = torch.tensor([sx, sy, sx, sy])
        target = {**target, "boxes": boxes * factor}
        if "landmarks" in target:
            target["landmarks"] = target["landmarks"] * factor.repeat(3)[:10]
        return to_model_input(image), target


class EvalTransform:
    """Evaluation: the image at its own size (`size=None`) or its longer side resized to `size`."""

    def __init__(self, size: int | None = None) -> None:
        self.size = size

    def __call__(self, image: torch.Tensor, target: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        from torchvision.transforms.v2 import functional as TF

        scale = 1.0
        if self.size is not None:
            h, w = image.shape[-2:]
            scale = self.size / max(h, w)
            if scale != 1.0:
                image = TF.resize(image, [max(1, round(h * scale)), max(1, round(w * scale))], antialias=True)
        target = {**target, "boxes": target["boxes"] * scale, "scale": torch.tensor(scale)}
        return to_model_input(image), target


def collate(samples: Sequence[tuple[torch.Tensor, dict[str, torch.Tensor]]], *, multiple: int = 32) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """Return (images N x 3 x H x W, list of target dicts); images of different sizes are padded
    right and bottom with zeros (the mean colour after mean subtraction) to the largest size,
    rounded up to `multiple` when they differ."""
    images = [s[0] for s in samples]
    targets = [s[1] for s in samples]
    if all(im.shape == images[0].shape for im in images):
        return torch.stack(images), targets
    h = max(im.shape[-2] for im in images)
    w = max(im.shape[-1] for im in images)
    h, w = math.ceil(h / multiple) * multiple, math.ceil(w / multiple) * multiple
    batch = images[0].new_zeros(len(images), 3, h, w)
    for i, im in enumerate(images):
        batch[i, :, : im.shape[-2], : im.shape[-1]] = im
    return batch, targets


class DetectionLoader:
    """Batches of (images, targets) from a WIDER FACE dataset, moved to `device`; reshuffled per epoch."""

    def __init__(self, dataset: Dataset, *, batch_size: int, device: str | torch.device = "cpu", shuffle: bool = False,
                 drop_last: bool = False, num_workers: int = 0, seed: int = 0) -> None:
        self.dataset, self.batch_size, self.device = dataset, batch_size, torch.device(device)
        self.shuffle, self.drop_last, self.num_workers, self.seed, self.epoch = shuffle, drop_last, num_workers, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, list[dict[str, torch.Tensor]]]]:
        from prunekit.tasks.base import _move

        g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        if self.num_workers == 0:
            random.seed(self.seed * 100003 + self.epoch)
        loader = DataLoader(self.dataset, batch_size=self.batch_size, shuffle=self.shuffle, drop_last=self.drop_last,
                            num_workers=self.num_workers, collate_fn=collate, generator=g)
        self.epoch += 1
        for x, y in loader:
            yield _move(x, self.device, None), _move(y, self.device, None)
