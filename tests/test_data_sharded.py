"""ShardedDeviceLoader: W ranks' local batches of step j are, together, the one-process batch j (images, crops, flips)."""

from __future__ import annotations

import pytest
import torch

from prunekit.data.arrays import ArrayDataset
from prunekit.data.augment import Normalize
from prunekit.data.loaders import DeviceLoader
from prunekit.data.sharded import ShardedDeviceLoader
from prunekit.distributed import DistInfo
from prunekit.errors import UserError


def loader(n: int, *, drop_last: bool, seed: int = 4) -> DeviceLoader:
    gen = torch.Generator().manual_seed(0)
    ds = ArrayDataset(torch.randint(0, 256, (n, 3, 6, 6), dtype=torch.uint8, generator=gen), torch.arange(n), ["c"] * n)
    return DeviceLoader(ds, batch_size=8, normalize=Normalize((0.5,) * 3, (0.25,) * 3, torch.device("cpu")),
                        shuffle=True, augment=True, pad=2, drop_last=drop_last, seed=seed)


@pytest.mark.parametrize("n, drop_last", [(36, True), (36, False), (32, False)])
@pytest.mark.parametrize("world", [1, 2, 4])
def test_local_batches_make_the_global_batch(n, drop_last, world):
    epoch = 3
    single = loader(n, drop_last=drop_last)
    single.set_epoch(epoch)
    expected = list(single)
    ranks = []
    for r in range(world):
        sharded = ShardedDeviceLoader(loader(n, drop_last=drop_last), DistInfo(rank=r, world_size=world))
        sharded.set_epoch(epoch)
        assert len(sharded) == len(single)
        ranks.append(list(sharded))
    assert all(len(batches) == len(expected) for batches in ranks)
    for step, (x, y) in enumerate(expected):
        local = [ranks[r][step] for r in range(world)]
        assert {lx.shape[0] for lx, _ in local} == {8 // world}  # equal on every rank, padded if short
        # rank r's k-th image is position r + k * world of the global batch
        ux = torch.stack([local[r][0][k] for k in range(8 // world) for r in range(world)])
        uy = torch.stack([local[r][1][k] for k in range(8 // world) for r in range(world)])
        torch.testing.assert_close(ux[: x.shape[0]], x, rtol=0, atol=0)
        assert torch.equal(uy[: y.shape[0]], y)
        if x.shape[0] < 8:  # the padded tail repeats the start of the epoch's order
            assert torch.equal(uy[x.shape[0]:], expected[0][1][: 8 - x.shape[0]])


def test_epochs_and_state_follow_the_wrapped_loader():
    sharded = ShardedDeviceLoader(loader(32, drop_last=True), DistInfo(rank=1, world_size=2))
    first = [y for _, y in sharded]
    assert sharded.state_dict()["epoch"] == 1 and sharded.loader.state_dict() == sharded.state_dict()
    sharded.load_state_dict({"seed": 4, "epoch": 0})
    assert all(torch.equal(a, b) for a, b in zip(first, [y for _, y in sharded]))
    with pytest.raises(UserError, match="multiple of the 3 processes"):
        ShardedDeviceLoader(loader(32, drop_last=True), DistInfo(rank=0, world_size=3))


def test_sharded_factory_and_worker_loader():
    from prunekit.data.loaders import WorkerLoader
    from prunekit.data.sharded import ShardedWorkerLoader, sharded

    one = loader(32, drop_last=True)
    assert sharded(one, DistInfo()) is one
    assert isinstance(sharded(one, DistInfo(rank=0, world_size=2)), ShardedDeviceLoader)
    with pytest.raises(TypeError, match="cannot shard a list"):
        sharded([], DistInfo(rank=0, world_size=2))

    def worker_loader():  # any map-style dataset of (uint8 image, label) works; labels name the images
        return WorkerLoader(one.dataset, batch_size=8, normalize=one.normalize, device=torch.device("cpu"),
                            shuffle=True, drop_last=False, seed=1)

    ranks = [sharded(worker_loader(), DistInfo(rank=r, world_size=2)) for r in range(2)]
    assert all(isinstance(r, ShardedWorkerLoader) for r in ranks)
    for epoch in range(2):
        labels = []
        for r in ranks:
            r.set_epoch(epoch)
            batches = [y for _, y in r]
            assert len(batches) == len(worker_loader()) == 4 and {len(y) for y in batches} == {4}
            labels += torch.cat(batches).tolist()
        assert sorted(labels) == list(range(32))  # every image once per epoch, over both ranks
