"""Reports of runs: report.md and PNG plots of one run directory, and a comparison table over runs.

Everything here reads what a run wrote (metrics.json, log.jsonl) and nothing else, so a report
can be re-rendered at any time (`prunekit report DIR`). Conventions printed with the numbers:
MACs are multiply-accumulates per image (theoretical); latency is measured (median, on the
device and batch size named); NetScore (Wong 2019) = 20 log10(a^2 / (sqrt(p) sqrt(m))) with a =
top-1 in %, p = params in millions, m = MACs in billions.
"""

from __future__ import annotations

import io as _io
import json
import math
from pathlib import Path
from typing import Any

from prunekit.atomic import atomic_write
from prunekit.errors import UserError

METRICS_FILE = "metrics.json"
LOG_FILE = "log.jsonl"
REPORT_FILE = "report.md"

NETSCORE_CONVENTION = "NetScore = 20 log10(a^2 / (sqrt(p) sqrt(m))), a = top-1 %, p = params (M), m = MACs (G) (Wong 2019)"
SPARSITY_NOTE = "zeroed weights reduce non-zero params and non-zero MACs, not dense latency"
#: the channel block CPU (ONNX Runtime) and GPU (tensor core) conv kernels step by; docs/results.md measures the cost
CHANNEL_BLOCK = 8


# reading runs --------------------------------------------------------------------------------
def read_metrics(run_dir: str | Path) -> dict[str, Any]:
    """Return the parsed metrics.json of `run_dir` (any status); `UserError` when it is absent or unreadable."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise UserError(f"{run_dir}: not a prunekit run directory (no {METRICS_FILE})")
    from prunekit.safe_load import read_metrics_file  # size, UTF-8, JSON object, field types

    return read_metrics_file(path)


def unfinished_reason(metrics: dict[str, Any]) -> str | None:
    """Return why a run is not complete (one phrase), or None when its status is "complete"."""
    status = metrics.get("status")
    if status == "complete":
        return None
    if status == "failed":
        return f"failed at stage {metrics.get('stage') or '?'}: {metrics.get('error') or 'unknown error'}"
    if status == "running":
        return f"unfinished: stopped or still running at stage {metrics.get('stage') or '?'}"
    return f"unknown status {status!r}"


def read_log(run_dir: str | Path) -> list[dict[str, Any]]:
    """Return the JSON lines of log.jsonl (an absent file gives []; a torn last line is skipped)."""
    path = Path(run_dir) / LOG_FILE
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill; everything before it is good
        epoch = row.get("epoch", 0) if isinstance(row, dict) else None
        if isinstance(epoch, int) and not isinstance(epoch, bool) and 0 <= epoch <= 10**6:  # damaged lines are skipped
            rows.append(row)
    return rows


#: the primary metric of runs that name no task (written before tasks existed): classification's
CLASSIFICATION_PRIMARY = {"name": "top1", "unit": "%", "higher_is_better": True}


def primary_metric(metrics: dict[str, Any]) -> dict[str, Any]:
    """Return the run's primary metric {"name", "unit", "higher_is_better"} (top-1 for classification)."""
    task = metrics.get("task") if isinstance(metrics.get("task"), dict) else {}
    primary = task.get("primary") if isinstance(task.get("primary"), dict) else None
    return primary if primary and isinstance(primary.get("name"), str) else CLASSIFICATION_PRIMARY


def netscore_convention(primary: dict[str, Any]) -> str:
    """Return how NetScore was computed for a run whose primary metric is `primary` (or why it was not)."""
    if is_top1(primary):
        return NETSCORE_CONVENTION
    if primary.get("unit") in ("%", "fraction"):
        return NETSCORE_CONVENTION.replace("a = top-1 %", f"a = {primary['name']} in %")
    return (f"NetScore (Wong 2019) needs an accuracy in percent; the primary metric {primary['name']} "
            f"({primary.get('unit')}) is not one, so it is not given")


def is_top1(primary: dict[str, Any]) -> bool:
    """Return True when the primary metric is classification's top-1 in percent."""
    return primary.get("name") == "top1" and primary.get("unit") == "%"


def primary_label(primary: dict[str, Any], what: str = "") -> str:
    """Return a column label: "top-1 base (%)" for classification's top-1, else "NAME base (UNIT)"."""
    name = "top-1" if is_top1(primary) else str(primary["name"])
    return f"{name}{' ' + what if what else ''} ({primary.get('unit') or '-'})"


def primary_value(record: dict[str, Any] | None, metrics: dict[str, Any]) -> Any:
    """Return the primary metric's value in a baseline/final/stage record of `metrics`, or None."""
    return (record or {}).get(primary_metric(metrics)["name"])


# formatting ----------------------------------------------------------------------------------
def jsonable(obj: Any) -> Any:
    """Return a JSON-ready stand-in for `obj` (the `default=` of every prunekit JSON writer):
    tensors as numbers or lists, paths as text, sets and tuples as lists, objects with
    `to_dict()` as that dict, anything else as its text."""
    import torch  # here, not at the top: reading reports needs no torch until a tensor shows up

    if isinstance(obj, torch.Tensor):
        return obj.item() if obj.numel() == 1 else obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, tuple)):
        return list(obj)
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    return str(obj)


def human(n: float | None) -> str:
    """Return `n` with a k/M/G suffix (decimal), e.g. 11.2M; "-" for None."""
    if n is None:
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:g}"


def _num(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, fmt)


def _ratio(before: Any, after: Any) -> str:
    if not before or after is None:
        return "-"
    return f"{after / before:.3f}x"


def _pct(value: Any) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


# one run's report -----------------------------------------------------------------------------
_ROWS = [
    ("top1", "top-1 (%)", ".2f"),
    ("top5", "top-5 (%)", ".2f"),
    ("loss", "test loss", ".4f"),
    ("params", "parameters", "h"),
    ("nonzero_params", "non-zero parameters", "h"),
    ("macs", "MACs per image (theoretical)", "h"),
    ("nonzero_macs", "non-zero MACs per image", "h"),
    ("size_bytes", "size (dense, bytes)", "h"),
    ("latency_ms", "latency (ms, measured median)", ".3f"),
    ("netscore", "NetScore (dense p, m)", ".2f"),
    ("netscore_nonzero", "NetScore (non-zero p, m)", ".2f"),
]


def _both_numbers(a: Any, b: Any) -> bool:
    return isinstance(a, (int, float)) and isinstance(b, (int, float))


def _rows(metrics: dict[str, Any], primary: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Return the report's rows: classification's as always; for another task its own metrics
    (primary first, as recorded in final/baseline), then the measurement rows."""
    if is_top1(primary):
        return _ROWS
    measured = {k for k, _, _ in _ROWS[3:]}
    seen = [*(metrics.get("final") or {}), *(metrics.get("baseline") or {})]
    own = [primary["name"]] + [k for k in dict.fromkeys(seen) if k != primary["name"] and k not in measured
                              and k not in ("images", "sparsity") and not k.startswith("latency_")
                              and _both_numbers((metrics.get("final") or {}).get(k, 0), (metrics.get("baseline") or {}).get(k, 0))]
    label = {primary["name"]: f"{primary['name']} ({primary.get('unit')}, primary)"}
    return [(k, label.get(k, k), ".4g") for k in own] + _ROWS[3:]


def _cell(value: Any, fmt: str) -> str:
    return human(value) if fmt == "h" else _num(value, fmt)


def _has_sparsity(metrics: dict[str, Any]) -> bool:
    final = metrics.get("final") or {}
    return (final.get("sparsity") or 0.0) > 0.001


def channel_block_note(layers: list[dict[str, Any]], *, block: int = CHANNEL_BLOCK) -> list[str]:
    """Return report.md's lines (or []) saying how many pruned convs keep an output channel count that is not a
    multiple of `block`: kernels that run channels in blocks (ONNX Runtime on a CPU, tensor cores) run those
    slower per MAC, sometimes slower than the dense network."""
    # metrics.json may be hand-edited: a layer that is not a dict or has no integer count is skipped, not a traceback
    pruned = [layer for layer in layers if isinstance(layer, dict) and layer.get("kind") == "Conv2d"
              and type(layer.get("out_channels_after")) is int and layer["out_channels_after"] != layer.get("out_channels_before")]
    off = [str(layer.get("name", "?")) for layer in pruned if layer["out_channels_after"] % block]
    if not off:
        return []
    shown = ", ".join(f"`{n}`" for n in off[:3]) + (f" and {len(off) - 3} more" if len(off) > 3 else "")
    return [f"Channel counts: {len(off)} of the {len(pruned)} convs whose outputs were pruned keep a count that is not a "
            f"multiple of {block} ({shown}). ONNX Runtime's CPU kernels and GPU tensor cores run channels in blocks, so such "
            f"counts cost time per MAC (in docs/results.md a MobileNetV2 pruned this way ran slower than its dense model on "
            f"ONNX Runtime); `method.round_to: {block}` or `auto` keeps them multiples.", ""]


def render_markdown(metrics: dict[str, Any], *, plots: list[str] = ()) -> str:
    """Return report.md's text for `metrics` (a metrics.json dict), linking the given plot files."""
    base, final = metrics.get("baseline") or {}, metrics.get("final") or {}
    lines = [f"# prunekit run `{metrics.get('recipe', '?')}`", ""]
    reason = unfinished_reason(metrics)
    if reason:
        lines += [f"> **This run is not complete** ({reason}). Numbers below are partial.", ""]
    lines += [
        f"- method: `{metrics.get('method')}` ({metrics.get('method_kind', '?')}), target asked: "
        f"`{metrics.get('target') or 'none'}` (fraction removed)",
        f"- model: `{metrics.get('model')}` on `{metrics.get('dataset')}`; device `{metrics.get('device')}`; seed {metrics.get('seed')}",
        f"- status: {metrics.get('status')}; resolved recipe: `recipe.yaml`; log: `log.jsonl`; model: `model.pt`",
        "",
        "## Baseline vs final",
        "",
    ]
    lat_dev = final.get("latency_device") or base.get("latency_device")
    lat_bs = final.get("latency_batch_size") or base.get("latency_batch_size")
    primary = primary_metric(metrics)
    lines += ["| | baseline | final | final / baseline |", "| --- | ---: | ---: | ---: |"]
    for key, label, fmt in _rows(metrics, primary):
        if key not in base and key not in final:
            continue
        if key == "latency_ms":
            threads = final.get("latency_threads") or base.get("latency_threads")
            runtime = final.get("latency_runtime") or base.get("latency_runtime") or "eager"
            where = f"{lat_dev}, {threads} thread{'s' if threads != 1 else ''}" if threads else lat_dev
            label = f"latency (ms, {where}, batch {lat_bs}, measured median) on {runtime}"
        task_keys = {k for k, _, f in _rows(metrics, primary) if f != "h"} - {"latency_ms"}
        ratio = "-" if key in task_keys else _ratio(base.get(key), final.get(key))
        if key in ("top1", "top5") and is_top1(primary) and base.get(key) is not None and final.get(key) is not None:
            ratio = f"{final[key] - base[key]:+.2f} pts"
        elif key == primary["name"] and not is_top1(primary) and _both_numbers(base.get(key), final.get(key)):
            ratio = f"{final[key] - base[key]:+.4g}"
        lines.append(f"| {label} | {_cell(base.get(key), fmt)} | {_cell(final.get(key), fmt)} | {ratio} |")
    lines.append("")
    if _has_sparsity(metrics):
        lines += [f"Sparsity of conv/linear weights: {_pct(final.get('sparsity'))}. Note: {SPARSITY_NOTE}.", ""]
    lines += [f"{netscore_convention(primary)}. MACs count conv/linear/matmul multiply-accumulates per image.", ""]
    lines += channel_block_note(metrics.get("layers") or [])

    achieved = metrics.get("achieved") or {}
    if achieved:
        target = metrics.get("target") or ""
        unit = target.partition("=")[0]
        lines += ["## Target asked vs achieved (fraction removed)", "", "| unit | asked | achieved |", "| --- | ---: | ---: |"]
        for key, value in achieved.items():
            asked = target.partition("=")[2] if key == unit else ""
            if key == "accuracy_drop":
                shown = f"{value:+.2f} pts" if is_top1(primary) else f"{_num(value, '+.4g')} ({primary['name']}, worse is positive)"
            else:
                shown = _num(value, ".4f")
            note = " (measured)" if key == "latency" else ""
            lines.append(f"| {key}{note} | {asked} | {shown} |")
        lines.append("")
        if achieved.get("sparsity", 0) > 0.001:
            lines += [f"Note: {SPARSITY_NOTE}.", ""]

    stages = metrics.get("stages") or []
    if stages:
        lines += [
            "## Stages",
            "",
            f"| stage | method | {primary_label(primary)} | params | non-zero params | MACs | non-zero MACs | NetScore | NetScore (non-zero) |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for i, st in enumerate(stages):
            lines.append(
                f"| {i + 1} | {st.get('method')} | {_num(st.get(primary['name']), '.2f' if is_top1(primary) else '.4g')} | {human(st.get('params'))} | "
                f"{human(st.get('nonzero_params'))} | {human(st.get('macs'))} | {human(st.get('nonzero_macs'))} | "
                f"{_num(st.get('netscore'), '.2f')} | {_num(st.get('netscore_nonzero'), '.2f')} |"
            )
        lines.append("")
        if any((st.get("nonzero_params") or 0) < (st.get("params") or 0) for st in stages):
            lines += [f"Note: {SPARSITY_NOTE}.", ""]

    wall = metrics.get("wall_time_s") or {}
    if wall:
        lines += ["## Wall time (s)", "", "| stage | seconds |", "| --- | ---: |"]
        lines += [f"| {k} | {v:.1f} |" for k, v in wall.items()]
        lines.append("")

    if plots:
        lines += ["## Plots", ""]
        lines += [f"![{Path(p).stem.replace('_', ' ')}]({p})" for p in plots]
        lines.append("")

    info = metrics.get("method_info") or {}
    if info:
        text = json.dumps(info, indent=1, sort_keys=True)
        if len(text) > 4000:
            text = text[:4000] + "\n... (truncated; see metrics.json)"
        lines += ["## Method details", "", "```json", text, "```", ""]
    return "\n".join(lines)


# plots ---------------------------------------------------------------------------------------
def png_bytes(fig: Any) -> bytes:
    """Return the matplotlib figure `fig` as PNG bytes, and close it."""
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def plot_training(log: list[dict[str, Any]]) -> bytes | None:
    """Return a PNG of loss and accuracy per epoch over every trained stage of `log`, or None if none trained."""
    epochs = [row for row in log if row.get("event", "epoch") == "epoch" and "epoch" in row and "stage" in row]
    if not epochs:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 3.8))
    offset = 0
    stages: dict[str, list[dict[str, Any]]] = {}
    for row in epochs:
        stages.setdefault(str(row["stage"]), []).append(row)
    for stage, rows in stages.items():
        xs = [offset + int(r["epoch"]) + 1 for r in rows]
        for key, ax, style in (
            ("train_loss", ax_loss, "-"),
            ("val_loss", ax_loss, "--"),
            ("test_loss", ax_loss, ":"),
            ("train_top1", ax_acc, "-"),
            ("val_top1", ax_acc, "--"),
            ("test_top1", ax_acc, ":"),
        ):
            pts = [(x, r[key]) for x, r in zip(xs, rows) if isinstance(r.get(key), (int, float))]
            if pts:
                ax.plot(*zip(*pts), style, marker="o", markersize=3, label=f"{stage} {key.split('_')[0]}")
        if xs:
            offset = xs[-1]
            ax_loss.axvline(offset + 0.5, color="0.85", linewidth=0.8)
    ax_loss.set(xlabel="epoch (all stages)", ylabel="loss", title="loss")
    ax_acc.set(xlabel="epoch (all stages)", ylabel="top-1 (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        if ax.lines:
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    return png_bytes(fig)


def plot_layers(layers: list[dict[str, Any]], *, what: str) -> bytes | None:
    """Return a PNG bar chart per conv/linear layer: `what` = "channels" (kept out channels) or "sparsity"."""
    if not layers:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [row["name"] for row in layers]
    fig, ax = plt.subplots(figsize=(max(6, 0.28 * len(names) + 2), 4))
    xs = range(len(names))
    if what == "channels":
        before = [row.get("out_channels_before") or 0 for row in layers]
        after = [row.get("out_channels_after") or 0 for row in layers]
        ax.bar(xs, before, color="0.8", label="baseline")
        ax.bar(xs, after, color="tab:blue", label="kept")
        ax.set(ylabel="output channels", title="kept channels per layer")
    else:
        ax.bar(xs, [100 * (row.get("sparsity_after") or 0.0) for row in layers], color="tab:red")
        ax.set(ylabel="zero weights (%)", ylim=(0, 100), title=f"sparsity per layer ({SPARSITY_NOTE})")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(names, rotation=90, fontsize=6)
    if what == "channels":
        ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return png_bytes(fig)


def write_plots(run_dir: str | Path, metrics: dict[str, Any]) -> list[str]:
    """Write the PNG plots of `run_dir` for `metrics` (atomically); return the names of every plot
    there, a method's own included (e.g. autorate's rates per round)."""
    run_dir = Path(run_dir)
    written: list[str] = []
    layers = metrics.get("layers") or []
    images = {
        "training_curves.png": plot_training(read_log(run_dir)),
        "channels_per_layer.png": plot_layers(layers, what="channels")
        if any(r.get("out_channels_after") != r.get("out_channels_before") for r in layers)
        else None,
        "sparsity_per_layer.png": plot_layers(layers, what="sparsity") if _has_sparsity(metrics) else None,
    }
    for name, data in images.items():
        if data is not None:
            atomic_write(run_dir / name, data)
            written.append(name)
    # plots a method drew into the run directory itself (e.g. autorate's rates per round)
    written += sorted(p.name for p in run_dir.glob("*.png") if p.name not in images)
    return written


def write_markdown(run_dir: str | Path, metrics: dict[str, Any], *, plots: list[str] = ()) -> Path:
    """Write report.md of `run_dir` for `metrics`, linking `plots` (atomically); return its path."""
    path = Path(run_dir) / REPORT_FILE
    atomic_write(path, render_markdown(metrics, plots=list(plots)).encode("utf-8"))
    return path


def write_report(run_dir: str | Path, metrics: dict[str, Any], *, plots: bool = True) -> Path:
    """Write the plots and report.md of `run_dir` for `metrics` (atomically); return report.md's path."""
    return write_markdown(run_dir, metrics, plots=write_plots(run_dir, metrics) if plots else [])


def render_report(run_dir: str | Path) -> Path:
    """Re-render report.md and the plots of a complete run from its metrics.json and log.jsonl.

    Returns report.md's path; an unfinished or failed run is a `UserError` saying so.
    """
    metrics = read_metrics(run_dir)
    reason = unfinished_reason(metrics)
    if reason:
        raise UserError(f"{run_dir}: run is not complete ({reason}); resume it with prunekit run RECIPE --out {run_dir} --resume")
    return write_report(run_dir, metrics, plots=bool((metrics.get("report") or {}).get("plots", True)))


# several runs ----------------------------------------------------------------------------------
def compare_table(run_dirs: list[str | Path]) -> str:
    """Return a markdown table comparing runs: method, target, the task's primary metric baseline/final
    (top-1 for classification), params, MACs, latency, NetScore.

    Unfinished runs are listed with their status and no numbers, so they never pass for results.
    """
    all_metrics = [read_metrics(d) for d in run_dirs]
    primaries = {json.dumps(primary_metric(m), sort_keys=True) for m in all_metrics}
    primary = primary_metric(all_metrics[0]) if len(primaries) == 1 and all_metrics else None
    header = [
        "run", "status", "method", "target",
        primary_label(primary, "base") if primary else "primary base", primary_label(primary, "final") if primary else "primary final",
        "params final", "params removed", "MACs final", "MACs removed", "sparsity",
        "latency base (ms)", "latency final (ms)", "NetScore final",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([" --- "] * 4 + [" ---: "] * (len(header) - 4)) + "|"]
    devices = set()
    for run_dir, m in zip(run_dirs, all_metrics):
        name = str(run_dir)
        if unfinished_reason(m):
            cells = [name, f"**{m.get('status')}** (not a result)", str(m.get("method")), str(m.get("target"))] + ["-"] * (len(header) - 4)
        else:
            b, f, a = m.get("baseline") or {}, m.get("final") or {}, m.get("achieved") or {}
            devices.add(f"{f.get('latency_device')} batch {f.get('latency_batch_size')}")
            cells = [
                name, "complete", str(m.get("method")), str(m.get("target") or "-"),
                *(_num(primary_value(r, m), ".2f" if is_top1(primary_metric(m)) else ".4g") for r in (b, f)),
                human(f.get("params")), _pct(a.get("params")),
                human(f.get("macs")), _pct(a.get("macs")), _pct(f.get("sparsity")),
                _num(b.get("latency_ms"), ".3f"), _num(f.get("latency_ms"), ".3f"), _num(f.get("netscore"), ".2f"),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"latency measured on {', '.join(sorted(devices))} (median)" if devices else "", NETSCORE_CONVENTION]
    if primary is None and all_metrics:
        notes.append("primary: each run's task's primary metric (the runs' tasks differ)")
    if any(((m.get("final") or {}).get("sparsity") or 0) > 0.001 for m in all_metrics):
        notes.append(f"sparsity: {SPARSITY_NOTE}")
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes if n) + "\n"
