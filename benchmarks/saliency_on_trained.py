"""What the unstructured criteria remove from a TRAINED network: the measurement behind the
unstructured table of docs/results.md.

SNIP, GraSP and SynFlow were designed to prune at initialisation; the results rows apply them (and
magnitude pruning) to the fine-tuned ResNet-20 baseline. This script prunes that baseline with each
criterion at each sparsity of the table, without any fine-tuning, and records per criterion:

- `l1_removed`: the share of the weights' L1 mass (sum of |w| over the masked layers) it zeroes;
- `overlap_with_magnitude`: the share of its zeroed weights that global magnitude pruning at the
  same sparsity also zeroes;
- `top1_pruned`: top-1 % on `--images` test images (the same number from every class) right after pruning.

    python benchmarks/saliency_on_trained.py                    # writes results/saliency-on-trained.json
    python benchmarks/saliency_on_trained.py --images 2000 --threads 1

Needs the baseline's model (runs/results/resnet20-baseline/model.pt, from
`python benchmarks/run_results.py resnet20-baseline`) and PRUNEKIT_DATA. The scoring batches are
the first 8 training batches of 128 (seed 0), as the rows use.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "runs" / "results" / "resnet20-baseline" / "model.pt"
OUT = REPO / "results" / "saliency-on-trained.json"
CRITERIA = ("magnitude", "snip", "grasp", "synflow")
SPARSITIES = (0.5, 0.8, 0.9)


def _zero_masks(model) -> dict[str, "torch.Tensor"]:
    """Return {layer name: bool tensor, True where the weight is exactly zero} of every conv/linear layer."""
    from torch import nn

    return {name: m.weight.detach() == 0 for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def measure(*, images: int, threads: int) -> dict:
    """Return the record: per criterion and sparsity, L1 mass removed (fraction), overlap with
    magnitude's mask (fraction) and top-1 (%) right after pruning; plus the dense top-1 (%)."""
    import torch

    import prunekit
    from prunekit import io
    from prunekit.data.bundle import load
    from prunekit.train import evaluate

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    # the test split is stored class by class: its first images are one or two classes, so top-1 is
    # measured on `images` // 10 test images of every class (the loader's per-class subset)
    data = load("cifar10", batch_size=128, eval_batch_size=500, seed=0, augment=False, progress=False,
                subset={"test": images // 10})
    batches = []
    for i, batch in enumerate(data.train):
        if i >= 8:
            break
        batches.append(batch)
    dense = io.load(MODEL)
    dense_masks = _zero_masks(dense)
    weights = {name: m.weight.detach() for name, m in dense.named_modules() if name in dense_masks}
    l1_total = sum(w.abs().sum().item() for w in weights.values())
    rows: dict = {"dense_top1": evaluate(dense, data.test)["top1"], "criteria": {}}
    for s in SPARSITIES:
        magnitude_zero = None
        for criterion in CRITERIA:
            model = io.load(MODEL)
            options = {"schedule": "oneshot", "scope": "global"} if criterion == "magnitude" else {}
            if criterion in ("snip", "grasp"):
                options["batches"] = 8
            started = time.perf_counter()
            result = prunekit.prune(model, method=criterion, target=f"sparsity={s}", example_inputs=data.example_inputs(1),
                                    data=batches, **options)
            pruned = result.model
            zero = _zero_masks(pruned)
            removed = {name: zero[name] & ~dense_masks[name] for name in zero}
            l1_removed = sum(weights[n][removed[n]].abs().sum().item() for n in removed) / l1_total
            count = sum(int(r.sum()) for r in removed.values())
            if criterion == "magnitude":
                magnitude_zero = removed
            both = sum(int((removed[n] & magnitude_zero[n]).sum()) for n in removed)
            rows["criteria"].setdefault(criterion, {})[str(s)] = {
                "zeroed": count,
                "l1_removed": l1_removed,
                "overlap_with_magnitude": both / count if count else 0.0,
                "top1_pruned": evaluate(pruned, data.test)["top1"],
                "seconds": time.perf_counter() - started,
            }
            print(f"{criterion} sparsity={s}: {l1_removed:.1%} of the L1 mass removed, "
                  f"{both / max(count, 1):.1%} shared with magnitude, top-1 {rows['criteria'][criterion][str(s)]['top1_pruned']:.2f} %",
                  flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=2000, help="test images for top-1, the same number per class (default 2000)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    if not MODEL.is_file():
        print(f"{MODEL}: not found; run python benchmarks/run_results.py resnet20-baseline first", file=sys.stderr)
        return 2
    if args.images < 10:
        print(f"--images {args.images}: at least 10 (one per class)", file=sys.stderr)
        return 2
    from latency_record import machine

    from prunekit.atomic import atomic_write_text

    started = datetime.now(timezone.utc)
    rows = measure(images=args.images, threads=args.threads)
    record = {
        "what": "unstructured criteria applied to the fine-tuned ResNet-20 baseline, no fine-tuning after",
        "model": str(MODEL.relative_to(REPO)),
        "images": (args.images // 10) * 10,
        "threads": args.threads,
        "machine": machine(),
        "started_at": started.isoformat(timespec="seconds"),
        **rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
