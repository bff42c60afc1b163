"""`prunekit.prune`: one call that prunes a model for real and says what it bought."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from prunekit import methods, structure, tasks
from prunekit.errors import UserError
from prunekit.methods.base import MethodContext
from prunekit.metrics import Measurement, achieved, measure
from prunekit.targets import Target


@dataclass
class PruneResult:
    """The pruned `model`, its `before`/`after` Measurements and `achieved` ({unit: fraction removed})."""

    model: nn.Module
    before: Measurement
    after: Measurement
    achieved: dict[str, float]
    target: Target | None
    method: str
    info: dict[str, Any]


def prune(
    model: nn.Module,
    *,
    method: str,
    target: Target | str | None,
    example_inputs: Any,
    task: tasks.Task | str | None = None,
    ignore: Sequence[str | nn.Module] = (),
    round_to: int | str | None = None,
    data: Iterable[Any] | None = None,
    log: Callable[[str], None] | None = None,
    **options: Any,
) -> PruneResult:
    """Prune `model` in place with `method` to `target` and return a `PruneResult`.

    `target` is "unit=fraction" (fraction REMOVED) or a `Target`. `example_inputs` is a tensor or
    a tuple of the model's positional inputs. `task` (a `prunekit.tasks.Task`, a registered name
    or "module:Class"; default classification) gives the loss data-scored methods differentiate
    and the modules whose output size must not change (every output layer by default). `data` is
    any iterable of the task's batches (classification: (inputs, targets)), for methods that score
    with data. `log` receives the method's progress lines (default: silent). Method-specific
    options are keyword arguments. The one-shot form runs `setup`, `at_init` then `finalize`;
    the model's output shapes are the same afterwards (else a `UserError` names the module).
    """
    target = Target.parse(target) if target is not None else None  # None: methods without a target ('none')
    task = tasks.resolve(task)
    m = methods.create(method, target=target, ignore=ignore, round_to=round_to, **options)
    if m.needs_data and data is None:
        raise UserError(f"method {method!r} scores with data: pass data= (an iterable of the task's batches)")
    p = next(model.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    m.setup(MethodContext(task=task, example_inputs=example_inputs, device=device, batches=data,
                          log=log or (lambda _text: None)))
    before = measure(model, example_inputs)  # its forward also gives the output shapes to check against
    pruned = m.at_init(model, example_inputs=example_inputs, data=data)
    pruned = m.finalize(pruned, example_inputs=example_inputs, data=data)
    after = measure(pruned, example_inputs)
    structure.check_outputs(pruned, example_inputs, before=list(before.output_shapes), after=list(after.output_shapes),
                            what=f"method {method!r}")
    return PruneResult(
        model=pruned,
        before=before,
        after=after,
        achieved=achieved(before, after),
        target=target,
        method=method,
        info=dict(m.info),
    )
