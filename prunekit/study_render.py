"""Rendering a study from its run directories alone: the table of every point, the headline
(arms compared at a fixed accuracy drop), the plots, and `render_study`, which writes `study.md`,
`tradeoff.png` and `accuracy_vs_params-<panel>.png` (also `prunekit report STUDY_DIR`).

`prunekit.study` re-exports every name here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prunekit.errors import UserError
from prunekit.study_spec import _slug_part

STUDY_FILE = "study.json"


def _error_file(out: Path, slug: str) -> Path:
    """Where a point that failed before writing its run directory keeps its one-line error."""
    return out / ".errors" / f"{slug}.txt"


def _read_point(out: Path, slug: str) -> dict[str, Any] | None:
    from prunekit.report import read_metrics

    if not (out / slug / "metrics.json").exists():
        if _error_file(out, slug).is_file():
            return {"status": "failed", "error": _error_file(out, slug).read_text(encoding="utf-8", errors="replace")}
        return None
    try:
        return read_metrics(out / slug)
    except UserError as err:
        return {"status": "failed", "error": str(err)}


def _removed(m: dict[str, Any]) -> float | None:
    """Fraction of the dense model's parameters removed, zeroed or physically: 1 - final non-zero / baseline params.

    (Against the baseline's dense count, not its non-zero count: an untrained baseline's zero
    biases would otherwise make a dense run look like it added parameters.)
    """
    base, final = (m.get("baseline") or {}).get("params"), (m.get("final") or {}).get("nonzero_params")
    if isinstance(base, (int, float)) and isinstance(final, (int, float)) and base > 0:
        return 1.0 - float(final) / float(base)
    value = (m.get("achieved") or {}).get("nonzero_params")
    return float(value) if isinstance(value, (int, float)) else None


def _top1(m: dict[str, Any] | None) -> float | None:
    if not m or m.get("status") != "complete":
        return None
    value = (m.get("final") or {}).get("top1")
    return float(value) if isinstance(value, (int, float)) else None


def _fmt(value: Any, fmt: str) -> str:
    return "-" if not isinstance(value, (int, float)) else format(value, fmt)


def study_table(record: dict[str, Any], results: dict[str, dict[str, Any] | None]) -> str:
    """Return the markdown table of every point: its labels, status and the final numbers."""
    from prunekit.report import human

    axes_ = list(record["points"][0]["labels"]) if record["points"] else []
    header = [*axes_, "status", "method", "target", "top-1 final (%)", "params removed", "params final",
              "non-zero params", "MACs final", "latency final / base (ms)", "wall (s)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([" --- "] * (len(axes_) + 3) + [" ---: "] * 7) + "|"]
    for p in record["points"]:
        m = results.get(p["slug"])
        labels = [p["labels"][a] for a in axes_]
        if m is None:
            lines.append("| " + " | ".join([*labels, "not run"] + ["-"] * 9) + " |")
            continue
        if m.get("status") != "complete":
            why = m.get("error") or f"stopped at stage {m.get('stage') or '?'}"
            status = f"**{m.get('status')}**: {' '.join(str(why).split())[:120]}".replace("|", "/")
            lines.append("| " + " | ".join([*labels, status, str(m.get("method")), str(m.get("target") or "-")] + ["-"] * 7) + " |")
            continue
        f = m.get("final") or {}
        b = m.get("baseline") or {}
        removed = _removed(m)
        lines.append("| " + " | ".join([
            *labels, "complete", str(m.get("method")), str(m.get("target") or "-"), _fmt(f.get("top1"), ".2f"),
            "-" if removed is None else f"{100 * removed:.1f}%", human(f.get("params")), human(f.get("nonzero_params")),
            human(f.get("macs")), f"{_fmt(f.get('latency_ms'), '.2f')} / {_fmt(b.get('latency_ms'), '.2f')}",
            _fmt((m.get("wall_time_s") or {}).get("total"), ".0f"),
        ]) + " |")
    return "\n".join(lines) + "\n"


def headline(record: dict[str, Any], results: dict[str, dict[str, Any] | None]) -> list[dict[str, Any]]:
    """Return one row per (panel, method): per arm the dense top-1 and the largest fraction of
    parameters removed with top-1 within `within` points of it, and the ratio between the arms.

    A row's `best[arm]` is None when no pruned level of that arm stays within; `ratio` is
    best[first arm] / best[second arm] when both are positive (first and second in grid order).
    """
    h = record.get("headline")
    if not h:
        return []
    arms_axis, panels_axis, dense, within = h["arms"], h.get("panels"), h["dense"], float(h.get("within", 1.0))
    points = record["points"]
    arms = list(dict.fromkeys(p["labels"][arms_axis] for p in points))
    panels = list(dict.fromkeys(p["labels"][panels_axis] for p in points)) if panels_axis else [None]
    rows = []
    for panel in panels:
        def group(arm: str) -> list[dict[str, Any]]:
            return [p for p in points if p["labels"][arms_axis] == arm and (panel is None or p["labels"][panels_axis] == panel)]

        refs = {}
        for arm in arms:
            ref = next((p for p in group(arm) if all(p["labels"][a] == v for a, v in dense.items())), None)
            refs[arm] = _top1(results.get(ref["slug"])) if ref else None
        methods = list(dict.fromkeys(
            str((results.get(p["slug"]) or {}).get("method")) for arm in arms for p in group(arm)
            if results.get(p["slug"]) and not all(p["labels"][a] == v for a, v in dense.items())))
        for method in methods:
            row: dict[str, Any] = {"panel": panel, "method": method, "dense_top1": refs, "best": {}, "levels": {}}
            for arm in arms:
                tried = []
                for p in group(arm):
                    m = results.get(p["slug"])
                    if not m or str(m.get("method")) != method or _top1(m) is None or _removed(m) is None:
                        continue
                    tried.append((_removed(m), _top1(m)))
                row["levels"][arm] = sorted(tried)
                ok = [r for r, t in tried if refs[arm] is not None and t >= refs[arm] - within]
                row["best"][arm] = max(ok) if ok else None
            first, second = (row["best"].get(a) for a in (arms + [None, None])[:2])
            row["ratio"] = first / second if first and second else None
            rows.append(row)
    return rows


def headline_markdown(record: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """Return the headline table as markdown (empty without a headline section)."""
    h = record.get("headline")
    if not h or not rows:
        return ""
    arms = list(dict.fromkeys(p["labels"][h["arms"]] for p in record["points"]))
    within = h.get("within", 1.0)
    header = [h.get("panels") or "", "method", *(f"{a}: dense top-1 (%)" for a in arms),
              *(f"{a}: params removed within {within:g} pt" for a in arms), f"ratio {arms[0]} / {arms[1]}" if len(arms) > 1 else "ratio"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([" --- "] * 2 + [" ---: "] * (len(header) - 2)) + "|"]
    for row in rows:
        best = []
        for a in arms:
            value, levels = row["best"].get(a), row["levels"].get(a) or []
            if row["dense_top1"].get(a) is None:
                best.append("no dense run")
            elif value is None:
                best.append("none of the levels tried" if levels else "no runs")
            else:
                best.append(f"{100 * value:.1f}%" + (" (the largest level tried)" if value == max(r for r, _ in levels) else ""))
        lines.append("| " + " | ".join([
            str(row["panel"] or "-"), row["method"], *(_fmt(row["dense_top1"].get(a), ".2f") for a in arms), *best,
            _fmt(row["ratio"], ".2f") if row["ratio"] is not None else "-",
        ]) + " |")
    note = (f"\n- params removed: 1 - final non-zero parameters / the dense model's parameters (zeroed by unstructured, "
            f"removed by structured methods), the largest among the levels tried whose final top-1 is at most {within:g} point(s) below "
            f"that arm's own dense model (the `{', '.join(f'{k}={v}' for k, v in h['dense'].items())}` run, same training).\n")
    return "\n".join(lines) + "\n" + note


def plot_arms(record: dict[str, Any], results: dict[str, dict[str, Any] | None], rows: list[dict[str, Any]]) -> dict[str, bytes]:
    """Return {panel: PNG}: final top-1 against parameters removed, one curve per arm and method."""
    h = record.get("headline")
    if not h or not rows:
        return {}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from prunekit.report import png_bytes

    arms = list(dict.fromkeys(p["labels"][h["arms"]] for p in record["points"]))
    colours = dict(zip(arms, ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"]))
    styles = ["-", "--", ":", "-."]
    out = {}
    for panel in dict.fromkeys(r["panel"] for r in rows):
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        drawn = False
        for j, row in enumerate(r for r in rows if r["panel"] == panel):
            for arm in arms:
                dense_top1 = row["dense_top1"].get(arm)
                pts = ([(0.0, dense_top1)] if dense_top1 is not None else []) + list(row["levels"].get(arm) or [])
                if not pts:
                    continue
                drawn = True
                ax.plot([100 * x for x, _ in pts], [y for _, y in pts], styles[j % len(styles)], marker="o", ms=4,
                        color=colours.get(arm), label=f"{arm}, {row['method']}")
                if j == 0 and dense_top1 is not None:
                    ax.axhline(dense_top1 - float(h.get("within", 1.0)), color=colours.get(arm), lw=0.8, alpha=0.5)
        if not drawn:
            plt.close(fig)
            continue
        ax.set(xlabel="parameters removed (%)", ylabel="final top-1 (%)",
               title=f"{panel}: accuracy vs parameters removed" if panel else "accuracy vs parameters removed")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        out[str(panel or "all")] = png_bytes(fig)
    return out


def _read_study(out: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any] | None]]:
    """Read a study directory's study.json and each point's metrics (None: not run yet)."""
    path = out / STUDY_FILE
    if not path.is_file():
        raise UserError(f"{out}: not a study directory (no {STUDY_FILE}; prunekit study writes it)")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        record["points"] = [{"slug": str(p["slug"]), "labels": dict(p["labels"])} for p in record["points"]]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"{path}: unreadable ({' '.join(str(err).split())[:200]})") from None
    return record, {p["slug"]: _read_point(out, p["slug"]) for p in record["points"]}


def study_markdown(out_dir: str | Path) -> dict[str, str]:
    """Return {"table", "headline"}: the markdown `render_study` would write for a study directory,
    read from its run directories without writing anything (a directory without study.json is a `UserError`)."""
    record, results = _read_study(Path(out_dir))
    return {"table": study_table(record, results), "headline": headline_markdown(record, headline(record, results))}


def render_study(out_dir: str | Path) -> dict[str, Any]:
    """Re-render `study.md` and the plots of a study directory from its run directories.

    Returns {"path", "table", "headline"}; a directory without study.json is a `UserError`.
    """
    from prunekit.io import atomic_write

    out = Path(out_dir)
    record, results = _read_study(out)
    table = study_table(record, results)
    rows = headline(record, results)
    head = headline_markdown(record, rows)
    done = sum(1 for m in results.values() if m and m.get("status") == "complete")
    parts = [f"# study `{record.get('name')}`\n",
             f"base recipe `{record.get('recipe')}`; {done}/{len(results)} runs complete. "
             f"Re-render with `prunekit report {out}`.\n"]
    for old in out.glob("accuracy_vs_params-*.png"):
        old.unlink()
    plots = plot_arms(record, results, rows)
    if head:
        parts += ["## Headline\n", head]
    for panel, png in plots.items():
        name = f"accuracy_vs_params-{_slug_part(panel)}.png"
        atomic_write(out / name, png)
        parts.append(f"![{panel}]({name})\n")
    parts += ["## Runs\n", table]
    png = plot_tradeoff([m for m in results.values() if m])
    if png is not None:
        atomic_write(out / "tradeoff.png", png)
        parts.append("![tradeoff](tradeoff.png)\n")
    text = "\n".join(parts)
    atomic_write(out / "study.md", text.encode("utf-8"))
    return {"path": out / "study.md", "table": table, "headline": head}


def plot_tradeoff(all_metrics: list[dict[str, Any]]) -> bytes | None:
    """Return a PNG of the final primary metric (top-1 % for classification) against final MACs per
    image, one series per method, or None."""
    from prunekit.report import primary_label, primary_metric, primary_value

    points: dict[str, list[tuple[float, float]]] = {}
    baselines = []
    for m in all_metrics:
        if m.get("status") != "complete":
            continue
        try:
            points.setdefault(str(m.get("method")), []).append((float(m["final"]["macs"]), float(primary_value(m["final"], m))))
            baselines.append((float(m["baseline"]["macs"]), float(primary_value(m["baseline"], m))))
        except (KeyError, TypeError, ValueError):
            continue
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from prunekit.report import png_bytes

    fig, ax = plt.subplots(figsize=(6, 4))
    for method, pts in sorted(points.items()):
        pts.sort()
        ax.plot([p[0] / 1e6 for p in pts], [p[1] for p in pts], marker="o", label=method)
    ax.scatter([b[0] / 1e6 for b in baselines], [b[1] for b in baselines], marker="*", s=90, color="black", label="baseline")
    primary = primary_metric(next(m for m in all_metrics if m.get("status") == "complete"))
    ax.set(xlabel="MACs per image (millions)", ylabel=f"final {primary_label(primary)}", title="accuracy vs MACs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return png_bytes(fig)
