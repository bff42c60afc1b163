"""The task contract: what a model is trained on and judged by.

A `Task` turns a batch into a dict of named losses (the trainer sums them and steps; data-scored
methods differentiate the sum), evaluates a model on a loader into a dict of metrics with one
declared **primary** metric, names the modules whose output size must never change, and owns the
batch plumbing (device moves for structured targets, collation, example inputs that may be a
tuple). The loop only sums, logs and steps, as in timm's `timm/task/` and torchvision's detection
engine. Methods, the trainer and the experiment never look inside a batch themselves.

    task = prunekit.tasks.create("classification")
    batch = task.to_device(batch, device)
    losses = task.loss(model, batch)          # {"ce": tensor}
    sum(losses.values()).backward()
    metrics = task.evaluate(model, loader)    # {"top1": 91.2, ...}; task.primary.name == "top1"
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import default_collate

from prunekit import inputs
from prunekit.errors import UserError
from prunekit.registry import Registry

#: layer types whose output channels a structured method removes (kept in step with structure.ROOT_TYPES)
_ROOT_TYPES = (nn.modules.conv._ConvNd, nn.Linear)


@dataclass(frozen=True)
class Metric:
    """A metric a task reports: its key in `evaluate`'s dict, its unit and its direction.

    `unit` is "%" (percent, e.g. top-1), "fraction" (in [0, 1], e.g. AP) or free text for
    anything else (e.g. "nats"); `percent(value)` converts the first two to percent for NetScore
    and returns None for the rest.
    """

    name: str
    unit: str = "%"
    higher_is_better: bool = True
    description: str = ""

    def percent(self, value: float | None) -> float | None:
        """Return `value` in percent (for NetScore), or None when the unit is not a share."""
        if value is None:
            return None
        if self.unit == "%":
            return float(value)
        if self.unit == "fraction":
            return 100.0 * float(value)
        return None

    def better(self, a: float, b: float) -> bool:
        """Return True when `a` is strictly better than `b` in this metric's direction."""
        return a > b if self.higher_is_better else a < b

    def drop(self, before: float, after: float) -> float:
        """Return how much worse `after` is than `before` (positive = worse), in the metric's unit."""
        return (before - after) if self.higher_is_better else (after - before)


class Task:
    """Base class of every task; subclasses set `name`, `primary` and implement `losses`/`evaluate`.

    A batch is whatever the task's loaders yield; the defaults here handle `(inputs, targets)`
    pairs whose inputs are a tensor (or a tuple of tensors) and whose targets are a tensor, a list
    of tensors or a list/tuple of dicts of tensors (detection). Options arrive as keyword
    arguments through `configure`; unknown options are a `UserError`.
    """

    name: ClassVar[str] = ""
    primary: ClassVar[Metric] = Metric("loss", unit="nats", higher_is_better=False)
    #: a one-line description for `prunekit list tasks`
    description: ClassVar[str] = ""

    def __init__(self, **options: Any) -> None:
        self.options = self.configure(**options)

    def configure(self, **options: Any) -> dict[str, Any]:
        """Validate task-specific options and return them; the base accepts none."""
        if options:
            raise UserError(f"task {self.name!r} has no option(s) {', '.join(sorted(options))}")
        return {}

    # batches -----------------------------------------------------------------------------------
    def inputs(self, batch: Any) -> Any:
        """Return the model inputs of `batch` (a tensor or a tuple of tensors)."""
        return batch[0]

    def targets(self, batch: Any) -> Any:
        """Return the targets of `batch`."""
        return batch[1]

    def batch_size(self, batch: Any) -> int:
        """Return the number of samples in `batch`."""
        x = self.inputs(batch)
        return int((x[0] if isinstance(x, (tuple, list)) else x).shape[0])

    def to_device(self, batch: Any, device: str | torch.device, *, memory_format: torch.memory_format | None = None) -> Any:
        """Return `batch` with every tensor on `device` (structured targets included); image inputs
        (4-d tensors) take `memory_format` when given."""
        device = torch.device(device)
        x, y = self.inputs(batch), self.targets(batch)
        return (_move(x, device, memory_format), _move(y, device, None))

    def collate(self, samples: Sequence[Any]) -> Any:
        """Return one batch from a list of samples (a DataLoader's `collate_fn`)."""
        return default_collate(samples)

    def example_inputs(self, batch: Any, *, n: int = 1) -> Any:
        """Return the first `n` samples of `batch`'s inputs, on the CPU, for tracing and measuring."""
        return _slice(self.inputs(batch), n)

    # training ----------------------------------------------------------------------------------
    def forward(self, model: nn.Module, batch: Any) -> Any:
        """Return the model's outputs for `batch` (inputs unpacked when they are a tuple)."""
        x = self.inputs(batch)
        return model(*x) if isinstance(x, tuple) else model(x)

    def losses(self, outputs: Any, batch: Any) -> dict[str, torch.Tensor]:
        """Return the named scalar losses of `outputs` against `batch`'s targets."""
        raise NotImplementedError(f"task {self.name!r} does not define losses")

    def loss(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        """Return the named scalar losses of `model` on `batch` (already on the model's device);
        their sum is what the trainer steps on and what data-scored methods differentiate."""
        return self.losses(self.forward(model, batch), batch)

    def train_losses(self, outputs: Any, batch: Any, *, config: Any) -> dict[str, torch.Tensor]:
        """Return the losses the trainer steps on; a task may read training settings from
        `config` (a `TrainConfig`, e.g. label smoothing). Defaults to `losses`."""
        return self.losses(outputs, batch)

    def train_stats(self, outputs: Any, batch: Any) -> dict[str, torch.Tensor]:
        """Return per-batch SUMS of running training statistics (e.g. {"top1": 100 * correct});
        the trainer divides by the samples seen and logs them as `train_<name>`."""
        return {}

    # judging -----------------------------------------------------------------------------------
    def evaluate(self, model: nn.Module, loader: Iterable, *, device: str | torch.device = "cpu", amp: bool = True,
                 max_batches: int | None = None) -> dict[str, float]:
        """Return the task's metrics of `model` on `loader`; the dict holds `primary.name`."""
        raise NotImplementedError(f"task {self.name!r} does not define evaluate")

    def primary_value(self, metrics: Mapping[str, Any]) -> float:
        """Return the primary metric from an `evaluate` dict (UserError if it is missing)."""
        if self.primary.name not in metrics:
            raise UserError(f"task {self.name!r}: metrics lack the primary metric {self.primary.name!r} "
                            f"(have {', '.join(sorted(metrics))})")
        return float(metrics[self.primary.name])

    def report_pictures(self, *, dense: nn.Module, pruned: nn.Module, loader: Iterable, run_dir: str | os.PathLike) -> list[str]:
        """Draw pictures of `dense` beside `pruned` on a few evaluation samples into `run_dir` for
        the run's report.md; return the PNG file names written (none by default)."""
        return []

    def protected(self, model: nn.Module, example_inputs: Any) -> list[nn.Module]:
        """Return the modules whose output size must never change: by default every conv/linear
        layer whose output reaches a model output through shape-only ops (classifier, every
        prediction head of a detector), found by walking the autograd graph of one forward."""
        return output_layers(model, example_inputs)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(options={self.options})"


# -- helpers ----------------------------------------------------------------------------------


def _move(obj: Any, device: torch.device, memory_format: torch.memory_format | None) -> Any:
    if isinstance(obj, torch.Tensor):
        obj = obj.to(device, non_blocking=True)
        if memory_format is not None and obj.dim() == 4:
            obj = obj.contiguous(memory_format=memory_format)
        return obj
    if isinstance(obj, Mapping):
        return {k: _move(v, device, memory_format) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return tuple(_move(v, device, memory_format) for v in obj)
    if isinstance(obj, list):
        return [_move(v, device, memory_format) for v in obj]
    return obj


def _slice(obj: Any, n: int) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj[:n].detach().cpu()
    if isinstance(obj, tuple):
        return tuple(_slice(v, n) for v in obj)
    if isinstance(obj, list):
        return [_slice(v, n) for v in obj]
    return obj


def _flat_tensors(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, Mapping):
        obj = list(obj.values())
    if isinstance(obj, (tuple, list)):
        return [t for v in obj for t in _flat_tensors(v)]
    if hasattr(obj, "__dataclass_fields__"):
        return [t for k in obj.__dataclass_fields__ for t in _flat_tensors(getattr(obj, k))]
    return []


def call_model(model: nn.Module, example_inputs: Any) -> Any:
    """Return `model(example_inputs)`, unpacking a tuple of inputs into positional arguments."""
    return inputs.call(model, example_inputs)


class OutputLayerRecorder:
    """Hooks that record which conv/linear layer produced which autograd node during one forward,
    and the model's outputs; `layers()` then walks back from the outputs (see `output_layers`).

    Used as a context manager around any forward in eval mode with autograd on, so a caller that
    runs one anyway (Torch-Pruning's trace in `structure.build_graph`) needs no second forward."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.produced: dict[Any, nn.Module] = {}
        self.order: list[nn.Module] = []
        self.outputs: Any = None
        self.walked = False  # whether `layers()` found them through the graph (not the fallback)
        self._hooks: list[Any] = []

    def _record(self, module: nn.Module, _inputs: Any, output: Any) -> None:
        self.order.append(module)
        for t in _flat_tensors(output):
            if t.grad_fn is not None:
                self.produced.setdefault(t.grad_fn, module)

    def _outputs(self, _module: nn.Module, _inputs: Any, output: Any) -> None:
        self.outputs = output

    def __enter__(self) -> "OutputLayerRecorder":
        self._hooks = [m.register_forward_hook(self._record) for m in self.model.modules() if isinstance(m, _ROOT_TYPES)]
        self._hooks.append(self.model.register_forward_hook(self._outputs))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def layers(self) -> list[nn.Module]:
        """Return the output layers of the recorded forward (the last layer run when the graph
        cannot be walked, e.g. no parameter requires grad)."""
        found: list[nn.Module] = []
        seen: set[int] = set()
        stack = [t.grad_fn for t in _flat_tensors(self.outputs) if t.grad_fn is not None]
        while stack:
            node = stack.pop()
            if node is None or id(node) in seen:
                continue
            seen.add(id(node))
            module = self.produced.get(node)
            if module is not None:
                if module not in found:
                    found.append(module)
                continue
            if type(node).__name__ == "AccumulateGrad":
                continue
            stack.extend(fn for fn, _ in node.next_functions if fn is not None)
        self.walked = bool(found)
        return found or self.order[-1:]


def output_layers(model: nn.Module, example_inputs: Any) -> list[nn.Module]:
    """Return the conv/linear layers whose outputs reach `model`'s outputs through ops that do not
    mix channels with another layer's weights (reshape, permute, cat, activations, norms, adds).

    One forward in eval mode with autograd on; from each output tensor the autograd graph is walked
    back, stopping at the first conv/linear output on every path. Norm layers met on the way are
    walked through (their channels are coupled to the conv before them). Falls back to the last
    conv/linear layer run when the graph cannot be walked (e.g. no parameter requires grad).
    """
    was_training = model.training
    model.eval()
    try:
        with OutputLayerRecorder(model) as recorder, torch.enable_grad():
            call_model(model, example_inputs)
    finally:
        model.train(was_training)
    return recorder.layers()


# -- registry ---------------------------------------------------------------------------------

TASKS: Registry[type[Task]] = Registry("task")


def register(cls: type[Task]) -> type[Task]:
    """Class decorator: register a `Task` subclass under its `name` (duplicates raise `KeyError`)."""
    if not cls.name:
        raise KeyError(f"{cls.__name__} has no name to register under")
    TASKS.add(cls.name, cls)
    return cls


def _import_task(spec: str) -> type[Task]:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise UserError(f"task {spec!r}: a task from your own code is written module:Class (e.g. mypkg.tasks:Regression)")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise UserError(f"task {spec!r}: cannot import module {module_name!r} ({err})") from None
    cls = getattr(module, attr, None)
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise UserError(f"task {spec!r}: {module_name}.{attr} is not a prunekit.tasks.Task subclass")
    return cls


def create(name: str, **options: Any) -> Task:
    """Return a new task: a registered name ("classification", ...) or `module:Class` from the
    user's own code (a `Task` subclass, imported, not registered), configured with `options`."""
    if not isinstance(name, str):
        raise UserError(f"a task name must be a string, got {name!r}")
    cls = _import_task(name) if ":" in name else TASKS.get(name)
    return cls(**options)


def resolve(task: Task | str | None, **options: Any) -> Task:
    """Return `task` as a `Task`: an instance as it is, a name through `create`, None as classification."""
    if isinstance(task, Task):
        if options:
            raise UserError("task options go with a task name, not with a Task instance")
        return task
    return create("classification" if task is None else task, **options)


def list_tasks() -> list[str]:
    """Return the names of the registered tasks, sorted."""
    return TASKS.names()
