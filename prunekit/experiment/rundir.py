"""The run directory: every file a run writes, written by this one object in an order that keeps
its status truthful.

    recipe.yaml     the resolved recipe
    metrics.json    status ("running" -> "complete" | "failed"), numbers, completed stages
    log.jsonl       the trainer's epoch lines and the run's stage and message lines
    report.md, *.png, model.pt
    state/          per completed stage: <stage>.pt (+ _masks.pt) the model, <stage>_stream.pt the
                    training data stream position and RNG, <stage>_method_state.pt and
                    <stage>_info.json the method's state and info; <stage>.ckpt trainer checkpoints

Order of writes: metrics.json ("running") comes first and is rewritten at every stage boundary;
a stage is listed as completed only after all of its state files are on disk; at the end the
plots and model.pt are written, then metrics.json says "complete", and only then report.md is
rendered from it (a report never says complete before metrics.json does; a complete run whose
report.md is missing or older is re-rendered on the next `--resume`). Every write is atomic
(`prunekit.atomic`); temporary files left by a kill are removed when the directory is opened,
and a directory holding only such files counts as empty.
"""

from __future__ import annotations

import json
import os
import math
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from prunekit import distributed, io, masks
from prunekit import report as report_mod
from prunekit.atomic import atomic_torch_save, atomic_write_json, atomic_write_text, clean_temp_files
from prunekit.errors import UserError

STATE_DIR = "state"
RUN_FILES = ("recipe.yaml", report_mod.METRICS_FILE, report_mod.LOG_FILE, report_mod.REPORT_FILE, "model.pt")


def now() -> str:
    """Return the current UTC time as ISO 8601 text (seconds)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def finite(obj: Any) -> Any:
    """Return `obj` with NaN and infinities replaced by None (metrics.json stays standard JSON)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def plain(obj: Any) -> Any:
    """Return `obj` as JSON-ready plain data (tensors as numbers, paths as text, NaN as None)."""
    return finite(json.loads(json.dumps(obj, default=report_mod.jsonable)))


#: recipe prefix of the training settings of each kind of stage (what --resume may change while it is unfinished)
_TRAIN_PREFIXES = {"baseline.train.": "baseline", "method.train.": "method", "finetune.": "finetune"}


def all_differences(a: Any, b: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    """Return (dotted path, old, new) for every leaf where two plain-data trees differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for key in [*a, *(k for k in b if k not in a)]
                for d in all_differences(a.get(key), b.get(key), f"{path}.{key}" if path else str(key))]
    return [] if a == b else [(path, a, b)]


def _stage_of(path: str) -> str:
    return next(kind for prefix, kind in _TRAIN_PREFIXES.items() if path.startswith(prefix))


def _retrainable(path: str, completed: list[str]) -> bool:
    # a training setting of a kind of stage none of whose stages completed (e.g. a diverged fine-tune)
    kind = next((k for prefix, k in _TRAIN_PREFIXES.items() if path.startswith(prefix)), None)
    return kind is not None and not any(stage.rstrip("0123456789") == kind for stage in completed)


def first_difference(a: Any, b: Any, path: str = "") -> str | None:
    """Return the dotted path of the first difference between two plain-data trees, or None."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in [*a, *(k for k in b if k not in a)]:
            found = first_difference(a.get(key), b.get(key), f"{path}.{key}" if path else str(key))
            if found:
                return found
        return None
    return None if a == b else (path or "(top level)")


class RunDir:
    """One run directory: its paths, its metrics (the content of metrics.json) and every write."""

    def __init__(self, path: str | Path, *, writer: bool = True) -> None:
        self.path = Path(path)
        self.writer = writer  # False on the ranks > 0 of a data-parallel run: they read, rank 0 writes
        self.state = self.path / STATE_DIR
        self.metrics: dict[str, Any] = {}
        #: kinds of stage ("baseline", "method", "finetune") whose training settings changed on resume
        self.discard_checkpoints: list[str] = []

    # opening ------------------------------------------------------------------------------------
    def inspect(self, *, resume: bool, recipe: dict[str, Any]) -> dict[str, Any] | None:
        """Return the previous metrics when `resume` continues a run here, else None; raise
        `UserError` when the directory cannot hold this run. Changes nothing on disk but
        removing temporary files a killed write left behind."""
        out = self.path
        if out.exists() and not out.is_dir():
            raise UserError(f"--out {out}: exists and is not a directory")
        if self.writer:
            clean_temp_files(out)
            clean_temp_files(self.state)
        metrics_path = out / report_mod.METRICS_FILE
        if not metrics_path.exists():
            if out.exists() and any(p.name not in (*RUN_FILES, STATE_DIR) and p.suffix != ".png" for p in out.iterdir()):
                raise UserError(f"--out {out}: not empty and not a prunekit run directory; choose another --out")
            return None
        previous = report_mod.read_metrics(out)
        if not resume:
            if previous.get("status") == "complete":
                raise UserError(f"{out} holds a complete run; pass --resume to keep it or --out NEW_DIR for a new run")
            return None
        stored = out / "recipe.yaml"
        if stored.exists():
            try:
                old = yaml.safe_load(stored.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, yaml.YAMLError):
                raise UserError(f"{stored}: unreadable; start the run afresh without --resume or use --out NEW_DIR") from None
            if isinstance(old, dict) and "task" not in old:  # written before recipes had a task section
                old["task"] = {"name": "classification", "options": {}}
            changes = all_differences(old, recipe)
            done = list(previous.get("completed_stages") or [])
            refused = [path for path, _, _ in changes if not _retrainable(path, done)]
            if refused:
                raise UserError(f"{out}: --resume with a different recipe ({refused[0]} differs from {stored}); "
                                "only the training settings of a stage not yet completed may change on resume "
                                "(completed: " + (", ".join(done) or "none") + "); use --out NEW_DIR")
            if changes:  # the unfinished stage restarts from its start with the new settings, recorded
                self.discard_checkpoints = sorted({_stage_of(path) for path, _, _ in changes})
                previous.setdefault("resume_changes", []).extend(
                    {"field": path, "from": a, "to": b, "at": now()} for path, a, b in changes)
        return previous

    def start_over(self) -> None:
        """Remove what an unfinished earlier run left (run files, plots, state/)."""
        if not self.writer:
            return
        for path in [*(self.path / name for name in RUN_FILES), *self.path.glob("*.png")]:
            path.unlink(missing_ok=True)
        shutil.rmtree(self.state, ignore_errors=True)

    def open(self, metrics: dict[str, Any], *, recipe_yaml: str) -> None:
        """Start writing: metrics.json ("running") first, then the resolved recipe."""
        self.metrics = metrics
        if not self.writer:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        for kind in self.discard_checkpoints:  # its settings changed: the unfinished stage restarts from its start
            for ckpt in self.state.glob(f"{kind}*.ckpt"):
                ckpt.unlink()
        self.write_metrics()
        atomic_write_text(self.path / "recipe.yaml", recipe_yaml)
        if self.discard_checkpoints:
            self.log({"event": "resume_changes", "changes": self.metrics.get("resume_changes", [])[-20:]})

    # metrics.json and log.jsonl -----------------------------------------------------------------
    def write_metrics(self) -> None:
        """Rewrite metrics.json from `self.metrics` (atomically)."""
        if not self.writer:
            return
        atomic_write_json(self.path / report_mod.METRICS_FILE, plain(self.metrics))

    def log(self, row: dict[str, Any]) -> None:
        """Append one JSON line to log.jsonl (a torn last line, from a kill, is skipped by readers)."""
        if not self.writer:
            return
        path = self.path / report_mod.LOG_FILE
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps({"time": now(), **row}, default=report_mod.jsonable) + "\n")
        except OSError as err:  # a full disk: one line naming the file, as for every other write
            from prunekit.safe_load import write_error

            raise (write_error(err, os.fspath(path)) or err) from None

    @property
    def log_path(self) -> Path:
        return self.path / report_mod.LOG_FILE

    # stages --------------------------------------------------------------------------------------
    def done(self, stage: str) -> bool:
        """Return True when `stage` completed in this run or the one resumed."""
        return stage in self.metrics["completed_stages"]

    def begin(self, stage: str) -> None:
        """Record that `stage` is running (metrics.json)."""
        self.metrics["stage"] = stage
        self.write_metrics()

    def complete(self, stage: str, **record: Any) -> None:
        """List `stage` as completed (its state files are already written) and log it."""
        self.metrics["completed_stages"].append(stage)
        self.write_metrics()
        self.log({"event": "stage", "stage": stage, "status": "done", **record})

    def add_wall(self, key: str, seconds: float) -> None:
        wall = self.metrics["wall_time_s"]
        wall[key] = round(wall.get(key, 0.0) + seconds, 3)

    def checkpoint(self, stage: str) -> Path:
        """Return the trainer checkpoint path of `stage`."""
        return self.state / f"{stage}.ckpt"

    def save_stage(self, stage: str, model: nn.Module, *, stream: dict[str, Any] | None = None,
                   methods: list[Any] = ()) -> None:
        """Write the state of a finished `stage`: the model (masks kept apart so a resumed fine-tune
        still holds pruned weights at zero), the data stream position and RNG, and for each of
        `methods` its state_dict and info. In a data-parallel run rank 0 writes and every rank waits
        until it has (the others read these files on resume and in the final stage)."""
        if self.writer:
            atomic_torch_save(masks.get_masks(model), self.state / f"{stage}_masks.pt")
            io.save(model, self.state / f"{stage}.pt")
            if stream is not None:
                atomic_torch_save(stream, self.state / f"{stage}_stream.pt")
            if methods:
                atomic_torch_save([m.state_dict() for m in methods], self.state / f"{stage}_method_state.pt")
                atomic_write_json(self.state / f"{stage}_info.json", plain([m.info for m in methods]))
        distributed.barrier()

    def load_model(self, stage: str, device: str | torch.device) -> nn.Module:
        """Return the model a completed `stage` saved, masks re-applied, on `device`."""
        model = io.load(self.state / f"{stage}.pt")
        saved = self._torch_file(self.state / f"{stage}_masks.pt")
        if saved:
            masks.apply_masks(model, saved)
        return model.to(device)

    def load_stream(self, stage: str) -> dict[str, Any] | None:
        """Return the data stream position and RNG saved with `stage` (None for runs made before it was saved)."""
        path = self.state / f"{stage}_stream.pt"
        return self._torch_file(path) if path.exists() else None

    def load_methods(self, stage: str, methods: list[Any]) -> None:
        """Restore each of `methods`' state and info as saved with `stage`."""
        path = self.state / f"{stage}_method_state.pt"
        if path.exists():
            states = self._torch_file(path)
            if not isinstance(states, list) or len(states) != len(methods):  # the single-dict layout of older runs
                states = [states] if len(methods) == 1 else []
            for method, state in zip(methods, states):
                method.load_state_dict(state)
        info_path = self.state / f"{stage}_info.json"
        if info_path.exists():
            try:
                infos = json.loads(info_path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                raise self._damaged(info_path) from None
            for method, info in zip(methods, infos if isinstance(infos, list) else []):
                if isinstance(info, dict):
                    method.info = info

    def _torch_file(self, path: Path) -> Any:
        from prunekit import safe_load

        try:
            return safe_load.read_torch_file(path, what="a state file written by prunekit run")
        except UserError as err:  # its own line says what is wrong with the file; add what to do
            raise UserError(f"{err}; rerun without --resume (starts over) or use --out NEW_DIR") from None
        except Exception:
            raise self._damaged(path) from None

    def _damaged(self, path: Path) -> UserError:
        return UserError(f"{path}: damaged or not written by prunekit; rerun without --resume (starts over) or use --out NEW_DIR")

    # the end -------------------------------------------------------------------------------------
    def finish(self, model: nn.Module, *, plots: bool) -> None:
        """Write the plots and model.pt, then metrics.json with status "complete", then report.md."""
        names = report_mod.write_plots(self.path, self.metrics) if plots and self.writer else []
        if self.writer:
            io.save(model, self.path / "model.pt")
        self.metrics.update(status="complete", stage=None, finished_at=now())
        self.metrics["completed_stages"].append("final")
        self.write_metrics()
        if self.writer:
            report_mod.write_markdown(self.path, self.metrics, plots=names)

    def refresh_report(self, metrics: dict[str, Any]) -> None:
        """Re-render report.md of a complete run when it is missing or older than metrics.json."""
        if not self.writer:
            return
        report = self.path / report_mod.REPORT_FILE
        metrics_file = self.path / report_mod.METRICS_FILE
        if not report.exists() or report.stat().st_mtime < metrics_file.stat().st_mtime:
            report_mod.write_report(self.path, metrics, plots=bool((metrics.get("report") or {}).get("plots", True)))

    def fail(self, err: BaseException) -> None:
        """Record `err` in metrics.json (status "failed") and the log."""
        if isinstance(err, KeyboardInterrupt):
            message = str(err) or "interrupted"
        else:
            message = f"{type(err).__name__}: {' '.join(str(err).split())}"
        self.metrics["status"] = "failed"
        self.metrics["error"] = message
        self.write_metrics()
        self.log({"event": "failed", "stage": self.metrics.get("stage"), "error": message})
