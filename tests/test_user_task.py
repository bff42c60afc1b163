"""A task written by a user, with no prunekit edits: a two-output regression model, an MSE loss and
its own primary metric (lower is better), trained through `train.train(task=...)` and pruned through
`prunekit.prune(task=...)` with snip, snip_channel, l1_filter and autorate."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prunekit
from prunekit import structure, tasks
from prunekit.methods import autorate as ar
from prunekit.train import TrainConfig, train


class Regression(tasks.Task):
    """Batches are (images, {"value": (N, 1), "aux": (N, 3)}); the model returns (value, aux)."""

    name = "user_regression"
    primary = tasks.Metric("mse", unit="squared units", higher_is_better=False, description="value MSE")

    def losses(self, outputs, batch):
        value, aux = outputs
        y = self.targets(batch)
        return {"mse": F.mse_loss(value, y["value"]), "aux": 0.5 * F.mse_loss(aux, y["aux"])}

    def train_stats(self, outputs, batch):
        value, _ = outputs
        return {"abs_err": (value.detach() - self.targets(batch)["value"]).abs().sum()}

    @torch.no_grad()
    def evaluate(self, model, loader, *, device="cpu", amp=True, max_batches=None):
        was = model.training
        model.eval()
        sq, aux, n = 0.0, 0.0, 0
        for i, batch in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            batch = self.to_device(batch, device)
            value, a = self.forward(model, batch)
            y = self.targets(batch)
            sq += float(((value - y["value"]) ** 2).sum())
            aux += float(((a - y["aux"]) ** 2).mean(1).sum())
            n += self.batch_size(batch)
        model.train(was)
        return {"mse": sq / n, "aux_mse": aux / n}


class TwoOutputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.value = nn.Linear(16, 1)
        self.aux = nn.Linear(16, 3)

    def forward(self, x):
        f = self.body(x)
        return self.value(f), self.aux(f)


def _batches(n: int, seed: int) -> list:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(16, 3, 8, 8, generator=gen)
        value = x.mean(dim=(1, 2, 3)).unsqueeze(1) * 4.0  # learnable from the image
        aux = x.mean(dim=(2, 3))
        out.append((x, {"value": value, "aux": aux}))
    return out


def _data() -> SimpleNamespace:
    return SimpleNamespace(train=_batches(8, 0), val=_batches(2, 1), test=_batches(2, 2))


def test_user_task_trains_with_its_losses_and_picks_best_by_its_own_metric(tmp_path):
    torch.manual_seed(0)
    model, data, task = TwoOutputs(), _data(), Regression()
    before = task.evaluate(model, data.val)["mse"]
    result = train(model, data=data, config=TrainConfig(epochs=4, lr=0.05, optimizer="adamw", weight_decay=0.0,
                                                      schedule="constant", amp=False),
                   task=task, progress=False, log_path=tmp_path / "log.jsonl")
    last = result.history[-1]
    for key in ("train_loss", "train_loss_mse", "train_loss_aux", "train_abs_err", "val_mse", "val_aux_mse"):
        assert key in last
    assert last["train_loss"] == pytest.approx(last["train_loss_mse"] + last["train_loss_aux"])
    assert min(r["val_mse"] for r in result.history) < before
    assert result.best == min(result.history, key=lambda r: r["val_mse"])  # lower is better


def test_user_task_by_module_and_class_name():
    task = tasks.create("test_user_task:Regression")
    assert task.primary.name == "mse" and not task.primary.higher_is_better


@pytest.mark.parametrize("method,target", [("snip", "sparsity=0.5"), ("snip_channel", "channels=0.3"),
                                           ("l1_filter", "macs=0.5")])
def test_user_task_prunes_with_data_scored_and_structured_methods(method, target):
    torch.manual_seed(0)
    model, data = TwoOutputs(), _data()
    x = data.train[0][0][:2]
    result = prunekit.prune(model, method=method, target=target, example_inputs=x, task="test_user_task:Regression",
                            data=data.train[:2], round_to=1 if method == "l1_filter" else None)
    value, aux = result.model(x)
    assert value.shape == (2, 1) and aux.shape == (2, 3)
    assert result.model.value.out_features == 1 and result.model.aux.out_features == 3
    if method == "snip":
        assert result.after.nonzero_params < result.before.nonzero_params
    else:
        assert result.after.params < result.before.params


def test_snip_scores_differentiate_the_user_loss():
    torch.manual_seed(0)
    model, data = TwoOutputs(), _data()
    task = Regression()
    scores = prunekit.methods.snip.snip_scores(model, data=data.train[:1], task=task, normalise=False)
    x, y = data.train[0]
    value, aux = model(x)
    loss = F.mse_loss(value, y["value"]) + 0.5 * F.mse_loss(aux, y["aux"])
    grad = torch.autograd.grad(loss, model.value.weight)[0]
    assert torch.allclose(scores["value"], (model.value.weight * grad).abs().detach(), atol=1e-6)


def test_user_task_drives_autorate_with_injected_retrain_and_its_lower_is_better_metric():
    torch.manual_seed(0)
    model, data, task = TwoOutputs(), _data(), Regression()
    x = data.train[0][0][:2]
    calls = {"retrain": 0}

    def retrain(m):
        calls["retrain"] += 1
        train(m, data=data, config=TrainConfig(epochs=1, lr=0.01, optimizer="adamw", weight_decay=0.0,
                                               schedule="constant", amp=False, eval_every=0),
              task=task, progress=False)
        return m

    def evaluate(m):
        return task.evaluate(m, data.val)  # a metrics dict: autorate reads the primary ("mse")

    baseline = task.evaluate(model, data.val)["mse"]
    result = prunekit.prune(model, method="autorate", target="accuracy_drop=100", example_inputs=x, task=task,
                            data=data.train[:2], retrain=retrain, evaluate=evaluate, rounds=2, epochs_per_round=1,
                            batches=2)
    info = result.info
    assert info["metric"] == "mse" and info["baseline_top1"] == pytest.approx(baseline)
    assert calls["retrain"] >= 1
    assert any(r.get("accepted") for r in info["rounds"])  # an MSE rise below 100 is accepted
    assert result.after.params < result.before.params
    value, aux = result.model(x)
    assert value.shape == (2, 1) and aux.shape == (2, 3)


def test_accept_test_follows_the_metric_direction():
    lower = tasks.Metric("mse", unit="u", higher_is_better=False)
    higher = tasks.Metric("top1")
    assert ar.accepts(lower, before=1.0, after=1.5, control=1.0)
    assert not ar.accepts(lower, before=1.0, after=2.5, control=1.0)
    assert ar.accepts(higher, before=90.0, after=89.5, control=1.0)
    assert not ar.accepts(higher, before=90.0, after=89.0, control=1.0)  # acc + control > before, strictly
    assert lower.drop(1.0, 1.5) == 0.5 and higher.drop(90.0, 89.0) == 1.0


def test_protected_are_the_users_two_heads():
    model = TwoOutputs()
    x = torch.randn(2, 3, 8, 8)
    assert set(Regression().protected(model, x)) == {model.value, model.aux}
    assert set(structure.protected_names(model, x)) == {"aux", "value"}
