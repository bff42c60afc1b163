"""The training loop: read it top to bottom.

    result = train(model, data=bundle, config=TrainConfig(epochs=30, lr=0.1), hooks=[method],
                   device="cuda", log_path="run/log.jsonl", checkpoint_path="run/train.ckpt")

What it does, per step: the task moves the batch to the device and runs the model (bf16 autocast
on CUDA); the task's named losses (classification: cross-entropy with label smoothing) are summed,
plus every hook's `regularizer(model)`, backward, hooks' `after_backward(model)`, optional gradient
clipping, optimizer and schedule step (the schedule moves every iteration), hooks'
`after_step(model)`. Per epoch: hooks' `after_epoch(model, epoch=e)`, evaluation on the
validation split (else the test split) by `task.evaluate`, one JSON line in `log_path`, an atomic checkpoint with
everything needed to continue bit-exactly (`resume=True`).

Hooks are any objects; only the methods they have are called (a `prunekit.methods.Method`
has them all). The trainer knows nothing about any pruning method, nor what a batch holds: the
task (`prunekit.tasks`, default classification) does.

Seeding, the generators' state, the checkpoint file and the resume checks are in
`prunekit.train_state`; their names are importable from here too.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit import distributed, tasks
from prunekit.errors import UserError
from prunekit.tasks.classification import autocast as _autocast
# seeding, rng state, the checkpoint file and the resume checks live in train_state; importable from here
from prunekit.train_state import (  # noqa: F401
    CHECKPOINT_FORMAT,
    _config_differences,
    _restore_model,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "onecycle", "multistep", "constant")


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the last good checkpoint (if any) is left untouched."""


@dataclass
class TrainConfig:
    """Everything that decides a training run's result (stored in every checkpoint).

    `lr` is the peak learning rate; `warmup_epochs` ramps up to it linearly (fractions allowed);
    `milestones` are fractions of the run where `multistep` multiplies the rate by `gamma`.
    `max_steps_per_epoch` caps an epoch (smoke runs); `eval_every` evaluates every N epochs (and
    always after the last; 0 only after the last), `eval_max_batches` caps those evaluations.
    """

    epochs: int = 1
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    no_decay_bn_bias: bool = False
    schedule: str = "cosine"
    milestones: tuple[float, ...] = (0.5, 0.75)
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    amp: bool = True
    channels_last: bool | None = None
    compile: bool = False
    seed: int = 0
    max_steps_per_epoch: int | None = None
    grad_clip: float | None = None
    eval_every: int = 1
    eval_max_batches: int | None = None

    def validate(self) -> None:
        """Raise `UserError` naming the first field with a value out of range."""
        def bad(name: str, allowed: str) -> UserError:
            return UserError(f"train config: {name}={getattr(self, name)!r} is not allowed ({allowed})")

        if self.optimizer not in OPTIMIZERS:
            raise bad("optimizer", " | ".join(OPTIMIZERS))
        if self.schedule not in SCHEDULES:
            raise bad("schedule", " | ".join(SCHEDULES))
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 0:
            raise bad("epochs", "an integer >= 0")
        for name in ("lr", "weight_decay", "warmup_epochs", "label_smoothing", "momentum", "gamma"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise bad(name, "a finite number >= 0")
        if self.lr == 0 and self.epochs > 0:
            raise bad("lr", "> 0")
        if self.label_smoothing >= 1:
            raise bad("label_smoothing", "in [0, 1)")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            raise bad("nesterov", "only with optimizer sgd and momentum > 0")
        if any(not 0 < m < 1 for m in self.milestones):
            raise bad("milestones", "fractions of the run, each in (0, 1)")
        if self.max_steps_per_epoch is not None and (not isinstance(self.max_steps_per_epoch, int) or self.max_steps_per_epoch < 1):
            raise bad("max_steps_per_epoch", "a positive integer or null")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise bad("grad_clip", "a positive number or null")
        if isinstance(self.eval_every, bool) or not isinstance(self.eval_every, int) or self.eval_every < 0:
            raise bad("eval_every", "an integer >= 0")


@dataclass
class TrainResult:
    """The trained model (same object as passed in), one dict per epoch, and the best epoch by the task's primary
    validation metric (classification: `val_top1`), in its direction."""

    model: nn.Module
    history: list[dict] = field(default_factory=list)
    best: dict | None = None


# -- building blocks ----------------------------------------------------------------------------


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """Return the optimizer over `model.parameters()` as they are now (masks and surgery included).

    With `no_decay_bn_bias`, parameters with at most one dimension (BatchNorm weights and biases,
    all biases, also a masked `bn.weight_orig`) get no weight decay.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if config.no_decay_bn_bias:
        groups = [
            {"params": [p for p in params if p.ndim > 1], "weight_decay": config.weight_decay},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
        ]
        groups = [g for g in groups if g["params"]]
    else:
        groups = [{"params": params, "weight_decay": config.weight_decay}]
    if not params:
        raise UserError("the model has no trainable parameters")
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov)
    return torch.optim.AdamW(groups, lr=config.lr)


def lr_factor(step: int, *, config: TrainConfig, total_steps: int, steps_per_epoch: int) -> float:
    """Return the learning-rate multiplier (of `config.lr`) at iteration `step` for cosine, multistep and constant."""
    warmup = int(round(config.warmup_epochs * steps_per_epoch))
    if step < warmup:
        return (step + 1) / warmup
    if config.schedule == "cosine":
        t = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))
    if config.schedule == "multistep":
        return config.gamma ** sum(step >= int(m * total_steps) for m in config.milestones)
    return 1.0


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, *, steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Return the per-iteration learning-rate schedule for `config.epochs` epochs of `steps_per_epoch` steps."""
    total = max(1, config.epochs * steps_per_epoch)
    if config.schedule == "onecycle":
        pct = config.warmup_epochs / config.epochs if config.warmup_epochs and config.epochs else 0.3
        cycle_momentum = config.optimizer == "adamw" or config.momentum > 0
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=config.lr, total_steps=total, pct_start=min(max(pct, 1e-3), 0.999),
            cycle_momentum=cycle_momentum, base_momentum=min(0.85, config.momentum) if config.optimizer == "sgd" else 0.85,
            max_momentum=config.momentum if config.optimizer == "sgd" else 0.95,
        )
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, config=config, total_steps=total, steps_per_epoch=steps_per_epoch)
    )




@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, *, task: Any = None, device: str | torch.device = "cpu", amp: bool = True,
             max_batches: int | None = None) -> dict[str, float]:
    """Return the task's metrics of `model` on `loader` (`task.evaluate`; default classification:
    {"top1": %, "top5": %, "loss": mean cross-entropy per image, "images": count}).

    The model is put in eval mode for the pass and left in the mode it was in.
    """
    return tasks.resolve(task).evaluate(model, loader, device=device, amp=amp, max_batches=max_batches)


# -- progress display -------------------------------------------------------------------------


class _Display:
    """A rich progress bar per epoch showing loss, accuracy and images/s (or nothing)."""

    def __init__(self, enabled: bool, stage: str) -> None:
        self.stage = stage
        self.progress = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                TextColumn("{task.fields[info]}"),
            )
            self.progress.start()

    def epoch(self, epoch: int, epochs: int, steps: int) -> Any:
        if self.progress is None:
            return None
        return self.progress.add_task(f"{self.stage} {epoch + 1}/{epochs}", total=steps, info="")

    def update(self, task: Any, steps: int, info: str) -> None:
        if self.progress is not None:
            self.progress.update(task, completed=steps, info=info)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


# -- the loop ---------------------------------------------------------------------------------


def _sum(values: Iterable[torch.Tensor]) -> torch.Tensor:
    total: torch.Tensor | None = None
    for v in values:
        total = v if total is None else total + v
    if total is None:
        raise UserError("the task returned no losses to train on")
    return total


def _all_finite(finite: torch.Tensor) -> bool:
    """True when the loss was finite on every rank (a collective: every rank stops together, none hangs)."""
    bad = distributed.all_reduce_sum((~finite).to(torch.float32).reshape(1))
    return bool(bad.item() == 0)


def _call(hooks: Sequence[Any], name: str, *args: Any, **kwargs: Any) -> list[Any]:
    return [getattr(h, name)(*args, **kwargs) for h in hooks if callable(getattr(h, name, None))]


def _diverged(stage: str, epoch: int, step: int, value: float, lr: float, checkpoint: Path | None, last_good: int | None) -> TrainingDiverged:
    if checkpoint is not None and last_good is not None:
        kept = f"the last good checkpoint {checkpoint} (after epoch {last_good + 1}) is kept"
    else:
        kept = "no checkpoint had been written yet"
    return TrainingDiverged(
        f"{stage}: the loss became {value} at epoch {epoch + 1}, step {step + 1} (lr {lr:.4g}); {kept}; "
        "lower the learning rate or a regularizer's weight, or set grad_clip"
    )


def train(
    model: nn.Module,
    *,
    data: Any,
    config: TrainConfig,
    task: Any = None,
    hooks: Sequence[Any] = (),
    device: str | torch.device = "cpu",
    stage: str = "train",
    log_path: str | os.PathLike | None = None,
    checkpoint_path: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    dist: distributed.DistInfo | None = None,
) -> TrainResult:
    """Train `model` in place on `data` (a `prunekit.data.DataBundle`) and return a `TrainResult`.

    The optimizer is built here, from the model's parameters as the caller left them. With
    `checkpoint_path`, a checkpoint is written after every epoch; with `resume=True` and an
    existing checkpoint, training continues after its epoch with the same results as an
    uninterrupted run (it must have been written with the same config). A NaN or infinite loss
    raises `TrainingDiverged`. `history` entries are the lines written to `log_path`.

    `task` (a `prunekit.tasks.Task` or a task name; default classification) turns each batch into
    named losses, which are summed (plus the hooks' regularizers) and stepped; validation is
    `task.evaluate`, and `best` is the epoch with the best primary metric in its direction.

    `dist` (from `prunekit.distributed.init_from_env`) trains data-parallel: every rank starts from
    rank 0's weights, takes batch_size / world_size of each global batch, steps through DDP; the
    epoch's figures are summed over ranks, rank 0 evaluates (the others receive its scores), and
    only rank 0 writes the checkpoint, the log and the progress display.
    """
    config.validate()
    task = tasks.resolve(task)
    primary = task.primary
    device = torch.device(device)
    hooks = [h for h in hooks if h is not None]
    info = dist if dist is not None else distributed.DistInfo(device=device)
    ckpt_path = Path(checkpoint_path) if checkpoint_path is not None else None
    channels_last = device.type == "cuda" if config.channels_last is None else config.channels_last
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model.to(device=device, memory_format=memory_format)

    ckpt = load_checkpoint(ckpt_path) if resume and ckpt_path is not None and ckpt_path.exists() else None
    if ckpt is not None:
        diffs = _config_differences(ckpt["config"], config)
        if diffs:
            raise UserError(f"checkpoint {ckpt_path} was written with another training config ({'; '.join(diffs)}); "
                            "resume with the same settings or start afresh")
        _restore_model(model, ckpt["model"], ckpt_path)
    else:
        seed_everything(config.seed)
    distributed.broadcast_module_state(model)  # rank 0's weights (and masks) everywhere; a no-op in one process
    from prunekit.data.sharded import sharded

    train_batches = sharded(data.train, info)  # this rank's B / world_size of every global batch

    steps_per_epoch = len(train_batches)
    if config.max_steps_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, config.max_steps_per_epoch)
    if steps_per_epoch < 1 and config.epochs > 0:
        raise UserError("the training split yields no batches")
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config, steps_per_epoch=steps_per_epoch)
    history: list[dict] = []
    best: dict | None = None
    start = 0
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        stateful = [h for h in hooks if callable(getattr(h, "load_state_dict", None))]
        if len(ckpt["hooks"]) != len(stateful):
            raise UserError(f"checkpoint {ckpt_path} holds the state of {len(ckpt['hooks'])} hook(s), "
                            f"this run has {len(stateful)} with state; resume with the same method")
        for hook, state in zip(stateful, ckpt["hooks"]):
            hook.load_state_dict(state)
        if ckpt.get("data") is not None and callable(getattr(train_batches, "load_state_dict", None)):
            train_batches.load_state_dict(ckpt["data"])
        set_rng_state(ckpt["rng"])
        history, best, start = list(ckpt["history"]), ckpt["best"], int(ckpt["epoch"]) + 1
    last_good = start - 1 if ckpt is not None else None

    forward = distributed.wrap_ddp(model, info)  # hooks, optimizer and surgery keep `model`
    forward = torch.compile(forward) if config.compile else forward
    display = _Display(progress and info.is_main, stage)
    sync_every = 1 if device.type == "cpu" else 25  # a GPU->CPU sync per step would starve the GPU
    try:
        for epoch in range(start, config.epochs):
            if callable(getattr(train_batches, "set_epoch", None)):
                train_batches.set_epoch(epoch)
            model.train()
            bar = display.epoch(epoch, config.epochs, steps_per_epoch)
            loss_sum = torch.zeros((), dtype=torch.float64, device=device)
            named_sums: dict[str, torch.Tensor] = {}
            stat_sums: dict[str, torch.Tensor] = {}
            finite = torch.ones((), dtype=torch.bool, device=device)
            seen, t0 = 0, time.perf_counter()
            for step, batch in enumerate(itertools.islice(train_batches, steps_per_epoch)):
                batch = task.to_device(batch, device, memory_format=memory_format)
                with _autocast(device, config.amp):
                    outputs = task.forward(forward, batch)
                losses = task.train_losses(outputs, batch, config=config)
                loss = _sum(losses.values())
                total = loss
                for extra in _call(hooks, "regularizer", model):
                    if extra is not None:
                        total = total + extra
                finite &= torch.isfinite(total.detach())
                if (step + 1) % sync_every == 0 and not _all_finite(finite):  # before the step: the weights stay good
                    raise _diverged(stage, epoch, step, total.item(), scheduler.get_last_lr()[0], ckpt_path, last_good)
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                _call(hooks, "after_backward", model)
                if config.grad_clip is not None:
                    nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                optimizer.step()
                scheduler.step()
                _call(hooks, "after_step", model)
                n = task.batch_size(batch)
                loss_sum += loss.detach().double() * n
                for name, value in losses.items():
                    named_sums[name] = named_sums.get(name, 0) + value.detach().double() * n
                for name, value in task.train_stats(outputs, batch).items():
                    stat_sums[name] = stat_sums.get(name, 0) + torch.as_tensor(value).detach().double()
                seen += n
                if bar is not None and ((step + 1) % 20 == 0 or step + 1 == steps_per_epoch):
                    rate = seen / max(time.perf_counter() - t0, 1e-9)
                    stats = "".join(f"  {k} {v.item() / seen:.2f}" for k, v in stat_sums.items())
                    display.update(bar, step + 1, f"loss {loss_sum.item() / seen:.4f}{stats}  {rate:.0f} img/s")
            if not _all_finite(finite):
                raise _diverged(stage, epoch, steps_per_epoch - 1, float("nan"), scheduler.get_last_lr()[0], ckpt_path, last_good)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            train_time = time.perf_counter() - t0
            _call(hooks, "after_epoch", model, epoch=epoch)
            distributed.broadcast_module_state(model)  # SFP's zeroing, masks: rank 0's, bit for bit
            sums = distributed.reduce_metrics({"loss": loss_sum, "seen": seen, **{f"loss_{k}": v for k, v in named_sums.items()},
                                               **{f"stat_{k}": v for k, v in stat_sums.items()}})
            seen = sums["seen"]

            key = f"val_{primary.name}"
            record: dict[str, Any] = {"stage": stage, "epoch": epoch, "train_loss": sums["loss"] / max(seen, 1)}
            if len(named_sums) > 1:
                record.update({f"train_loss_{k}": sums[f"loss_{k}"] / max(seen, 1) for k in named_sums})
            record.update({f"train_{k}": sums[f"stat_{k}"] / max(seen, 1) for k in stat_sums})
            record.update({key: None, "val_loss": None,
                           "lr": optimizer.param_groups[0]["lr"], "images_per_s": seen / max(train_time, 1e-9)})
            if epoch == config.epochs - 1 or (config.eval_every and (epoch + 1) % config.eval_every == 0):
                loader = data.val if data.val is not None else data.test
                scores = None
                if info.is_main:  # exact for any metric (AP included); the others wait for its scores
                    scores = task.evaluate(model, loader, device=device, amp=config.amp, max_batches=config.eval_max_batches)
                scores = distributed.broadcast_object(scores)
                task.primary_value(scores)  # a UserError if the task's evaluate lacks its primary metric
                record.update({f"val_{k}": v for k, v in scores.items() if k != "images"})
                record["eval_split"] = "val" if data.val is not None else "test"
            record["epoch_time_s"] = time.perf_counter() - t0
            history.append(record)
            if record[key] is not None and (best is None or primary.better(record[key], best[key])):
                best = dict(record)

            if ckpt_path is not None and info.is_main:
                save_checkpoint(ckpt_path, {
                    "format": CHECKPOINT_FORMAT, "stage": stage, "epoch": epoch, "config": dataclasses.asdict(config),
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "hooks": [h.state_dict() for h in hooks if callable(getattr(h, "load_state_dict", None))],
                    "data": train_batches.state_dict() if callable(getattr(train_batches, "state_dict", None)) else None,
                    "rng": rng_state(), "history": history, "best": best,
                })
            if ckpt_path is not None:
                distributed.barrier()  # the checkpoint is whole before any rank goes on
                last_good = epoch
            if log_path is not None and info.is_main:
                Path(log_path).parent.mkdir(parents=True, exist_ok=True)
                with open(log_path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(record) + "\n")
    finally:
        display.close()
    return TrainResult(model=model, history=history, best=best)
