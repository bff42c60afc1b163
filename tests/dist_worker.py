"""Run by tests/test_distributed.py under torchrun (2 gloo processes): every collective once, then a tiny DDP training.

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/dist_worker.py OUT_DIR

Each rank writes OUT_DIR/rank<r>.json with what it saw; rank 0 also writes OUT_DIR/ddp.pt (the
trained weights). `train_tiny` is importable so the test runs the one-process reference itself.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

from prunekit import distributed

SAMPLES, GLOBAL_BATCH, EPOCHS = 32, 8, 2


def tiny_cnn() -> nn.Module:
    """Conv-ReLU-conv-ReLU-pool-linear, no BatchNorm: DDP's averaged gradient is then the global batch's."""
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


def synthetic(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(SAMPLES, 3, 8, 8, generator=gen), torch.randint(0, 4, (SAMPLES,), generator=gen)


def train_tiny(info: distributed.DistInfo, *, init_seed: int = 0) -> tuple[dict[str, torch.Tensor], list[float]]:
    """Train `tiny_cnn` for EPOCHS epochs at global batch GLOBAL_BATCH (each rank GLOBAL_BATCH / world); return weights and per-epoch mean loss."""
    torch.manual_seed(init_seed)
    model = tiny_cnn()
    distributed.broadcast_module_state(model)
    ddp = distributed.wrap_ddp(model, info)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    x, y = synthetic()
    local = distributed.local_batch_size(GLOBAL_BATCH, info)
    losses = []
    for epoch in range(EPOCHS):
        order = distributed.shard(SAMPLES, epoch=epoch, seed=3, info=info)
        loss_sum = torch.zeros((), dtype=torch.float64)
        for b in range(0, len(order), local):
            idx = order[b:b + local]
            loss = nn.functional.cross_entropy(ddp(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach().double() * len(idx)
        sums = distributed.reduce_metrics({"loss": loss_sum, "images": len(order)})
        losses.append(sums["loss"] / sums["images"])
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, losses


def main(out: Path) -> None:
    info = distributed.init_from_env("cpu")
    r, w = info.rank, info.world_size
    seen: dict = {"rank": r, "world_size": w, "local_rank": info.local_rank, "device": str(info.device), "is_main": distributed.is_main()}
    seen["from0"] = distributed.broadcast_object({"who": r, "choice": [r, r * 10]}, src=0)
    seen["from1"] = distributed.broadcast_object(f"rank {r}", src=w - 1)
    seen["gathered"] = distributed.all_gather_object(r * r)
    seen["sum"] = distributed.all_reduce_sum(torch.full((3,), float(r + 1))).tolist()
    seen["sum_int"] = distributed.all_reduce_sum(torch.tensor([r + 1, 2 * r])).tolist()
    seen["mean"] = distributed.all_reduce_mean(torch.tensor([float(r), 10.0 * r])).tolist()
    seen["metrics"] = distributed.reduce_metrics({"correct": r + 1, "images": 10, "loss": torch.tensor(0.5 * r)})
    seen["shard"] = distributed.shard(10, epoch=3, seed=7, info=info).tolist()
    seen["shard_drop"] = distributed.shard(11, epoch=0, seed=1, info=info, drop_last=True).tolist()
    seen["shard_plain"] = distributed.shard([5, 6, 7, 8, 9], epoch=0, info=info, shuffle=False).tolist()
    seen["shard_eval"] = distributed.shard(5, epoch=0, info=info, shuffle=False, pad=False).tolist()

    masks = {"a": torch.full((2, 3), float(r)), "b": torch.tensor([r == 0, r == 1]), "c": torch.ones(4, 2).t() * r}
    if r == 1:
        masks = dict(reversed(masks.items()))  # insertion order may differ across ranks
    distributed.broadcast_tensors_(masks, src=1)  # a bool and a non-contiguous tensor too
    seen["masks"] = {k: v.tolist() for k, v in masks.items()}
    torch.manual_seed(100 + r)  # different weights on each rank, then rank 0's everywhere
    model = tiny_cnn()
    distributed.broadcast_module_state(model)
    seen["state_sum"] = float(sum(v.double().sum() for v in model.state_dict().values()))
    wrong = nn.Linear(3, 4 + r)  # an architecture that differs across ranks must raise on every rank, not hang
    try:
        distributed.broadcast_module_state(wrong)
        seen["mismatch"] = None
    except RuntimeError as err:
        seen["mismatch"] = str(err)

    distributed.barrier()
    t0 = time.perf_counter()
    state, losses = train_tiny(info)
    seen["train_s"], seen["losses"] = time.perf_counter() - t0, losses
    if distributed.is_main():
        torch.save(state, out / "ddp.pt")
    (out / f"rank{r}.json").write_text(json.dumps(seen))
    distributed.destroy()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
