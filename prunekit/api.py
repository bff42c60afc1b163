"""`prunekit.prune`: one call that prunes a model for real and says what it bought."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from prunekit import methods
from prunekit.errors import UserError
from prunekit.metrics import Measurement, achieved, measure
from prunekit.targets import Target


@dataclass
class PruneResult:
    """The pruned `model`, its `before`/`after` Measurements and `achieved` ({unit: fraction removed})."""

    model: nn.Module
    before: Measurement
    after: Measurement
    achieved: dict[str, float]
    target: Target
    method: str
    info: dict[str, Any]


def prune(
    model: nn.Module,
    *,
    method: str,
    target: Target | str,
    example_inputs: torch.Tensor,
    ignore: Sequence[str | nn.Module] = (),
    round_to: int | str | None = None,
    data: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
    **options: Any,
) -> PruneResult:
    """Prune `model` in place with `method` to `target` and return a `PruneResult`.

    `target` is "unit=fraction" (fraction REMOVED) or a `Target`. `data` is any iterable of
    (inputs, targets) batches, for methods that score with data. Method-specific options are
    keyword arguments. The one-shot form runs the method's `at_init` then `finalize`.
    """
    target = Target.parse(target)
    m = methods.create(method, target=target, ignore=ignore, round_to=round_to, **options)
    if m.needs_data and data is None:
        raise UserError(f"method {method!r} scores with data: pass data= (an iterable of (inputs, targets) batches)")
    before = measure(model, example_inputs)
    pruned = m.at_init(model, example_inputs=example_inputs, data=data)
    pruned = m.finalize(pruned, example_inputs=example_inputs, data=data)
    after = measure(pruned, example_inputs)
    return PruneResult(
        model=pruned,
        before=before,
        after=after,
        achieved=achieved(before, after),
        target=target,
        method=method,
        info=dict(m.info),
    )
