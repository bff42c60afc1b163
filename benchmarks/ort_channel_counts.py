"""Why a pruned network can run slower than its dense one on ONNX Runtime: the channel counts it keeps.

For each CIFAR model (random weights: timing does not depend on the values), prune a copy to half
the MACs with `l1_filter` keeping channel counts that are multiples of 1 (any count, as slimming and
snip_channel keep by default), 8 and 16, and time the dense model and the three pruned ones side by
side in interleaved rounds on eager PyTorch and ONNX Runtime (1 thread, batch 1, 32x32). Writes the
record docs/results.md's double-pruning note is rendered from:

    python benchmarks/ort_channel_counts.py                        # results/ort-channel-counts.json
    python benchmarks/ort_channel_counts.py --models resnet20 --out /tmp/o.json --rounds 3
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from latency_record import time_models  # noqa: E402

import prunekit  # noqa: E402
from prunekit import metrics, models  # noqa: E402
from prunekit.atomic import atomic_write_text  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "results" / "ort-channel-counts.json"
MODELS = {"mobilenet_v2": True, "mobilenet_v3_small": True, "resnet20": False, "vgg11_cifar": False}  # name: small_input
MULTIPLES = (1, 8, 16)


def measure(names: list[str], *, rounds: int, per_round: int, log: Any = print) -> dict[str, Any]:
    """Return {"models": {name: {"variants": {variant: {"macs", "params", "channels_not_multiple_of_8",
    "convs"}}, "timing": time_models' record}}}: milliseconds in the timing, counts as integers."""
    torch.manual_seed(0)
    x = torch.randn(1, 3, 32, 32)
    out: dict[str, Any] = {"target": "macs=0.5", "method": "l1_filter", "models": {}}
    for name in names:
        dense = models.create(name, num_classes=10, small_input=MODELS.get(name, False)).eval()
        nets = {"dense": dense}
        for k in MULTIPLES:
            nets[f"round_to={k}"] = prunekit.prune(copy.deepcopy(dense), method="l1_filter", target="macs=0.5",
                                                   example_inputs=x, round_to=k).model.eval()
        variants = {}
        for key, net in nets.items():
            convs = [m.out_channels for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
            variants[key] = {"params": sum(p.numel() for p in net.parameters()),
                             "macs": metrics.measure(net, x).macs,
                             "convs": len(convs), "channels_not_multiple_of_8": sum(c % 8 != 0 for c in convs)}
        log(f"{name}: " + ", ".join(f"{k} {v['channels_not_multiple_of_8']}/{v['convs']} convs off 8" for k, v in variants.items()))
        out["models"][name] = {"variants": variants, "timing": time_models(nets, x, rounds=rounds, per_round=per_round,
                                                                             log=lambda s, n=name: log(f"{n} {s}"))}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--per-round", type=int, default=20)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    record = measure(args.models, rounds=args.rounds, per_round=args.per_round)
    atomic_write_text(args.out, json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
