"""One rank's part of a `DeviceLoader`'s batches, for data-parallel training.

    train = ShardedDeviceLoader(bundle.train, info)     # info: prunekit.distributed.DistInfo

The loader's batch size is the **global** batch B. Every epoch draws the same order and the
same augmentation as the one-process loader (the same (seed, epoch) generator, consumed in the
same order); rank r of W then takes, from global batch j, the positions jB + r, jB + r + W, ...
(B / W of them), so the W local batches of step j hold exactly the images, crops and flips of
the one-process batch j. Every rank has `len(loader)` steps, as one process has; a last partial
batch (drop_last=False) is padded from the start of the epoch's order, as torch's
DistributedSampler pads. With one process this is the wrapped loader, batch for batch.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from prunekit.data.augment import crop_flip, random_params
from prunekit.data.loaders import DeviceLoader
from prunekit.distributed import DistInfo, local_batch_size, shard


class ShardedDeviceLoader:
    """Rank `info.rank`'s local batches (B / world_size images) of `loader`'s global batches."""

    def __init__(self, loader: DeviceLoader, info: DistInfo) -> None:
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
