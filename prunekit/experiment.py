"""One experiment, end to end: baseline -> method -> fine-tune -> evaluate, measure, time -> report.

The run directory is the record of the run:

    recipe.yaml     the resolved recipe (defaults, file, overrides; absolute paths)
    metrics.json    status ("running" -> "complete" | "failed"), baseline/final numbers, target vs achieved
    log.jsonl       the trainer's epoch lines and this module's stage lines
    report.md, *.png, model.pt (prunekit.save format)
    state/          stage outputs and trainer checkpoints, for --resume

metrics.json is written with status "running" before any work and rewritten after every stage;
only the very last write says "complete", so an interrupted run never looks finished, and an
exception leaves status "failed" with its message. `resume=True` skips the stages listed as
completed (their outputs are in state/) and resumes the trainer from its last checkpoint.

A composite method (one with a non-empty `stages` list, e.g. "double") runs, per stage in order:
at_init -> train with the stage's hooks -> finalize -> fine-tune, and records the stage's
params, MACs, top-1 and NetScore under "stages".
"""

from __future__ import annotations

import itertools
import json
import math
import random
import shutil
import statistics
import time
from collections.abc import Iterator
from dataclasses import fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from rich.console import Console
from torch import nn

from prunekit import bench, data, io, masks, methods, metrics, models, train
from prunekit import report as report_mod
from prunekit._version import __version__
from prunekit.errors import UserError, unknown_name
from prunekit.recipe import Recipe, TrainSettings

STATE_DIR = "state"
_RUN_FILES = ("recipe.yaml", "metrics.json", "log.jsonl", "report.md", "model.pt")


# ----------------------------------------------------------------------------------------------
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
    return _Experiment(recipe, out_dir=Path(out_dir), resume=resume, device=device, progress=progress).run()


class _Experiment:
    def __init__(self, recipe: Recipe, *, out_dir: Path, resume: bool, device: str | None, progress: bool) -> None:
        self.recipe = recipe
        self.out = out_dir
        self.state = out_dir / STATE_DIR
        self.resume = resume
        self.device = _resolve_device(device or recipe.device, recipe, "device")
        self.latency_device = (
            self.device if recipe.eval.latency_device == "auto"
            else _resolve_device(recipe.eval.latency_device, recipe, "eval.latency_device")
        )
        self.progress = progress
        self.console = Console(highlight=False, quiet=not progress)
        self.metrics: dict[str, Any] = {}

    # the run -----------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        # Every mistake the recipe can hold is reported before the run directory is touched.
        self.method = self._create_method()
        self.stage_methods = list(getattr(self.method, "stages", None) or [self.method])
        self.composite = len(getattr(self.method, "stages", None) or []) > 0
        self._check_names()
        stage_epochs = self.recipe.method.stage_epochs
        if stage_epochs is not None and len(stage_epochs) != len(self.stage_methods):
            raise self.recipe.field_error(
                "method.stage_epochs",
                f"method {self.method.name!r} has {len(self.stage_methods)} stage(s) "
                f"({', '.join(m.name for m in self.stage_methods)}); give one epoch count per stage, not {len(stage_epochs)}",
            )
        previous = self._prepare_dir()
        if previous is not None and previous.get("status") == "complete":
            self.console.print(f"{self.out}: already complete, nothing to resume")
            return previous
        threads_before = torch.get_num_threads()
        if self.recipe.threads:
            torch.set_num_threads(self.recipe.threads)
        try:
            return self._run(previous)
        finally:
            torch.set_num_threads(threads_before)

    def _run(self, previous: dict[str, Any] | None) -> dict[str, Any]:
        self.metrics = self._initial_metrics(previous)
        self._write_metrics()
        io.atomic_write(self.out / "recipe.yaml", self.recipe.resolved_yaml().encode("utf-8"))
        try:
            self._load_data()
            model = self._baseline_stage()
            for i, stage_method in enumerate(self.stage_methods):
                model = self._method_stage(i, stage_method, model)
                model = self._finetune_stage(i, stage_method, model)
            self._final_stage(model)
        except BaseException as err:
            self.metrics["status"] = "failed"
            self.metrics["error"] = "interrupted" if isinstance(err, KeyboardInterrupt) else f"{type(err).__name__}: {' '.join(str(err).split())}"
            self._write_metrics()
            self._log({"event": "failed", "stage": self.metrics.get("stage"), "error": self.metrics["error"]})
            raise
        return self.metrics

    # run directory ----------------------------------------------------------------------------
    def _prepare_dir(self) -> dict[str, Any] | None:
        out = self.out
        if out.exists() and not out.is_dir():
            raise UserError(f"--out {out}: exists and is not a directory")
        metrics_path = out / report_mod.METRICS_FILE
        if not metrics_path.exists():
            if out.exists() and any(p.name not in (*_RUN_FILES, STATE_DIR) and p.suffix != ".png" for p in out.iterdir()):
                raise UserError(f"--out {out}: not empty and not a prunekit run directory; choose another --out")
            out.mkdir(parents=True, exist_ok=True)
            return None
        previous = report_mod.read_metrics(out)
        if not self.resume:
            if previous.get("status") == "complete":
                raise UserError(f"{out} holds a complete run; pass --resume to keep it or --out NEW_DIR for a new run")
            # An unfinished run that is not resumed is started over from nothing.
            for path in [*(out / name for name in _RUN_FILES), *out.glob("*.png")]:
                path.unlink(missing_ok=True)
            shutil.rmtree(self.state, ignore_errors=True)
            return None
        stored = out / "recipe.yaml"
        if stored.exists():
            diff = _first_difference(yaml.safe_load(stored.read_text(encoding="utf-8")), self.recipe.to_dict())
            if diff is not None:
                raise UserError(
                    f"{out}: --resume with a different recipe ({diff} differs from {stored}); use --out NEW_DIR"
                )
        return previous

    def _initial_metrics(self, previous: dict[str, Any] | None) -> dict[str, Any]:
        r = self.recipe
        metrics: dict[str, Any] = {
            "status": "running",
            "stage": None,
            "error": None,
            "prunekit_version": __version__,
            "recipe": r.name,
            "recipe_file": r.source,
            "method": r.method.name,
            "method_kind": getattr(self.method, "kind", None),
            "target": r.method.target,
            "dataset": r.data.name,
            "model": r.model.name,
            "seed": r.seed,
            "device": self.device,
            "threads": torch.get_num_threads(),
            "started_at": _now(),
            "completed_stages": [],
            "wall_time_s": {},
            "report": {"plots": r.report.plots},
        }
        if previous is not None:
            for key in ("completed_stages", "wall_time_s", "baseline", "stages", "started_at"):
                if key in previous:
                    metrics[key] = previous[key]
            metrics["resumed_at"] = [*previous.get("resumed_at", []), _now()]
        return metrics

    def _write_metrics(self) -> None:
        text = json.dumps(_finite(self.metrics), indent=2, default=report_mod.jsonable, allow_nan=False)
        io.atomic_write(self.out / report_mod.METRICS_FILE, text.encode("utf-8"))

    def _log(self, row: dict[str, Any]) -> None:
        # Append-only JSON lines: a torn last line (kill mid-write) is skipped by the reader.
        with open(self.out / report_mod.LOG_FILE, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"time": _now(), **row}, default=report_mod.jsonable) + "\n")

    def _wall(self, key: str, start: float) -> float:
        seconds = time.perf_counter() - start
        self.metrics["wall_time_s"][key] = round(self.metrics["wall_time_s"].get(key, 0.0) + seconds, 3)
        return seconds

    def _done(self, stage: str) -> bool:
        return stage in self.metrics["completed_stages"]

    def _complete(self, stage: str, **record: Any) -> None:
        self.metrics["completed_stages"].append(stage)
        self._write_metrics()
        self._log({"event": "stage", "stage": stage, "status": "done", **record})

    def _begin(self, stage: str, text: str) -> None:
        self.metrics["stage"] = stage
        self._write_metrics()
        order = ["baseline", *(f"{kind}{i}" for i in range(len(self.stage_methods)) for kind in ("method", "finetune")), "final"]
        self.console.print(f"[bold cyan][{order.index(stage) + 1}/{len(order)}] {stage}[/]: {text}")

    # names, method, device ----------------------------------------------------------------------
    def _create_method(self) -> Any:
        m = self.recipe.method
        field = "method.name" if m.name not in methods.list_methods() else "method"
        try:
            return methods.create(m.name, target=m.target, ignore=m.ignore, round_to=m.round_to, **m.options)
        except UserError as err:
            raise self.recipe.field_error(field, str(err)) from None

    def _check_names(self) -> None:
        name = self.recipe.data.name
        known = data.list_datasets()
        if name not in known and name.partition(":")[0] not in known:
            raise self.recipe.field_error("data.name", str(unknown_name("dataset", name, known)))
        if self.recipe.model.name not in models.list_models():
            raise self.recipe.field_error("model.name", str(unknown_name("model", self.recipe.model.name, models.list_models())))
        for path, value in (("model.weights", self.recipe.model.weights), ("baseline.checkpoint", self.recipe.baseline.checkpoint)):
            if value is not None and not Path(value).is_file():
                raise self.recipe.field_error(path, f"no such file {value} (relative paths resolve against the working directory)")

    # stages -------------------------------------------------------------------------------------
    def _load_data(self) -> None:
        d = self.recipe.data
        try:
            self.data = data.load(
                d.name, root=d.root, batch_size=d.batch_size, eval_batch_size=d.eval_batch_size,
                device=self.device, subset=d.subset, val_fraction=d.val_fraction, seed=self.recipe.seed,
                num_workers=d.num_workers, augment=d.augment, **d.options,
            )
        except UserError as err:
            raise self.recipe.field_error("data", str(err)) from None
        self.example_inputs = self.data.example_inputs(1).to(self.device)

    def _batches(self) -> _Batches:
        return _Batches(self.data.train, self.recipe.method.data_batches)

    def _build_model(self, *, weights: str | None) -> nn.Module:
        m = self.recipe.model
        try:
            return models.create(
                m.name, num_classes=m.num_classes or self.data.num_classes, small_input=m.small_input,
                weights=weights, **m.kwargs,
            )
        except UserError as err:
            raise self.recipe.field_error("model", str(err)) from None

    def _baseline_stage(self) -> nn.Module:
        path = self.state / "baseline.pt"
        if self._done("baseline"):
            self.console.print("[bold cyan]baseline[/]: done before, loaded from state/baseline.pt")
            return self._load_stage_model(path)
        b = self.recipe.baseline
        source = "checkpoint" if b.checkpoint else ("pretrained weights" if self.recipe.model.weights else "random init")
        self._begin("baseline", f"{self.recipe.model.name} from {source}" + (f", training {b.train.epochs} epochs" if b.train.epochs else ""))
        start = time.perf_counter()
        _seed_everything(self.recipe.seed)
        if b.checkpoint:
            model = self._load_checkpoint(b.checkpoint)
        else:
            model = self._build_model(weights=self.recipe.model.weights)
        model = model.to(self.device)
        if b.train.epochs:
            model = self._train(model, settings=b.train, hooks=(), stage="baseline")
        result = self._evaluate(model)
        measured = _measure(model, self.example_inputs, top1=result["top1"])
        self.metrics["baseline"] = {**result, **measured}
        self._save_stage_model(model, path)
        seconds = self._wall("baseline", start)
        self.console.print(f"    baseline top-1 {result['top1']:.2f}%, params {report_mod.human(measured['params'])}, MACs {report_mod.human(measured['macs'])} ({seconds:.1f} s)")
        self._complete("baseline", top1=result["top1"], params=measured["params"], macs=measured["macs"])
        return model

    def _load_checkpoint(self, path: str) -> nn.Module:
        obj = models.read_torch_file(path)
        if isinstance(obj, dict) and obj.get("format") == io.FORMAT:
            return io.load(path)
        # Any other file is read as a state dict of the recipe's model (the models' weights= loader).
        return self._build_model(weights=path)

    def _stage_name(self, kind: str, i: int) -> str:
        return f"{kind}{i}"

    def _method_stage(self, i: int, method: Any, model: nn.Module) -> nn.Module:
        stage = self._stage_name("method", i)
        path = self.state / f"{stage}.pt"
        if self._done(stage):
            self.console.print(f"[bold cyan]{stage}[/]: done before, loaded from state/{path.name}")
            self._load_method_state(method, stage)
            return self._load_stage_model(path)
        r = self.recipe.method
        epochs = r.train.epochs if r.stage_epochs is None else r.stage_epochs[i]
        what = f"{method.name}" + (f" to {method.target}" if getattr(method, "target", None) else "")
        what += f", training {epochs} epochs with its hooks" if epochs else ", one-shot"
        self._begin(stage, what)
        start = time.perf_counter()
        _seed_everything(self.recipe.seed + 1 + i)
        if r.from_scratch and i == 0:
            model = self._reinitialise(model)
        if callable(getattr(method, "bind_run", None)):
            # Methods that train or evaluate inside finalize (autorate) get the run's data and device.
            method.bind_run(data=self.data, device=self.device, out_dir=self.out,
                            eval_max_batches=self.recipe.eval.max_batches, progress=self.progress)
        model = method.at_init(model, example_inputs=self.example_inputs, data=self._batches())
        if epochs:
            model = self._train(model, settings=r.train, hooks=(method,), stage=stage)
        model = method.finalize(model, example_inputs=self.example_inputs, data=self._batches())
        model = model.to(self.device)
        self._save_stage_model(model, path)
        io.atomic_torch_save(method.state_dict(), self.state / f"{stage}_method_state.pt")
        seconds = self._wall(stage, start)
        measured = _measure(model, self.example_inputs)
        self.console.print(
            f"    params {report_mod.human(measured['params'])} (non-zero {report_mod.human(measured['nonzero_params'])}), "
            f"MACs {report_mod.human(measured['macs'])} (non-zero {report_mod.human(measured['nonzero_macs'])}) ({seconds:.1f} s)"
        )
        self._complete(stage, params=measured["params"], macs=measured["macs"], nonzero_params=measured["nonzero_params"])
        return model

    def _load_method_state(self, method: Any, stage: str) -> None:
        path = self.state / f"{stage}_method_state.pt"
        if path.exists():
            method.load_state_dict(torch.load(path, weights_only=True, map_location="cpu"))

    def _finetune_stage(self, i: int, method: Any, model: nn.Module) -> nn.Module:
        stage = self._stage_name("finetune", i)
        path = self.state / f"{stage}.pt"
        if self._done(stage):
            self.console.print(f"[bold cyan]{stage}[/]: done before, loaded from state/{path.name}")
            return self._load_stage_model(path)
        f = self.recipe.finetune
        self._begin(stage, f"fine-tuning {f.epochs} epochs" if f.epochs else "no fine-tuning (finetune.epochs = 0)")
        start = time.perf_counter()
        _seed_everything(self.recipe.seed + 101 + i)
        if f.epochs:
            hooks = method.finetune_hooks()
            model = self._train(model, settings=f, hooks=() if hooks is None else (hooks,), stage=stage)
        record: dict[str, Any] = {}
        if self.composite:
            result = self._evaluate(model)
            measured = _measure(model, self.example_inputs, top1=result["top1"])
            record = {"method": method.name, "kind": getattr(method, "kind", None), "target": str(method.target) if method.target else None,
                      **{k: result[k] for k in ("top1", "top5", "loss")}, **measured}
            self.metrics.setdefault("stages", [])
            self.metrics["stages"] = [s for s in self.metrics["stages"] if s.get("index") != i] + [{"index": i, **record}]
            self.console.print(f"    stage {i + 1} ({method.name}): top-1 {result['top1']:.2f}%, NetScore {measured['netscore']:.2f}")
        self._save_stage_model(model, path)
        seconds = self._wall(stage, start)
        self.console.print(f"    {stage} done ({seconds:.1f} s)")
        self._complete(stage, **{k: v for k, v in record.items() if k in ("top1", "params", "macs")})
        return model

    def _final_stage(self, model: nn.Module) -> None:
        self._begin("final", f"evaluate, measure, latency on {self.latency_device} (batch {self.recipe.eval.latency_batch_size})")
        start = time.perf_counter()
        model = masks.make_permanent(model).eval()
        result = self._evaluate(model)
        after = metrics.measure(model, self.example_inputs)
        baseline_model = self._load_stage_model(self.state / "baseline.pt").eval()
        before = metrics.measure(baseline_model, self.example_inputs)
        e = self.recipe.eval
        lat_before, lat_after = _interleaved_latency(bench, baseline_model, model, self.example_inputs, e, self.latency_device)
        lat_info = {"latency_device": self.latency_device, "latency_runtime": e.latency_runtime,
                    "latency_batch_size": e.latency_batch_size, "latency_repeats": e.latency_repeats}
        if self.latency_device == "cpu":
            lat_info["latency_threads"] = torch.get_num_threads()
        base = self.metrics["baseline"]
        base.update({"latency_ms": lat_before, **lat_info})
        final = {**result, **_measure_dict(after, result["top1"]), "latency_ms": lat_after, **lat_info}
        self.metrics["final"] = final
        achieved = metrics.achieved(before, after)
        achieved["latency"] = 1.0 - lat_after / lat_before if lat_before > 0 else None
        achieved["accuracy_drop"] = base["top1"] - final["top1"]
        self.metrics["achieved"] = achieved
        self.metrics["layers"] = _layers(before, after)
        self.metrics["method_info"] = _method_info(self.method, self.stage_methods if self.composite else [])
        io.save(model, self.out / "model.pt")
        self._wall("final", start)
        self.metrics["wall_time_s"]["total"] = round(
            sum(v for k, v in self.metrics["wall_time_s"].items() if k != "total"), 3
        )
        self.metrics["completed_stages"].append("final")
        self.metrics["status"] = "complete"
        self.metrics["stage"] = None
        self.metrics["finished_at"] = _now()
        # report.md and the plots first, metrics.json last: "complete" is the final word.
        report_mod.write_report(self.out, self.metrics, plots=self.recipe.report.plots)
        self._log({"event": "stage", "stage": "final", "status": "done", "top1": final["top1"]})
        self._write_metrics()
        self.console.print(
            f"    final top-1 {final['top1']:.2f}% (baseline {base['top1']:.2f}%), "
            f"MACs {report_mod.human(final['macs'])} ({100 * achieved['macs']:.1f}% removed), "
            f"latency {lat_after:.2f} ms vs {lat_before:.2f} ms"
        )

    # helpers --------------------------------------------------------------------------------------
    def _train(self, model: nn.Module, *, settings: TrainSettings, hooks: tuple[Any, ...], stage: str) -> nn.Module:
        kwargs = _train_kwargs(settings)
        if kwargs["eval_max_batches"] is None:
            kwargs["eval_max_batches"] = self.recipe.eval.max_batches
        kwargs["milestones"] = tuple(kwargs["milestones"])
        config = train.TrainConfig(**kwargs, seed=self.recipe.seed)
        checkpoint = self.state / f"{stage}.ckpt"
        result = train.train(
            model, data=self.data, config=config, hooks=hooks, device=self.device, stage=stage,
            log_path=self.out / report_mod.LOG_FILE, checkpoint_path=checkpoint,
            resume=self.resume and checkpoint.exists(), progress=self.progress,
        )
        return result.model

    def _evaluate(self, model: nn.Module) -> dict[str, float]:
        result = train.evaluate(
            model, self.data.test, device=self.device, amp=self.recipe.finetune.amp, max_batches=self.recipe.eval.max_batches
        )
        return {"top1": float(result["top1"]), "top5": float(result["top5"]), "loss": float(result["loss"]), "images": int(result["images"])}

    def _save_stage_model(self, model: nn.Module, path: Path) -> None:
        # io.save bakes masks into the weights; keep them apart so that a resumed fine-tune
        # still holds the pruned weights at zero.
        io.atomic_torch_save(masks.get_masks(model), _masks_path(path))
        io.save(model, path)

    def _load_stage_model(self, path: Path) -> nn.Module:
        model = io.load(path)
        saved = torch.load(_masks_path(path), weights_only=True, map_location="cpu")
        if saved:
            masks.apply_masks(model, saved)
        return model.to(self.device)

    def _reinitialise(self, model: nn.Module) -> nn.Module:
        """Return `model` with fresh weights: the builder's own init when the shapes match, else reset_parameters()."""
        fresh = self._build_model(weights=None).to(self.device)
        try:
            model.load_state_dict(fresh.state_dict())
        except RuntimeError:
            for module in model.modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
        return model


def _interleaved_latency(bench: Any, first: nn.Module, second: nn.Module, example_inputs: torch.Tensor,
                         e: Any, device: str) -> tuple[float, float]:
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


def _masks_path(path: Path) -> Path:
    return path.with_name(path.stem + "_masks.pt")


class _Batches:
    """The first `n` batches of a loader, re-iterable (a method may pass over its data twice)."""

    def __init__(self, loader: Any, n: int) -> None:
        self.loader = loader
        self.n = n

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return itertools.islice(iter(self.loader), self.n)


# pure helpers -----------------------------------------------------------------------------------
def _train_kwargs(settings: TrainSettings) -> dict[str, Any]:
    names = {f.name for f in fields(train.TrainConfig)}
    values = settings.model_dump()
    unknown = set(values) - names
    if unknown:  # the schema and TrainConfig drifted apart: a bug, not a user mistake
        raise RuntimeError(f"TrainConfig has no field(s) {sorted(unknown)}")
    return values


def _resolve_device(name: str, recipe: Recipe, path: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name not in ("cpu", "cuda"):
        raise recipe.field_error(path, f"{name!r} is not one of auto, cpu, cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise recipe.field_error(path, "cuda asked but no CUDA device is available (use cpu or auto)")
    return name


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def _measure(model: nn.Module, example_inputs: torch.Tensor, *, top1: float | None = None) -> dict[str, Any]:
    return _measure_dict(metrics.measure(model, example_inputs), top1)


def _measure_dict(measured: Any, top1: float | None) -> dict[str, Any]:
    d = measured.to_dict()
    return d if top1 is None else {**d, **_netscores(d, top1)}


def _netscores(d: dict[str, Any], top1: float) -> dict[str, float]:
    return {
        "netscore": metrics.netscore(top1, d["params"], d["macs"]),
        "netscore_nonzero": metrics.netscore(top1, d["nonzero_params"], d["nonzero_macs"]),
    }


def _layers(before: Any, after: Any) -> list[dict[str, Any]]:
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


def _method_info(method: Any, stages: list[Any]) -> dict[str, Any]:
    info = dict(getattr(method, "info", {}) or {})
    if stages and "stages" not in info:
        info["stages"] = [{"method": s.name, **(getattr(s, "info", {}) or {})} for s in stages]
    return info


def _first_difference(a: Any, b: Any, path: str = "") -> str | None:
    """Return the dotted path of the first difference between two plain-data trees, or None."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in [*a, *(k for k in b if k not in a)]:
            found = _first_difference(a.get(key), b.get(key), f"{path}.{key}" if path else str(key))
            if found:
                return found
        return None
    return None if a == b else (path or "(top level)")


def _finite(obj: Any) -> Any:
    """Return `obj` with NaN and infinities replaced by None (metrics.json stays standard JSON)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
