"""Pruning at initialisation by saliency: SNIP, structured SNIP, GraSP and SynFlow.

- `snip` (Lee et al. 2019, "SNIP: single-shot network pruning based on connection sensitivity"):
  s = |w * dL/dw| from a few batches, normalised to sum 1, one global top-(1 - sparsity) kept.
- `snip_channel`: the same saliency summed over every weight a channel group removes (the group's
  out- and in-channel slices, Torch-Pruning's Taylor importance with sum reduction, un-normalised),
  channels removed physically at initialisation to a channels / params / macs target.
- `grasp` (Wang et al. 2020, "Picking winning tickets before training by preserving gradient
  flow"): S = -w * Hg with Hg from double backprop on temperature-scaled logits; the HIGHEST S
  are removed, as in the paper's code.
- `synflow` (Tanaka et al. 2020, "Pruning neural networks without any data by iteratively
  conserving synaptic flow"): data-free; a float64 copy of the network with |w| everywhere
  (linearised, eval-mode BatchNorm with |running stats|) on an all-ones input, R = sum(output),
  score |w * dR/dw|; `rounds` (default 100) re-scorings with the exponential schedule
  density_k = (1 - sparsity)^(k / rounds).

The unstructured three share one mask path (`_AtInitMasks`): scores -> `masks.masks_from_scores`
(exact count of zeros) -> `masks.apply_masks`. A mask multiplies `weight_orig` in every forward,
so pruned weights stay exactly zero through any optimizer step (momentum, weight decay).
`exclude` (module-name globs, plus string `ignore` entries) keeps layers dense. Unstructured zeros
cut non-zero parameters and non-zero MACs, not dense latency.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from prunekit import inputs, masks, tasks
from prunekit.errors import UserError
from prunekit.methods.base import Batches, Method, register, task_loss
from prunekit.methods.slimming import group_scores, prune_channels_by_scores


# ----------------------------------------------------------------------------------------------
# shared helpers


def _param(module: nn.Module) -> torch.Tensor:
    # With a mask attached the trainable tensor is weight_orig; its gradient already carries the mask.
    return module.weight_orig if masks.is_masked(module) else module.weight


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def take_batches(data: Batches | None, n: int, *, device: torch.device, method: str, task: Any = None) -> list[Any]:
    """Return the first `n` batches of `data`, moved to `device` by the task (default classification)."""
    if data is None:
        raise UserError(f"method {method!r} scores with data: pass data= (an iterable of the task's batches)")
    task = tasks.resolve(task)
    out = []
    for batch in data:
        if len(out) == n:
            break
        out.append(task.to_device(batch, device))
    if not out:
        raise UserError(f"method {method!r}: the data gave no batch to score with")
    return out


@contextlib.contextmanager
def scoring_state(model: nn.Module, *, train: bool) -> Iterator[nn.Module]:
    """Run a block with `model` in train/eval mode, then restore its mode, buffers and gradients.

    Scoring forwards must not move BatchNorm running statistics or leave gradients behind.
    """
    was_training = model.training
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    grads = {p: p.grad for p in model.parameters()}
    for p in grads:
        p.grad = None
    model.train(train)
    try:
        yield model
    finally:
        model.train(was_training)
        with torch.no_grad():
            for n, b in model.named_buffers():
                if n in buffers:
                    b.copy_(buffers[n])
        for p, g in grads.items():
            p.grad = g


def _hardsigmoid(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.relu6(x + 3.0) / 6.0


@contextlib.contextmanager
def twice_differentiable(model: nn.Module) -> Iterator[nn.Module]:
    """Run a block with `model`'s Hardsigmoid/Hardswish modules computed as relu6(x + 3) / 6 (and
    x times that): the same function, but one torch can differentiate twice (GraSP's
    Hessian-gradient product; hardsigmoid_backward has no derivative, e.g. in MobileNetV3)."""
    swapped = [m for m in model.modules() if isinstance(m, (nn.Hardsigmoid, nn.Hardswish))]
    for m in swapped:
        m.forward = _hardsigmoid if isinstance(m, nn.Hardsigmoid) else (lambda x: x * _hardsigmoid(x))
    try:
        yield model
    finally:
        for m in swapped:
            del m.forward


def _layers(model: nn.Module, exclude: Sequence[str]) -> dict[str, nn.Module]:
    return masks.prunable_layers(model, exclude=tuple(exclude))


def snip_scores(
    model: nn.Module, *, data: Batches, batches: int = 1, exclude: Sequence[str] = (), normalise: bool = True,
    task: Any = None,
) -> dict[str, torch.Tensor]:
    """Return SNIP connection sensitivities {layer name: |w * dL/dw|} for every prunable layer.

    dL/dw is the gradient of the task's loss (default classification: cross-entropy; the sum of
    its named losses) summed over the first `batches` batches of `data`
    (train-mode forward; BatchNorm statistics and gradients are restored afterwards). With
    `normalise` the scores are divided by their sum over all layers (they sum to 1, unitless).
    """
    layers = _layers(model, exclude)
    params = [_param(m) for m in layers.values()]
    grads = [torch.zeros_like(p) for p in params]
    with scoring_state(model, train=True):
        for batch in take_batches(data, batches, device=_device(model), method="snip", task=task):
            loss = task_loss(task, model, batch)
            for acc, g in zip(grads, torch.autograd.grad(loss, params)):
                acc += g
    scores = {name: (masks.weight_of(m).detach() * g).abs() for (name, m), g in zip(layers.items(), grads)}
    if normalise:
        total = sum(s.sum() for s in scores.values())
        if total > 0:
            scores = {n: s / total for n, s in scores.items()}
    return scores


def grasp_scores(
    model: nn.Module, *, data: Batches, batches: int = 1, exclude: Sequence[str] = (), temperature: float = 200.0,
    task: Any = None,
) -> dict[str, torch.Tensor]:
    """Return GraSP scores {layer name: S = -w * Hg} (the paper removes the HIGHEST S).

    g is the gradient of the task's loss (classification: the cross-entropy of logits /
    `temperature`; the temperature applies where the task has a `scaled_loss`, i.e. to
    classification logits only), summed over the first `batches` batches; Hg is the
    Hessian-gradient product from a second backward through g^T dL/dw.
    """
    layers = _layers(model, exclude)
    params = [_param(m) for m in layers.values()]
    chosen = take_batches(data, batches, device=_device(model), method="grasp", task=task)
    g = [torch.zeros_like(p) for p in params]
    hg = [torch.zeros_like(p) for p in params]
    with scoring_state(model, train=True), twice_differentiable(model), _second_derivatives("grasp"):
        for batch in chosen:
            loss = task_loss(task, model, batch, scale=temperature)
            for acc, d in zip(g, torch.autograd.grad(loss, params)):
                acc += d
        for batch in chosen:
            loss = task_loss(task, model, batch, scale=temperature)
            dl = torch.autograd.grad(loss, params, create_graph=True)
            z = sum((gi * di).sum() for gi, di in zip(g, dl))
            for acc, d in zip(hg, torch.autograd.grad(z, params)):
                acc += d
    return {name: -(masks.weight_of(m).detach() * h) for (name, m), h in zip(layers.items(), hg)}


@contextlib.contextmanager
def _second_derivatives(method: str) -> Iterator[None]:
    """Turn torch's "derivative for OP is not implemented" (an op without a second derivative,
    called functionally) into a one-line `UserError` naming the op and what to use instead."""
    try:
        yield
    except RuntimeError as err:
        text = " ".join(str(err).split())
        if "derivative for" not in text or "not implemented" not in text:
            raise
        raise UserError(f"method {method!r} needs second derivatives, which torch does not implement for an op of this model "
                        f"({text[:120]}); use snip or synflow") from None


def synflow_scores(model: nn.Module, *, example_inputs: Any, exclude: Sequence[str] = ()) -> dict[str, torch.Tensor]:
    """Return one round of SynFlow scores {layer name: |w * dR/dw|} of `model` as it is.

    `model` must already be linearised (|w|, eval mode); R = sum of all its outputs (every output
    tensor of a multi-head model) on an all-ones input shaped like one example (each input of a
    tuple). Masked weights score 0.
    """
    layers = _layers(model, exclude)
    params = [_param(m) for m in layers.values()]
    dtype = params[0].dtype if params else torch.float32
    x = inputs.like(example_inputs, batch_size=1, fill="ones", device=_device(model), dtype=dtype)
    outputs = inputs.tensors(inputs.call(model, x))
    r = outputs[0].sum()
    for t in outputs[1:]:
        r = r + t.sum()
    grads = torch.autograd.grad(r, params, allow_unused=True)
    grads = [torch.zeros_like(p) if d is None else d for p, d in zip(params, grads)]
    return {name: (masks.weight_of(m).detach() * d).abs() for (name, m), d in zip(layers.items(), grads)}


def linearised_copy(model: nn.Module) -> nn.Module:
    """Return a float64, eval-mode copy of `model` with every parameter and buffer replaced by its absolute value."""
    lin = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for t in [*lin.parameters(), *lin.buffers()]:
            if t.is_floating_point():
                t.abs_()
    return lin


def synflow_masks(
    model: nn.Module, *, example_inputs: torch.Tensor, sparsity: float, rounds: int = 100, exclude: Sequence[str] = ()
) -> dict[str, torch.Tensor]:
    """Return SynFlow masks {layer name: 0/1} zeroing exactly `sparsity` of the prunable weights.

    Round k of `rounds` re-scores the masked linearised copy and keeps the top
    (1 - sparsity)^(k / rounds) globally; a weight pruned once stays pruned. `model` is untouched.
    """
    lin = linearised_copy(model)
    current: dict[str, torch.Tensor] | None = None
    for k in range(1, rounds + 1):
        scores = synflow_scores(lin, example_inputs=example_inputs, exclude=exclude)
        if current is not None:  # scores are >= 0: -1 keeps pruned weights below every live one
            scores = {n: torch.where(current[n] > 0, s, torch.full_like(s, -1.0)) for n, s in scores.items()}
        step = sparsity if k == rounds else 1.0 - (1.0 - sparsity) ** (k / rounds)
        current = masks.masks_from_scores(scores, sparsity=step, scope="global")
        masks.apply_masks(lin, current)
    assert current is not None
    return {n: m.float().cpu() for n, m in current.items()}


# ----------------------------------------------------------------------------------------------
# unstructured methods


class _AtInitMasks(Method):
    """Shared mask path: score at initialisation, keep the global top (1 - sparsity), masks hold."""

    kind = "unstructured"
    units = ("sparsity",)

    def configure(self, *, exclude: Sequence[str] | str = (), **options: Any) -> dict[str, Any]:
        return {"exclude": masks.exclude_globs(exclude, self.name), **super().configure(**options)}

    def excluded(self, model: nn.Module) -> tuple[str, ...]:
        """Return the module-name globs kept dense: `exclude` plus `ignore` (modules by their name)."""
        names = {m: n for n, m in model.named_modules()}
        extra = [i if isinstance(i, str) else names.get(i) for i in self.ignore]
        return self.options["exclude"] + tuple(e for e in extra if e)

    def make_masks(self, model: nn.Module, *, example_inputs: torch.Tensor, data: Batches | None) -> dict[str, torch.Tensor]:
        """Return {layer name: 0/1 mask} for `model` at this method's sparsity."""
        raise NotImplementedError

    def _sparsity(self) -> float:
        if self.target is None:
            raise UserError(f"method {self.name!r} needs a target, e.g. sparsity=0.9")
        return self.target.value

    def at_init(self, model: nn.Module, *, example_inputs: torch.Tensor, data: Batches | None = None) -> nn.Module:
        new = self.make_masks(model, example_inputs=example_inputs, data=data)
        masks.apply_masks(model, new)
        zeros = sum(int((m == 0).sum()) for m in new.values())
        total = sum(m.numel() for m in new.values())
        self.info.update({"masked_layers": len(new), "masked_weights": total, "zeroed_weights": zeros,
                          "excluded": list(self.excluded(model))})
        self._masked = list(new)
        return model

    def finalize(self, model: nn.Module, *, example_inputs: torch.Tensor, data: Batches | None = None) -> nn.Module:
        # The masks made at initialisation are the result; only a model never masked gets them now.
        if not getattr(self, "_masked", None) or not any(masks.is_masked(m) for m in model.modules()):
            return self.at_init(model, example_inputs=example_inputs, data=data)
        return model

    def state_dict(self) -> dict[str, Any]:
        return {"masked": list(getattr(self, "_masked", []))}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._masked = list(state.get("masked", []))


def _positive_int(method: str, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"method {method!r}: {key}={value!r} must be a positive integer")
    return value


@register
class Snip(_AtInitMasks):
    """SNIP. Options: `batches` (default 1), `exclude` (module-name globs kept dense)."""

    name = "snip"
    needs_data = True
    description = "connection sensitivity |w * dL/dw| at initialisation, global top-k masks (Lee et al. 2019)"

    def configure(self, *, batches: int = 1, **options: Any) -> dict[str, Any]:
        return {"batches": _positive_int(self.name, "batches", batches), **super().configure(**options)}

    def make_masks(self, model, *, example_inputs, data):
        scores = snip_scores(model, data=data, batches=self.options["batches"], exclude=self.excluded(model), task=self.task)
        return masks.masks_from_scores(scores, sparsity=self._sparsity(), scope="global")


@register
class Grasp(_AtInitMasks):
    """GraSP. Options: `batches` (default 1), `temperature` (default 200), `exclude`."""

    name = "grasp"
    needs_data = True
    description = "gradient-flow preservation at initialisation, S = -w * Hg, highest removed (Wang et al. 2020)"

    def configure(self, *, batches: int = 1, temperature: float = 200.0, **options: Any) -> dict[str, Any]:
        if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not 0 < temperature < float("inf"):
            raise UserError(f"method 'grasp': temperature={temperature!r} must be a finite number > 0")
        return {"batches": _positive_int(self.name, "batches", batches), "temperature": float(temperature),
                **super().configure(**options)}

    def make_masks(self, model, *, example_inputs, data):
        s = grasp_scores(model, data=data, batches=self.options["batches"], exclude=self.excluded(model),
                         temperature=self.options["temperature"], task=self.task)
        # The paper removes the highest S: keep the highest -S.
        return masks.masks_from_scores({n: -v for n, v in s.items()}, sparsity=self._sparsity(), scope="global")


@register
class Synflow(_AtInitMasks):
    """SynFlow. Options: `rounds` (default 100), `exclude`. Needs no data."""

    name = "synflow"
    description = "data-free iterative synaptic-flow scores |w * dR/dw|, exponential schedule (Tanaka et al. 2020)"

    def configure(self, *, rounds: int = 100, **options: Any) -> dict[str, Any]:
        return {"rounds": _positive_int(self.name, "rounds", rounds), **super().configure(**options)}

    def make_masks(self, model, *, example_inputs, data):
        return synflow_masks(model, example_inputs=example_inputs, sparsity=self._sparsity(),
                             rounds=self.options["rounds"], exclude=self.excluded(model))


# ----------------------------------------------------------------------------------------------
# structured SNIP


@register
class SnipChannel(Method):
    """Structured SNIP: per-channel sum of |w * dL/dw| over the coupled group; channels removed at init.

    Options: `batches` (default 1), `allocation` ("global", one ranking over all groups; or
    "uniform", the same fraction from every group).
    """

    name = "snip_channel"
    kind = "structured"
    units = ("channels", "params", "macs")
    needs_data = True
    description = "SNIP saliency summed over each channel group, channels removed at initialisation"

    def configure(self, *, batches: int = 1, allocation: str = "global", **options: Any) -> dict[str, Any]:
        if allocation not in ("uniform", "global"):
            raise UserError(f"method 'snip_channel': allocation {allocation!r} is not one of uniform, global")
        self._pruned = False
        return {"batches": _positive_int(self.name, "batches", batches), "allocation": allocation, **super().configure(**options)}

    def channel_scores(self, model: nn.Module, *, example_inputs: torch.Tensor, data: Batches | None) -> dict[str, torch.Tensor]:
        """Return {group root name: per-channel sum of |w * dL/dw|} for every prunable group."""
        if any(masks.is_masked(m) for m in model.modules()):
            raise UserError("method 'snip_channel' needs a model without unstructured masks")
        taylor = tp.importance.GroupTaylorImportance(group_reduction="sum", normalizer=None)
        protected = self.protected(model, example_inputs)
        with scoring_state(model, train=True):
            for batch in take_batches(data, self.options["batches"], device=_device(model), method=self.name, task=self.task):
                task_loss(self.task, model, batch).backward()
            # A layer outside the loss (RetinaFace's landmark head on data without landmarks) gets no
            # gradient; its connection sensitivity is zero, and Torch-Pruning's Taylor score needs a tensor.
            for p in model.parameters():
                if p.requires_grad and p.grad is None:
                    p.grad = torch.zeros_like(p)
            return group_scores(model, example_inputs, importance=taylor, ignore=self.ignore, protected=protected)

    def at_init(self, model: nn.Module, *, example_inputs: torch.Tensor, data: Batches | None = None) -> nn.Module:
        if self.target is None:
            raise UserError("method 'snip_channel' needs a target, e.g. params=0.5")
        scores = self.channel_scores(model, example_inputs=example_inputs, data=data)
        plan = prune_channels_by_scores(model, example_inputs, scores=scores, target=self.target, ignore=self.ignore,
                                        round_to=self.resolve_round_to(model, example_inputs), allocation=self.options["allocation"],
                                        protected=self.protected(model, example_inputs))
        self.info.update({"channels_scored": int(sum(len(s) for s in scores.values())),
                          "channels_removed": int(sum(plan.values())),
                          "removed_per_group": {n: k for n, k in plan.items() if k}})
        self._pruned = True
        return model

    def finalize(self, model: nn.Module, *, example_inputs: torch.Tensor, data: Batches | None = None) -> nn.Module:
        return model if self._pruned else self.at_init(model, example_inputs=example_inputs, data=data)

    def state_dict(self) -> dict[str, Any]:
        return {"pruned": self._pruned}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._pruned = bool(state.get("pruned", False))
