"""Pure helpers that turn measurements into metrics.json records (no run-directory writes)."""

from __future__ import annotations

import statistics
from typing import Any

from torch import nn

from prunekit import bench, metrics


def task_record(task: Any) -> dict[str, Any]:
    """Return metrics.json's "task" entry: the task's name, options and primary metric."""
    p = task.primary
    return {"name": task.name or type(task).__name__, "options": dict(task.options),
            "primary": {"name": p.name, "unit": p.unit, "higher_is_better": p.higher_is_better}}


def measure(model: nn.Module, example_inputs: Any, *, task: Any = None, result: dict[str, Any] | None = None) -> dict[str, Any]:
    """Return the Measurement fields of `model`, plus NetScore when the task's `result` is given."""
    return measure_dict(metrics.measure(model, example_inputs), task=task, result=result)


def measure_dict(measured: Any, *, task: Any = None, result: dict[str, Any] | None = None) -> dict[str, Any]:
    """Return `measured.to_dict()`, plus NetScore from the task's primary metric in `result`.

    NetScore needs an accuracy in percent: a primary metric in "%" or "fraction" gives one;
    any other unit gives None (NetScore is not defined for it)."""
    d = measured.to_dict()
    if task is None or result is None:
        return d
    a = task.primary.percent(result.get(task.primary.name))
    if a is None:
        return {**d, "netscore": None, "netscore_nonzero": None}
    return {
        **d,
        "netscore": metrics.netscore(a, d["params"], d["macs"]),
        "netscore_nonzero": metrics.netscore(a, d["nonzero_params"], d["nonzero_macs"]),
    }


def interleaved_latency(first: nn.Module, second: nn.Module, example_inputs: Any, e: Any, device: str) -> tuple[float, float]:
    """Return the median latencies (ms) of two models timed in alternating rounds.

    Alternating spreads any drift of the machine's load (other jobs, clocks) over both models
    instead of charging it to whichever was timed second.
    """
    rounds = min(5, e.latency_repeats)
    per_round = max(1, e.latency_repeats // rounds)
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(rounds):
        for model, out in ((first, times[0]), (second, times[1])):
            out.append(bench.latency(model, example_inputs, device=device, batch_size=e.latency_batch_size, repeats=per_round,
                                     runtime=getattr(e, "latency_runtime", "eager")))
    return statistics.median(times[0]), statistics.median(times[1])


def layers(before: Any, after: Any) -> list[dict[str, Any]]:
    """Return one row per conv/linear layer: output channels and params before/after, sparsity after."""
    b, a = before.by_module(), after.by_module()
    rows = []
    for name in [*b, *(n for n in a if n not in b)]:
        lb, la = b.get(name), a.get(name)
        rows.append({
            "name": name,
            "kind": (la or lb).kind,
            "out_channels_before": lb.out_channels if lb else None,
            "out_channels_after": la.out_channels if la else None,
            "params_before": lb.params if lb else None,
            "params_after": la.params if la else None,
            "nonzero_params_after": la.nonzero_params if la else None,
            "sparsity_after": (1.0 - la.density) if la else None,
        })
    return rows


def method_info(method: Any, stages: list[Any]) -> dict[str, Any]:
    """Return metrics.json's "method_info": the method's info, with each stage's for composites."""
    info = dict(method.info or {})
    if stages and "stages" not in info:
        info["stages"] = [{"method": s.name, **(s.info or {})} for s in stages]
    return info


def primary_text(task: Any, value: float | None) -> str:
    """Return the primary metric as the console prints it: "top-1 81.35%" for classification."""
    p = task.primary
    if value is None:
        return f"{p.name} -"
    if p.name == "top1" and p.unit == "%":
        return f"top-1 {value:.2f}%"
    return f"{p.name} {value:.4g}" + ("%" if p.unit == "%" else f" {p.unit}")
