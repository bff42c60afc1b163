"""Pictures of face detections: one image with its boxes, or dense beside pruned on a few images.

    from prunekit.detection_plots import detect_images, draw_detections, dense_vs_pruned
    dets = detect_images(model, ["a.jpg"])                 # [{"boxes", "scores", ...}] in pixels
    draw_detections(image, dets[0], "a-faces.png", score=0.5)
    dense_vs_pruned(dense, pruned, ["a.jpg", "b.jpg"], "runs/x/detections.png")

Boxes are drawn with `torchvision.utils.draw_bounding_boxes`; the side-by-side figure with
matplotlib (Agg backend), one row per image, the box count above each panel.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from prunekit.data.folder import decode_rgb
from prunekit.atomic import atomic_write
from prunekit.errors import UserError


def read_image(path: str | os.PathLike) -> torch.Tensor:
    """Return the image at `path` as uint8 RGB 3 x H x W (`UserError` when missing or unreadable)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such image")
    return decode_rgb(path)


@torch.no_grad()
def detect_images(model: nn.Module, images: Sequence[torch.Tensor | str | os.PathLike], *, task: object = None,
                  max_size: int | None = None) -> list[dict[str, torch.Tensor]]:
    """Return the detections of `model` on each image (uint8 RGB tensors or paths), each at its own
    size (or its longer side resized to `max_size`), boxes in the image's pixels, on the CPU."""
    from prunekit import tasks
    from prunekit.data.detection_batches import EvalTransform

    task = tasks.resolve(task or "detection")
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    try:
        for im in images:
            im = read_image(im) if not isinstance(im, torch.Tensor) else im
            x, t = EvalTransform(max_size)(im, {"boxes": torch.zeros(0, 4)})
            det = task.detect(model, x[None].to(device), scales=[float(t["scale"])])[0]
            out.append({k: v.cpu() for k, v in det.items()})
    finally:
        model.train(was)
    return out


def draw(image: torch.Tensor, det: dict[str, torch.Tensor], *, score: float = 0.5, colour: str = "lime") -> torch.Tensor:
    """Return `image` (uint8 RGB) with the detections of score >= `score` drawn on it."""
    from torchvision.utils import draw_bounding_boxes

    keep = det["scores"] >= score
    boxes = det["boxes"][keep]
    h, w = image.shape[-2:]
    if boxes.numel():
        boxes = torch.stack([boxes[:, 0].clamp(0, w - 1), boxes[:, 1].clamp(0, h - 1),
                             boxes[:, 2].clamp(0, w - 1), boxes[:, 3].clamp(0, h - 1)], dim=1)
    width = max(1, round(max(h, w) / 400))
    return draw_bounding_boxes(image, boxes, colors=colour, width=width)


def draw_detections(image: torch.Tensor, det: dict[str, torch.Tensor], path: str | os.PathLike, *, score: float = 0.5) -> Path:
    """Write `image` with its detections (score >= `score`) as a PNG at `path`; return the path."""
    from torchvision.utils import save_image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(draw(image, det, score=score).float() / 255.0, str(path))
    return path


def dense_vs_pruned(dense: nn.Module, pruned: nn.Module, images: Sequence[str | os.PathLike | torch.Tensor],
                    path: str | os.PathLike, *, score: float = 0.5, labels: tuple[str, str] = ("dense", "pruned"),
                    task: object = None) -> Path:
    """Write one PNG with a row per image: `dense`'s detections on the left, `pruned`'s on the right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pics = [read_image(im) if not isinstance(im, torch.Tensor) else im for im in images]
    if not pics:
        raise UserError("dense_vs_pruned needs at least one image")
    left = detect_images(dense, pics, task=task)
    right = detect_images(pruned, pics, task=task)
    fig, axes = plt.subplots(len(pics), 2, figsize=(8, 4 * len(pics)), squeeze=False)
    for row, (im, a, b) in enumerate(zip(pics, left, right)):
        for col, (det, label) in enumerate(((a, labels[0]), (b, labels[1]))):
            ax = axes[row][col]
            ax.imshow(draw(im, det, score=score).permute(1, 2, 0).numpy())
            n = int((det["scores"] >= score).sum())
            ax.set_title(f"{label}: {n} face{'' if n == 1 else 's'} (score >= {score:g})", fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, buffer.getvalue())  # a report never links a half-written picture
    return path
