"""autorate's search: prunable groups and their conv/linear members, the configuration, and the
round loop (rates from thresholds, a thinner candidate, retrain until accepted or rejected).

See `prunekit.methods.autorate` for the steps and the reference.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from prunekit import structure, tasks
from prunekit.errors import UserError
from prunekit.methods.autorate_rates import (
    DEFAULT_RATES, choose_rate, loss_and_sensitivities, removed_count, scale_thresholds, thresholds,
    update_upper_bound, upper_bound_limit,
)

Retrain = Callable[[nn.Module], "nn.Module | None"]
#: returns the primary metric (a number) or the task's metrics dict
Evaluate = Callable[[nn.Module], Any]


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


def _prunable(model: nn.Module, example_inputs: Any, ignore: Sequence[str | nn.Module],
              protected: structure.Protected = None) -> tuple[list[_Group], dict[str, nn.Module]]:
    """Return the prunable channel groups (with their conv/linear members) and {member name: module}."""
    names = structure.module_names(model)
    graph = structure.build_graph(model, example_inputs)
    groups: list[_Group] = []
    layers: dict[str, nn.Module] = {}
    for g in structure.channel_groups(model, example_inputs, ignore=ignore, graph=graph, protected=protected):
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
        if not 1 < self.scaling_factor < float("inf"):
            raise UserError(f"autorate: scaling_factor={self.scaling_factor!r} must be a finite number > 1")
        if not 0 <= self.loss_margin < float("inf"):
            raise UserError(f"autorate: loss_margin={self.loss_margin!r} must be a finite number >= 0")
        if not 0 <= self.acc_control < float("inf"):
            raise UserError(f"autorate: acc_control={self.acc_control!r} (the accuracy_drop target) must be a finite number >= 0")


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
    task: Any = None,
    protected: structure.Protected = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Run the automatic rate search on `model`; return (the last accepted model, a record of every round).

    `task` (default classification) gives the loss of the sensitivities and the primary metric
    of the accept test: `evaluate(model)` returns that metric (a number) or the task's metrics
    dict; a round is accepted when the metric's drop from the baseline (`Metric.drop`, in its
    direction) is below `config.acc_control`. The record keeps the names `baseline_top1`, `top1`
    and `final_top1` for the primary metric's values (`metric` names it). `protected` modules
    (default: the task's protected, i.e. every output layer) keep their output size.

    `model` itself is never modified (rounds work on copies). `batches` is iterated once: its
    first `config.batches` batches are kept and reused for every sensitivity pass, so losses
    before and after are compared on the same data. The record holds, per round, the rates per
    group and per layer, whether it was accepted, the accuracy after each retraining epoch, params
    and MACs of the candidate, the bound; `trajectory` has params, MACs and top-1 of the baseline
    and of every accepted model.
    """
    from prunekit.metrics import measure

    config.validate()
    task = tasks.resolve(task)
    metric = task.primary
    say = progress or (lambda _msg: None)
    if protected is None:
        protected = task.protected(model, example_inputs)
    protected = structure.protected_names(model, example_inputs, protected)  # names: rounds work on copies

    def score(m: nn.Module) -> float:
        value = evaluate(m)
        return task.primary_value(value) if isinstance(value, Mapping) else float(value)

    fixed = []
    for i, batch in enumerate(batches):
        if i >= config.batches:
            break
        fixed.append(batch)
    if not fixed:
        raise UserError("autorate needs data: an iterable of (inputs, targets) batches for the sensitivities")
    rates = tuple(sorted({float(r) for r in config.rates} | {0.0}, reverse=True))

    current = model
    groups, layers = _prunable(current, example_inputs, ignore, protected)
    if not groups:
        raise UserError("autorate: the model has no prunable channel groups (all ignored?)")
    original = {g.root_name: g.size for g in groups}
    loss_before, sens = loss_and_sensitivities(current, fixed, layers=layers, task=task)
    loss_after = loss_before
    acc_before = float(baseline_top1) if baseline_top1 is not None else score(current)
    m0 = measure(current, example_inputs)
    info: dict[str, Any] = {
        "reference": "Sakai et al. 2022, FujitsuResearch/automatic_pruning",
        "config": {**asdict(config), "rates": list(rates)},
        "metric": metric.name,
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
    say(f"autorate: baseline {metric.name} {acc_before:.4g}, loss {loss_before:.4f}, {len(groups)} groups, {len(layers)} layers")
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
        structure.remove_counts(trial, example_inputs, counts=removed, importance=FilterL1Importance(), ignore=ignore,
                                protected=protected)
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
            accs.append(score(trial))
            if accepts(metric, before=acc_before, after=accs[-1], control=config.acc_control):
                accepted = True
                break
        record.update(accepted=accepted, removed=removed, top1=accs, epochs=len(accs), params=m.params, macs=m.macs)
        say(f"round {index}: {sum(removed.values())} channels from {sum(1 for r in removed.values() if r)} groups, "
            f"{metric.name} {accs[-1] if accs else float('nan'):.4g} after {len(accs)} epoch(s): {'accepted' if accepted else 'rejected'}")
        if accepted:
            rejected.clear()
            current = trial
            final_acc = accs[-1]
            groups, layers = _prunable(current, example_inputs, ignore, protected)
            if groups:
                loss_after, sens = loss_and_sensitivities(current, fixed, layers=layers, task=task)
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


def accepts(metric: Any, *, before: float, after: float, control: float) -> bool:
    """Return True when `after` lost less than `control` of the primary metric from `before`, in the
    metric's direction: acc_after + acc_control > acc_before (the reference) for a higher-is-better
    metric, after - control < before for a lower-is-better one."""
    return metric.better(after + control if metric.higher_is_better else after - control, before)

