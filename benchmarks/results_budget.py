"""docs/results.md's budget study: the rows nearest the targets, and the dense baseline, run again with
3x the epochs after the baseline (recipes/results/budgetN-*.yaml, written by results_recipes.py),
set beside the tables' rows. It measures how much of each miss the 3-epoch budget explains instead
of asserting it: the points a longer fine-tune wins back, and what the dense network itself gains
from the same epochs (the JPEG-adapted baseline is still improving)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from results_targets import MACS_LIMIT, PARAMS_LIMIT, PARAMS_SHARE, PEER, PEER_MARGIN, _drop, _verdict, half_params_met

STUDY = re.compile(r"^budget(\d+)-(.+)$")


def longer_runs(records: dict[str, dict[str, Any]], twin: str) -> list[tuple[int, str]]:
    """Return [(epochs, stem)] of the recorded study runs of the tables' row `twin`, fewest epochs first."""
    return sorted((int(m.group(1)), s) for s in records if (m := STUDY.match(s)) and m.group(2) == twin)


def _signed(points: float) -> str:
    """Points lost as the tables print them: +x lost, -x gained."""
    return f"{points:+.2f}"


def _top1_per_epoch(log: dict[str, list[dict[str, Any]]]) -> list[float]:
    """Test top-1 (%) after every training epoch of a run, in stage order (method training, then fine-tuning)."""
    order = sorted(log, key=lambda s: (not s.startswith("method"), s))
    return [e["val_top1"] for stage in order for e in log[stage] if "val_top1" in e]


def budget_section(records: dict[str, dict[str, Any]], recipes: list[str],
                   epoch_log: Callable[[str], dict[str, list[dict[str, Any]]]] = lambda stem: {}) -> list[str]:
    """Return the study's lines (a table and the verdicts it supports) for every `budgetN-` recipe stem,
    or [] when there is none. `epoch_log(stem)` gives a record's per-epoch entries by stage. Top-1 in %,
    drops in points against each run's own evaluation of its start, wall time in minutes."""
    study = sorted(((m.group(2), int(m.group(1)), s) for s in recipes if (m := STUDY.match(s))),
                   key=lambda t: (t[0].endswith("-dense"), t[0]))  # the control last
    if not study:
        return []
    epochs = study[0][1]
    from results_recipes import BUDGET

    lines = [f"## What a longer budget buys: {epochs} epochs after the baseline instead of {BUDGET}", "",
             f"The `budget{epochs}-*` recipes run the rows nearest the targets again, and the dense baseline with no "
             f"method, with {epochs} epochs after the baseline instead of {BUDGET}: the method and its hook epochs are the "
             "same, the cosine fine-tuning is stretched (2 threads, one run at a time). The tables' budget is what the "
             "targets are judged on; this measures how much of each miss that budget explains. The last columns set a "
             f"row against the dense network fine-tuned the same {epochs} epochs, which keeps improving on the JPEG data too.", "",
             ]
    header = [f"| row | target | top-1 before | after {BUDGET} epochs (drop) | after {epochs} epochs (drop) | points won back "
              f"| dense after {epochs} epochs | behind it (points) | test top-1 after each epoch ({epochs}-epoch run) | wall min |",
              "|---|---|---:|---:|---:|---:|---:|---:|---|---:|"]
    dense = records.get(next((s for twin, _, s in study if twin.endswith("-dense")), ""), None)
    missing, long_runs, body = [], {}, []
    for twin, _, stem in study:
        m = records.get(stem)
        if not m:
            missing.append(stem)
            continue
        long_runs[twin] = m
        short = records.get(twin)
        before = f"{short['final']['top1']:.2f} ({_signed(_drop(short))})" if short else ("-" if twin.endswith("-dense") else "not recorded")
        won = f"{_drop(short) - _drop(m):+.2f}" if short else "-"
        behind = f"{dense['final']['top1'] - m['final']['top1']:.2f}" if dense and m is not dense else "-"
        name = "dense, no method (the control)" if twin.endswith("-dense") else f"[{twin}](../recipes/results/{stem}.yaml)"
        dense_top1 = f"{dense['final']['top1']:.2f}" if dense else "-"
        body.append(f"| {name} | {m.get('target') or '-'} | {m['baseline']['top1']:.2f} | {before} | "
                     f"{m['final']['top1']:.2f} ({_signed(_drop(m))}) | {won} | {dense_top1} | {behind} | "
                     f"{', '.join(f'{v:.1f}' for v in _top1_per_epoch(epoch_log(stem))) or '-'} | {m['wall_time_s']['total'] / 60:.0f} |")
    if body:
        lines += [*header, *body, "", f"![test top-1 after each epoch, the tables' budget and {epochs} epochs](img/results-budget.png)", ""]
    lines += _verdicts(long_runs, dense, epochs)
    if missing:
        lines += ["Not yet run: " + ", ".join(f"`{s}`" for s in missing) + ".", ""]
    return lines


def _verdicts(runs: dict[str, dict[str, Any]], dense: dict[str, Any] | None, epochs: int) -> list[str]:
    """The targets re-judged at the study's budget, one line each, from the recorded runs."""
    out = []
    macs = {t: m for t, m in runs.items() if "-macs0.5" in t and t != PEER}
    if macs:
        t, m = min(macs.items(), key=lambda kv: _drop(kv[1]))
        out.append(f"- At {epochs} epochs the best prunekit structured row at half the MACs, `{t}`, loses {_drop(m):.2f} "
                   f"points: within {MACS_LIMIT} point {_verdict(_drop(m) <= MACS_LIMIT)} at this budget.")
        if PEER in runs:
            gap = _drop(runs[PEER]) - _drop(m)
            out.append(f"- Torch-Pruning's group-L2 row at {epochs} epochs loses {_drop(runs[PEER]):.2f} points; `{t}` is "
                       f"{gap:+.2f} points ahead of it: at least +{PEER_MARGIN} {_verdict(gap >= PEER_MARGIN)} at this budget.")
    for t, m in sorted(runs.items()):
        if "-svd-" in t or "-sfp-" in t:
            out.append(f"- `{t}` at {epochs} epochs: {100 * m['achieved']['params']:.1f} % of the parameters removed at "
                       f"{_drop(m):.2f} points lost: >= {100 * PARAMS_SHARE:.0f} % at <= {PARAMS_LIMIT} points "
                       f"{_verdict(half_params_met(m))} at this budget.")
    if dense:
        out.append(f"- The dense baseline itself gains {-_drop(dense):.2f} points from {epochs} more epochs "
                   f"({dense['baseline']['top1']:.2f} -> {dense['final']['top1']:.2f} %): part of what a longer fine-tune wins "
                   "back for a pruned row is the start still adapting to the JPEG data, not recovery from the pruning.")
    return out + ([""] if out else [])


def budget_figure(records: dict[str, dict[str, Any]], recipes: list[str],
                  epoch_log: Callable[[str], dict[str, list[dict[str, Any]]]]) -> bytes | None:
    """Return a PNG (bytes) of test top-1 (%) after each epoch, one panel per recorded study row: its
    tables' run and its longer run, the baseline's top-1 and the 1-point line; None without a study record."""
    study = sorted(((m.group(2), s) for s in recipes if (m := STUDY.match(s)) and s in records),
                   key=lambda t: (t[0].endswith("-dense"), t[0]))
    if not study:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from prunekit.report import png_bytes

    fig, axes = plt.subplots(1, len(study), figsize=(3.2 * len(study), 3.0), sharey=True, squeeze=False)
    for ax, (twin, stem) in zip(axes[0], study):
        base = records[stem]["baseline"]["top1"]
        for s, style, label in ((twin, "o--", "tables' budget"), (stem, "o-", "longer budget")):
            ys = _top1_per_epoch(epoch_log(s)) if s in records else []
            if ys:
                ax.plot(range(1, len(ys) + 1), ys, style, markersize=3, label=label)
        ax.axhline(base, color="grey", linewidth=0.8, label=f"start {base:.2f}")
        ax.axhline(base - MACS_LIMIT, color="grey", linewidth=0.8, linestyle=":", label=f"start - {MACS_LIMIT:g}")
        ax.set_title(twin.removeprefix("resnet20-"), fontsize=9)
        ax.set_xlabel("epoch after the baseline")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test top-1 (%)")
    axes[0][0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return png_bytes(fig)
