"""One rank's part of a training loader's batches, for data-parallel training.

    train = sharded(bundle.train, info)     # info: prunekit.distributed.DistInfo; the loader itself in one process

The loader's batch size is the **global** batch B. Every epoch draws the same order and the
same augmentation as the one-process loader (the same (seed, epoch) generator, consumed in the
same order); rank r of W then takes, from global batch j, the positions jB + r, jB + r + W, ...
(B / W of them), so the W local batches of step j hold exactly the images, crops and flips of
the one-process batch j. Every rank has `len(loader)` steps, as one process has; a last partial
batch (drop_last=False) is padded from the start of the epoch's order, as torch's
DistributedSampler pads. With one process this is the wrapped loader, batch for batch.

A `WorkerLoader` (images decoded by DataLoader workers) gets the same split of positions of the
epoch's permutation; its random crops happen in the workers, seeded per rank, so they are
statistically, not bit for bit, those of one process.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader

from prunekit.data.augment import crop_flip, random_params
from prunekit.data.loaders import DeviceLoader, WorkerLoader
from prunekit.distributed import DistInfo, local_batch_size, shard


def sharded(loader: Any, info: DistInfo) -> Any:
    """Return `loader` itself in one process, else this rank's part of it (DeviceLoader or WorkerLoader)."""
    if not info.distributed:
        return loader
    if isinstance(loader, DeviceLoader):
        return ShardedDeviceLoader(loader, info)
    if isinstance(loader, WorkerLoader):
        return ShardedWorkerLoader(loader, info)
    raise TypeError(f"cannot shard a {type(loader).__name__} across processes (DeviceLoader or WorkerLoader)")


class _Sharded:
    """What both sharded loaders share: the wrapped loader's length, epoch and state, and the split of positions."""

    def __init__(self, loader: Any, info: DistInfo) -> None:
        self.loader = loader
        self.info = info
        self.local_batch = local_batch_size(loader.batch_size, info)

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def state_dict(self) -> dict:
        """The wrapped loader's position: the same on every rank and for any number of ranks."""
        return self.loader.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.loader.load_state_dict(state)

    def positions(self) -> torch.Tensor:
        """This rank's positions in the epoch's order, step after step (len(self) * B / W of them)."""
        total = len(self.loader) * self.loader.batch_size
        return shard(total, epoch=0, info=self.info, shuffle=False) % len(self.loader.dataset)


class ShardedDeviceLoader(_Sharded):
    """Rank `info.rank`'s local batches (B / world_size images) of a DeviceLoader's global batches."""

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        lo = self.loader
        images, targets = lo.dataset.images, lo.dataset.targets
        n = images.shape[0]
        gen = lo._next_generator() if lo.shuffle or lo.augment else None  # the one-process draws, in its order
        order = torch.randperm(n, generator=gen).to(images.device) if lo.shuffle else torch.arange(n, device=images.device)
        if lo.augment:
            oy, ox, flips = random_params(n, pad=lo.pad, flip=lo.flip, generator=gen)
        pos_all = self.positions()
        for step in range(len(self)):
            pos = pos_all[step * self.local_batch:(step + 1) * self.local_batch]
            idx = order[pos.to(images.device)]
            x, y = images[idx], targets[idx]
            if lo.augment:
                x = crop_flip(x, offsets_y=oy[pos], offsets_x=ox[pos], flips=flips[pos], pad=lo.pad)
                if x.device.type == "cpu":
                    x = x.contiguous()
            yield lo.normalize(x), y


class ShardedWorkerLoader(_Sharded):
    """Rank `info.rank`'s local batches of a WorkerLoader: its positions of the epoch's permutation, decoded by workers."""

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        lo = self.loader
        gen = lo._next_generator()
        n = len(lo.dataset)
        order = torch.randperm(n, generator=gen) if lo.shuffle else torch.arange(n)
        indices = order[self.positions()].tolist()
        seed = int(torch.randint(0, 2**62, (1,), generator=gen)) + self.info.rank  # workers' crops differ per rank
        loader = DataLoader(lo.dataset, batch_size=self.local_batch, sampler=indices, num_workers=lo.num_workers,
                            pin_memory=lo.device.type == "cuda", generator=torch.Generator().manual_seed(seed),
                            prefetch_factor=4 if lo.num_workers else None)
        for x, y in loader:
            yield lo.normalize(x.to(lo.device, non_blocking=True)), y.to(lo.device, non_blocking=True)
