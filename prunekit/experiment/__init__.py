"""One experiment, end to end: baseline -> method -> fine-tune -> evaluate, measure, time -> report.

    run_experiment(recipe, out_dir="runs/x")          # -> the content of metrics.json

The parts, one concern each:

- `context.RunContext`: built once from the recipe: task, method (and its stages), device, data,
  model builders, and the services (train, evaluate, scoring batches, `MethodContext`);
  it validates every name and option before the run directory is touched.
- `rundir.RunDir`: every file of the run directory, status and resume bookkeeping, stage state;
  the one writer, whose order keeps metrics.json's status truthful.
- `stages`: the list of stages (`baseline`, `method<i>`, `finetune<i>`, `final`), run here by
  one loop; a resumed run skips the completed ones and restores what they left.

A composite method (non-empty `Method.stages`, e.g. "double") contributes one method and one
fine-tune stage per stage method, and records each stage's figures under "stages".
SIGTERM and SIGHUP stop a run as Ctrl-C does: metrics.json says "failed" with the signal's name.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

import torch

from prunekit import distributed, preflight
from prunekit.train import TrainingDiverged
from prunekit._version import __version__
from prunekit.errors import UserError
from prunekit.experiment import results
from prunekit.experiment.context import RunContext
from prunekit.experiment.rundir import RUN_FILES, STATE_DIR, RunDir, now
from prunekit.experiment.stages import plan
from prunekit.recipe import Recipe

__all__ = ["RUN_FILES", "STATE_DIR", "Experiment", "RunContext", "RunDir", "RunInterrupted", "run_experiment"]


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by SIGTERM or SIGHUP (handled as Ctrl-C is: status "failed", with the signal)."""


def run_experiment(
    recipe: Recipe,
    *,
    out_dir: str | Path,
    resume: bool = False,
    device: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run `recipe` into `out_dir` and return its metrics (the content of metrics.json).

    `device` ("cpu"/"cuda") overrides `recipe.device`. `resume=True` continues an unfinished run
    in `out_dir` (skipping its completed stages); without it, a complete run there is a
    `UserError` and an unfinished one is started over. Exceptions propagate after metrics.json
    records status "failed".
    """
    return Experiment(recipe, out_dir=out_dir, resume=resume, device=device, progress=progress).run()


class Experiment:
    """A run: the context, the run directory and the stages, and the loop over them."""

    def __init__(self, recipe: Recipe, *, out_dir: str | Path, resume: bool = False, device: str | None = None,
                 progress: bool = True) -> None:
        self.resume = resume
        # Every mistake the recipe can hold is reported before the run directory is touched.
        self.ctx = RunContext(recipe, device=device, progress=progress)
        preflight.check_run(recipe, out_dir=Path(out_dir))  # model, data, files: before the run directory is touched
        self.console = self.ctx.console
        self.rundir = RunDir(out_dir, writer=self.ctx.dist.is_main)
        self.stages = plan(self.ctx)

    def run(self) -> dict[str, Any]:
        """Run (or resume) the experiment; return the content of metrics.json."""
        ctx, rd = self.ctx, self.rundir
        previous = self._inspect()
        if previous is not None and previous.get("status") == "complete":
            rd.refresh_report(previous)
            self.console.print(f"{rd.path}: already complete, nothing to resume")
            return previous
        threads_before = torch.get_num_threads()
        if ctx.recipe.threads:
            torch.set_num_threads(ctx.recipe.threads)
        try:
            with distributed.main_first():  # rank 0 first: a data cache is decoded once
                ctx.load_data()  # still nothing written: a data mistake leaves no run directory behind
            if previous is None:
                rd.start_over()
            rd.open(self._initial_metrics(previous), recipe_yaml=ctx.recipe.resolved_yaml())
            with _signals_as_interrupts():
                try:
                    self._loop()
                except TrainingDiverged as err:  # say exactly how to go on with other settings
                    err = TrainingDiverged(f"{err}; {self._restart_hint()}")
                    rd.fail(err)
                    raise err from None
                except BaseException as err:
                    rd.fail(err)
                    raise
            distributed.barrier()  # every rank returns once rank 0 has written the whole run directory
            return rd.metrics
        finally:
            torch.set_num_threads(threads_before)

    def _inspect(self) -> dict[str, Any] | None:
        """`RunDir.inspect` on rank 0; the other ranks get its answer (or raise its error) without touching the directory."""
        outcome: tuple[str, Any] = ("ok", None)
        if self.rundir.writer:
            try:
                outcome = ("ok", self.rundir.inspect(resume=self.resume, recipe=self.ctx.recipe.to_dict()))
            except UserError as err:
                outcome = ("error", str(err))
        kind, value = distributed.broadcast_object(outcome)
        if kind == "error":
            raise UserError(value)
        return value

    def _loop(self) -> None:
        ctx, rd = self.ctx, self.rundir
        ctx.method.setup(ctx.method_context(rd))
        model = None
        for n, stage in enumerate(self.stages, 1):
            if stage.resumable and rd.done(stage.name):
                model = stage.skip(self)
                continue
            rd.begin(stage.name)
            self.console.print(f"[bold cyan][{n}/{len(self.stages)}] {stage.name}[/]: {stage.describe(self)}")
            model = stage.run(self, model)

    def _restart_hint(self) -> str:
        stage = str(self.rundir.metrics.get("stage") or "")
        field = {"baseline": "baseline.train", "method": "method.train", "finetune": "finetune"}.get(stage.rstrip("0123456789"), "finetune")
        out = self.rundir.path
        return (f"to go on with other settings, resume with them: prunekit run {out / 'recipe.yaml'} --out {out} --resume "
                f"--set {field}.lr=LOWER (or {field}.grad_clip=1.0); the completed stages are kept and {stage or 'this stage'} "
                "restarts from its start, the change recorded in metrics.json under resume_changes")

    def _initial_metrics(self, previous: dict[str, Any] | None) -> dict[str, Any]:
        ctx, r = self.ctx, self.ctx.recipe
        metrics: dict[str, Any] = {
            "status": "running",
            "stage": None,
            "error": None,
            "prunekit_version": __version__,
            "recipe": r.name,
            "recipe_file": r.source,
            "method": r.method.name,
            "method_kind": ctx.method.kind,
            "target": r.method.target,
            "dataset": r.data.name,
            "model": r.model.name,
            "task": results.task_record(ctx.task),
            "seed": r.seed,
            "device": ctx.device,
            "threads": torch.get_num_threads(),
            "started_at": now(),
            "completed_stages": [],
            "wall_time_s": {},
            "report": {"plots": r.report.plots},
        }
        if previous is not None:
            for key in ("completed_stages", "wall_time_s", "baseline", "stages", "started_at", "resume_changes"):
                if key in previous:
                    metrics[key] = previous[key]
            metrics["resumed_at"] = [*previous.get("resumed_at", []), now()]
        return metrics


class _signals_as_interrupts:
    """While active (main thread only), SIGTERM and SIGHUP raise `RunInterrupted` as SIGINT raises
    KeyboardInterrupt, so a terminated run records why it stopped."""

    SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))

    def __enter__(self) -> None:
        self.saved: dict[int, Any] = {}
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in self.SIGNALS:
            self.saved[sig] = signal.signal(sig, self._raise)

    @staticmethod
    def _raise(signum: int, _frame: Any) -> None:
        raise RunInterrupted(f"interrupted by {signal.Signals(signum).name}")

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)
