"""How long pruning itself takes: dependency graph, target search and surgery, in CPU seconds.

For each model, `l1_filter` to `macs=0.5` with `round_to` given (as it is once the measured
multiple is cached), split into the steps of `structure.prune_to_target`:

- graph    `ChannelPlanner(model, x)`: Torch-Pruning's DependencyGraph traced once (it also
           records the layer shapes the planner counts with), the channel groups, the counting model;
- scores   the L1 importance of every group (Torch-Pruning's GroupMagnitudeImportance);
- search   `planner.plan(...)`: the ratio bisected and every group rounded up or down, all on the
           analytic count (no pruned copy is built);
- surgery  `structure.remove_planned`: the plan removed once through the same graph;

and `prunekit.prune` end to end (which also measures params/MACs before and after with
torch's FLOP counter). CPU time is `time.process_time()` of this process on `--threads` threads.

    python benchmarks/prune_overhead.py --threads 1
    python benchmarks/prune_overhead.py --models densenet169 --size 96
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import torch
import torchvision

import prunekit
from prunekit import structure
from prunekit.metrics import measure
from prunekit.planner import ChannelPlanner


def clock() -> tuple[float, float]:
    return time.process_time(), time.perf_counter()


def since(start: tuple[float, float]) -> tuple[float, float]:
    cpu, wall = clock()
    return cpu - start[0], wall - start[1]


def one(name: str, size: int, round_to: int, target: float) -> dict[str, object]:
    model = getattr(torchvision.models, name)().eval()
    x = torch.randn(1, 3, size, size)
    base = measure(model, x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out: dict[str, object] = {"model": name, "size": size}
        t = clock()
        planner = ChannelPlanner(model, x)
        out["graph"] = since(t)
        t = clock()
        scores = structure.group_scores(planner, structure.MagnitudeImportance(p=1))
        out["scores"] = since(t)
        t = clock()
        plan = planner.plan(scores, unit="macs", value=target, round_to=round_to, direction="best")
        out["search"] = since(t)
        t = clock()
        structure.remove_planned(model, x, planner=planner, plan=plan, scores=scores)
        out["surgery"] = since(t)
        out["total"] = tuple(sum(out[k][i] for k in ("graph", "scores", "search", "surgery")) for i in (0, 1))
        out["macs_removed"] = 1 - measure(model, x).macs / base.macs
        fresh = getattr(torchvision.models, name)().eval()
        t = clock()
        prunekit.prune(fresh, method="l1_filter", target=f"macs={target}", example_inputs=x, round_to=round_to)
        out["prune_api"] = since(t)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet50", "densenet121"])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--round-to", type=int, default=8)
    parser.add_argument("--target", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {args.threads} thread(s), load average "
          f"{' '.join(f'{v:.1f}' for v in os.getloadavg())}, torch {torch.__version__}")
    print("| model | input | graph | scores | search | surgery | all four (the pruning overhead) | prunekit.prune (with measure) | MACs removed |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.models:
        r = one(name, args.size, args.round_to, args.target)
        cell = lambda k: f"{r[k][0]:.2f} s ({r[k][1]:.2f} s wall)"  # noqa: E731
        print(f"| {name} | {args.size}x{args.size} | {cell('graph')} | {cell('scores')} | {cell('search')} | {cell('surgery')} | "
              f"**{r['total'][0]:.2f} s** ({r['total'][1]:.2f} s wall) | {cell('prune_api')} | {100 * r['macs_removed']:.1f}% |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
