"""autorate's formulas (Sakai et al. 2022; reference FujitsuResearch/automatic_pruning): sensitivities
and loss, thresholds, pruning errors, the rate choice per layer and the upper bound's update.

See `prunekit.methods.autorate` for the whole search.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from prunekit import planner, tasks
from prunekit.errors import UserError
from prunekit.methods.base import task_loss

DEFAULT_RATES = (0.5, 0.4, 0.3, 0.2, 0.1, 0.0)
#: the reference's stand-in for an exactly zero gradient (its sensitivity term becomes 1e-7)
ZERO_GRAD = 1e7
#: what an Ediff is when no rate bounds it (reference value)
NO_BOUND = 1e6


# --------------------------------------------------------------------------------------------
# the formulas


def loss_and_sensitivities(
    model: nn.Module,
    batches: Sequence[Any],
    *,
    layers: dict[str, nn.Module],
    task: Any = None,
) -> tuple[float, dict[str, float]]:
    """Return (mean loss over `batches`, {layer name: sensitivity}) with the model in eval mode.

    The loss is the sum of the task's named losses (default classification: cross-entropy).

    Sensitivity s_l = mean over batches i of sum_w 1 / |G_i(w)|, G_i = g_1 + ... + g_i the
    gradient accumulated over the first i batches (the reference never zeroes it), with exactly
    zero entries of G set to 1e7 (and kept in the accumulation, as the reference does).
    The model's own `.grad` fields are not touched.
    """
    if not batches:
        raise UserError("autorate needs at least one (inputs, targets) batch to compute sensitivities")
    if not layers:
        raise UserError("autorate: no prunable layers to compute sensitivities for")
    task = tasks.resolve(task)
    names = list(layers)
    weights = [layers[n].weight for n in names]
    device = weights[0].device
    acc = [torch.zeros_like(w, dtype=torch.float64) for w in weights]
    sens = [0.0] * len(names)
    loss_sum = 0.0
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            loss = task_loss(task, model, task.to_device(batch, device))
            grads = torch.autograd.grad(loss, weights, allow_unused=True)
            loss_sum += float(loss.detach())
            for i, g in enumerate(grads):
                if g is not None:
                    acc[i] += g.detach().double()
                acc[i][acc[i] == 0] = ZERO_GRAD
                sens[i] += float((1.0 / acc[i].abs()).sum())
    finally:
        model.train(was_training)
    n = len(batches)
    return loss_sum / n, {name: s / n for name, s in zip(names, sens)}


def thresholds(
    *, loss_before: float, loss_after: float, loss_margin: float, sensitivities: dict[str, float], numels: dict[str, int]
) -> dict[str, float]:
    """Return th_l = (loss_before (1 + loss_margin) - loss_after) s_l / n_l per layer (pruning-error units)."""
    diff = loss_before * (1 + loss_margin) - loss_after
    return {k: diff * sensitivities[k] / numels[k] for k in sensitivities}


def scale_thresholds(th: dict[str, float], *, sensitivities: dict[str, float], upper_bound: float) -> dict[str, float]:
    """Return the thresholds scaled so that their L2 norm is at most `upper_bound` (unchanged if already below).

    An infinite sensitivity (a gradient so small that 1/|g| overflows) follows the reference:
    infinite thresholds become the bound, the others are multiplied by it.
    """
    top = max(sensitivities.values())
    if math.isinf(top):
        return {k: upper_bound if math.isinf(v) else v * upper_bound for k, v in th.items()}
    norm = math.sqrt(sum((v / top) ** 2 for v in th.values())) * top if top > 0 else 0.0
    if norm > upper_bound and norm > 0:
        factor = upper_bound / norm
        return {k: v * factor for k, v in th.items()}
    return dict(th)


def removed_count(size: int, rate: float, *, round_to: int | None = None) -> int:
    """Return how many of `size` output channels a `rate` removes: round(rate size), then the kept count
    rounded down to a multiple of `round_to` (as Torch-Pruning rounds; the planner's "down" direction,
    which may empty a layer: `choose_rate` never picks such a rate)."""
    return planner.round_removed(size, planner.rate_count(size, rate), round_to, direction="down")


def pruning_error(weight: torch.Tensor, *, removed: int) -> float:
    """Return the L1 norm of the `removed` output filters with the smallest L1 norm, over numel(weight)."""
    if removed <= 0:
        return 0.0
    norms = weight.detach().abs().flatten(1).sum(1)
    return float(torch.topk(norms, k=removed, largest=False).values.sum() / weight.numel())


@dataclass(frozen=True)
class RateChoice:
    """A layer's chosen rate, its pruning error, and how far its threshold is from the neighbouring rates.

    `ediff_inc` is how much the threshold must grow to reach a larger candidate rate (1e6: none
    above was tried), `ediff_dec` how much it may shrink before this rate is lost (1e6: none).
    """

    rate: float
    removed: int
    error: float
    ediff_inc: float
    ediff_dec: float


def choose_rate(weight: torch.Tensor, *, rates: Sequence[float], threshold: float, round_to: int | None = None) -> RateChoice:
    """Return the largest rate in `rates` whose pruning error on `weight` is <= `threshold` (reference `prune()`).

    Rates that remove no channel are skipped; a rate that would remove every channel is never
    chosen; rate 0 ends the search with no Ediffs (0, 0), and an all-zero weight gets rate 0.
    """
    if float(weight.detach().abs().max()) == 0:
        return RateChoice(0.0, 0, 0.0, 0.0, 0.0)
    size = weight.shape[0]
    inc: dict[float, float] = {}
    dec: dict[float, float] = {}
    for rate in sorted(set(float(r) for r in rates), reverse=True):
        if rate == 0.0:
            return RateChoice(0.0, 0, 0.0, 0.0, 0.0)
        removed = removed_count(size, rate, round_to=round_to)
        if removed == 0:
            continue
        error = pruning_error(weight, removed=removed)
        inc[rate] = max(0.0, error - threshold)
        dec[rate] = max(0.0, threshold - error)
        if error <= threshold and removed < size:
            def smallest_positive(d: dict[float, float]) -> float:
                positive = [v for v in d.values() if v > 0]
                return float(min(positive)) if positive else NO_BOUND

            return RateChoice(rate, removed, error, smallest_positive(inc), smallest_positive(dec))
    return RateChoice(0.0, 0, 0.0, 0.0, 0.0)


def upper_bound_limit(*, rates: Sequence[float], thresholds: dict[str, float], weights: dict[str, torch.Tensor], round_to: int | None = None) -> float:
    """Return sqrt(L) max(largest threshold, largest pruning error at the largest rate) over the L layers.

    (The reference takes the threshold of the alphabetically last layer name, `max(dict.items())`;
    we take the largest threshold, which is what the code's comment says it finds.)
    """
    top_rate = max(rates)
    error_max = max(
        (pruning_error(w, removed=min(removed_count(w.shape[0], top_rate, round_to=round_to), w.shape[0])) for w in weights.values()),
        default=0.0,
    )
    base = max(max(thresholds.values(), default=0.0), error_max)
    return math.sqrt(base**2 * len(weights))


def update_upper_bound(
    upper_bound: float, *, accepted: bool, ediffs: dict[str, float], thresholds: dict[str, float], scaling_factor: float, limit: float
) -> float:
    """Return the next upper bound of the thresholds' norm (reference `update_upper_bound`).

    Accepted: bound x max(scaling_factor, min_l (1 + Ediff_inc_l / th_l)); rejected: bound x
    min(1 / scaling_factor, max_l (1 - Ediff_dec_l / th_l)); never above `limit`.
    """
    def ratio(k: str) -> float:
        th = thresholds[k]
        return ediffs[k] / th if th != 0 else 0.0

    if not ediffs:
        return min(upper_bound * (scaling_factor if accepted else 1 / scaling_factor), limit)
    if accepted:
        scales = [(1 + ratio(k)) or 1.0 for k in ediffs]
        upper_bound *= max(scaling_factor, min(scales))
    else:
        scales = [1 - ratio(k) for k in ediffs]
        upper_bound *= min(1 / scaling_factor, max(scales))
    return min(upper_bound, limit)
