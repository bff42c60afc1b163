"""Time several models side by side for a committed latency record (used by results_table.py and
detection_table.py): every model on every runtime in interleaved rounds, 1 thread, batch 1.

    from latency_record import time_models
    record = time_models({"dense": dense, "pruned": pruned}, torch.randn(1, 3, 32, 32))
    record["latency_ms"]["pruned"]["onnxruntime"]["median"]
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))


def machine() -> str:
    """Return "ARCH CPU model, N cores" of this machine."""
    name = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return f"{platform.machine()} {name}, {cores} cores"


def time_models(nets: dict[str, nn.Module], x: torch.Tensor, *, runtimes: tuple[str, ...] = ("eager", "onnxruntime"),
                rounds: int = 5, per_round: int = 5, log: Any = print) -> dict[str, Any]:
    """Return {"input", "threads", "batch", "rounds", "per_round", "machine", "measured_at", "load_average",
    "latency_ms": {name: {runtime: {"median", "spread"}}}} (milliseconds; spread = (p75 - p25) / median)."""
    from speedup import forward_fn, time_variants

    torch.set_num_threads(1)
    dev = torch.device("cpu")
    out: dict[str, Any] = {"input": "x".join(str(d) for d in x.shape), "threads": 1, "batch": int(x.shape[0]),
                           "rounds": rounds, "per_round": per_round, "machine": machine(),
                           "measured_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                           "load_average": [round(v, 2) for v in os.getloadavg()], "latency_ms": {}}
    for runtime in runtimes:
        fns = {k: forward_fn(v.eval(), x, device=dev, batch=int(x.shape[0]), runtime=runtime, threads=1) for k, v in nets.items()}
        timed = time_variants(fns, device=dev, rounds=rounds, per_round=per_round)
        for k, t in timed.items():
            out["latency_ms"].setdefault(k, {})[runtime] = {"median": round(t["median_ms"], 3), "spread": round(t["spread"], 3)}
        log(f"{runtime}: " + ", ".join(f"{k} {t['median_ms']:.2f} ms" for k, t in timed.items()))
    return out
