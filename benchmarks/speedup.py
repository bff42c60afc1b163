"""Measured speedup per MAC removed: Torch-Pruning defaults vs prunekit's default vs a latency target.

For each model and MACs target, side by side in one run:

- `tp-default`   Torch-Pruning's MetaPruner with its defaults (GroupMagnitudeImportance, uniform
                 ratio, no round_to), the ratio bisected until the MACs target is hit;
- `prunekit`     `prunekit.prune(method="l1_filter", target="macs=T")` with its defaults
                 (round_to="auto": the channel multiple measured on the device);
- `latency`      `prunekit.prune(method="l1_filter", target="latency=T")`: the same fraction of
                 *measured time* removed on the device (the speedup the MACs target promises).

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
import statistics
import sys
import time
import warnings
from typing import Any, Callable

import torch
from torch import nn

import prunekit
from prunekit import allocation, models, structure
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
    """Torch-Pruning's MetaPruner with its defaults; the uniform ratio bisected to remove `macs_target` of the MACs."""
    import torch_pruning as tp

    base = measure(model, x).macs

    def prune(ratio: float) -> tuple[float, nn.Module]:
        net = copy.deepcopy(model).eval()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pruner = tp.pruner.MetaPruner(
                net, x, importance=tp.importance.GroupMagnitudeImportance(), pruning_ratio=ratio,
                ignored_layers=structure.classifier_layers(net, x),
            )
            pruner.step()
        return 1 - measure(net, x).macs / base, net

    lo, hi, best = 0.0, 0.95, None
    for _ in range(iters):
        mid = (lo + hi) / 2
        got, net = prune(mid)
        if best is None or abs(got - macs_target) < best[0]:
            best = (abs(got - macs_target), net)
        if got < macs_target:
            lo = mid
        else:
            hi = mid
    return best[1]


def prunekit_variant(model: nn.Module, x: torch.Tensor, target: str, *, device: torch.device, timer: Any = None,
                     round_to: int | str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Prune a copy of `model` on `device` with prunekit's l1_filter to `target`; return (model on CPU, info).

    `timer` (for latency targets) sets the batch and threads the time is measured with.
    """
    net = copy.deepcopy(model).to(device).eval()
    with (allocation.use_timer(timer) if timer is not None else contextlib.nullcontext()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = prunekit.prune(net, method="l1_filter", target=target, example_inputs=x.to(device), round_to=round_to)
    return result.model.cpu().eval(), result.info


# ---------------------------------------------------------------------------------------------
# timing


def forward_fn(model: nn.Module, x: torch.Tensor, *, device: torch.device, batch: int, compile: bool) -> Callable[[], None]:
    """Return a no-argument forward of a copy of `model` on a random `batch` (bf16 + channels_last on CUDA)."""
    net = copy.deepcopy(model).eval().to(device)
    inp = torch.randn(batch, *x.shape[1:], device=device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
        net = net.to(memory_format=torch.channels_last)
        inp = inp.contiguous(memory_format=torch.channels_last)
    if compile:
        net = torch.compile(net)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()

    def forward() -> None:
        with torch.inference_mode(), autocast:
            net(inp)

    for _ in range(3 if not compile else 5):  # warm-up (and compilation)
        forward()
    if cuda:
        torch.cuda.synchronize(device)
    return forward


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
                    "torch": torch.__version__},
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
                timer = allocation.DeviceTimer(device=dev, batch_size=batch, repeats=args.layer_repeats,
                                               num_threads=args.threads if cpu else None, layer_threads=1 if cpu else None)
                say(f"{name} macs={t} on {dev.type}: prunekit l1_filter macs={t} (round_to auto)")
                pk_net, pk_info = prunekit_variant(dense, x, f"macs={t}", device=dev)
                say(f"{name} macs={t} on {dev.type}: prunekit l1_filter latency={t}")
                started = time.perf_counter()
                # the latency search rounds to the multiple the default resolved (one probe per device)
                lat_net, lat_info = prunekit_variant(dense, x, f"latency={t}", device=dev, timer=timer,
                                                     round_to=(pk_info["round_to"]["value"] or 1))
                lat_seconds = time.perf_counter() - started
                variants = {"dense": dense, "tp-default": tp_net, "prunekit": pk_net, "latency": lat_net}
                modes = [False] + ([True] if dev.type == "cuda" and not args.no_compile else [])
                for compiled in modes:
                    say(f"{name} macs={t} on {dev.type}{' compiled' if compiled else ''}: timing")
                    fns = {k: forward_fn(v, x, device=dev, batch=batch, compile=compiled) for k, v in variants.items()}
                    times = time_variants(fns, device=dev, rounds=args.rounds, per_round=args.per_round)
                    base_ms, base_min = times["dense"]["median_ms"], times["dense"]["min_ms"]
                    for k, v in variants.items():
                        m = dense_m if k == "dense" else measure(v, x)
                        speedup = base_ms / times[k]["median_ms"]
                        speedup_min = base_min / times[k]["min_ms"]
                        mac_ratio = dense_m.macs / m.macs
                        row = {
                            "model": name, "target": f"macs={t}", "variant": k, "device": dev.type, "batch": batch,
                            "mode": "compiled" if compiled else "eager", "macs": m.macs, "params": m.params,
                            "macs_removed": 1 - m.macs / dense_m.macs, "speedup": speedup, "efficiency": speedup / mac_ratio,
                            "speedup_min": speedup_min, "efficiency_min": speedup_min / mac_ratio,
                            "multiples_of_8": multiples_of(v, 8), **times[k],
                        }
                        if k == "prunekit":
                            row["round_to"] = pk_info.get("round_to")
                        if k == "latency":
                            row["round_to"] = lat_info.get("round_to")
                            row["latency_search"] = {key: lat_info["latency"][key] for key in ("achieved", "before_ms", "after_ms", "layer_timings", "noise")}
                            row["latency_search"]["seconds"] = lat_seconds
                        results["rows"].append(row)
                    print_block(results["rows"][-len(variants):])
    return results


def say(text: str) -> None:
    print(f"[speedup] {text}", file=sys.stderr, flush=True)


def print_block(rows: list[dict[str, Any]]) -> None:
    for r in rows:
        print(table_row(r), flush=True)


HEADER = ("| model | target | device | batch | mode | variant | MACs removed | ms median (spread) | ms min | "
          "speedup (median) | efficiency (median) | speedup (min) | efficiency (min) | round_to |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def table_row(r: dict[str, Any]) -> str:
    rt = r.get("round_to") or {}
    rt_text = "-" if r["variant"] in ("dense", "tp-default") else (str(rt.get("value")) if rt else "?")
    return (f"| {r['model']} | {r['target']} | {r['device']} | {r['batch']} | {r['mode']} | {r['variant']} | "
            f"{100 * r['macs_removed']:.1f}% | {r['median_ms']:.2f} ({100 * r['spread']:.0f}%) | {r['min_ms']:.2f} | "
            f"{r['speedup']:.2f}x | {r['efficiency']:.2f} | {r['speedup_min']:.2f}x | {r['efficiency_min']:.2f} | {rt_text} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--targets", nargs="+", type=float, default=[0.5, 0.75], help="fractions of MACs removed")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    parser.add_argument("--quick", action="store_true", help="fewer timing rounds and bisection steps (CPU smoke run)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds (default 7, quick 3)")
    parser.add_argument("--per-round", type=int, default=None, help="forward passes per variant per round (default 10, quick 5)")
    parser.add_argument("--bisect", type=int, default=None, help="bisection steps for Torch-Pruning's ratio (default 14, quick 10)")
    parser.add_argument("--layer-repeats", type=int, default=5, help="samples per layer timing in the latency search")
    parser.add_argument("--cpu-only", action="store_true", help="skip CUDA even when available")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows on CUDA")
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
