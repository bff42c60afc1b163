"""A study: one base recipe run over a grid of overrides, resumably, into one table and plots.

    name: l1-vs-random
    recipe: recipes/quickstart.yaml     # the base recipe (relative to the working directory)
    set: [finetune.epochs=1]            # overrides every run shares
    grid:                               # every combination is one run
      method.name: [l1_filter, random]  # a field axis: dotted field -> values
      seed: [0, 1]
      init:                             # a named axis: label -> the overrides of that value
        imagenet: [model.weights=imagenet]
        scratch: {model.weights: null}
    headline:                           # optional: compare arms (see docs/pretrained-vs-scratch.md)
      arms: init                        # the axis whose values are compared (one curve each)
      panels: data.name                 # one plot per value of this axis
      dense: {prune: dense}             # which value of the other axes is each arm's dense model
      within: 1.0                       # top-1 points below the arm's dense model still counted

`run_study` validates every grid point's recipe first, names, options and files included (a
mistake in any point is one line naming the point and the field, before anything is written),
writes `<out>/study.json` (the points and their labels), then runs each point into `<out>/<slug>`:
complete runs are skipped, unfinished ones resumed (`--resume` semantics), a run that fails is
recorded and the others still run. After every run a progress line gives the runs done and the
time left at the measured average. Several study processes may share one output directory (one
per core): each point is claimed with a lock file (`<out>/.locks/<slug>.lock`, pid inside; a lock
of a dead process is taken over), so they split the grid between them. `render_study(out)` (also `prunekit report STUDY_DIR`) rebuilds
`study.md`, `tradeoff.png` and, with a headline, `accuracy_vs_params-<panel>.png` from the run
directories alone.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from prunekit import preflight
from prunekit.errors import UserError
from prunekit.recipe import Recipe, format_validation_error, load_recipe, read_yaml_mapping

STUDY_FILE = "study.json"
LOCK_DIR = ".locks"  # <out>/.locks/<slug>.lock while a process runs that point


class HeadlineSpec(BaseModel):
    """Which axis holds the arms compared, which one the plot panels, and each arm's dense point."""

    model_config = ConfigDict(extra="forbid")

    arms: str = Field(..., description="the grid axis whose values are compared (one curve per value)")
    panels: str | None = Field(None, description="one plot (and headline) per value of this axis")
    dense: dict[str, str] = Field(..., description="axis -> label of the point that is each arm's dense model")
    within: float = Field(1.0, ge=0, description="top-1 points below the arm's dense model that still count")


class StudySpec(BaseModel):
    """The study file's schema."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., description="names the default output directory runs/<name>")
    recipe: str = Field(..., description="the base recipe file")
    set: list[str] = Field(default_factory=list, description="KEY=VALUE overrides every run shares")
    grid: dict[str, list[Any] | dict[str, list[str] | dict[str, Any]]] = Field(
        ..., description="dotted field -> values, or axis name -> {label: overrides}; every combination is one run")
    headline: HeadlineSpec | None = None

    @field_validator("grid")
    @classmethod
    def _grid(cls, value: dict[str, Any]) -> dict[str, Any]:
        if not value:
            raise ValueError("give at least one field and its values, e.g. {method.target: [macs=0.3, macs=0.5]}")
        empty = [k for k, v in value.items() if not v]
        if empty:
            raise ValueError(f"{empty[0]} has no values")
        return value


def _yaml_value(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text[: -len("...")].strip() if text.endswith("...") else text


def _slug_part(value: Any) -> str:
    return re.sub(r"[^A-Za-z0-9._]+", "", str(value)) or "x"


def axes(spec: StudySpec) -> dict[str, list[tuple[str, list[str]]]]:
    """Return {axis: [(label, overrides), ...]} for every grid axis, in file order."""
    out: dict[str, list[tuple[str, list[str]]]] = {}
    for key, values in spec.grid.items():
        if isinstance(values, dict):  # a named axis: label -> overrides (KEY=VALUE strings or a mapping)
            out[key] = [(str(label), list(o) if isinstance(o, list) else [f"{f}={_yaml_value(v)}" for f, v in o.items()])
                        for label, o in values.items()]
        else:
            out[key] = [(str(v), [f"{key}={_yaml_value(v)}"]) for v in values]
    return out


def _check_headline(spec: StudySpec, grid: dict[str, list[tuple[str, list[str]]]], source: str) -> None:
    h = spec.headline
    if h is None:
        return
    for field, axis in (("headline.arms", h.arms), ("headline.panels", h.panels), *((f"headline.dense.{a}", a) for a in h.dense)):
        if axis is not None and axis not in grid:
            raise UserError(f"{source}: {field}: {axis!r} is not a grid axis (axes: {', '.join(grid)})")
    for axis, label in h.dense.items():
        if label not in [lab for lab, _ in grid[axis]]:
            raise UserError(f"{source}: headline.dense.{axis}: {label!r} is not one of its values ({', '.join(lab for lab, _ in grid[axis])})")
    if h.arms in h.dense or (h.panels is not None and h.panels in h.dense):
        raise UserError(f"{source}: headline.dense: name the axes other than arms and panels")


def validate_point(recipe: Recipe, *, device: str | None = None) -> None:
    """Raise the `UserError` that `run_experiment(recipe)` would raise before writing anything.

    Names of the method, dataset and model, method options, the dataset's own options, weight and
    checkpoint files, the device and composite-method stage epochs.
    """
    from prunekit import data
    from prunekit.experiment.context import RunContext  # the experiment's own checks, without a run directory

    RunContext(recipe, device=device, progress=False)
    spec = data.dataset_spec(recipe.data.name)
    allowed = {*spec.options, *data.COMMON_OPTIONS, "mean", "std", "pad", "flip"}
    unknown = sorted(set(recipe.data.options) - allowed)
    if unknown:
        raise recipe.field_error("data.options", f"dataset {recipe.data.name!r} has no option(s) {', '.join(unknown)} (its options: {', '.join(sorted(allowed))})")


def plan(spec_path: str | Path, *, extra: list[str] | tuple[str, ...] = (), device: str | None = None,
         check: bool = True) -> tuple[StudySpec, list[dict[str, Any]]]:
    """Return the study spec and its points in grid order, every point's recipe validated.

    A point is {"index", "slug", "labels": {axis: label}, "recipe": Recipe}. `extra` overrides
    go last. With `check`, `validate_point` runs on every point (names, options, files).
    """
    spec_path = Path(spec_path)
    data = read_yaml_mapping(spec_path, what="study")
    try:
        spec = StudySpec.model_validate(data)
    except ValidationError as err:
        raise UserError(format_validation_error(err, source=spec_path.name, root=StudySpec)) from None
    grid = axes(spec)
    _check_headline(spec, grid, spec_path.name)
    points = []
    combos = list(itertools.product(*grid.values()))
    for i, combo in enumerate(combos):
        labels = {axis: label for axis, (label, _) in zip(grid, combo)}
        slug = "-".join(_slug_part(label) for label in labels.values())[:120]
        overrides = [*spec.set, *(o for _, values in combo for o in values)]
        where = f"{spec_path.name}: grid point {i + 1}/{len(combos)} ({', '.join(f'{a}={v}' for a, v in labels.items())})"
        try:
            recipe = load_recipe(spec.recipe, overrides=[*overrides, f"name={spec.name}-{slug}", *extra])
            if check:
                validate_point(recipe, device=device)
        except UserError as err:
            raise UserError(f"{where}: {err}") from None
        points.append({"index": i, "slug": slug, "labels": labels, "recipe": recipe})
    slugs = [p["slug"] for p in points]
    if len(set(slugs)) != len(slugs):
        raise UserError(f"{spec_path.name}: grid: two combinations give the same run name; make the values distinguishable")
    return spec, points


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h} h {rest // 60:02d} min" if h else f"{rest // 60} min {rest % 60:02d} s"


def run_study(spec_path: str | Path, *, out_dir: str | Path | None = None, device: str | None = None,
              overrides: list[str] | tuple[str, ...] = (), progress: bool = True,
              executor: str = "sequential", executor_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run every point of the study at `spec_path`; return {"out", "runs": {slug: status}, "table", "headline"}.

    `overrides` are applied to every run after the study's own. Complete runs are skipped,
    unfinished ones resumed; a failed run does not stop the others (an interrupt does).
    `executor="ray"` runs the points not complete as Ray tasks (`executor_options`: address,
    num_cpus, resources_per_run; see `prunekit.study_ray`) into the same run directories.
    """
    from rich.console import Console

    from prunekit import study_ray
    from prunekit.experiment import run_experiment
    from prunekit.io import atomic_write
    from prunekit.report import read_metrics

    run_grid = study_ray.executor(executor, **(executor_options or {}))  # no Ray: one line, before anything is written
    spec, points = plan(spec_path, extra=overrides, device=device)
    out = Path(out_dir) if out_dir else Path("runs") / spec.name
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory")
    for p in points:  # every grid point is checked before the first one runs (prunekit.preflight)
        preflight.check_run(p["recipe"], out_dir=out / p["slug"])
    console = Console(highlight=False, quiet=not progress)
    out.mkdir(parents=True, exist_ok=True)
    record = {"name": spec.name, "study_file": str(spec_path), "recipe": spec.recipe, "set": spec.set, "overrides": list(overrides),
              "grid": spec.grid, "headline": spec.headline.model_dump() if spec.headline else None,
              "points": [{"slug": p["slug"], "labels": p["labels"]} for p in points]}
    atomic_write(out / STUDY_FILE, json.dumps(record, indent=2, default=str).encode("utf-8"))

    def status_of(run_dir: Path) -> str | None:
        try:
            return read_metrics(run_dir).get("status") if (run_dir / "metrics.json").exists() else None
        except UserError:
            return None

    statuses: dict[str, str] = {}
    timed: list[float] = []
    if executor != "sequential":
        held: dict[str, Path] = {}
        for p in points:
            if status_of(out / p["slug"]) == "complete":
                statuses[p["slug"]] = "complete"
                continue
            lock = out / LOCK_DIR / f"{p['slug']}.lock"
            if _claim(lock):  # the driver holds every point it submits, so other study processes skip them
                held[p["slug"]] = lock
            else:
                console.print(f"study {spec.name}: {p['slug']} is being run by process {_lock_pid(lock)}; skipped")

        def on_done(p: dict[str, Any], status: str, seconds: float) -> None:
            statuses[p["slug"]] = status
            held.pop(p["slug"]).unlink(missing_ok=True)
            if seconds == seconds:  # NaN when the worker died
                timed.append(seconds)
            if status.startswith("failed"):
                if not (out / p["slug"] / "metrics.json").exists():  # refused before its run directory was written
                    _error_file(out, p["slug"]).parent.mkdir(parents=True, exist_ok=True)
                    atomic_write(_error_file(out, p["slug"]), status.encode("utf-8"))
                console.print(f"[bold red]study {spec.name}: {p['slug']} failed[/]: {status}")
            else:
                _error_file(out, p["slug"]).unlink(missing_ok=True)
            console.print(progress_line(spec.name, points, statuses, timed), soft_wrap=True)

        todo = [p for p in points if p["slug"] in held]
        options = dict(executor_options or {})
        kwargs = {} if "resources_per_run" in options else {
            "resources_per_run": study_ray.default_resources(device or (todo[0]["recipe"].device if todo else None))}
        try:
            if todo:
                run_grid(todo, run_one=study_ray.point_runner(out, device=device), on_done=on_done, **kwargs)
        except KeyboardInterrupt:
            render_study(out)
            raise
        finally:
            for lock in held.values():
                lock.unlink(missing_ok=True)
        statuses = {p["slug"]: statuses[p["slug"]] for p in points if p["slug"] in statuses}
    for p in points if executor == "sequential" else []:
        run_dir = out / p["slug"]
        if status_of(run_dir) == "complete":
            statuses[p["slug"]] = "complete"
            continue
        lock = out / LOCK_DIR / f"{p['slug']}.lock"
        if not _claim(lock):  # another `prunekit study` process on this directory runs it now
            console.print(f"study {spec.name}: {p['slug']} is being run by process {_lock_pid(lock)}; skipped")
            continue
        try:
            if status_of(run_dir) == "complete":  # finished by another worker meanwhile
                statuses[p["slug"]] = "complete"
                continue
            console.print(f"[bold magenta]study {spec.name}: run {p['index'] + 1}/{len(points)} {p['slug']}[/]")
            start = time.perf_counter()
            try:
                metrics = run_experiment(p["recipe"], out_dir=run_dir, resume=True, device=device, progress=progress)
                statuses[p["slug"]] = metrics["status"]
                _error_file(out, p["slug"]).unlink(missing_ok=True)
            except KeyboardInterrupt:
                lock.unlink(missing_ok=True)
                render_study(out)
                raise
            except Exception as err:  # recorded in that run's metrics.json; the rest of the grid still runs
                statuses[p["slug"]] = f"failed: {type(err).__name__}: {' '.join(str(err).split())}"
                if not (run_dir / "metrics.json").exists():  # refused before its run directory was written
                    _error_file(out, p["slug"]).parent.mkdir(parents=True, exist_ok=True)
                    atomic_write(_error_file(out, p["slug"]), statuses[p["slug"]].encode("utf-8"))
                console.print(f"[bold red]study {spec.name}: {p['slug']} failed[/]: {statuses[p['slug']]}")
            timed.append(time.perf_counter() - start)
        finally:
            lock.unlink(missing_ok=True)
        console.print(progress_line(spec.name, points, statuses, timed), soft_wrap=True)
    try:
        (out / LOCK_DIR).rmdir()  # only when empty: no other worker holds a point
    except OSError:
        pass
    rendered = render_study(out)
    return {"out": str(out), "runs": statuses, "table": rendered["table"], "headline": rendered["headline"]}


def _lock_pid(lock: Path) -> int:
    try:
        return int(lock.read_text(encoding="utf-8").strip() or 0)
    except (OSError, ValueError):
        return 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _claim(lock: Path, *, retry: bool = True) -> bool:
    """Take the run's lock file (O_EXCL, holding our pid); False when a live process holds it.

    A lock left by a process that is gone (killed) is taken over. Best effort, for several study
    processes sharing one directory on one machine (e.g. one per core).
    """
    lock.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        pid = _lock_pid(lock)
        if pid and pid != os.getpid() and _alive(pid):
            return False
        if not retry:
            return False
        lock.unlink(missing_ok=True)  # stale: its process is gone
        return _claim(lock, retry=False)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(str(os.getpid()))
    return True


def progress_line(name: str, points: list[dict[str, Any]], statuses: dict[str, str], timed: list[float]) -> str:
    """Return "study NAME: 7/36 runs done (1 failed), 29 left, ~2 h 10 min left at 270 s per run"."""
    done = sum(1 for s in statuses.values() if s == "complete")
    failed = sum(1 for s in statuses.values() if s.startswith("failed"))
    left = len(points) - len(statuses)
    text = f"study {name}: {done}/{len(points)} runs done" + (f" ({failed} failed)" if failed else "") + f", {left} left"
    if timed and left:
        average = sum(timed) / len(timed)
        text += f", about {_duration(average * left)} left at the measured {average:.0f} s per run"
    return text


# -- rendering from the run directories --------------------------------------------------------


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


def render_study(out_dir: str | Path) -> dict[str, Any]:
    """Re-render `study.md` and the plots of a study directory from its run directories.

    Returns {"path", "table", "headline"}; a directory without study.json is a `UserError`.
    """
    from prunekit.io import atomic_write

    out = Path(out_dir)
    path = out / STUDY_FILE
    if not path.is_file():
        raise UserError(f"{out}: not a study directory (no {STUDY_FILE}; prunekit study writes it)")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        record["points"] = [{"slug": str(p["slug"]), "labels": dict(p["labels"])} for p in record["points"]]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"{path}: unreadable ({' '.join(str(err).split())[:200]})") from None
    results = {p["slug"]: _read_point(out, p["slug"]) for p in record["points"]}
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
