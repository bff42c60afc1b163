"""Checks of a validated recipe that its field types cannot say: limits, finiteness, combinations.

`check_recipe(recipe)` runs after the pydantic schema (called by `prunekit.recipe.recipe_from_dict`)
and raises ONE line in the recipe's format (``file: dotted.path: what is wrong``) for:

- a number that is not finite anywhere in the recipe (``lr: .inf``, ``momentum: .nan``, also in
  method/data options and model kwargs);
- the limits of `prunekit.limits`: epochs of every stage and of `method.stage_epochs`, `threads`
  (4 per CPU), batch sizes, `data.num_workers`, `eval.latency_repeats`, `method.data_batches`,
  `model.num_classes`;
- `nesterov: true` with an optimizer other than sgd, or with momentum 0.

No torch here (the recipe layer must not import it); checks that need the model, the data or the
weight files are in `prunekit.preflight`.
"""

from __future__ import annotations

import math
from typing import Any

from prunekit import limits
from prunekit.errors import UserError


def _non_finite(obj: Any, path: str) -> str | None:
    if isinstance(obj, float) and not math.isfinite(obj):
        return path
    if isinstance(obj, dict):
        for k, v in obj.items():
            found = _non_finite(v, f"{path}.{k}" if path else str(k))
            if found:
                return found
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            found = _non_finite(v, f"{path}[{i}]")
            if found:
                return found
    return None


def _get(data: dict[str, Any], path: str) -> Any:
    node: Any = data
    for part in path.replace("[", ".[").split("."):
        if part.startswith("["):
            node = node[int(part[1:-1])]
        else:
            node = node[part]
    return node


def check_recipe(recipe: Any) -> None:
    """Raise a one-line `UserError` (file: field: why) for the first limit or combination `recipe` breaks."""
    source = recipe.source
    data = recipe.model_dump(mode="python")

    found = _non_finite(data, "")
    if found:
        raise UserError(f"{source}: {found}: {_get(data, found)!r} is not a finite number")

    def where(path: str) -> str:
        return f"{source}: {path}"

    stages = {"baseline.train": recipe.baseline.train, "method.train": recipe.method.train, "finetune": recipe.finetune}
    for path, t in stages.items():
        limits.check_epochs(t.epochs, where(f"{path}.epochs"))
        limits.check_range(t.eval_every, where(f"{path}.eval_every"), low=0, high=limits.MAX_EPOCHS, what="epochs between evaluations")
        if t.nesterov and (t.optimizer != "sgd" or t.momentum == 0):
            why = f"optimizer {t.optimizer} has no Nesterov momentum" if t.optimizer != "sgd" else "momentum is 0"
            raise UserError(f"{where(path + '.nesterov')}: true needs optimizer sgd with momentum > 0 ({why}); drop nesterov or use sgd")
    for i, e in enumerate(recipe.method.stage_epochs or []):
        limits.check_epochs(e, where(f"method.stage_epochs[{i}]"))
    if recipe.threads is not None:
        limits.check_threads(recipe.threads, where("threads"))
    d = recipe.data
    limits.check_batch_size(d.batch_size, where("data.batch_size"))
    limits.check_batch_size(d.eval_batch_size, where("data.eval_batch_size"))
    if d.num_workers is not None:
        limits.check_range(d.num_workers, where("data.num_workers"), low=0, high=limits.max_threads(), what="DataLoader worker processes, 4 per CPU at most")
    limits.check_batch_size(recipe.eval.latency_batch_size, where("eval.latency_batch_size"))
    limits.check_repeats(recipe.eval.latency_repeats, where("eval.latency_repeats"))
    limits.check_data_batches(recipe.method.data_batches, where("method.data_batches"))
    if recipe.model.num_classes is not None:
        limits.check_num_classes(recipe.model.num_classes, where("model.num_classes"))
