"""autorate: per-layer pruning rates derived automatically (Sakai et al., ICPR 2022).

Follows the reference code (FujitsuResearch/automatic_pruning, auto_prune_cifar10.py):

1. Sensitivity of each prunable layer l from gradients over `batches` batches (model in eval
   mode): gradients are *accumulated* without zeroing in between, as the reference does, so batch
   i contributes s_l += sum_w 1 / |g_1 + ... + g_i| (an exactly zero accumulated gradient is set
   to 1e7 first); s_l and the loss are then averaged over the batches.
2. Thresholds th_l = (L_before (1 + loss_margin) - L_after) s_l / n_l, where L_before is the loss
   of the *original* model (never updated), L_after that of the current accepted model (L_before
   at first) and n_l the number of elements of the layer's current weight. If the L2 norm of all
   thresholds exceeds the upper bound, they are scaled down to it.
3. For each layer, the largest candidate rate whose pruning error (L1 norm of the round(rate C_out)
   smallest filters / numel(W)) is <= th_l. A coupled channel group gets the smallest rate of its
   layers ("min", default) or its root layer's ("root").
4. The thinner network (through the dependency graph; the filters with the smallest L1 norm go)
   is retrained an epoch at a time until acc_after + acc_control > acc_before (acc_control is the
   `accuracy_drop` target); accepted, it replaces the model, its loss and sensitivities are
   recomputed and the upper bound grows; rejected, the model stays and the bound shrinks.
   (One saving over the reference: a candidate identical to one already rejected from the same
   model is rejected again without retraining; the bound moves as if it had been.)
5. Repeat until every rate is 0, the bound goes negative, or the budget (`rounds`,
   `epochs_per_round`, `max_epochs`) ends.

Retraining and evaluation are injectable callables (`retrain(model)` trains one epoch,
`evaluate(model)` returns top-1 in %); `bind_run` builds them from `prunekit.train` and a
`DataBundle` for `prunekit run`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from prunekit import planner, structure
from prunekit.errors import UserError
from prunekit.methods.base import Batches, Method, register

DEFAULT_RATES = (0.5, 0.4, 0.3, 0.2, 0.1, 0.0)
#: the reference's stand-in for an exactly zero gradient (its sensitivity term becomes 1e-7)
ZERO_GRAD = 1e7
#: what an Ediff is when no rate bounds it (reference value)
NO_BOUND = 1e6

Retrain = Callable[[nn.Module], "nn.Module | None"]
Evaluate = Callable[[nn.Module], float]


# --------------------------------------------------------------------------------------------
# the formulas


def loss_and_sensitivities(
    model: nn.Module,
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    *,
    layers: dict[str, nn.Module],
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> tuple[float, dict[str, float]]:
    """Return (mean loss over `batches`, {layer name: sensitivity}) with the model in eval mode.

    Sensitivity s_l = mean over batches i of sum_w 1 / |G_i(w)|, G_i = g_1 + ... + g_i the
    gradient accumulated over the first i batches (the reference never zeroes it), with exactly
    zero entries of G set to 1e7 (and kept in the accumulation, as the reference does).
    The model's own `.grad` fields are not touched.
    """
    if not batches:
        raise UserError("autorate needs at least one (inputs, targets) batch to compute sensitivities")
    if not layers:
        raise UserError("autorate: no prunable layers to compute sensitivities for")
    criterion = criterion or F.cross_entropy
    names = list(layers)
    weights = [layers[n].weight for n in names]
    device = weights[0].device
    acc = [torch.zeros_like(w, dtype=torch.float64) for w in weights]
    sens = [0.0] * len(names)
    loss_sum = 0.0
    was_training = model.training
    model.eval()
    try:
        for inputs, targets in batches:
            inputs, targets = inputs.to(device), targets.to(device)
            loss = criterion(model(inputs), targets)
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


# --------------------------------------------------------------------------------------------
# layers, groups and removal


class FilterL1Importance:
    """Score of a channel = L1 norm of its output filters in the group's conv/linear layers (summed).

    For a group with one conv this is the reference's choice (the filters with the smallest L1
    norm are removed); input-channel slices and norms do not count.
    """

    def __call__(self, group: Any) -> torch.Tensor:
        from torch_pruning.pruner import function as tpf

        out_fns = (tpf.prune_conv_out_channels, tpf.prune_linear_out_channels, tpf.prune_depthwise_conv_out_channels)
        total: torch.Tensor | None = None
        for i, (dep, idxs) in enumerate(group):
            layer = dep.layer
            if dep.pruning_fn not in out_fns or not isinstance(layer, (nn.modules.conv._ConvNd, nn.Linear)):
                continue
            if getattr(layer, "transposed", False):
                continue
            root_idxs = group[i].root_idxs
            local = layer.weight.detach()[idxs].abs().flatten(1).sum(1).float().cpu()
            if total is None:
                n = len(group[0].idxs)
                total = torch.zeros(n)
            total.index_add_(0, torch.as_tensor(root_idxs, dtype=torch.long), local)
        if total is None:
            return torch.ones(len(group[0].idxs))
        return total


@dataclass
class _Group:
    root_name: str
    size: int
    members: list[str]  # conv/linear layers whose output channels the group cuts


def _prunable(model: nn.Module, example_inputs: torch.Tensor, ignore: Sequence[str | nn.Module]) -> tuple[list[_Group], dict[str, nn.Module]]:
    """Return the prunable channel groups (with their conv/linear members) and {member name: module}."""
    names = structure.module_names(model)
    graph = structure.build_graph(model, example_inputs)
    groups: list[_Group] = []
    layers: dict[str, nn.Module] = {}
    for g in structure.channel_groups(model, example_inputs, ignore=ignore, graph=graph):
        if g.root_name == "?":
            continue
        members = [g.root_name]
        for dep, _ in g.group:
            m = dep.target.module
            # an output-channel member: its weight rows are the group's channels
            if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) and not getattr(m, "transposed", False) \
                    and graph.is_out_channel_pruning_fn(dep.handler) and m in names and names[m] not in members:
                members.append(names[m])
        groups.append(_Group(g.root_name, g.size, members))
        for name in members:
            layers[name] = next(m for m, n in names.items() if n == name)
    return groups, layers


# --------------------------------------------------------------------------------------------
# the search


@dataclass(frozen=True)
class AutoRateConfig:
    """Settings of the rate search (reference names in brackets).

    `acc_control` [acc_control] is the accuracy_drop target in percentage points: a round is
    accepted when acc_after + acc_control > acc_before. `rounds` [max_search_times] caps search
    rounds, `epochs_per_round` [epochs] the retraining epochs per round, `max_epochs` (None: no
    cap) all retraining epochs together. `batches` [calc_iter] is the number of batches for
    sensitivities. `group_rate` is "min" or "root" (how a coupled group's layers agree).
    """

    rates: tuple[float, ...] = DEFAULT_RATES
    loss_margin: float = 0.1
    acc_control: float = 1.0
    scaling_factor: float = 2.0
    rounds: int = 100
    epochs_per_round: int = 10
    max_epochs: int | None = None
    batches: int = 100
    group_rate: str = "min"
    round_to: int | None = None

    def validate(self) -> None:
        """Raise `UserError` naming the first bad setting."""
        rates = tuple(float(r) for r in self.rates)
        if not rates or any(not 0 <= r < 1 for r in rates):
            raise UserError(f"autorate: rates {list(self.rates)} must be fractions in [0, 1)")
        if self.group_rate not in ("min", "root"):
            raise UserError(f"autorate: group_rate {self.group_rate!r} is not one of min, root")
        for name in ("rounds", "epochs_per_round", "batches"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"autorate: {name}={value!r} must be a positive integer")
        if self.max_epochs is not None and (not isinstance(self.max_epochs, int) or self.max_epochs < 1):
            raise UserError(f"autorate: max_epochs={self.max_epochs!r} must be a positive integer or null")
        if not self.scaling_factor > 1:
            raise UserError(f"autorate: scaling_factor={self.scaling_factor!r} must be > 1")
        if not self.loss_margin >= 0:
            raise UserError(f"autorate: loss_margin={self.loss_margin!r} must be >= 0")


def search(
    model: nn.Module,
    example_inputs: torch.Tensor,
    *,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    retrain: Retrain,
    evaluate: Evaluate,
    config: AutoRateConfig = AutoRateConfig(),
    ignore: Sequence[str | nn.Module] = (),
    baseline_top1: float | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Run the automatic rate search on `model`; return (the last accepted model, a record of every round).

    `model` itself is never modified (rounds work on copies). `batches` is iterated once: its
    first `config.batches` batches are kept and reused for every sensitivity pass, so losses
    before and after are compared on the same data. The record holds, per round, the rates per
    group and per layer, whether it was accepted, the accuracy after each retraining epoch, params
    and MACs of the candidate, the bound; `trajectory` has params, MACs and top-1 of the baseline
    and of every accepted model.
    """
    from prunekit.metrics import measure

    config.validate()
    say = progress or (lambda _msg: None)
    fixed = []
    for i, batch in enumerate(batches):
        if i >= config.batches:
            break
        fixed.append((batch[0], batch[1]))
    if not fixed:
        raise UserError("autorate needs data: an iterable of (inputs, targets) batches for the sensitivities")
    rates = tuple(sorted({float(r) for r in config.rates} | {0.0}, reverse=True))

    current = model
    groups, layers = _prunable(current, example_inputs, ignore)
    if not groups:
        raise UserError("autorate: the model has no prunable channel groups (all ignored?)")
    original = {g.root_name: g.size for g in groups}
    loss_before, sens = loss_and_sensitivities(current, fixed, layers=layers)
    loss_after = loss_before
    acc_before = float(baseline_top1) if baseline_top1 is not None else float(evaluate(current))
    m0 = measure(current, example_inputs)
    info: dict[str, Any] = {
        "reference": "Sakai et al. 2022, FujitsuResearch/automatic_pruning",
        "config": {**asdict(config), "rates": list(rates)},
        "baseline_top1": acc_before,
        "loss_before": loss_before,
        "rounds": [],
        "trajectory": [{"round": 0, "params": m0.params, "macs": m0.macs, "top1": acc_before, "loss": loss_before}],
        "stopped": "rounds",
    }
    final_acc = acc_before
    upper_bound = 0.0
    limit = 0.0
    accepted_last = False
    epochs_used = 0
    rejected: dict[tuple[tuple[str, int], ...], int] = {}  # candidates rejected from the current model
    say(f"autorate: baseline top-1 {acc_before:.2f}%, loss {loss_before:.4f}, {len(groups)} groups, {len(layers)} layers")
    for index in range(1, config.rounds + 1):
        if config.max_epochs is not None and epochs_used >= config.max_epochs:
            info["stopped"] = "max_epochs"
            break
        weights = {n: m.weight.detach() for n, m in layers.items()}
        th = thresholds(loss_before=loss_before, loss_after=loss_after, loss_margin=config.loss_margin,
                        sensitivities=sens, numels={n: w.numel() for n, w in weights.items()})
        if index == 1 or accepted_last:
            limit = upper_bound_limit(rates=rates, thresholds=th, weights=weights, round_to=config.round_to)
        if index == 1:
            upper_bound = limit
        th = scale_thresholds(th, sensitivities=sens, upper_bound=upper_bound)
        choices = {n: choose_rate(w, rates=rates, threshold=th[n], round_to=config.round_to) for n, w in weights.items()}
        group_rates: dict[str, float] = {}
        for g in groups:
            member_rates = [choices[n].rate for n in g.members if n in choices]
            group_rates[g.root_name] = choices[g.root_name].rate if config.group_rate == "root" else min(member_rates)
        record: dict[str, Any] = {
            "round": index,
            "upper_bound": upper_bound,
            "rates": group_rates,
            "layer_rates": {n: c.rate for n, c in choices.items()},
            "errors": {n: c.error for n, c in choices.items()},
            "thresholds": th,
        }
        if all(r == 0 for r in group_rates.values()):
            record.update(accepted=None, note="all rates are 0")
            info["rounds"].append(record)
            info["stopped"] = "all rates are 0"
            say(f"round {index}: all rates are 0, search finished")
            break
        removed = {g.root_name: removed_count(g.size, group_rates[g.root_name], round_to=config.round_to) for g in groups}
        key = tuple(sorted(removed.items()))
        if key in rejected:
            # The same candidate from the same model was rejected already: retraining it again
            # (deterministically) would end the same way, so only the bound moves.
            record.update(accepted=False, removed=removed, top1=[], epochs=0, note=f"same candidate as round {rejected[key]}")
            say(f"round {index}: same candidate as round {rejected[key]}, rejected without retraining")
            upper_bound = update_upper_bound(upper_bound, accepted=False, ediffs={n: c.ediff_dec for n, c in choices.items()},
                                             thresholds=th, scaling_factor=config.scaling_factor, limit=limit)
            accepted_last = False
            info["rounds"].append(record)
            if upper_bound < 0:
                info["stopped"] = "upper bound below 0"
                break
            continue
        trial = copy.deepcopy(current)
        structure.remove_counts(trial, example_inputs, counts=removed, importance=FilterL1Importance(), ignore=ignore)
        m = measure(trial, example_inputs)
        accs: list[float] = []
        accepted = False
        for _ in range(config.epochs_per_round):
            if config.max_epochs is not None and epochs_used >= config.max_epochs:
                break
            out = retrain(trial)
            if isinstance(out, nn.Module):
                trial = out
            epochs_used += 1
            accs.append(float(evaluate(trial)))
            if accs[-1] + config.acc_control > acc_before:
                accepted = True
                break
        record.update(accepted=accepted, removed=removed, top1=accs, epochs=len(accs), params=m.params, macs=m.macs)
        say(f"round {index}: {sum(removed.values())} channels from {sum(1 for r in removed.values() if r)} groups, "
            f"top-1 {accs[-1] if accs else float('nan'):.2f}% after {len(accs)} epoch(s): {'accepted' if accepted else 'rejected'}")
        if accepted:
            rejected.clear()
            current = trial
            final_acc = accs[-1]
            groups, layers = _prunable(current, example_inputs, ignore)
            if groups:
                loss_after, sens = loss_and_sensitivities(current, fixed, layers=layers)
            record["loss_after"] = loss_after
            info["trajectory"].append({"round": index, "params": m.params, "macs": m.macs, "top1": final_acc, "loss": loss_after})
            upper_bound = update_upper_bound(upper_bound, accepted=True, ediffs={n: c.ediff_inc for n, c in choices.items()},
                                             thresholds=th, scaling_factor=config.scaling_factor, limit=limit)
        else:
            rejected[key] = index
            upper_bound = update_upper_bound(upper_bound, accepted=False, ediffs={n: c.ediff_dec for n, c in choices.items()},
                                             thresholds=th, scaling_factor=config.scaling_factor, limit=limit)
        accepted_last = accepted
        info["rounds"].append(record)
        if not groups:
            info["stopped"] = "no prunable groups left"
            break
        if upper_bound < 0:
            info["stopped"] = "upper bound below 0"
            break
    kept = structure.kept_channels(current)
    info["final_top1"] = final_acc
    info["epochs"] = epochs_used
    info["kept_fraction"] = {name: kept.get(name, size) / size for name, size in original.items()}
    return current, info


# --------------------------------------------------------------------------------------------
# the plot


def plot_rates(info: dict[str, Any], path: str | Path) -> Path:
    """Write a PNG of the rate chosen per group at every round, and the params/MACs/top-1 trajectory; return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from prunekit.io import atomic_write

    rounds = [r for r in info["rounds"] if r.get("rates")]
    names: list[str] = []
    for r in rounds:
        names.extend(n for n in r["rates"] if n not in names)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [2.2, 1]})
    if rounds and names:
        grid = [[r["rates"].get(n, float("nan")) for n in names] for r in rounds]
        image = ax1.imshow(grid, aspect="auto", cmap="viridis", vmin=0, vmax=max(info["config"]["rates"]) or 1, interpolation="nearest")
        ax1.set_yticks(range(len(rounds)))
        ax1.set_yticklabels([f"{r['round']} {'ok' if r.get('accepted') else ('end' if r.get('accepted') is None else 'no')}" for r in rounds], fontsize=7)
        step = max(1, len(names) // 40)
        ax1.set_xticks(range(0, len(names), step))
        ax1.set_xticklabels(names[::step], rotation=90, fontsize=6)
        fig.colorbar(image, ax=ax1, label="pruning rate of the round")
    ax1.set_title("rate per layer group and round (ok = accepted)")
    ax1.set_ylabel("round")
    traj = info["trajectory"]
    xs = [t["round"] for t in traj]
    p0, m0 = traj[0]["params"], traj[0]["macs"]
    ax2.plot(xs, [t["params"] / p0 for t in traj], "o-", label="params (fraction of baseline)")
    ax2.plot(xs, [t["macs"] / m0 for t in traj], "s-", label="MACs (fraction of baseline)")
    ax2.set_ylim(0, 1.05)
    ax2.set_xlabel("round (accepted models)")
    ax3 = ax2.twinx()
    ax3.plot(xs, [t["top1"] for t in traj], "^--", color="tab:red", label="top-1 %")
    ax3.set_ylabel("top-1 (%)")
    lines = ax2.get_legend_handles_labels()
    lines3 = ax3.get_legend_handles_labels()
    ax2.legend(lines[0] + lines3[0], lines[1] + lines3[1], fontsize=7, loc="lower left")
    ax2.set_title("trajectory")
    fig.tight_layout()
    path = Path(path)
    import io as _io

    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write(path, buf.getvalue())
    return path


# --------------------------------------------------------------------------------------------
# the method


#: retraining settings used by `bind_run` unless the `train` option overrides them (one epoch per call)
DEFAULT_RETRAIN = {"lr": 0.01, "schedule": "constant", "momentum": 0.9, "weight_decay": 1e-4}


def trainer_from(
    data: Any, *, config: Any, device: str | torch.device, eval_max_batches: int | None = None, progress: bool = False
) -> tuple[Retrain, Evaluate]:
    """Return (retrain, evaluate) over a `prunekit.data.DataBundle` with `prunekit.train`.

    `retrain(model)` trains one epoch with `config` (a `TrainConfig`; its epochs are set to 1 and
    its seed advanced every call so epochs see different orders); `evaluate(model)` returns top-1
    (%) on the validation split if the bundle has one, else the test split.
    """
    from prunekit import train

    calls = [0]
    split = data.val if getattr(data, "val", None) is not None else data.test

    def retrain(model: nn.Module) -> nn.Module:
        calls[0] += 1
        cfg = replace(config, epochs=1, seed=config.seed + calls[0], eval_every=0, eval_max_batches=1)
        return train.train(model, data=data, config=cfg, device=device, stage=f"autorate-{calls[0]}", progress=progress).model

    def evaluate(model: nn.Module) -> float:
        return float(train.evaluate(model, split, device=device, amp=config.amp, max_batches=eval_max_batches)["top1"])

    return retrain, evaluate


@register
class AutoRate(Method):
    name = "autorate"
    kind = "structured"
    units = ("accuracy_drop",)
    needs_data = True
    description = "per-layer rates from gradient sensitivities and loss margins, retrain/accept/reject loop (Sakai et al. 2022)"

    def configure(
        self,
        *,
        rates: Sequence[float] = DEFAULT_RATES,
        loss_margin: float = 0.1,
        acc_control: float | None = None,
        scaling_factor: float = 2.0,
        rounds: int = 100,
        epochs_per_round: int = 10,
        max_epochs: int | None = None,
        batches: int = 100,
        group_rate: str = "min",
        train: dict[str, Any] | None = None,
        baseline_top1: float | None = None,
        retrain: Retrain | None = None,
        evaluate: Evaluate | None = None,
        plot_dir: str | None = None,
        **options: Any,
    ) -> dict[str, Any]:
        if acc_control is not None and self.target is not None:
            raise UserError("autorate: give the accuracy_drop target or the acc_control option, not both")
        control = self.target.value if self.target is not None else (1.0 if acc_control is None else float(acc_control))
        round_to = self.round_to if isinstance(self.round_to, int) and not isinstance(self.round_to, bool) else None
        if self.round_to not in (None, "auto") and round_to is None:
            raise UserError(f"autorate: round_to={self.round_to!r} must be a positive integer or auto")
        try:
            cfg = AutoRateConfig(
                rates=tuple(float(r) for r in rates), loss_margin=float(loss_margin), acc_control=control,
                scaling_factor=float(scaling_factor), rounds=rounds, epochs_per_round=epochs_per_round,
                max_epochs=max_epochs, batches=batches, group_rate=group_rate, round_to=round_to,
            )
        except (TypeError, ValueError) as err:
            raise UserError(f"autorate: {err}") from None
        cfg.validate()
        if train is not None and not isinstance(train, dict):
            raise UserError(f"autorate: option train must be a mapping of training settings, got {train!r}")
        for name, fn in (("retrain", retrain), ("evaluate", evaluate)):
            if fn is not None and not callable(fn):
                raise UserError(f"autorate: option {name} must be a callable")
        super().configure(**options)
        return {"config": cfg, "train": dict(train or {}), "baseline_top1": baseline_top1,
                "retrain": retrain, "evaluate": evaluate, "plot_dir": plot_dir}

    def bind_run(self, *, data: Any, device: str | torch.device, out_dir: str | Path | None = None,
                 eval_max_batches: int | None = None, progress: bool = False) -> None:
        """Build retrain/evaluate from `prunekit.train` over `data` (a DataBundle) unless given; plot into `out_dir`."""
        from prunekit import train

        settings = {**DEFAULT_RETRAIN, **self.options["train"]}
        names = {f.name for f in fields(train.TrainConfig)}
        unknown = sorted(set(settings) - names)
        if unknown:
            raise UserError(f"autorate: option train has unknown setting(s) {', '.join(unknown)} (allowed: {', '.join(sorted(names))})")
        if "milestones" in settings:
            settings["milestones"] = tuple(settings["milestones"])
        config = train.TrainConfig(**settings)
        config.validate()
        retrain, evaluate = trainer_from(data, config=config, device=device, eval_max_batches=eval_max_batches, progress=progress)
        self.options["retrain"] = self.options["retrain"] or retrain
        self.options["evaluate"] = self.options["evaluate"] or evaluate
        if out_dir is not None and self.options["plot_dir"] is None:
            self.options["plot_dir"] = str(out_dir)

    def state_dict(self) -> dict[str, Any]:
        """Return the search record (plain data), so a resumed run still reports its rounds."""
        return {"info": self.info}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the search record saved by `state_dict`."""
        self.info = dict(state.get("info", {}))

    def finalize(self, model: nn.Module, *, example_inputs: torch.Tensor, data: Batches | None = None) -> nn.Module:
        retrain, evaluate = self.options["retrain"], self.options["evaluate"]
        if retrain is None or evaluate is None:
            raise UserError(
                "autorate retrains and evaluates between rounds: pass retrain= and evaluate= callables "
                "(or run it with `prunekit run`, which binds them to the recipe's data)"
            )
        if data is None:
            raise UserError("autorate needs data= (an iterable of (inputs, targets) batches) for its sensitivities")
        cfg: AutoRateConfig = self.options["config"]
        if self.round_to == "auto":
            cfg = replace(cfg, round_to=self.resolve_round_to(model, example_inputs))
        pruned, info = search(
            model, example_inputs, batches=data, retrain=retrain, evaluate=evaluate, config=cfg, ignore=self.ignore,
            baseline_top1=self.options["baseline_top1"], progress=print,
        )
        self.info.update(info)
        if self.options["plot_dir"]:
            self.info["plot"] = str(plot_rates(info, Path(self.options["plot_dir"]) / "autorate_rates.png"))
        return pruned
