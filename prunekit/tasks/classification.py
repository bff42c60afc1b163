"""Image classification: cross-entropy on logits, top-1 / top-5, the classifier protected."""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from prunekit.errors import UserError
from prunekit.tasks.base import Metric, Task, register


def _topk_correct(logits: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    k = min(k, logits.shape[1])
    return (logits.topk(k, dim=1).indices == y[:, None]).any(dim=1).sum()


def autocast(device: torch.device, amp: bool) -> Any:
    """Return bf16 autocast on CUDA when `amp`, else a no-op context (CPU runs in fp32)."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if amp and device.type == "cuda" else nullcontext()


@register
class Classification(Task):
    """Batches are (images, class indices); the loss is cross-entropy ("ce"); metrics are
    top1 / top5 (percent), loss (mean cross-entropy per image, nats) and images (count)."""

    name = "classification"
    primary = Metric("top1", unit="%", higher_is_better=True, description="top-1 accuracy")
    description = "image classification: cross-entropy, top-1/top-5 accuracy"

    def losses(self, outputs: Any, batch: Any) -> dict[str, torch.Tensor]:
        return {"ce": F.cross_entropy(_logits(outputs).float(), self.targets(batch))}

    def scaled_loss(self, model: nn.Module, batch: Any, *, scale: float) -> dict[str, torch.Tensor]:
        """Return the cross-entropy of logits / `scale` (GraSP's temperature)."""
        return {"ce": F.cross_entropy((_logits(self.forward(model, batch)) / scale).float(), self.targets(batch))}

    def train_losses(self, outputs: Any, batch: Any, *, config: Any) -> dict[str, torch.Tensor]:
        smoothing = float(getattr(config, "label_smoothing", 0.0) or 0.0)
        return {"ce": F.cross_entropy(_logits(outputs).float(), self.targets(batch), label_smoothing=smoothing)}

    def train_stats(self, outputs: Any, batch: Any) -> dict[str, torch.Tensor]:
        return {"top1": 100.0 * _topk_correct(_logits(outputs).detach(), self.targets(batch), 1)}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: Iterable, *, device: str | torch.device = "cpu", amp: bool = True,
                 max_batches: int | None = None) -> dict[str, float]:
        """Return {"top1": %, "top5": %, "loss": mean cross-entropy per image, "images": count}.

        The model is put in eval mode for the pass and left in the mode it was in; top5 is
        top-min(5, classes)."""
        device = torch.device(device)
        was_training = model.training
        model.eval()
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        top1 = torch.zeros((), dtype=torch.long, device=device)
        top5 = torch.zeros((), dtype=torch.long, device=device)
        images = 0
        try:
            for i, batch in enumerate(loader):
                if max_batches is not None and i >= max_batches:
                    break
                batch = self.to_device(batch, device)
                y = self.targets(batch)
                with autocast(device, amp):
                    logits = _logits(self.forward(model, batch))
                logits = logits.float()
                loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
                top1 += _topk_correct(logits, y, 1)
                top5 += _topk_correct(logits, y, 5)
                images += y.shape[0]
        finally:
            model.train(was_training)
        if images == 0:
            raise UserError("evaluation got no batches (empty split?)")
        return {"top1": 100.0 * top1.item() / images, "top5": 100.0 * top5.item() / images,
                "loss": loss_sum.item() / images, "images": images}


def _logits(outputs: Any) -> torch.Tensor:
    # torchvision's Inception/GoogLeNet return a namedtuple with .logits in training mode
    if isinstance(outputs, torch.Tensor):
        return outputs
    logits = getattr(outputs, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    raise UserError(f"classification expects the model to return logits (a tensor), got {type(outputs).__name__}")
