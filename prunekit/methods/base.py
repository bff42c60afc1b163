"""The method contract: a small object with optional hooks that the trainer and `prune` call.

The flow for one method (DESIGN.md):

    method.setup(MethodContext(task=task, example_inputs=x, batches=batches, retrain=..., evaluate=..., log=...))
    model = method.at_init(model, example_inputs=x, data=batches)   # SNIP masks, structured SNIP removal
    train(model, hooks=[method])                                     # regularizer / after_backward / after_step / after_epoch
    model = method.finalize(model, example_inputs=x, data=batches)  # hard prune: remove channels, truncate ranks, masks
    train(model, hooks=[method.finetune_hooks()])                    # fine-tune (masks keep holding)

`prunekit.prune()` runs the one-shot form: `setup`, `at_init` then `finalize`, no training in between.
A method scores with `self.task` (the context's task, else classification: `task_loss` sums its
named losses), protects `self.protected(model, x)` (the task's protected modules, by name) and
reports progress through `self.log` (silent unless the context gives a log).
A method never calls the trainer, and never does channel surgery itself: it asks
`prunekit.structure` (Torch-Pruning's DependencyGraph) to remove channels and `prunekit.masks`
to zero weights.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from prunekit import tasks
from prunekit.errors import UserError
from prunekit.registry import Registry
from prunekit.targets import Target

Batches = Iterable[Any]


@dataclass
class MethodContext:
    """What a method may use besides the model, given once through `Method.setup(context)`.

    `task` (a `prunekit.tasks.Task`) turns batches into losses and metrics; `batches` are the
    scoring batches (any iterable of the task's batches, or None); `retrain(model) -> model`
    trains one epoch with the run's settings and `evaluate(model) -> dict` returns the task's
    metrics on the validation split (both None outside a run, e.g. in `prunekit.prune`);
    `log(text)` reports progress (the run's console/log; silent by default); `out_dir` is where
    a method may write plots.
    """

    task: Any
    example_inputs: Any
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    batches: Batches | None = None
    retrain: Callable[[nn.Module], nn.Module] | None = None
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None
    log: Callable[[str], None] = field(default=lambda _text: None)
    out_dir: Path | None = None


def task_loss(task: Any, model: nn.Module, batch: Any, *, scale: float | None = None) -> torch.Tensor:
    """Return the sum of the task's named losses of `model` on `batch` (already on the device).

    `scale` divides the model's outputs first (GraSP's temperature): a task applies it when it has
    `scaled_loss(model, batch, scale=)` (classification divides its logits); for any other task
    the loss is unscaled (the temperature applies to classification logits only).
    """
    task = tasks.resolve(task)
    if scale is not None and scale != 1.0 and callable(getattr(task, "scaled_loss", None)):
        losses = task.scaled_loss(model, batch, scale=scale)
    else:
        losses = task.loss(model, batch)
    values = list(losses.values())
    if not values:
        raise UserError(f"task {task.name!r} returned no losses to score with")
    total = values[0]
    for v in values[1:]:
        total = total + v
    return total


class Method:
    """Base class of every pruning method; hooks default to doing nothing.

    Subclasses set `name`, `kind` ("structured", "unstructured" or "lowrank"), `units` (the target
    units they accept) and `needs_data` (True when scoring needs (inputs, targets) batches).
    Options arrive as keyword arguments; unknown options are a `UserError`.
    """

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "structured"
    units: ClassVar[tuple[str, ...]] = ("channels", "params", "macs")
    needs_data: ClassVar[bool] = False
    #: a one-line description and the paper, for `prunekit list methods` and the README
    description: ClassVar[str] = ""
    #: the methods a composite method runs one after another (each with its own fine-tune); empty otherwise
    stages: Sequence["Method"] = ()

    def __init__(
        self,
        *,
        target: Target | str | None = None,
        ignore: Sequence[str | nn.Module] = (),
        round_to: int | str | None = None,
        runtime: str = "eager",
        **options: Any,
    ) -> None:
        self.target = Target.parse(target) if target is not None else None
        if self.target is not None and not self.units:
            raise UserError(f"method {self.name!r} takes no target")
        if self.target is not None and self.target.unit not in self.units:
            raise UserError(
                f"method {self.name!r} takes a target in {', '.join(self.units)}, not {self.target.unit!r}"
            )
        self.ignore = tuple(ignore)
        self.round_to = round_to
        #: where measured choices (round_to="auto", latency targets) are timed: eager, onnxruntime, compile
        from prunekit.runtimes import check_runtime

        self.runtime = check_runtime(runtime)
        self.options = self.configure(**options)
        #: extra facts for metrics.json / reports (per-layer ranks, rates, stage results...)
        self.info: dict[str, Any] = {}

    # ----------------------------------------------------------------------------------------
    def configure(self, **options: Any) -> dict[str, Any]:
        """Validate method-specific options and return them; the base accepts none."""
        if options:
            raise UserError(f"method {self.name!r} has no option(s) {', '.join(sorted(options))}")
        return {}

    def resolve_round_to(self, model: nn.Module, example_inputs: torch.Tensor, *, default: int | str | None = None,
                         graph: Any = None) -> int | None:
        """Return the channel multiple for this method's `round_to` (`default` when it is None; an
        integer; or "auto", measured on the device by `prunekit.allocation.resolve_round_to`), or
        None for no rounding, and record how it was resolved in `info["round_to"]`."""
        from prunekit import allocation  # measures the device: only when a method finalizes

        asked = default if self.round_to is None else self.round_to
        resolved = allocation.resolve_round_to(asked, model=model, example_inputs=example_inputs,
                                               target=self.target, ignore=self.ignore, runtime=self.runtime, graph=graph)
        self.info["round_to"] = resolved.to_dict()
        return resolved.value

    # hooks -------------------------------------------------------------------------------------
    def setup(self, context: MethodContext) -> None:
        """Receive the run's task, scoring batches, retrain/evaluate callables and log (once, before
        `at_init`); the base keeps it as `self.context`. Composite methods pass it to their stages."""
        self.context = context
        for stage in self.stages:
            stage.setup(context)

    @property
    def task(self) -> Any:
        """The task this method scores and protects with: `context.task` after `setup`, else classification."""
        context = getattr(self, "context", None)
        if context is not None and context.task is not None:
            return tasks.resolve(context.task)
        return tasks.resolve(None)

    def log(self, text: str) -> None:
        """Report progress through the context's `log` (silent without `setup`)."""
        context = getattr(self, "context", None)
        if context is not None and context.log is not None:
            context.log(text)

    def protected(self, model: nn.Module, example_inputs: Any) -> list[str]:
        """Return the names of the modules whose output size must not change (the task's `protected`),
        for the structure functions' `protected=` (names survive the copies a planner makes)."""
        names = {m: n for n, m in model.named_modules()}
        return [names[m] for m in self.task.protected(model, example_inputs) if m in names]

    def planner_protected(self, model: nn.Module, example_inputs: Any) -> list[str] | None:
        """Return `protected` for a channel planner: None when the task keeps the default (its output
        layers), which the planner reads from its own dependency-graph trace instead of running the
        model once more; else the task's modules by name (`protected`)."""
        if type(self.task).protected is tasks.Task.protected:
            return None
        return self.protected(model, example_inputs)

    def at_init(self, model: nn.Module, *, example_inputs: torch.Tensor, data: Batches | None = None) -> nn.Module:
        """Prepare `model` before training (e.g. SNIP masks); return the model to train (may be new)."""
        return model

    def regularizer(self, model: nn.Module) -> torch.Tensor | None:
        """Return an extra loss term added to the task loss each step, or None."""
        return None

    def after_backward(self, model: nn.Module) -> None:
        """Adjust gradients after `loss.backward()` and before `optimizer.step()` (slimming subgradient)."""

    def after_step(self, model: nn.Module) -> None:
        """Run after each `optimizer.step()` (e.g. re-apply masks, schedule updates)."""

    def after_epoch(self, model: nn.Module, *, epoch: int) -> None:
        """Run after each training epoch (0-based `epoch`), e.g. SFP's soft zeroing."""

    def finalize(self, model: nn.Module, *, example_inputs: torch.Tensor, data: Batches | None = None) -> nn.Module:
        """Hard-prune `model` (remove channels, truncate ranks, fix masks) and return it."""
        return model

    def finetune_hooks(self) -> Any | None:
        """Return the hooks object to use while fine-tuning after `finalize` (None for none)."""
        return None

    # resume ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Return the method's own state (schedule position...) for checkpoints; tensors and plain data only."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(target={self.target}, options={self.options})"


def seed_option(method: str, value: Any) -> int:
    """Return a method's `seed` option when it is an integer in [0, 2**63); `UserError` otherwise
    (a float, NaN, text or a number torch's generator cannot take)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise UserError(f"method {method!r}: seed={value!r} must be an integer in [0, 2**63)")
    return value


METHODS: Registry[type[Method]] = Registry("method")


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: register a `Method` subclass under its `name` (duplicates raise)."""
    METHODS.add(cls.name, cls)
    return cls


def create(name: str, **kwargs: Any) -> Method:
    """Return a new instance of the method registered as `name`, configured with `kwargs`."""
    return METHODS.get(name)(**kwargs)


def list_methods() -> list[str]:
    """Return the names of all registered methods, sorted."""
    return METHODS.names()
