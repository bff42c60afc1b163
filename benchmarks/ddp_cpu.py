"""Data-parallel training on CPU processes (gloo) against one process, at the same global batch.

Trains a model for a fixed number of SGD steps on synthetic 32x32 data, once in one process and
once under torchrun with N processes (each with global batch / N), through
`prunekit.distributed` (shard, wrap_ddp, reduce_metrics). Prints wall time (whole process:
start-up included), the training loop's time, and how far the N-process weights are from the
one-process weights. Without BatchNorm the two agree to float32 rounding; with BatchNorm each
rank normalises with its own batch statistics, so they drift apart a little (this is what DDP
does without SyncBatchNorm, which PyTorch supports on GPUs only).

    python benchmarks/ddp_cpu.py                              # resnet20, 2 processes, 30 steps, batch 64
    python benchmarks/ddp_cpu.py --model tiny --steps 10      # the test's BatchNorm-free CNN
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn


def build(name: str) -> nn.Module:
    if name == "tiny":
        return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
    from prunekit import models

    return models.create(name, num_classes=10)


def worker(args: argparse.Namespace) -> None:
    from prunekit import distributed

    info = distributed.init_from_env("cpu")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build(args.model)
    distributed.broadcast_module_state(model)
    ddp = distributed.wrap_ddp(model, info)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    n = args.steps * args.batch
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(n, 3, 32, 32, generator=gen), torch.randint(0, 10, (n,), generator=gen)
    order = distributed.shard(n, epoch=0, seed=0, info=info)
    local = distributed.local_batch_size(args.batch, info)
    distributed.barrier()
    t0 = time.perf_counter()
    loss_sum = torch.zeros((), dtype=torch.float64)
    for b in range(0, len(order), local):
        idx = order[b:b + local]
        loss = nn.functional.cross_entropy(ddp(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_sum += loss.detach().double() * len(idx)
    sums = distributed.reduce_metrics({"loss": loss_sum, "images": len(order)})
    loop_s = time.perf_counter() - t0
    if distributed.is_main():
        out = Path(args.out)
        torch.save(model.state_dict(), out / "weights.pt")
        (out / "result.json").write_text(json.dumps({"loop_s": loop_s, "loss": sums["loss"] / sums["images"],
                                                     "world_size": info.world_size}))
    distributed.destroy()


def launch(args: argparse.Namespace, nproc: int, threads: int, out: Path) -> dict:
    from prunekit.cli.launch import torchrun_command

    here = [__file__, "--worker", "--out", str(out), "--model", args.model, "--steps", str(args.steps),
            "--batch", str(args.batch), "--threads", str(threads)]
    cmd = torchrun_command(here, nproc) if nproc > 1 else [sys.executable, *here]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = str(threads)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env)
    result = json.loads((out / "result.json").read_text())
    result["wall_s"] = time.perf_counter() - t0
    result["weights"] = torch.load(out / "weights.pt", weights_only=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet20", help="a prunekit model name, or 'tiny' (no BatchNorm)")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=64, help="the global batch")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        configs = [(1, 1), (1, args.nproc), (args.nproc, 1)]  # (processes, threads each)
        results = {}
        for procs, threads in configs:
            out = Path(tmp, f"{procs}x{threads}")
            out.mkdir()
            results[(procs, threads)] = launch(args, procs, threads, out)
        ref = results[(1, 1)]["weights"]
        keys = [k for k, v in ref.items() if v.is_floating_point()]
        norm = torch.cat([ref[k].double().flatten() for k in keys]).norm()
        for (procs, threads), r in results.items():
            delta = torch.cat([(r["weights"][k].double() - ref[k].double()).flatten() for k in keys])
            rows.append(f"| {procs} x {threads} thread(s) | {r['wall_s']:.1f} | {r['loop_s']:.2f} | {r['loss']:.5f} "
                        f"| {delta.abs().max().item():.2e} | {(delta.norm() / norm).item():.2e} |")
    print(f"{args.model}, {args.steps} steps at global batch {args.batch}, gloo on CPU")
    print("| processes | wall s (with start-up) | training loop s | mean loss | weights vs 1 x 1: max abs diff | relative L2 diff |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
