"""Study executors: run a grid's points one after another, or as Ray tasks on a local or existing cluster.

    points = [(slug, recipe), ...]                      # what prunekit.study.plan returns
    run_one = point_runner(out_dir, device="cpu")       # run_one((slug, recipe)) -> "complete" | ...
    statuses = run_grid_ray(points, run_one=run_one, resources_per_run={"num_cpus": 1})

Both executors call the same `run_one(point) -> status` on every point and return
`{slug: status}` in grid order. A run that raises is recorded as `"failed: Type: message"` and
the others go on; a `UserError` (a mistake in the study, the same for every run) stops the
grid and is raised, as in the sequential loop. Run directories are whatever `run_one` writes:
with `point_runner` each point resumes in `<out>/<slug>` (complete runs are kept), so a study
interrupted on a cluster continues where it stopped, with either executor.

Ray is an optional extra (`pip install 'prunekit[ray]'`); asking for the ray executor without it
fails with one line naming the extra.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from prunekit.errors import UserError, unknown_name

Point = tuple[str, Any]  # (slug, whatever run_one needs: a validated Recipe for prunekit.study)
RunOne = Callable[[Point], str]
OnDone = Callable[[str, str, int, int], None]  # (slug, status, finished so far, total)

RAY_EXTRA = "pip install 'prunekit[ray]'"


def failure(err: BaseException) -> str:
    """The status recorded for a run that raised (the sequential study's wording)."""
    return f"failed: {type(err).__name__}: {err}"


def _guarded(run_one: RunOne, point: Point) -> tuple[str, str]:
    """Run one point; return ("ok", status), ("user_error", message) or ("failed", status): nothing raises."""
    try:
        return "ok", str(run_one(point))
    except UserError as err:
        return "user_error", str(err)
    except Exception as err:  # recorded; the rest of the grid still runs
        return "failed", failure(err)


def run_grid_sequential(points: Sequence[Point], *, run_one: RunOne, on_done: OnDone | None = None) -> dict[str, str]:
    """Run every point in order in this process; return {slug: status} (the reference executor)."""
    statuses: dict[str, str] = {}
    for i, point in enumerate(points):
        kind, status = _guarded(run_one, point)
        if kind == "user_error":
            raise UserError(status)
        statuses[point[0]] = status
        if on_done is not None:
            on_done(point[0], status, i + 1, len(points))
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
    memory, node lost) is recorded as that run's failure. A UserError from any run cancels the
    runs not yet finished and is raised.
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
    try:
        _check_fits(ray, resources)
        task = ray.remote(max_retries=0)(_guarded).options(**resources)
        shared = ray.put(run_one)
        refs = {task.remote(shared, point): point[0] for point in points}
        results: dict[str, str] = {}
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            slug = refs[done[0]]
            try:
                kind, status = ray.get(done[0])
            except Exception as err:  # the worker itself failed (crash, OOM kill, lost node)
                kind, status = "failed", failure(err)
            if kind == "user_error":
                for ref in pending:
                    ray.cancel(ref)
                raise UserError(status)
            results[slug] = status
            if on_done is not None:
                on_done(slug, status, len(results), len(points))
        return {slug: results[slug] for slug, _ in points}
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
    """Run (or resume) one study point `(slug, recipe)` into `<out>/<slug>`; return its status.

    This is the body of `prunekit.study.run_study`'s loop, so both executors give the same
    resumable run directories: complete runs are kept, unfinished ones continue.
    """
    from prunekit.experiment import run_experiment

    slug, recipe = point
    metrics = run_experiment(recipe, out_dir=Path(out) / slug, resume=True, device=device, progress=progress)
    return str(metrics["status"])


def point_runner(out: str | Path, *, device: str | None = None, progress: bool = False) -> RunOne:
    """Return a picklable `run_one` running study points into `out` (made absolute for remote workers)."""
    return functools.partial(run_point, out=str(Path(out).resolve()), device=device, progress=progress)
