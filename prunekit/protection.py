"""What must not change when a model is pruned: the modules whose output size is protected, and the
check that a structural change left every output shape as it was.

By default the protected modules are the output layers (`prunekit.tasks.output_layers`: every
conv/linear layer feeding a model output, the classifier or every head of a detector); a task's
`protected(model, example_inputs)` may name others. Functions here take `protected` as modules or
qualified names (names survive the deep copies a planner prunes).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from prunekit import inputs
from prunekit.errors import UserError

Protected = Sequence[str | nn.Module] | None


def classifier_layers(model: nn.Module, example_inputs: Any) -> list[nn.Module]:
    """Return the conv/linear layers whose output reaches a model output (the classifier; every head
    of a detector): `prunekit.tasks.output_layers`, the default `protected` of every function here."""
    from prunekit.tasks.base import output_layers

    return output_layers(model, example_inputs)


def protected_layers(model: nn.Module, example_inputs: Any, protected: Protected = None, *, graph: Any = None) -> list[nn.Module]:
    """Return the modules whose output size must not change: `protected` (modules, or their qualified
    names; "" is the model itself) or, when None, the output layers (`classifier_layers`; read from
    `graph`'s trace when `structure.build_graph` recorded them)."""
    if protected is None:
        traced = getattr(graph, "prunekit_output_layers", None)
        return list(traced) if traced is not None else classifier_layers(model, example_inputs)
    by_name = dict(model.named_modules())
    found: list[nn.Module] = []
    for item in protected:
        if isinstance(item, nn.Module):
            found.append(item)
        elif item in by_name:
            found.append(by_name[item])
        else:
            raise UserError(f"protected module {item!r} is not a module of the model")
    return found


def protected_names(model: nn.Module, example_inputs: Any, protected: Protected = None, *, graph: Any = None) -> list[str]:
    """Return `protected_layers` as qualified names (they survive the deep copies a planner prunes)."""
    names = {m: n for n, m in model.named_modules()}
    return [names[m] for m in protected_layers(model, example_inputs, protected, graph=graph) if m in names]


def output_shapes(model: nn.Module, example_inputs: Any) -> list[tuple[int, ...]]:
    """Return the shapes of `model`'s output tensors for `example_inputs` (one eval forward)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return inputs.output_shapes(inputs.call(model, example_inputs))
    finally:
        model.train(was_training)


def outputs_follow_sizes(model: nn.Module, graph: Any, protected: Sequence[str]) -> bool:
    """Return True when `graph`'s trace found every output layer through the autograd graph and all of
    them are in `protected`: every output is then fed by one of them through shape-only ops, so their
    sizes (which `check_outputs` compares) decide the output shapes and no forward is needed."""
    traced = getattr(graph, "prunekit_output_layers", None) or []
    if not traced or not getattr(graph, "prunekit_outputs_walked", False):
        return False
    names, keep = {m: n for n, m in model.named_modules()}, set(protected)
    return all(names.get(m) in keep for m in traced)


def out_sizes(model: nn.Module, names: Sequence[str]) -> dict[str, int | None]:
    """Return the output size (out_channels / out_features) of each named module (None if it has none)."""
    by_name = dict(model.named_modules())
    return {name: _out_size(by_name.get(name)) for name in names}


def _out_size(module: nn.Module | None) -> int | None:
    # a layer replaced by a factorised pair (svd) answers with its last layer's size
    if module is None:
        return None
    size = getattr(module, "out_channels", getattr(module, "out_features", None))
    if size is None:
        sizes = [_out_size(m) for m in module.children()]
        sizes = [v for v in sizes if v is not None]
        size = sizes[-1] if sizes else None
    return size


def check_outputs(model: nn.Module, example_inputs: Any, *, before: list[tuple[int, ...]],
                  sizes: dict[str, int | None] | None = None, what: str = "pruning",
                  after: list[tuple[int, ...]] | None = None) -> None:
    """Raise `UserError` when `model`'s output shapes differ from `before` (or a protected module's
    output size from `sizes`), naming the module; structural changes never change an output silently.
    `after`: the shapes now, when the caller already ran the model (else one forward here)."""
    changed = []
    if sizes:
        now = out_sizes(model, list(sizes))
        changed = [f"{name or '<model>'} ({sizes[name]} -> {now[name]})" for name in sizes if now[name] != sizes[name]]
    after = output_shapes(model, example_inputs) if after is None else after
    if not changed and after == before:
        return
    if not changed:
        names = {m: n for n, m in model.named_modules()}
        layers = [names.get(m, "?") for m in classifier_layers(model, example_inputs)]
        changed = [f"an output fed by {', '.join(layers) or 'the model'}"]
    raise UserError(f"{what} would change the output size of {'; '.join(changed)} (outputs {before} -> {after}); "
                    "protect it (the task's protected modules, or ignore=) so that outputs keep their shape")
