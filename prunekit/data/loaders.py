"""Batch iterables for training and evaluation.

`DeviceLoader` serves an in-memory `ArrayDataset` that already sits on the device: shuffling,
cropping, flipping and normalising happen there, a whole batch at a time. `WorkerLoader` wraps a
torch DataLoader (workers decode and transform images) and normalises on the device.

Both reshuffle every epoch from a generator seeded by (seed, epoch), so epoch e sees the same
order and augmentation whether the run was interrupted or not; `set_epoch`, `state_dict` and
`load_state_dict` let the trainer checkpoint and restore that position.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader

from prunekit.data.arrays import ArrayDataset
from prunekit.data.augment import Normalize, crop_flip, random_params
from prunekit.data.folder import FolderDataset


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """Return a CPU generator for epoch `epoch` of a loader seeded with `seed`."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) % (2**63))


class _Epochs:
    """Epoch bookkeeping shared by the loaders: an explicit `set_epoch`, else one more per pass."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass use the order and augmentation of `epoch` (0-based)."""
        self.epoch = int(epoch)

    def state_dict(self) -> dict:
        """Return the loader's position: {"seed", "epoch"} (the next pass's epoch)."""
        return {"seed": self.seed, "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        """Restore a position saved by `state_dict`."""
        self.seed, self.epoch = int(state["seed"]), int(state["epoch"])

    def _next_generator(self) -> torch.Generator:
        gen = epoch_generator(self.seed, self.epoch)
        self.epoch += 1
        return gen


class DeviceLoader(_Epochs):
    """Batches (float normalised N x C x H x W, int64 labels) from a dataset held on the device."""

    def __init__(
        self,
        dataset: ArrayDataset,
        *,
        batch_size: int,
        normalize: Normalize,
        shuffle: bool = False,
        drop_last: bool = False,
        augment: bool = False,
        pad: int = 4,
        flip: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__(seed)
        self.dataset = dataset
        self.batch_size = batch_size
        self.normalize = normalize
        self.shuffle = shuffle
        self.drop_last = drop_last and len(dataset) >= batch_size  # never zero batches
        self.augment, self.pad, self.flip = augment, pad, flip

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        images, targets = self.dataset.images, self.dataset.targets
        n = images.shape[0]
        gen = self._next_generator() if self.shuffle or self.augment else None
        order = torch.randperm(n, generator=gen).to(images.device) if self.shuffle else None
        if self.augment:  # one draw per epoch, one small copy to the device
            oy, ox, flips = (t.to(images.device) for t in random_params(n, pad=self.pad, flip=self.flip, generator=gen))
        for b in range(len(self)):
            sl = slice(b * self.batch_size, (b + 1) * self.batch_size)
            idx = order[sl] if order is not None else None
            x = images[idx] if idx is not None else images[sl]
            y = targets[idx] if idx is not None else targets[sl]
            if self.augment:
                x = crop_flip(x, offsets_y=oy[sl], offsets_x=ox[sl], flips=flips[sl], pad=self.pad)
                if x.device.type == "cpu":  # CPU models run NCHW; copying uint8 is 4x cheaper than float
                    x = x.contiguous()
            yield self.normalize(x), y


class WorkerLoader(_Epochs):
    """Batches from a `FolderDataset` decoded and transformed by DataLoader workers, normalised on the device."""

    def __init__(
        self,
        dataset: FolderDataset,
        *,
        batch_size: int,
        normalize: Normalize,
        device: torch.device,
        shuffle: bool = False,
        drop_last: bool = False,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(seed)
        self.dataset = dataset
        self.batch_size = batch_size
        self.normalize = normalize
        self.device = device
        self.shuffle = shuffle
        self.drop_last = drop_last and len(dataset) >= batch_size
        self.num_workers = num_workers

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # a fresh DataLoader per epoch: its workers are seeded from this epoch's generator, so the
        # order and the random crops of epoch e do not depend on earlier epochs
        loader = DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            shuffle=self.shuffle,
            drop_last=self.drop_last,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            generator=self._next_generator(),
            prefetch_factor=4 if self.num_workers else None,
        )
        for x, y in loader:
            yield self.normalize(x.to(self.device, non_blocking=True)), y.to(self.device, non_blocking=True)
