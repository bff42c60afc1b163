"""The task contract: registry, user tasks by module:Class, classification's losses and metrics, protected layers."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunekit import models, tasks
from prunekit.errors import UserError


def test_registry_lists_and_refuses_duplicates():
    assert "classification" in tasks.list_tasks()
    with pytest.raises(KeyError):
        tasks.register(type("Again", (tasks.Task,), {"name": "classification"}))
    with pytest.raises(UserError, match="unknown task"):
        tasks.create("clasification")
    with pytest.raises(UserError, match="no option"):
        tasks.create("classification", nope=1)


def test_user_task_by_module_and_class():
    task = tasks.create("prunekit.tasks.classification:Classification")
    assert task.primary.name == "top1"
    with pytest.raises(UserError, match="cannot import"):
        tasks.create("no_such_module_xyz:Task")
    with pytest.raises(UserError, match="not a prunekit.tasks.Task"):
        tasks.create("torch.nn:Linear")


def test_classification_loss_and_metrics_by_formula():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    x, y = torch.randn(10, 4), torch.randint(0, 3, (10,))
    task = tasks.resolve(None)
    losses = task.loss(model, (x, y))
    assert torch.allclose(losses["ce"], F.cross_entropy(model(x), y))
    metrics = task.evaluate(model, [(x[:6], y[:6]), (x[6:], y[6:])])
    expected = 100.0 * (model(x).argmax(1) == y).float().mean().item()
    assert metrics["top1"] == pytest.approx(expected)
    assert metrics["top5"] == 100.0  # top-min(5, 3) of 3 classes is always right
    assert metrics["images"] == 10
    assert task.primary_value(metrics) == metrics["top1"]
    assert task.primary.percent(0.5) == 0.5 and tasks.Metric("ap", unit="fraction").percent(0.5) == 50.0


class TwoHeads(nn.Module):
    """Detector-like toy: the heads are not the last layers run."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.cls = nn.Conv2d(8, 4, 1)
        self.box = nn.Conv2d(8, 8, 1)
        self.extra = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        f = self.body(x)
        c = self.cls(f).permute(0, 2, 3, 1).reshape(x.shape[0], -1, 2)
        g = self.extra(f)  # runs last, but is not an output layer
        b = self.box(f + g).permute(0, 2, 3, 1).reshape(x.shape[0], -1, 4)
        return c, b


def test_protected_finds_every_head_not_only_the_last_layer():
    model = TwoHeads()
    found = tasks.create("classification").protected(model, torch.randn(1, 3, 8, 8))
    assert set(found) == {model.cls, model.box}
    r20 = models.create("resnet20")
    assert tasks.output_layers(r20, torch.randn(1, 3, 32, 32)) == [r20.linear]


def test_to_device_moves_structured_targets_and_slices_inputs():
    task = tasks.create("classification")
    batch = (torch.randn(3, 3, 4, 4), [{"boxes": torch.zeros(2, 4)}, {"boxes": torch.zeros(0, 4)}])
    moved = task.to_device(batch, "cpu", memory_format=torch.channels_last)
    assert moved[0].is_contiguous(memory_format=torch.channels_last)
    assert moved[1][0]["boxes"].shape == (2, 4)
    assert task.example_inputs(batch, n=1).shape == (1, 3, 4, 4)
    assert task.batch_size(batch) == 3
