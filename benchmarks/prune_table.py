"""Before/after table for `prunekit.prune` on ImageNet-size classifiers.

For each model: params, MACs and measured latency (median) of the dense model and of the model
pruned by l1_filter to a MACs target, side by side in one run. CPU at batch 1 always; GPU at a
large batch (bf16, channels_last) when CUDA is available.

    python benchmarks/prune_table.py                       # resnet18 resnet50 mobilenet_v2 at macs=0.5
    python benchmarks/prune_table.py --models resnet18 --target macs=0.75 --round-to 8
"""

from __future__ import annotations

import argparse
import copy

import torch

import prunekit
from prunekit import bench, models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet18", "resnet50", "mobilenet_v2"])
    parser.add_argument("--target", default="macs=0.5")
    parser.add_argument("--method", default="l1_filter")
    parser.add_argument("--round-to", type=int, default=None, help="channel multiple (default: the method's, auto)")
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for the CPU latency (default 2)")
    parser.add_argument("--gpu-batch", type=int, default=128)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
    x = torch.randn(1, 3, args.input_size, args.input_size)
    header = ["model", "params", "MACs", f"CPU ms (b1, {args.threads} thr)"] + ([f"GPU ms (b{args.gpu_batch}, bf16)"] if cuda else [])
    print(f"# {args.method} to {args.target}, input {args.input_size}x{args.input_size}, round_to={args.round_to or 'auto (default)'}")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name in args.models:
        dense = models.create(name, num_classes=1000).eval()
        result = prunekit.prune(copy.deepcopy(dense), method=args.method, target=args.target, example_inputs=x, round_to=args.round_to)
        rows = []
        for label, net, m in (("dense", dense, result.before), ("pruned", result.model, result.after)):
            cpu = bench.latency(net, x, device="cpu", batch_size=1, repeats=args.repeats)
            cells = [f"{name} {label}", f"{m.params / 1e6:.2f}M", f"{m.macs / 1e9:.3f}G", f"{cpu:.1f}"]
            if cuda:
                cells.append(f"{bench.latency(net, x, device='cuda', batch_size=args.gpu_batch, repeats=args.repeats):.2f}")
            rows.append(cells)
        for cells in rows:
            print("| " + " | ".join(cells) + " |")
        ratio = [f"{float(rows[1][i]) / float(rows[0][i]):.3f}x" for i in range(3, len(header))]
        print(f"| {name} pruned/dense | {result.after.params / result.before.params:.3f}x | {result.after.macs / result.before.macs:.3f}x | " + " | ".join(ratio) + " |")


if __name__ == "__main__":
    main()
