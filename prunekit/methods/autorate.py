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

The loss (step 1) is the task's summed loss and the accept test (step 4) reads the task's
primary metric in its direction (`prunekit.tasks`; classification: cross-entropy and top-1).
Retraining and evaluation are callables: the run's `MethodContext.retrain` / `evaluate` when
`setup` gave them, else the `retrain` / `evaluate` options (`retrain(model)` trains one epoch,
`evaluate(model)` returns the primary metric or the task's metrics dict); `prunekit run` builds
them in the experiment from `prunekit.train` with `DEFAULT_RETRAIN` and the `train` option.
Progress goes to the context's `log`.

Layout: the formulas are in `autorate_rates`, the search loop in `autorate_search`, the plot
in `autorate_plot`; their public names are importable from here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit.errors import UserError
from prunekit.methods.base import Batches, Method, register
# the formulas, the search and the plot live in their own modules; their names stay importable from here
from prunekit.methods.autorate_plot import plot_rates
from prunekit.methods.autorate_rates import (  # noqa: F401
    DEFAULT_RATES, NO_BOUND, ZERO_GRAD, RateChoice, choose_rate, loss_and_sensitivities, pruning_error,
    removed_count, scale_thresholds, thresholds, update_upper_bound, upper_bound_limit,
)
from prunekit.methods.autorate_search import (  # noqa: F401
    AutoRateConfig, Evaluate, FilterL1Importance, Retrain, _Group, _prunable, accepts, search,
)


# --------------------------------------------------------------------------------------------
# the method


#: retraining settings `prunekit run` uses unless the `train` option overrides them (one epoch per call)
DEFAULT_RETRAIN = {"lr": 0.01, "schedule": "constant", "momentum": 0.9, "weight_decay": 1e-4}


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
        round_to = self.round_to if isinstance(self.round_to, int) and not isinstance(self.round_to, bool) else None
        if self.round_to not in (None, "auto") and round_to is None:
            raise UserError(f"autorate: round_to={self.round_to!r} must be a positive integer or auto")
        try:
            control = self.target.value if self.target is not None else (1.0 if acc_control is None else float(acc_control))
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

    def state_dict(self) -> dict[str, Any]:
        """Return the search record (plain data), so a resumed run still reports its rounds."""
        return {"info": self.info}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the search record saved by `state_dict`."""
        self.info = dict(state.get("info", {}))

    def finalize(self, model: nn.Module, *, example_inputs: torch.Tensor, data: Batches | None = None) -> nn.Module:
        context = getattr(self, "context", None)
        retrain = getattr(context, "retrain", None) or self.options["retrain"]
        evaluate = getattr(context, "evaluate", None) or self.options["evaluate"]
        if data is None and context is not None:
            data = context.batches
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
            baseline_top1=self.options["baseline_top1"], progress=self.log, task=self.task,
            protected=self.protected(model, example_inputs),
        )
        self.info.update(info)
        plot_dir = self.options["plot_dir"] or getattr(context, "out_dir", None)
        if plot_dir:
            self.info["plot"] = plot_rates(info, Path(plot_dir) / "autorate_rates.png").name  # beside metrics.json
        return pruned
