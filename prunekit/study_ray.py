"""Study executors: run a grid's points one after another, or as Ray tasks on a local or existing cluster.

    spec, points = prunekit.study.plan("study.yaml")    # points: {"slug", "recipe", ...} (or (slug, recipe))
    run_one = point_runner(out_dir, device="cpu")       # run_one(point) -> "complete" | "unfinished" ...
    statuses = run_grid_ray(points, run_one=run_one, resources_per_run={"num_cpus": 1})

Both executors call the same `run_one(point) -> status` on every point and return
`{slug: status}` in grid order, exactly as the sequential study loop does (a point whose
`run_one` returns None, e.g. one another study process holds, is left out): a run that raises
(a `UserError` included: every point was validated before the grid started) is recorded as
`"failed: Type: message"` and the others go on; Ctrl-C stops the grid. `on_done(point, status,
seconds)` is called as each run finishes (the study's progress line). Run directories are
whatever `run_one` writes: with `point_runner` each point resumes in `<out>/<slug>` (complete
runs are kept), so a study interrupted on a cluster continues where it stopped, with either
executor.

Ray is an optional extra (`pip install 'prunekit[ray]'`); asking for the ray executor without it
fails with one line naming the extra.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from prunekit.errors import UserError, unknown_name

Point = Any  # a study point: {"slug": ..., "recipe": Recipe, ...} (prunekit.study.plan) or (slug, payload)
RunOne = Callable[[Point], "str | None"]
OnDone = Callable[[Point, str, float], None]  # (point, status, seconds the run took)

RAY_EXTRA = "pip install 'prunekit[ray]'"


def slug_of(point: Point) -> str:
    """The point's run name: point["slug"] for the study's dict points, point[0] for (slug, payload) pairs."""
    return str(point["slug"] if isinstance(point, Mapping) else point[0])


def failure(err: BaseException) -> str:
    """The status recorded for a run that raised (the sequential study's wording, on one line)."""
    return f"failed: {type(err).__name__}: {' '.join(str(err).split())}"


def _guarded(run_one: RunOne, point: Point) -> tuple[str | None, float]:
    """Run one point; return (status, seconds): an exception becomes a "failed: ..." status, nothing raises."""
    start = time.perf_counter()
    try:
        status = run_one(point)
        status = None if status is None else str(status)
    except Exception as err:  # recorded; the rest of the grid still runs
        status = failure(err)
    return status, time.perf_counter() - start


def run_grid_sequential(points: Sequence[Point], *, run_one: RunOne, on_done: OnDone | None = None) -> dict[str, str]:
    """Run every point in order in this process; return {slug: status} (the reference executor)."""
    statuses: dict[str, str] = {}
    for point in points:
        status, seconds = _guarded(run_one, point)
        if status is None:  # not run here
            continue
        statuses[slug_of(point)] = status
        if on_done is not None:
            on_done(point, status, seconds)
    return statuses


def require_ray() -> Any:
    """Return the `ray` module, or raise a one-line UserError naming the extra to install."""
    try:
        import ray
    except ImportError:
        raise UserError(f"the ray executor needs Ray, which is not installed: {RAY_EXTRA}") from None
    return ray


def default_resources(device: str | None) -> dict[str, float]:
    """One CPU per run, plus one GPU when the runs train on CUDA."""
    return {"num_cpus": 1, "num_gpus": 1} if device == "cuda" else {"num_cpus": 1}


def _check_fits(ray: Any, resources: Mapping[str, float]) -> None:
    have = ray.cluster_resources()
    for key, name in (("num_cpus", "CPU"), ("num_gpus", "GPU")):
        want = float(resources.get(key, 0) or 0)
        if want > float(have.get(name, 0)):
            raise UserError(f"each run asks for {want:g} {name} but the Ray cluster has {float(have.get(name, 0)):g}; "
                            f"start it with {name}s or run the study on another device")


def run_grid_ray(
    points: Sequence[Point],
    *,
    run_one: RunOne,
    resources_per_run: Mapping[str, float] | None = None,
    address: str | None = None,
    num_cpus: int | None = None,
    on_done: OnDone | None = None,
) -> dict[str, str]:
    """Run every point as one Ray task calling `run_one(point)`; return {slug: status} in grid order.

    `resources_per_run` are Ray task options (default one CPU: {"num_cpus": 1}; {"num_cpus": 1,
    "num_gpus": 1} for CUDA runs). `address` joins an existing cluster ("auto", "ray://host:10001");
    without it, an already initialised Ray is used, else a local instance with `num_cpus` CPUs
    (default: all) is started and shut down at the end. `run_one` and the points travel to the
    workers by pickle and the workers must import prunekit (the same environment on every node);
    paths inside them should be absolute or valid on the nodes. A worker that dies (out of
    memory, node lost) is recorded as that run's failure. An interrupt (Ctrl-C) cancels the runs
    not yet finished and is raised; their run directories resume next time.
    """
    ray = require_ray()
    resources = dict(resources_per_run or {"num_cpus": 1})
    started = False
    if not ray.is_initialized():
        if address is not None:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
        started = True
    pending: list[Any] = []
    try:
        _check_fits(ray, resources)
        task = ray.remote(max_retries=0)(_guarded).options(**resources)
        shared = ray.put(run_one)
        submitted = {}
        for point in points:
            submitted[task.remote(shared, point)] = point
        pending = list(submitted)
        results: dict[str, str] = {}
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            point = submitted[done[0]]
            try:
                status, seconds = ray.get(done[0])
            except Exception as err:  # the worker itself failed (crash, OOM kill, lost node)
                status, seconds = failure(err), float("nan")
            if status is None:  # not run here
                continue
            results[slug_of(point)] = status
            if on_done is not None:
                on_done(point, status, seconds)
        return {slug_of(p): results[slug_of(p)] for p in points if slug_of(p) in results}
    except BaseException:
        for ref in pending:  # leave nothing running on a shared cluster
            ray.cancel(ref, force=True)
        raise
    finally:
        if started:
            ray.shutdown()


EXECUTORS = ("sequential", "ray")


def executor(name: str, **options: Any) -> Callable[..., dict[str, str]]:
    """Return the executor called `name` ("sequential" or "ray") with `options` bound (ray: address, resources_per_run, num_cpus).

    Choosing "ray" without Ray installed raises the one-line UserError naming the extra, before anything runs.
    """
    if name == "sequential":
        if options:
            raise UserError(f"the sequential executor takes no options (got {', '.join(sorted(options))})")
        return run_grid_sequential
    if name == "ray":
        require_ray()
        return functools.partial(run_grid_ray, **options)
    raise unknown_name("executor", name, EXECUTORS)


# -- the adapter to prunekit.study: what one grid point runs --------------------------------------


def run_point(point: Point, *, out: str, device: str | None, progress: bool = False) -> str:
    """Run (or resume) one study point into `<out>/<slug>`; return its status.

    This is the body of `prunekit.study.run_study`'s loop, so both executors give the same
    resumable run directories: complete runs are kept, unfinished ones continue.
    """
    from prunekit.experiment import run_experiment

    recipe = point["recipe"] if isinstance(point, Mapping) else point[1]
    metrics = run_experiment(recipe, out_dir=Path(out) / slug_of(point), resume=True, device=device, progress=progress)
    return str(metrics["status"])


def point_runner(out: str | Path, *, device: str | None = None, progress: bool = False) -> RunOne:
    """Return a picklable `run_one` running study points into `out` (made absolute for remote workers)."""
    return functools.partial(run_point, out=str(Path(out).resolve()), device=device, progress=progress)
