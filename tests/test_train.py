"""prunekit.train: the loop, schedules, hooks, checkpoints, exact resume, the NaN guard."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

import prunekit.data as data
from prunekit.errors import UserError
from prunekit.train import (
    TrainConfig,
    TrainingDiverged,
    build_optimizer,
    build_scheduler,
    evaluate,
    load_checkpoint,
    lr_factor,
    train,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # the test machine's 2 cores are shared: one intra-op thread avoids oversubscription stalls
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_net(num_classes: int = 4, dropout: float = 0.0) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Dropout(dropout),
        nn.Linear(32, num_classes),
    )


def tiny_data(**kwargs) -> data.DataBundle:
    opts = dict(batch_size=16, train_size=96, test_size=48, image_size=8, num_classes=4, progress=False)
    opts.update(kwargs)
    return data.load("synthetic", **opts)


def test_loss_falls_and_log_lines(tmp_path):
    bundle = data.load("synthetic", batch_size=32, train_size=512, test_size=200, image_size=12, num_classes=4, progress=False)
    torch.manual_seed(0)
    model = tiny_net()
    before = evaluate(model, bundle.test)
    log = tmp_path / "log.jsonl"
    result = train(model, data=bundle, config=TrainConfig(epochs=3, lr=0.05, warmup_epochs=0.5), log_path=log, progress=False)
    first, last = result.history[0], result.history[-1]
    assert last["train_loss"] < 0.8 * first["train_loss"]
    assert last["val_loss"] < before["loss"] - 0.3 and last["val_top1"] > 50.0  # chance is 25%
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert lines == result.history and [r["epoch"] for r in lines] == [0, 1, 2]
    for key in ("stage", "epoch", "train_loss", "train_top1", "val_top1", "val_loss", "lr", "images_per_s", "epoch_time_s"):
        assert key in lines[0]
    assert lines[0]["stage"] == "train" and lines[0]["eval_split"] == "test" and lines[0]["images_per_s"] > 0
    assert result.best == max(lines, key=lambda r: r["val_top1"])
    assert lines[-1]["lr"] == pytest.approx(0.0, abs=1e-12)  # cosine ends at zero


def test_evaluate_counts_by_formula():
    class Fixed(nn.Module):
        def forward(self, x):  # logits are the inputs themselves
            return x.flatten(1)

    logits = torch.tensor([[3.0, 2, 1, 0, -1, -2], [0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0]])
    labels = torch.tensor([0, 0, 5])
    scores = evaluate(Fixed(), [(logits, labels)])
    assert scores["images"] == 3
    assert scores["top1"] == pytest.approx(100 / 3)  # only the first is right
    assert scores["top5"] == pytest.approx(100 / 3)  # label 0 ranks 6th in row 2, label 5 ranks 6th in row 3
    expected = nn.functional.cross_entropy(logits, labels).item()
    assert scores["loss"] == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("schedule", ["cosine", "multistep", "constant"])
def test_schedules_follow_their_formula(schedule):
    config = TrainConfig(epochs=4, lr=0.2, schedule=schedule, warmup_epochs=1, milestones=(0.5, 0.75), gamma=0.1)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=config.lr)
    sched = build_scheduler(opt, config, steps_per_epoch=5)
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:5] == pytest.approx([0.2 * (i + 1) / 5 for i in range(5)])  # linear warm-up over 1 epoch
    if schedule == "cosine":
        expected = [0.2 * 0.5 * (1 + math.cos(math.pi * (s - 5) / 15)) for s in range(5, 20)]
    elif schedule == "multistep":
        expected = [0.2 * (1 if s < 10 else 0.1 if s < 15 else 0.01) for s in range(5, 20)]
    else:
        expected = [0.2] * 15
    assert lrs[5:] == pytest.approx(expected)
    assert lr_factor(10, config=config, total_steps=20, steps_per_epoch=5) == pytest.approx(lrs[10] / 0.2)


def test_onecycle_peaks_at_lr():
    config = TrainConfig(epochs=2, lr=0.4, schedule="onecycle")
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=config.lr, momentum=0.9)
    sched = build_scheduler(opt, config, steps_per_epoch=50)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert max(lrs) == pytest.approx(0.4) and lrs.index(max(lrs)) == 29  # 30% of 100 steps
    assert lrs[0] == pytest.approx(0.4 / 25) and lrs[-1] < 1e-5


def test_no_decay_groups_bn_bias_and_masked_params():
    model = tiny_net()
    prune.l1_unstructured(model[0], "weight", amount=0.5)  # conv weight -> weight_orig (4-d): decayed
    prune.identity(model[1], "weight")  # BN weight -> weight_orig (1-d): not decayed
    opt = build_optimizer(model, TrainConfig(no_decay_bn_bias=True, weight_decay=1e-3))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 1e-3 and no_decay["weight_decay"] == 0.0
    ids = lambda group: {id(p) for p in group["params"]}  # noqa: E731
    assert ids(decay) == {id(model[0].weight_orig), id(model[4].weight), id(model[9].weight)}
    assert id(model[1].weight_orig) in ids(no_decay) and id(model[4].bias) in ids(no_decay)
    assert len(ids(decay) | ids(no_decay)) == len(list(model.parameters()))


class Recorder:
    """A hook with every optional method, counting calls and keeping a state."""

    def __init__(self):
        self.calls = {"regularizer": 0, "after_backward": 0, "after_step": 0}
        self.epochs = []
        self.grads_seen = []

    def regularizer(self, model):
        self.calls["regularizer"] += 1
        return 1e-3 * model[9].weight.pow(2).sum()

    def after_backward(self, model):
        self.calls["after_backward"] += 1
        self.grads_seen.append(model[9].weight.grad is not None)

    def after_step(self, model):
        self.calls["after_step"] += 1

    def after_epoch(self, model, *, epoch):
        self.epochs.append(epoch)

    def state_dict(self):
        return {"epochs": list(self.epochs), "calls": dict(self.calls)}

    def load_state_dict(self, state):
        self.epochs, self.calls = list(state["epochs"]), dict(state["calls"])


def test_hooks_called_in_order_and_max_steps():
    bundle = tiny_data()
    hook = Recorder()
    config = TrainConfig(epochs=2, lr=0.01, max_steps_per_epoch=3, eval_every=0)
    result = train(tiny_net(), data=bundle, config=config, hooks=[None, hook], progress=False)
    assert hook.calls == {"regularizer": 6, "after_backward": 6, "after_step": 6}
    assert hook.epochs == [0, 1] and all(hook.grads_seen)
    assert result.history[0]["val_top1"] is None and result.history[1]["val_top1"] is not None  # eval only at the end


def test_after_backward_can_cancel_the_update():
    class ZeroGrad:
        def after_backward(self, model):
            for p in model.parameters():
                p.grad.zero_()

    model = tiny_net()
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    train(model, data=tiny_data(), config=TrainConfig(epochs=1, lr=0.5, momentum=0.0, weight_decay=0.0, eval_every=0,
                                                      max_steps_per_epoch=2), hooks=[ZeroGrad()], progress=False)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


class StopAfter:
    """Interrupts a run at the start of `after_epoch(epoch)`, as a crash or Ctrl-C would."""

    def __init__(self, epoch):
        self.epoch = epoch

    def after_epoch(self, model, *, epoch):
        if epoch == self.epoch:
            raise KeyboardInterrupt


def _resume_setup(seed: int = 0):
    torch.manual_seed(seed)
    model = tiny_net(dropout=0.3)  # dropout makes the result depend on the global RNG state
    prune.l1_unstructured(model[4], "weight", amount=0.5)
    return model


def test_interrupted_run_resumes_bit_identical(tmp_path):
    config = TrainConfig(epochs=2, lr=0.05, nesterov=True, warmup_epochs=0.5, label_smoothing=0.1, no_decay_bn_bias=True)
    full = train(_resume_setup(), data=tiny_data(), config=config, hooks=[Recorder()], progress=False,
                 checkpoint_path=tmp_path / "full.ckpt")

    ckpt = tmp_path / "cut.ckpt"
    with pytest.raises(KeyboardInterrupt):  # dies during epoch 2: only epoch 1's checkpoint exists
        train(_resume_setup(), data=tiny_data(), config=config, hooks=[Recorder(), StopAfter(1)], progress=False,
              checkpoint_path=ckpt)
    assert load_checkpoint(ckpt)["epoch"] == 0

    # a fresh process: new data bundle, a model with other random weights and no mask yet, new hooks
    torch.manual_seed(123)
    fresh = tiny_net(dropout=0.3)
    hook = Recorder()
    resumed = train(fresh, data=tiny_data(), config=config, hooks=[hook, None], progress=False, checkpoint_path=ckpt,
                    resume=True)
    want, got = full.model.state_dict(), resumed.model.state_dict()
    assert sorted(want) == sorted(got) and "4.weight_mask" in got
    assert all(torch.equal(want[k], got[k]) for k in want), [k for k in want if not torch.equal(want[k], got[k])]
    assert hook.epochs == [0, 1] and hook.calls["after_step"] == 2 * len(tiny_data().train)
    strip = lambda h: [{k: v for k, v in r.items() if k not in ("images_per_s", "epoch_time_s")} for r in h]  # noqa: E731
    assert strip(resumed.history) == strip(full.history)


def test_resume_refuses_another_config(tmp_path):
    ckpt = tmp_path / "a.ckpt"
    train(tiny_net(), data=tiny_data(), config=TrainConfig(epochs=1, max_steps_per_epoch=1, eval_every=0),
          checkpoint_path=ckpt, progress=False)
    with pytest.raises(UserError, match=r"another training config \(lr: 0.1 -> 0.2\)"):
        train(tiny_net(), data=tiny_data(), config=TrainConfig(epochs=1, lr=0.2, max_steps_per_epoch=1, eval_every=0),
              checkpoint_path=ckpt, resume=True, progress=False)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    class NanAt:
        """Returns a NaN regularizer at the 2nd step of epoch 2."""

        def __init__(self):
            self.step = 0

        def regularizer(self, model):
            self.step += 1
            return torch.tensor(float("nan")) if self.step == 6 + 2 else None

    ckpt = tmp_path / "run.ckpt"
    model = tiny_net()
    with pytest.raises(TrainingDiverged) as err:
        train(model, data=tiny_data(), config=TrainConfig(epochs=3, lr=0.01), hooks=[NanAt()], checkpoint_path=ckpt,
              progress=False)
    msg = str(err.value)
    assert "\n" not in msg and "nan" in msg and "epoch 2, step 2" in msg and str(ckpt) in msg and "after epoch 1" in msg
    saved = load_checkpoint(ckpt)
    assert saved["epoch"] == 0 and all(torch.isfinite(v).all() for v in saved["model"].values() if v.is_floating_point())
    # the NaN was caught before the optimizer step: the weights in memory are still finite too
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert isinstance(err.value, UserError)


def test_config_errors_are_one_line():
    with pytest.raises(UserError, match=r"optimizer='adam' is not allowed \(sgd \| adamw\)"):
        train(tiny_net(), data=tiny_data(), config=TrainConfig(optimizer="adam"), progress=False)
    with pytest.raises(UserError, match="schedule="):
        TrainConfig(schedule="step").validate()
    with pytest.raises(UserError, match="nesterov"):
        TrainConfig(optimizer="adamw", nesterov=True).validate()


def test_adamw_and_channels_last_run():
    model = tiny_net()
    result = train(model, data=tiny_data(), config=TrainConfig(epochs=1, optimizer="adamw", lr=1e-3, channels_last=True,
                                                               schedule="constant", grad_clip=1.0), progress=False)
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert result.history[0]["lr"] == pytest.approx(1e-3)
