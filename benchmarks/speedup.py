"""Measured speedup per MAC removed: Torch-Pruning defaults vs prunekit's default vs a latency target,
on eager PyTorch and ONNX Runtime, side by side in one run.

For each model and MACs target, every variant is timed on every runtime (`--runtimes`):

- `tp-default`   Torch-Pruning's MetaPruner with its defaults (GroupMagnitudeImportance, uniform
                 ratio, no round_to), the ratio bisected until the MACs target is hit;
- `prunekit`     `prunekit.prune(method="l1_filter", target="macs=T")` with its defaults
                 (round_to="auto": the channel multiple measured on the device);
- `unrounded`    the same without rounding (round_to=1);
- `prunekit-onnxruntime`  round_to="auto" measured on ONNX Runtime (the runtime the user names);
- `latency-R`    `prunekit.prune(method="l1_filter", target="latency=T", runtime=R)`: the same
                 fraction of *measured time* removed on runtime R (the speedup the MACs target
                 promises), within the default MACs bound (max_macs_removed 0.75);
- `time-R`       `l1_filter` at the same `macs=T` with `allocation="time"`: the channels that save
                 the most time measured on runtime R per importance lost (the latency search's
                 price), stopped at the MACs target instead of a time target.

speedup = dense ms / pruned ms; efficiency = speedup / (dense MACs / pruned MACs) (1.0 = the time
fell exactly as the MACs did); both from the medians and from the fastest runs (on a shared
machine other processes only add time, and they add more, relatively, to fast models). CPU at batch 1 always (`--threads`, default 2); on CUDA, bf16
autocast and channels_last at batch 1024 (resnet18, 32x32) or 128 (224x224), eager and
torch.compile'd. Latencies are medians of interleaved rounds (every variant is timed in every
round, so drifting load on a shared machine hits them alike); `spread` is (p75 - p25) / median.

    python benchmarks/speedup.py --models resnet18 --quick     # a few minutes on 2 CPU cores
    python benchmarks/speedup.py --out speedup.json              # all three models (long on a CPU)
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import statistics
import sys
import time
import warnings
from typing import Any, Callable

import torch
from torch import nn

import prunekit
from prunekit import allocation, models, runtimes, structure
from prunekit.metrics import measure

MODELS = {
    # name: (builder kwargs, input size, GPU batch)
    "resnet18": ({"num_classes": 10, "small_input": True}, 32, 1024),
    "resnet50": ({"num_classes": 1000}, 224, 128),
    "mobilenet_v2": ({"num_classes": 1000}, 224, 128),
}


# ---------------------------------------------------------------------------------------------
# pruning


def tp_default(model: nn.Module, x: torch.Tensor, macs_target: float, *, iters: int = 14) -> nn.Module:
    """Torch-Pruning's MetaPruner with its defaults, the uniform ratio bisected to remove `macs_target`
    of the MACs: prunekit's reference method `tp_group_l2`, on a copy of `model`."""
    net = copy.deepcopy(model).eval()
    return prunekit.prune(net, method="tp_group_l2", target=f"macs={macs_target}", example_inputs=x,
                          bisection_steps=iters).model


def prunekit_variant(model: nn.Module, x: torch.Tensor, target: str, *, device: torch.device, timer: Any = None,
                     round_to: int | str | None = None, runtime: str = "eager",
                     allocation_name: str = "uniform") -> tuple[nn.Module, dict[str, Any], float]:
    """Prune a copy of `model` on `device` with prunekit's l1_filter to `target`; return (model on CPU, info, seconds).

    `runtime` is where round_to="auto" and latency targets measure; `timer` (for latency targets)
    sets the batch and threads the time is measured with.
    """
    net = copy.deepcopy(model).to(device).eval()
    started = time.perf_counter()
    with (allocation.use_timer(timer) if timer is not None else contextlib.nullcontext()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = prunekit.prune(net, method="l1_filter", target=target, example_inputs=x.to(device), round_to=round_to,
                                runtime=runtime, allocation=allocation_name)
    return result.model.cpu().eval(), result.info, time.perf_counter() - started


# ---------------------------------------------------------------------------------------------
# timing


def forward_fn(model: nn.Module, x: torch.Tensor, *, device: torch.device, batch: int, runtime: str, threads: int) -> Callable[[], None]:
    """Return a warmed-up no-argument forward of a copy of `model` on a random `batch` on `runtime`
    (prunekit.runtimes: eager, onnxruntime, compile; bf16 + channels_last on CUDA)."""
    fn = runtimes.forward_fn(model, torch.randn(batch, *x.shape[1:]), runtime=runtime, device=device, threads=threads)
    for _ in range(3 if runtime != "compile" else 5):  # warm-up (and compilation)
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return fn


def sample_ms(fn: Callable[[], None], *, device: torch.device, n: int) -> list[float]:
    """Return `n` per-call times of `fn` in milliseconds (CUDA events on GPUs)."""
    out = []
    for _ in range(n):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            out.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t0) * 1e3)
    return out


def time_variants(fns: dict[str, Callable[[], None]], *, device: torch.device, rounds: int, per_round: int) -> dict[str, dict[str, float]]:
    """Time every variant in every round (interleaved); return {name: median, p25, p75, min, spread}."""
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            samples[name] += sample_ms(fn, device=device, n=per_round)
    out = {}
    for name, s in samples.items():
        q = statistics.quantiles(s, n=4) if len(s) >= 4 else [min(s), statistics.median(s), max(s)]
        med = statistics.median(s)
        out[name] = {"median_ms": med, "p25_ms": q[0], "p75_ms": q[2], "min_ms": min(s), "spread": (q[2] - q[0]) / med if med else 0.0}
    return out


# ---------------------------------------------------------------------------------------------


def multiples_of(model: nn.Module, m: int) -> float:
    """Return the fraction of conv/linear output channel counts that are multiples of `m`."""
    counts = [c for c in structure.kept_channels(model).values()]
    return sum(1 for c in counts if c % m == 0) / len(counts) if counts else 0.0


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    devices = [torch.device("cpu")]
    if torch.cuda.is_available() and not args.cpu_only:
        devices.append(torch.device("cuda"))
    results: dict[str, Any] = {
        "machine": {"cpu_threads": args.threads, "cuda": torch.cuda.get_device_name(0) if len(devices) > 1 else None,
                    "torch": torch.__version__, "load_average_start": os.getloadavg()},
        "rows": [],
    }
    for name in args.models:
        kwargs, size, gpu_batch = MODELS[name]
        torch.manual_seed(0)
        dense = models.create(name, **kwargs).eval()
        x = torch.zeros(1, 3, size, size)
        dense_m = measure(dense, x)
        for t in args.targets:
            say(f"{name} macs={t}: Torch-Pruning defaults (bisecting the ratio)")
            tp_net = tp_default(dense, x, t, iters=args.bisect)
            for dev in devices:
                batch = 1 if dev.type == "cpu" else gpu_batch
                cpu = dev.type == "cpu"
                dev_runtimes = [r for r in args.runtimes if cpu or r != "onnxruntime"] + ([] if cpu or args.no_compile else ["compile"])
                infos: dict[str, dict[str, Any]] = {}
                seconds: dict[str, float] = {}
                say(f"{name} macs={t} on {dev.type}: prunekit l1_filter macs={t} (round_to auto on eager), and unrounded")
                pk_net, infos["prunekit"], seconds["prunekit"] = prunekit_variant(dense, x, f"macs={t}", device=dev)
                un_net, infos["unrounded"], seconds["unrounded"] = prunekit_variant(dense, x, f"macs={t}", device=dev, round_to=1)
                variants = {"dense": dense, "tp-default": tp_net, "prunekit": pk_net, "unrounded": un_net}
                for rt in dev_runtimes:
                    if rt != "eager" and rt != "compile":
                        say(f"{name} macs={t} on {dev.type}: prunekit macs={t}, round_to auto measured on {rt}")
                        net, info, sec = prunekit_variant(dense, x, f"macs={t}", device=dev, runtime=rt)
                        if info["round_to"]["value"] == infos["prunekit"]["round_to"]["value"]:
                            net = pk_net  # the same multiple: the same network
                        variants[f"prunekit-{rt}"], infos[f"prunekit-{rt}"], seconds[f"prunekit-{rt}"] = net, info, sec
                    timer = allocation.DeviceTimer(device=dev, runtime=rt, batch_size=batch, repeats=args.layer_repeats,
                                                   num_threads=args.threads if cpu else None, layer_threads=1 if cpu else None)
                    say(f"{name} macs={t} on {dev.type}: prunekit l1_filter latency={t} measured on {rt}")
                    rt_round = infos.get(f"prunekit-{rt}", infos["prunekit"])["round_to"]["value"] or 1
                    net, info, sec = prunekit_variant(dense, x, f"latency={t}", device=dev, timer=timer, round_to=rt_round, runtime=rt)
                    variants[f"latency-{rt}"], infos[f"latency-{rt}"], seconds[f"latency-{rt}"] = net, info, sec
                    say(f"{name} macs={t} on {dev.type}: prunekit l1_filter macs={t}, allocation time measured on {rt}")
                    net, info, sec = prunekit_variant(dense, x, f"macs={t}", device=dev, timer=timer, round_to=rt_round, runtime=rt,
                                                      allocation_name="time")
                    variants[f"time-{rt}"], infos[f"time-{rt}"], seconds[f"time-{rt}"] = net, info, sec
                for rt in dev_runtimes:
                    say(f"{name} macs={t} on {dev.type}, {rt}: timing {len(variants)} variants")
                    fns = {k: forward_fn(v, x, device=dev, batch=batch, runtime=rt, threads=args.threads) for k, v in variants.items()}
                    times = time_variants(fns, device=dev, rounds=args.rounds, per_round=args.per_round)
                    base_ms, base_min = times["dense"]["median_ms"], times["dense"]["min_ms"]
                    for k, v in variants.items():
                        m = dense_m if k == "dense" else measure(v, x)
                        speedup = base_ms / times[k]["median_ms"]
                        speedup_min = base_min / times[k]["min_ms"]
                        mac_ratio = dense_m.macs / m.macs
                        row = {
                            "model": name, "target": f"macs={t}", "variant": k, "device": dev.type, "batch": batch,
                            "runtime": rt, "macs": m.macs, "params": m.params,
                            "macs_removed": 1 - m.macs / dense_m.macs, "speedup": speedup, "efficiency": speedup / mac_ratio,
                            "speedup_min": speedup_min, "efficiency_min": speedup_min / mac_ratio,
                            "multiples_of_8": multiples_of(v, 8), "prune_seconds": seconds.get(k), **times[k],
                        }
                        info = infos.get(k, {})
                        row["round_to"] = info.get("round_to")
                        if "latency" in info:
                            row["latency_search"] = {key: info["latency"].get(key) for key in
                                                     ("achieved", "before_ms", "after_ms", "layer_timings", "noise", "runtime",
                                                      "macs_removed", "reached", "warning")}
                        results["rows"].append(row)
                    print_block(results["rows"][-len(variants):])
    results["machine"]["load_average_end"] = os.getloadavg()
    return results


def say(text: str) -> None:
    print(f"[speedup] {text}", file=sys.stderr, flush=True)


def print_block(rows: list[dict[str, Any]]) -> None:
    for r in rows:
        print(table_row(r), flush=True)


HEADER = ("| model | target | device | batch | runtime | variant | MACs removed | ms median (spread) | ms min | "
          "speedup (median) | efficiency (median) | speedup (min) | efficiency (min) | round_to |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def table_row(r: dict[str, Any]) -> str:
    rt = r.get("round_to") or {}
    rt_text = "-" if r["variant"] in ("dense", "tp-default") else (str(rt.get("value")) if rt else "?")
    return (f"| {r['model']} | {r['target']} | {r['device']} | {r['batch']} | {r['runtime']} | {r['variant']} | "
            f"{100 * r['macs_removed']:.1f}% | {r['median_ms']:.2f} ({100 * r['spread']:.0f}%) | {r['min_ms']:.2f} | "
            f"{r['speedup']:.2f}x | {r['efficiency']:.2f} | {r['speedup_min']:.2f}x | {r['efficiency_min']:.2f} | {rt_text} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--targets", nargs="+", type=float, default=[0.5, 0.75], help="fractions of MACs removed")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1: steady on a shared machine)")
    parser.add_argument("--quick", action="store_true", help="fewer timing rounds and bisection steps (CPU smoke run)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds (default 7, quick 3)")
    parser.add_argument("--per-round", type=int, default=None, help="forward passes per variant per round (default 10, quick 5)")
    parser.add_argument("--bisect", type=int, default=None, help="bisection steps for Torch-Pruning's ratio (default 14, quick 10)")
    parser.add_argument("--layer-repeats", type=int, default=5, help="samples per layer timing in the latency search")
    parser.add_argument("--cpu-only", action="store_true", help="skip CUDA even when available")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows on CUDA")
    parser.add_argument("--runtimes", nargs="+", default=["eager", "onnxruntime"], choices=["eager", "onnxruntime", "compile"],
                        help="CPU runtimes every variant is timed on, side by side (default eager onnxruntime)")
    parser.add_argument("--out", default=None, help="write all rows as JSON here")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (3 if args.quick else 7)
    args.per_round = args.per_round or (5 if args.quick else 10)
    args.bisect = args.bisect or (10 if args.quick else 14)
    print(HEADER, flush=True)
    results = run(args)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
