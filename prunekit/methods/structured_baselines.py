"""Structured baselines: remove whole filters by L1 or L2 norm (Li et al. 2017), or at random."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from prunekit import structure
from prunekit.errors import UserError
from prunekit.methods.base import Batches, Method, register, seed_option


class StructuredMethod(Method):
    """A one-shot structured method: score channels, remove the lowest to reach the target.

    Options: `allocation` ("uniform": the same fraction from every group; "global": one ranking
    of normalised scores across groups; "time": for macs=/params= targets, the channels that save
    the most measured time on the method's `runtime` per importance lost,
    `latency_search.prune_to_target_by_time`). Subclasses provide `importance()`.
    A `latency=` target is met by measured time on the model's device and the method's `runtime`
    (`prunekit.latency_search`), removing at most `max_macs_removed` of the MACs (default 0.75);
    `round_to` defaults to "auto" (the channel multiple measured on the device and runtime; 1 = none).
    """

    kind = "structured"
    units = ("channels", "params", "macs", "latency")

    def configure(self, *, allocation: str = "uniform", max_macs_removed: float | None = None, **options: Any) -> dict[str, Any]:
        if allocation not in ("uniform", "global", "time"):
            raise UserError(f"method {self.name!r}: allocation {allocation!r} is not one of uniform, global, time")
        from prunekit.latency_search import MAX_MACS_REMOVED

        bound = MAX_MACS_REMOVED if max_macs_removed is None else max_macs_removed
        if isinstance(bound, bool) or not isinstance(bound, (int, float)) or not 0 < bound <= 1:
            raise UserError(f"method {self.name!r}: max_macs_removed={max_macs_removed!r} must be in (0, 1]")
        return {"allocation": allocation, "max_macs_removed": float(bound), **super().configure(**options)}

    def importance(self, model: nn.Module, *, example_inputs: torch.Tensor, data: Batches | None) -> structure.Importance:
        """Return the channel scorer (one score per channel of a group; higher is kept)."""
        raise NotImplementedError

    def finalize(self, model: nn.Module, *, example_inputs: torch.Tensor, data: Batches | None = None) -> nn.Module:
        if self.target is None:
            raise UserError(f"method {self.name!r} needs a target, e.g. macs=0.5")
        from prunekit import allocation

        importance = self.importance(model, example_inputs=example_inputs, data=data)
        graph = structure.build_graph(model, example_inputs)  # one trace: the multiple's group sizes and the plan
        round_to = self.resolve_round_to(model, example_inputs, default="auto", graph=graph)
        protected = self.planner_protected(model, example_inputs)
        if self.target.unit == "latency":
            report: dict[str, Any] = {}
            model = allocation.prune_to_latency(
                model, example_inputs, importance=importance, target=self.target, ignore=self.ignore,
                round_to=round_to, report=report, runtime=self.runtime, max_macs_removed=self.options["max_macs_removed"],
                protected=protected, graph=graph,
            )
            self.info["latency"] = report
            if report.get("warning"):
                self.info["warnings"] = [*self.info.get("warnings", []), report["warning"]]
            return model
        plan: dict[str, Any] = {}
        if self.options["allocation"] == "time":
            from prunekit.latency_search import prune_to_target_by_time

            model = prune_to_target_by_time(model, example_inputs, importance=importance, target=self.target, ignore=self.ignore,
                                            round_to=round_to, runtime=self.runtime, protected=protected, graph=graph, info=plan)
            self.info["plan"] = plan
            return model
        model = structure.prune_to_target(
            model,
            example_inputs,
            importance=importance,
            target=self.target,
            ignore=self.ignore,
            round_to=round_to,
            allocation=self.options["allocation"],
            protected=protected,
            info=plan,
            graph=graph,
        )
        self.info["plan"] = plan
        return model


@register
class L1Filter(StructuredMethod):
    name = "l1_filter"
    description = "remove filters with the smallest L1 norm, summed over coupled layers (Li et al. 2017)"

    def importance(self, model, *, example_inputs, data):
        return structure.MagnitudeImportance(p=1)


@register
class L2Filter(StructuredMethod):
    name = "l2_filter"
    description = "remove filters with the smallest L2 norm, summed over coupled layers (Li et al. 2017)"

    def importance(self, model, *, example_inputs, data):
        return structure.MagnitudeImportance(p=2)


@register
class RandomFilter(StructuredMethod):
    name = "random"
    description = "remove randomly chosen channels (seeded): the structured baseline every method must beat"

    def configure(self, *, seed: int = 0, **options: Any) -> dict[str, Any]:
        return {"seed": seed_option(self.name, seed), **super().configure(**options)}

    def importance(self, model, *, example_inputs, data):
        return structure.RandomImportance(seed=self.options["seed"])
