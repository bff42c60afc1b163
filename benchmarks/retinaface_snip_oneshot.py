"""One-shot SNIP / magnitude on the pretrained RetinaFace, no fine-tuning, by hand (until the
trainer and the SNIP family go through the detection task: issue 10).

Saliency |w * dL/dw| of the detection loss (BatchNorm in eval mode) summed over 4 augmented
batches of 4 tune images (split_val 0.5, 320 px, seed 0); one global ranking over the non-head
convs, minus the excluded globs; the lowest-ranked weights zeroed; evaluated on the 97 held-out
images at their own size. Results in docs/detection.md.

    PYTHONPATH=. python benchmarks/retinaface_snip_oneshot.py --data-root ../shared/data \
        --weights ../shared/weights/retinaface-mnet025-biubug6.pth --arm snip:0.3094 --arm snip:0.4128:ssh*
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import time

import torch

from prunekit import data, models, tasks


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--arm", action="append", required=True, help="SCORE:SPARSITY[:GLOB,GLOB] with SCORE snip or magnitude")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    task = tasks.create("detection")
    bundle = data.load("widerface", root=args.data_root, split_val=0.5, batch_size=4, train_size=320, seed=0)
    batches = []
    for batch in bundle.train:
        batches.append(batch)
        if len(batches) == 4:
            break
    base = models.create("retinaface_mnet025", weights=args.weights).eval()
    heads = {id(c) for c in base.head_convs()}
    convs = [(n, m) for n, m in base.named_modules() if isinstance(m, torch.nn.Conv2d) and id(m) not in heads]
    for batch in batches:
        sum(task.loss(base, batch).values()).backward()
    scores = {"snip": {n: (m.weight * m.weight.grad).abs().detach() for n, m in convs},
              "magnitude": {n: m.weight.abs().detach() for n, m in convs}}
    total = sum(p.numel() for p in base.parameters())
    for arm in args.arm:
        kind, sparsity, *rest = arm.split(":")
        exclude = rest[0].split(",") if rest and rest[0] else []
        t0 = time.time()
        model = models.create("retinaface_mnet025", weights=args.weights)
        mods = dict(model.named_modules())
        names = [n for n, _ in convs if not any(fnmatch.fnmatch(n, e) for e in exclude)]
        s = scores[kind]
        flat = torch.cat([s[n].flatten() for n in names])
        threshold = flat.kthvalue(int(round(float(sparsity) * flat.numel()))).values
        zeroed = 0
        with torch.no_grad():
            for n in names:
                keep = s[n] > threshold
                mods[n].weight.mul_(keep)
                zeroed += int((~keep).sum())
        result = task.evaluate(model, bundle.test)
        result.update(arm=arm, removed_of_all=round(zeroed / total, 4), seconds=round(time.time() - t0, 1))
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
