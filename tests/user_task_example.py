"""A user's own task and model, outside prunekit (imported by tests as `user_task_example:TwoHeadRegression`).

The model has two outputs (class scores and a regression of the mean brightness of the image);
the task derives its regression target from the (images, labels) batches of any image dataset
and trains on mean squared errors, never cross-entropy. Its primary metric is the mean squared
error, lower is better, in no percent unit (so NetScore is not defined for it).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from prunekit import models
from prunekit.tasks import Metric, Task


class TwoHead(nn.Module):
    def __init__(self, *, num_classes: int = 4, width: int = 8) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.scores = nn.Linear(2 * width, num_classes)
        self.brightness = nn.Linear(2 * width, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)
        return self.scores(h), self.brightness(h).squeeze(1)


def build_two_head(*, num_classes: int, small_input: bool, width: int = 8) -> nn.Module:
    return TwoHead(num_classes=num_classes, width=width)


if "two_head_test" not in models.MODELS:
    models.register_model("two_head_test", build_two_head)


class TwoHeadRegression(Task):
    name = "two_head_regression"
    primary = Metric("mse", unit="mse", higher_is_better=False, description="mean squared error of both heads")
    description = "one-hot scores and image brightness, both by mean squared error"

    def configure(self, *, brightness_weight: float = 1.0) -> dict[str, Any]:
        return {"brightness_weight": float(brightness_weight)}

    def _targets(self, batch: Any, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = batch
        return F.one_hot(labels, num_classes).float(), images.mean(dim=(1, 2, 3))

    def losses(self, outputs: Any, batch: Any) -> dict[str, torch.Tensor]:
        scores, brightness = outputs
        onehot, mean = self._targets(batch, scores.shape[1])
        return {"scores_mse": F.mse_loss(scores.float(), onehot),
                "brightness_mse": self.options["brightness_weight"] * F.mse_loss(brightness.float(), mean)}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: Any, *, device: Any = "cpu", amp: bool = True,
                 max_batches: int | None = None) -> dict[str, float]:
        was_training = model.training
        model.eval()
        total, scores_sum, n = 0.0, 0.0, 0
        try:
            for i, batch in enumerate(loader):
                if max_batches is not None and i >= max_batches:
                    break
                batch = self.to_device(batch, device)
                losses = self.losses(self.forward(model, batch), batch)
                size = self.batch_size(batch)
                total += float(sum(losses.values())) * size
                scores_sum += float(losses["scores_mse"]) * size
                n += size
        finally:
            model.train(was_training)
        return {"mse": total / n, "scores_mse": scores_sum / n, "images": n}
