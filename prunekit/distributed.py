"""Data-parallel helpers over torch.distributed, in nanoGPT's spirit: read it top to bottom.

    info = distributed.init_from_env(device="cuda")     # torchrun's RANK/WORLD_SIZE/LOCAL_RANK/MASTER_*
    model.to(info.device)
    distributed.broadcast_module_state(model)            # every rank starts from rank 0's weights
    ddp = distributed.wrap_ddp(model, info)              # re-wrap after any channel surgery
    for epoch in range(epochs):
        order = distributed.shard(len(dataset), epoch=epoch, seed=seed, info=info)   # this rank's slice
        ...
    sums = distributed.reduce_metrics({"loss": loss_sum, "correct": correct, "images": seen})
    if distributed.is_main():
        write the run directory

Launched without torchrun (no RANK / WORLD_SIZE in the environment) `init_from_env` returns a
one-process `DistInfo` and every collective below is a no-op that returns its input, so the
same code serves both. CPU runs use the gloo backend, CUDA runs NCCL (one GPU per local rank).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from prunekit.errors import UserError

ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: its global rank, the number of processes, its rank on this node, its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        """True when more than one process takes part."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0, the one process that writes files and prints."""
        return self.rank == 0


def launched() -> bool:
    """True when torchrun (or another launcher setting RANK and WORLD_SIZE) started this process."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise UserError(f"environment variable {name}={value!r} is not an integer (set by torchrun)") from None


def init_from_env(device: str | torch.device | None = None, *, timeout_s: float = 1800.0) -> DistInfo:
    """Join the process group torchrun describes in the environment and return this process's `DistInfo`.

    `device` is "cpu", "cuda" or None (CUDA when available). CUDA runs use NCCL with device
    `cuda:LOCAL_RANK`; CPU runs use gloo. Without torchrun's variables nothing is initialised and a
    one-process `DistInfo` on `device` comes back. Calling it again returns the same answer.
    """
    kind = torch.device(device).type if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise UserError("device cuda was asked for but CUDA is not available here")
    if not launched():
        dev = torch.device("cuda", torch.cuda.current_device()) if kind == "cuda" else torch.device("cpu")
        return DistInfo(device=dev)
    rank, world = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1)
    local_rank = _env_int("LOCAL_RANK", rank)
    if kind == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"local rank {local_rank} has no GPU (this node has {torch.cuda.device_count()}); "
                            "launch at most one process per GPU")
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if not dist.is_initialized():
        backend = "nccl" if kind == "cuda" else "gloo"
        kwargs: dict[str, Any] = {"backend": backend, "timeout": timedelta(seconds=timeout_s)}
        if kind == "cuda":
            kwargs["device_id"] = dev  # binds NCCL eagerly to this rank's GPU
        dist.init_process_group(**kwargs)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def destroy() -> None:
    """Leave the process group (end of the run); a no-op when none was joined."""
    if dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    """This process's global rank (0 when not distributed)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    """The number of processes (1 when not distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    """True on rank 0 and in a one-process run: the process that writes files, checkpoints and reports."""
    return get_rank() == 0


def barrier() -> None:
    """Wait until every rank gets here (a no-op in one process)."""
    if _active():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


@contextmanager
def main_first() -> Iterator[None]:
    """Run the block on rank 0 first, then on the others (e.g. decode a dataset cache once)."""
    if not is_main():
        barrier()
    try:
        yield
    finally:
        if is_main():
            barrier()


def _comm_device() -> torch.device:
    """The device collectives run on: the current GPU under NCCL, else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Return rank `src`'s `obj` on every rank (any picklable value: channel choices, a threshold, a decision)."""
    if not _active():
        return obj
    box = [obj if get_rank() == src else None]
    dist.broadcast_object_list(box, src=src, device=_comm_device())
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    """Return every rank's `obj`, in rank order (a one-element list in one process)."""
    if not _active():
        return [obj]
    out: list[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_tensors_(tensors: Mapping[str, torch.Tensor] | Sequence[torch.Tensor], src: int = 0) -> Any:
    """Overwrite every tensor (a dict's values or a list) with rank `src`'s, in place; return `tensors`.

    For masks and scores of the same shapes on every rank (e.g. `masks.apply_masks`' input):
    one broadcast per tensor (a dict's in sorted key order), no pickling. Bool tensors go through uint8.
    """
    if not _active():
        return tensors
    dev = _comm_device()
    with torch.no_grad():
        for tensor in ([tensors[k] for k in sorted(tensors)] if isinstance(tensors, Mapping) else tensors):  # same order on every rank
            if tensor.device == dev and tensor.is_contiguous() and tensor.dtype != torch.bool:
                dist.broadcast(tensor, src=src)
            else:
                tmp = tensor.detach().to(dev, dtype=torch.uint8 if tensor.dtype == torch.bool else tensor.dtype).contiguous()
                dist.broadcast(tmp, src=src)
                tensor.copy_(tmp.to(tensor.dtype))
    return tensors


def _sum_(tensor: torch.Tensor) -> torch.Tensor:
    if not _active():
        return tensor
    op = dist.ReduceOp.SUM
    dev = _comm_device()
    if tensor.device == dev and tensor.is_contiguous():
        dist.all_reduce(tensor, op=op)
        return tensor
    tmp = tensor.detach().to(dev).contiguous()
    dist.all_reduce(tmp, op=op)
    tensor.copy_(tmp)
    return tensor


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over all ranks in place and return it (e.g. SNIP scores, correct counts)."""
    return _sum_(tensor)


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Average a floating-point `tensor` over all ranks in place and return it (e.g. sensitivities, gradients)."""
    if not tensor.is_floating_point():
        raise TypeError(f"all_reduce_mean needs a floating-point tensor, got {tensor.dtype}; sum integers with all_reduce_sum")
    _sum_(tensor)
    if _active():
        tensor.div_(get_world_size())
    return tensor


def reduce_metrics(sums: Mapping[str, float | int | torch.Tensor]) -> dict[str, float]:
    """Return `sums` (per-rank sums: loss * images, correct, images) summed over all ranks, as floats.

    One all-reduce in float64 for the whole dict. Every rank must pass the same keys; divide
    afterwards (`top1 = 100 * out["correct"] / out["images"]`), never average averages.
    """
    keys = sorted(sums)
    if not _active():
        return {k: float(sums[k]) for k in keys}
    names = all_gather_object(keys)
    if any(n != keys for n in names):
        raise RuntimeError(f"reduce_metrics: ranks passed different keys: {names}")
    values = torch.tensor([float(sums[k]) for k in keys], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return dict(zip(keys, values.tolist()))


def _shapes(model: nn.Module) -> list[tuple[str, tuple[int, ...], str]]:
    return [(k, tuple(v.shape), str(v.dtype)) for k, v in model.state_dict().items()]


def broadcast_module_state(model: nn.Module, src: int = 0) -> nn.Module:
    """Copy rank `src`'s parameters and buffers (masks, BN statistics) into `model` on every rank; return it.

    The architectures must already agree (surgery is replayed on every rank): a rank whose state
    differs in names or shapes from rank `src`'s raises a RuntimeError naming the first difference,
    instead of hanging in a collective of the wrong size.
    """
    if not _active():
        return model
    model = unwrap(model)
    every = all_gather_object(_shapes(model))  # every rank checks every rank: all raise together, none hangs
    for rank, theirs in enumerate(every):
        if theirs != every[src]:
            first = next((f"{b} vs {a}" for a, b in zip(every[src], theirs) if a != b),
                         f"{len(theirs)} vs {len(every[src])} entries")
            raise RuntimeError(f"rank {rank}'s model differs from rank {src}'s ({first}): "
                               "channel surgery must run identically on every rank before broadcasting")
    broadcast_tensors_(list(model.state_dict().values()), src=src)  # channels_last, bool: through a dense copy
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """Return the module inside a DistributedDataParallel wrapper (or `model` itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def wrap_ddp(model: nn.Module, info: DistInfo, **kwargs: Any) -> nn.Module:
    """Return `model` wrapped in DistributedDataParallel for `info` (the model itself in one process).

    Pass the unwrapped model (a wrapped one is unwrapped first): after channel surgery, masks or a
    low-rank replacement, call this again so DDP's buckets match the new parameters. Hooks, the
    optimizer and surgery should always see `unwrap(model)`; only the forward pass goes through the
    wrapper. `kwargs` go to DDP (e.g. find_unused_parameters=True for models with idle branches).
    """
    model = unwrap(model)
    if not info.distributed:
        return model
    if info.device.type == "cuda":
        kwargs.setdefault("device_ids", [info.device.index])
        kwargs.setdefault("output_device", info.device.index)
    return nn.parallel.DistributedDataParallel(model, **kwargs)


def shard(
    indices_or_len: int | Sequence[int] | torch.Tensor,
    *,
    epoch: int,
    seed: int = 0,
    info: DistInfo | None = None,
    shuffle: bool = True,
    drop_last: bool = False,
    pad: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Return this rank's indices for `epoch`, with torch's DistributedSampler semantics.

    The same permutation on every rank (a generator seeded with seed + epoch, as DistributedSampler
    does, unless `generator` is given: pass the loader's own per-epoch generator to keep the order
    of a one-process run), then padded by repeating its start (or, with `drop_last`, cut) to a
    multiple of the world size, then every world_size-th element from this rank's position. Every
    rank gets the same number of indices; with one process and shuffle=False it is the identity.
    Because rank r takes positions r, r + W, ..., the j-th local batches of size B / W on all ranks
    together hold exactly positions [j B, (j + 1) B) of the global order: the global batch B of a
    one-process run. `pad=False` (evaluation: every example exactly once, summed with
    `reduce_metrics`) skips padding and cutting; ranks then differ in length by at most one.
    """
    info = info or DistInfo(rank=get_rank(), world_size=get_world_size())
    base = torch.arange(indices_or_len) if isinstance(indices_or_len, int) else torch.as_tensor(indices_or_len, dtype=torch.long)
    n, world, rank = base.numel(), info.world_size, info.rank
    if shuffle:
        gen = generator if generator is not None else torch.Generator().manual_seed(seed + epoch)
        base = base[torch.randperm(n, generator=gen)]
    if not pad:
        return base[rank::world]
    if drop_last and n % world:
        per_rank = math.ceil((n - world) / world)
    else:
        per_rank = math.ceil(n / world)
    total = per_rank * world
    if total > n:
        if n == 0:
            raise UserError("cannot shard an empty dataset")
        base = base.repeat(math.ceil(total / n))[:total]
    else:
        base = base[:total]
    return base[rank:total:world]


def local_batch_size(global_batch: int, info: DistInfo) -> int:
    """Return the per-rank batch for a global batch `global_batch`; it must divide evenly by the world size."""
    if global_batch % info.world_size:
        raise UserError(f"batch size {global_batch} is the global batch and must be a multiple of the "
                        f"{info.world_size} processes (each takes batch / processes)")
    return global_batch // info.world_size
