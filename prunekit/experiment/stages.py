"""The stages of a run, run in order by `Experiment`'s one loop:

    baseline -> (method<i> -> finetune<i>) for every stage method -> final

A stage `run`s (and saves its state through the run directory before it is listed as completed)
or, when a resumed run completed it before, `skip`s: its model, data stream position, RNG and
method state come back from state/, so the stages after it see exactly what they saw the first
time. `final` is never skipped.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from prunekit import distributed, masks, metrics
from prunekit.experiment import results
from prunekit.experiment.context import seed_everything
from prunekit.report import human


class Stage:
    """One step of a run; subclasses set `name` and implement `describe`, `run` and `skip`."""

    name = ""
    resumable = True

    def describe(self, x: Any) -> str:
        raise NotImplementedError

    def run(self, x: Any, model: nn.Module | None) -> nn.Module:
        raise NotImplementedError

    def skip(self, x: Any) -> nn.Module:
        """Return the model this stage saved, restoring the data stream position and RNG after it."""
        x.console.print(f"[bold cyan]{self.name}[/]: done before, loaded from state/{self.name}.pt")
        model = x.rundir.load_model(self.name, x.ctx.device)
        x.ctx.restore_stream(x.rundir.load_stream(self.name))
        return model


class Baseline(Stage):
    name = "baseline"

    def describe(self, x: Any) -> str:
        r = x.ctx.recipe
        b = r.baseline
        source = "checkpoint" if b.checkpoint else ("pretrained weights" if r.model.weights else "random init")
        return f"{r.model.name} from {source}" + (f", training {b.train.epochs} epochs" if b.train.epochs else "")

    def run(self, x: Any, model: nn.Module | None) -> nn.Module:
        ctx, r = x.ctx, x.ctx.recipe
        start = time.perf_counter()
        seed_everything(r.seed)
        model = ctx.load_checkpoint(r.baseline.checkpoint) if r.baseline.checkpoint else ctx.build_model(weights=r.model.weights)
        model = model.to(ctx.device)
        if r.baseline.train.epochs:
            model = ctx.train(model, settings=r.baseline.train, hooks=(), stage=self.name, run=x.rundir, resume=x.resume)
        result = ctx.evaluate(model)
        measured = results.measure(model, ctx.example_inputs, task=ctx.task, result=result)
        x.rundir.metrics["baseline"] = {**result, **measured}
        x.rundir.save_stage(self.name, model, stream=ctx.stream_state())
        seconds = time.perf_counter() - start
        x.rundir.add_wall(self.name, seconds)
        value = result[ctx.task.primary.name]
        x.console.print(f"    baseline {results.primary_text(ctx.task, value)}, params {human(measured['params'])}, "
                        f"MACs {human(measured['macs'])} ({seconds:.1f} s)")
        x.rundir.complete(self.name, **{ctx.task.primary.name: value}, params=measured["params"], macs=measured["macs"])
        return model


class MethodStep(Stage):
    """Stage method<i>: at_init -> training with the method's hooks -> finalize."""

    def __init__(self, index: int, method: Any) -> None:
        self.index = index
        self.method = method
        self.name = f"method{index}"

    def epochs(self, x: Any) -> int:
        r = x.ctx.recipe.method
        return r.train.epochs if r.stage_epochs is None else r.stage_epochs[self.index]

    def describe(self, x: Any) -> str:
        what = f"{self.method.name}" + (f" to {self.method.target}" if self.method.target else "")
        epochs = self.epochs(x)
        return what + (f", training {epochs} epochs with its hooks" if epochs else ", one-shot")

    def run(self, x: Any, model: nn.Module | None) -> nn.Module:
        ctx, r = x.ctx, x.ctx.recipe
        method = self.method
        start = time.perf_counter()
        seed_everything(r.seed + 1 + self.index)
        if r.method.from_scratch and self.index == 0:
            model = ctx.reinitialise(model)
        model = method.at_init(model, example_inputs=ctx.example_inputs, data=ctx.batches())
        if self.epochs(x):
            model = ctx.train(model, settings=r.method.train, hooks=(method,), stage=self.name, run=x.rundir, resume=x.resume)
        model = method.finalize(model, example_inputs=ctx.example_inputs, data=ctx.batches())
        model = model.to(ctx.device)
        # Data-parallel: every rank pruned the same weights with the same scoring batches (they are not
        # sharded); rank 0's weights and masks now overwrite any rounding difference, and a rank whose
        # surgery chose other channels raises here instead of training a different network.
        distributed.broadcast_module_state(model)
        x.rundir.save_stage(self.name, model, stream=ctx.stream_state(), methods=[method])
        seconds = time.perf_counter() - start
        x.rundir.add_wall(self.name, seconds)
        measured = results.measure(model, ctx.example_inputs)
        x.console.print(
            f"    params {human(measured['params'])} (non-zero {human(measured['nonzero_params'])}), "
            f"MACs {human(measured['macs'])} (non-zero {human(measured['nonzero_macs'])}) ({seconds:.1f} s)"
        )
        x.rundir.complete(self.name, params=measured["params"], macs=measured["macs"], nonzero_params=measured["nonzero_params"])
        return model

    def skip(self, x: Any) -> nn.Module:
        model = super().skip(x)
        x.rundir.load_methods(self.name, [self.method])  # its state and info (method_info, the report's section)
        return model


class Finetune(Stage):
    """Stage finetune<i>: training with the method's fine-tune hooks; per-stage figures for composites."""

    def __init__(self, index: int, method: Any) -> None:
        self.index = index
        self.method = method
        self.name = f"finetune{index}"

    def describe(self, x: Any) -> str:
        f = x.ctx.recipe.finetune
        return f"fine-tuning {f.epochs} epochs" if f.epochs else "no fine-tuning (finetune.epochs = 0)"

    def run(self, x: Any, model: nn.Module | None) -> nn.Module:
        ctx, r = x.ctx, x.ctx.recipe
        method, i = self.method, self.index
        start = time.perf_counter()
        seed_everything(r.seed + 101 + i)
        if r.finetune.epochs:
            hooks = method.finetune_hooks()
            model = ctx.train(model, settings=r.finetune, hooks=() if hooks is None else (hooks,), stage=self.name,
                              run=x.rundir, resume=x.resume)
        record: dict[str, Any] = {}
        if ctx.composite:
            result = ctx.evaluate(model)
            measured = results.measure(model, ctx.example_inputs, task=ctx.task, result=result)
            record = {"method": method.name, "kind": method.kind, "target": str(method.target) if method.target else None,
                      **{k: v for k, v in result.items() if k != "images"}, **measured}
            stages = [s for s in x.rundir.metrics.get("stages", []) if s.get("index") != i]
            x.rundir.metrics["stages"] = [*stages, {"index": i, **record}]
            x.console.print(f"    stage {i + 1} ({method.name}): {results.primary_text(ctx.task, result[ctx.task.primary.name])}, "
                            f"NetScore {measured['netscore'] if measured['netscore'] is None else format(measured['netscore'], '.2f')}")
        x.rundir.save_stage(self.name, model, stream=ctx.stream_state())
        seconds = time.perf_counter() - start
        x.rundir.add_wall(self.name, seconds)
        x.console.print(f"    {self.name} done ({seconds:.1f} s)")
        keep = (ctx.task.primary.name, "params", "macs")
        x.rundir.complete(self.name, **{k: v for k, v in record.items() if k in keep})
        return model


class Final(Stage):
    """Evaluate, measure, time baseline vs final; then model.pt, metrics.json complete, report.md."""

    name = "final"
    resumable = False

    def describe(self, x: Any) -> str:
        e = x.ctx.recipe.eval
        return f"evaluate, measure, latency on {x.ctx.latency_device}, {e.latency_runtime} (batch {e.latency_batch_size})"

    def run(self, x: Any, model: nn.Module | None) -> nn.Module:
        ctx, e = x.ctx, x.ctx.recipe.eval
        task, primary = ctx.task, ctx.task.primary
        start = time.perf_counter()
        model = masks.make_permanent(model).eval()
        result = ctx.evaluate(model)
        if not ctx.dist.is_main:  # rank 0 measures, times and writes the report; the others are done
            x.rundir.finish(model, plots=False)
            return model
        after = metrics.measure(model, ctx.example_inputs)
        baseline_model = x.rundir.load_model("baseline", ctx.device).eval()
        before = metrics.measure(baseline_model, ctx.example_inputs)
        lat_before, lat_after = results.interleaved_latency(baseline_model, model, ctx.example_inputs, e, ctx.latency_device)
        lat_info: dict[str, Any] = {"latency_device": ctx.latency_device, "latency_runtime": e.latency_runtime,
                                    "latency_batch_size": e.latency_batch_size, "latency_repeats": e.latency_repeats}
        if ctx.latency_device == "cpu":
            lat_info["latency_threads"] = torch.get_num_threads()
        m = x.rundir.metrics
        base = m["baseline"]
        base.update({"latency_ms": lat_before, **lat_info})
        final = {**result, **results.measure_dict(after, task=task, result=result), "latency_ms": lat_after, **lat_info}
        m["final"] = final
        achieved = metrics.achieved(before, after)
        achieved["latency"] = 1.0 - lat_after / lat_before if lat_before > 0 else None
        achieved["accuracy_drop"] = primary.drop(base[primary.name], final[primary.name])
        m["achieved"] = achieved
        m["layers"] = results.layers(before, after)
        m["method_info"] = results.method_info(ctx.method, ctx.stage_methods if ctx.composite else [])
        if ctx.recipe.report.plots:
            task.report_pictures(dense=baseline_model, pruned=model, loader=ctx.data.test, run_dir=x.rundir.path)
        x.rundir.add_wall(self.name, time.perf_counter() - start)
        m["wall_time_s"]["total"] = round(sum(v for k, v in m["wall_time_s"].items() if k != "total"), 3)
        x.rundir.log({"event": "stage", "stage": self.name, "status": "done", primary.name: final[primary.name]})
        x.rundir.finish(model, plots=ctx.recipe.report.plots)
        removed = achieved["macs"]
        x.console.print(
            f"    final {results.primary_text(task, final[primary.name])} (baseline "
            f"{results.primary_text(task, base[primary.name]).split(' ', 1)[1]}), "
            f"MACs {human(final['macs'])} ({100 * removed:.1f}% removed), "
            f"latency {lat_after:.2f} ms vs {lat_before:.2f} ms"
        )
        return model


def plan(ctx: Any) -> list[Stage]:
    """Return the stages of a run over `ctx`'s stage methods, in order."""
    steps: list[Stage] = [Baseline()]
    for i, method in enumerate(ctx.stage_methods):
        steps += [MethodStep(i, method), Finetune(i, method)]
    return [*steps, Final()]
