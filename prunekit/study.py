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

The code is split by concern: `prunekit.study_spec` (the schema, the grid and `plan`), this module
(running the grid: sequentially or through `prunekit.study_ray`, locks, progress) and
`prunekit.study_render` (table, headline and plots from the run directories). Every public name
of the three is importable from `prunekit.study`.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from prunekit import preflight
from prunekit.errors import UserError
from prunekit.study_render import (  # noqa: F401  (re-exported: prunekit.study.<name>)
    STUDY_FILE,
    _error_file,
    _fmt,
    _read_point,
    _removed,
    _top1,
    headline,
    headline_markdown,
    plot_arms,
    plot_tradeoff,
    render_study,
    study_table,
)
from prunekit.study_spec import (  # noqa: F401  (re-exported: prunekit.study.<name>)
    HeadlineSpec,
    StudySpec,
    _check_headline,
    _slug_part,
    _yaml_value,
    axes,
    plan,
    validate_point,
)

LOCK_DIR = ".locks"  # <out>/.locks/<slug>.lock while a process runs that point


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
            if (seconds := _run_seconds(run_dir)) is not None:  # runs done before: the estimate starts from them
                timed.append(seconds)
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
            # a resumed run's own stage times, not just this process's share of it
            timed.append(_run_seconds(run_dir) or time.perf_counter() - start)
        finally:
            lock.unlink(missing_ok=True)
        for q in points:  # runs other study processes on this directory finished meanwhile
            if q["slug"] not in statuses and status_of(out / q["slug"]) == "complete":
                statuses[q["slug"]] = "complete"
                if (seconds := _run_seconds(out / q["slug"])) is not None:
                    timed.append(seconds)
        console.print(progress_line(spec.name, points, statuses, timed, workers=_workers(out)), soft_wrap=True)
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


def _run_seconds(run_dir: Path) -> float | None:
    """Return a complete run's total wall time from its metrics.json (seconds), or None."""
    from prunekit.report import read_metrics

    try:
        total = read_metrics(run_dir).get("wall_time_s", {}).get("total")
    except (UserError, AttributeError):
        return None
    return float(total) if isinstance(total, (int, float)) and total > 0 else None


def _workers(out: Path) -> int:
    """Return how many live study processes work on `out` now: this one plus every other live lock holder."""
    pids = {_lock_pid(lock) for lock in (out / LOCK_DIR).glob("*.lock")}
    return 1 + sum(1 for pid in pids if pid and pid != os.getpid() and _alive(pid))


def progress_line(name: str, points: list[dict[str, Any]], statuses: dict[str, str], timed: list[float],
                  *, workers: int = 1) -> str:
    """Return "study NAME: 7/36 runs done (1 failed), 29 left, about 2 h 10 min left at the measured
    270 s per run": the time left is the runs left x the mean run time (seconds) / `workers`."""
    done = sum(1 for s in statuses.values() if s == "complete")
    failed = sum(1 for s in statuses.values() if s.startswith("failed"))
    left = len(points) - len(statuses)
    text = f"study {name}: {done}/{len(points)} runs done" + (f" ({failed} failed)" if failed else "") + f", {left} left"
    if timed and left:
        average = sum(timed) / len(timed)
        text += f", about {_duration(average * left / max(1, workers))} left at the measured {average:.0f} s per run"
        if workers > 1:
            text += f" with {workers} study processes"
    return text
