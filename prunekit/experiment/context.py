"""What a run works with, built once from the recipe: task, method, device, data, model builders,
and the training / evaluation / scoring services the stages and the method use.

`RunContext(recipe, ...)` validates every name and option the recipe holds (task, method, dataset,
model, files, the method's own retraining settings) without touching the run directory;
`load_data()` then loads the data (still before anything is written), and `method_context(run)`
builds the `MethodContext` a method receives through `setup`.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from torch import nn

from prunekit import data, distributed, io, methods, models, tasks, train
from prunekit.errors import UserError, unknown_name
from prunekit.methods.autorate import DEFAULT_RETRAIN as AUTORATE_RETRAIN
from prunekit.methods.base import MethodContext
from prunekit.recipe import Recipe, TrainSettings

#: methods with a `train` option of their own retraining settings, merged over these defaults
#: (one epoch per `MethodContext.retrain` call); any other method retrains with `method.train`
OWN_RETRAIN_DEFAULTS: dict[str, dict[str, Any]] = {"autorate": AUTORATE_RETRAIN}


def resolve_device(name: str, recipe: Recipe, path: str) -> str:
    """Return "cpu" or "cuda" for the recipe value `name` at field `path` ("auto" picks cuda when present)."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name not in ("cpu", "cuda"):
        raise recipe.field_error(path, f"{name!r} is not one of auto, cpu, cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise recipe.field_error(path, "cuda asked but no CUDA device is available (use cpu or auto)")
    return name


def seed_everything(seed: int) -> None:
    """Seed python's, numpy's and torch's generators (each stage starts from its own seed)."""
    random.seed(seed)
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def train_config(settings: TrainSettings, **extra: Any) -> train.TrainConfig:
    """Return the `TrainConfig` for a recipe's training section (plus `extra` fields, e.g. seed)."""
    names = {f.name for f in fields(train.TrainConfig)}
    values = settings.model_dump()
    unknown = set(values) - names
    if unknown:  # the schema and TrainConfig drifted apart: a bug, not a user mistake
        raise RuntimeError(f"TrainConfig has no field(s) {sorted(unknown)}")
    values["milestones"] = tuple(values["milestones"])
    return train.TrainConfig(**{**values, **extra})


class ScoringBatches:
    """The first `n` batches of a loader, re-iterable (a method may pass over its data twice)."""

    def __init__(self, loader: Any, n: int) -> None:
        self.loader = loader
        self.n = n

    def __iter__(self) -> Iterator[Any]:
        return itertools.islice(iter(self.loader), self.n)


class RunContext:
    """The task, method, device and data of one run, and the services built on them."""

    def __init__(self, recipe: Recipe, *, device: str | None = None, progress: bool = True) -> None:
        self.recipe = recipe
        self.device = resolve_device(device or recipe.device, recipe, "device")
        # Under torchrun: join the group (gloo on CPU, NCCL on cuda:LOCAL_RANK, made the current device).
        # Every rank runs the whole experiment on identical inputs; only rank 0 prints and writes.
        self.dist = distributed.init_from_env(self.device)
        self.progress = progress and self.dist.is_main
        self.console = Console(highlight=False, quiet=not self.progress)
        self.latency_device = (
            self.device if recipe.eval.latency_device == "auto"
            else resolve_device(recipe.eval.latency_device, recipe, "eval.latency_device")
        )
        self.task = self._create_task()
        self.method = self._create_method()
        self.composite = len(self.method.stages) > 0
        self.stage_methods: list[Any] = list(self.method.stages) if self.composite else [self.method]
        self._check_stage_epochs()
        self._check_names()
        self.retrain_config = self._retrain_config()
        self.data: Any = None
        self.example_inputs: Any = None

    # validation ----------------------------------------------------------------------------------
    def _create_task(self) -> tasks.Task:
        t = self.recipe.task
        name = t.name  # filled from the dataset by the recipe's validator when the file names none
        if ":" not in name and name not in tasks.list_tasks():
            raise self.recipe.field_error("task.name", str(unknown_name("task", name, tasks.list_tasks())))
        try:
            return tasks.create(name, **t.options)
        except UserError as err:
            field = "task.options" if "option" in str(err) else "task.name"
            raise self.recipe.field_error(field, str(err)) from None
        except TypeError as err:  # a user's configure(*, known=...) called with an unknown option
            if "unexpected keyword argument" not in str(err):
                raise
            raise self.recipe.field_error("task.options", f"task {t.name!r}: {str(err).splitlines()[0]}") from None

    def _create_method(self) -> Any:
        m = self.recipe.method
        field = "method.name" if m.name not in methods.list_methods() else "method"
        try:
            return methods.create(m.name, target=m.target, ignore=m.ignore, round_to=m.round_to, **m.options)
        except UserError as err:
            raise self.recipe.field_error(field, str(err)) from None

    def _check_stage_epochs(self) -> None:
        stage_epochs = self.recipe.method.stage_epochs
        if stage_epochs is not None and len(stage_epochs) != len(self.stage_methods):
            raise self.recipe.field_error(
                "method.stage_epochs",
                f"method {self.method.name!r} has {len(self.stage_methods)} stage(s) "
                f"({', '.join(m.name for m in self.stage_methods)}); give one epoch count per stage, not {len(stage_epochs)}",
            )

    def _check_names(self) -> None:
        r = self.recipe
        known = data.list_datasets()
        if r.data.name not in known and r.data.name.partition(":")[0] not in known:
            raise r.field_error("data.name", str(unknown_name("dataset", r.data.name, known)))
        if r.model.name not in models.list_models():
            raise r.field_error("model.name", str(unknown_name("model", r.model.name, models.list_models())))
        weights = r.model.weights
        if models.imagenet.is_imagenet(weights):
            try:  # the architecture has such weights (the file itself is looked for when the model is built)
                models.imagenet.weights_enum(r.model.name, weights)
            except UserError as err:
                raise r.field_error("model.weights", str(err)) from None
            weights = None
        for path, value in (("model.weights", weights), ("baseline.checkpoint", r.baseline.checkpoint)):
            if value is not None and not Path(value).is_file():
                raise r.field_error(path, f"no such file {value} (relative paths resolve against the working directory)")

    def _retrain_config(self) -> train.TrainConfig:
        """Return the settings of one `MethodContext.retrain` epoch (validated now, before any write)."""
        own = OWN_RETRAIN_DEFAULTS.get(self.method.name)
        if own is None:
            config = train_config(self.recipe.method.train, seed=self.recipe.seed)
            config.validate()
            return config
        given = self.method.options.get("train") or {}
        settings = {**own, **given}
        names = {f.name for f in fields(train.TrainConfig)}
        unknown = sorted(set(settings) - names)
        where = "method.options.train"
        if unknown:
            raise self.recipe.field_error(where, f"{self.method.name}: option train has unknown setting(s) "
                                                 f"{', '.join(unknown)} (allowed: {', '.join(sorted(names))})")
        if "milestones" in settings:
            settings["milestones"] = tuple(settings["milestones"])
        try:
            config = train.TrainConfig(**settings)
            config.validate()
        except UserError as err:
            raise self.recipe.field_error(where, str(err)) from None
        return config

    # data and models -----------------------------------------------------------------------------
    def load_data(self) -> None:
        """Load the recipe's data on the run's device (a `UserError` names the data field)."""
        d = self.recipe.data
        try:
            self.data = data.load(
                d.name, root=d.root, batch_size=d.batch_size, eval_batch_size=d.eval_batch_size,
                device=self.device, subset=d.subset, val_fraction=d.val_fraction, seed=self.recipe.seed,
                num_workers=d.num_workers, augment=d.augment, **d.options,
            )
        except UserError as err:
            raise self.recipe.field_error("data", str(err)) from None
        self.example_inputs = self.data.example_inputs(1).to(self.device)

    def build_model(self, *, weights: str | None) -> nn.Module:
        m = self.recipe.model
        try:
            return models.create(
                m.name, num_classes=m.num_classes or self.data.num_classes, small_input=m.small_input,
                weights=weights, **m.kwargs,
            )
        except UserError as err:
            raise self.recipe.field_error("model", str(err)) from None

    def load_checkpoint(self, path: str) -> nn.Module:
        obj = models.read_torch_file(path)
        if isinstance(obj, dict) and obj.get("format") == io.FORMAT:
            return io.load(path)
        # Any other file is read as a state dict of the recipe's model (the models' weights= loader).
        return self.build_model(weights=path)

    def reinitialise(self, model: nn.Module) -> nn.Module:
        """Return `model` with fresh weights: the builder's own init when the shapes match, else reset_parameters()."""
        fresh = self.build_model(weights=None).to(self.device)
        try:
            model.load_state_dict(fresh.state_dict())
        except RuntimeError:
            for module in model.modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
        return model

    # services ------------------------------------------------------------------------------------
    def batches(self) -> ScoringBatches:
        """Return the scoring batches (the first `method.data_batches` training batches)."""
        return ScoringBatches(self.data.train, self.recipe.method.data_batches)

    def stream_state(self) -> dict[str, Any]:
        """Return the training data stream position and the global RNG state (saved with each stage)."""
        loader = self.data.train
        position = loader.state_dict() if callable(getattr(loader, "state_dict", None)) else None
        return {"data": position, "rng": train.rng_state()}

    def restore_stream(self, state: dict[str, Any] | None) -> None:
        """Restore what `stream_state` returned (None: nothing was saved, e.g. an older run)."""
        if not state:
            return
        loader = self.data.train
        if state.get("data") is not None and callable(getattr(loader, "load_state_dict", None)):
            loader.load_state_dict(state["data"])
        if state.get("rng") is not None:
            train.set_rng_state(state["rng"])

    def train(self, model: nn.Module, *, settings: TrainSettings, hooks: tuple[Any, ...], stage: str, run: Any,
              resume: bool) -> nn.Module:
        """Train `model` with a recipe training section, checkpointing into the run's state/."""
        config = train_config(settings, seed=self.recipe.seed)
        if config.eval_max_batches is None:
            config = replace(config, eval_max_batches=self.recipe.eval.max_batches)
        checkpoint = run.checkpoint(stage)
        result = train.train(
            model, data=self.data, config=config, task=self.task, hooks=hooks, device=self.device, stage=stage,
            log_path=run.log_path, checkpoint_path=checkpoint, resume=resume and checkpoint.exists(),
            progress=self.progress, dist=self.dist,
        )
        return result.model

    def evaluate(self, model: nn.Module, split: str = "test") -> dict[str, Any]:
        """Return the task's metrics of `model` on `split` ("test", or "val": validation, else test).

        In a data-parallel run rank 0 evaluates and every rank gets its figures (or its error), so
        decisions taken on them (autorate's accept/reject) are the same on every rank."""
        outcome: tuple[str, Any] = ("ok", None)
        if self.dist.is_main:
            try:
                outcome = ("ok", self._evaluate_here(model, split))
            except UserError as err:
                outcome = ("error", str(err))
        kind, value = distributed.broadcast_object(outcome)
        if kind == "error":
            raise UserError(value)
        return value

    def _evaluate_here(self, model: nn.Module, split: str) -> dict[str, Any]:
        loader = self.data.test if split == "test" or self.data.val is None else self.data.val
        result = self.task.evaluate(model, loader, device=self.device, amp=self.recipe.finetune.amp,
                                    max_batches=self.recipe.eval.max_batches)
        self.task.primary_value(result)  # a task whose metrics lack its primary one is a UserError now
        return {k: (int(v) if k == "images" else float(v)) if isinstance(v, (int, float, torch.Tensor)) else v
                for k, v in result.items()}

    def method_context(self, run: Any) -> MethodContext:
        """Return the `MethodContext` the method gets through `setup` (once per run)."""
        config = self.retrain_config
        calls = [0]

        def retrain(model: nn.Module) -> nn.Module:
            # one epoch per call, its seed advanced so epochs see different orders
            calls[0] += 1
            cfg = replace(config, epochs=1, seed=config.seed + calls[0], eval_every=0, eval_max_batches=1)
            return train.train(model, data=self.data, config=cfg, task=self.task, device=self.device,
                               stage=f"{self.method.name}-{calls[0]}", progress=self.progress, dist=self.dist).model

        def evaluate(model: nn.Module) -> dict[str, Any]:
            return self.evaluate(model, "val")

        def log(text: str) -> None:
            self.console.print(f"    {text}")
            run.log({"event": "message", "stage": run.metrics.get("stage"), "text": str(text)})

        return MethodContext(
            task=self.task, example_inputs=self.example_inputs, device=torch.device(self.device),
            batches=self.batches(), retrain=retrain, evaluate=evaluate, log=log, out_dir=run.path,
        )

