"""Caltech-101: located under the documented folders, background left out, seeded disjoint split,
decoded once at image_size and cached as uint8."""

from pathlib import Path

import pytest
import torch
from torchvision.io import encode_jpeg

import prunekit.data as data
from prunekit.data import caltech101
from prunekit.errors import UserError

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torchvision 0.29's codec notice (encode_jpeg)


def _tree(root: Path, folder: str = "caltech101-128px/101_ObjectCategories", per_class=(40, 35, 31)) -> Path:
    base = root / folder
    gen = torch.Generator().manual_seed(0)
    for name, n in [("BACKGROUND_Google", 5), *((f"class_{c}", k) for c, k in enumerate(per_class))]:
        (base / name).mkdir(parents=True)
        for i in range(n):
            h, w = 20 + i % 7, 30 - i % 5  # varied sizes and aspect ratios, like the real set
            img = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=gen)
            if i % 9 == 0:  # some greyscale images
                img = img[:1]
            (base / name / f"image_{i + 1:04d}.jpg").write_bytes(encode_jpeg(img).numpy().tobytes())
    return base


def test_split_is_seeded_disjoint_and_per_class(tmp_path):
    _tree(tmp_path)
    opts = dict(root=tmp_path, cache_dir=tmp_path / "cache", progress=False, image_size=16, train_per_class=30, test_per_class=4)
    train = data.create("caltech101", split="train", **opts)
    test = data.create("caltech101", split="test", **opts)
    assert train.classes == test.classes == ["class_0", "class_1", "class_2"]  # background left out
    assert train.class_counts() == [30, 30, 30]
    assert test.class_counts() == [4, 4, 1]  # the 31-image class keeps one test image
    assert train.images.shape[1:] == (3, 16, 16) and train.images.dtype == torch.uint8
    # disjoint: no test image equals a train image of its class
    flat_train = {bytes(x.flatten().tolist()) for x in train.images}
    assert not any(bytes(x.flatten().tolist()) in flat_train for x in test.images)
    again = data.create("caltech101", split="train", **opts)
    assert torch.equal(again.images, train.images) and torch.equal(again.targets, train.targets)
    other = data.create("caltech101", split="train", **{**opts, "split_seed": 1})
    assert not torch.equal(other.images, train.images)


def test_split_indices_cover_without_overlap():
    targets = torch.tensor([0] * 40 + [1] * 31 + [2] * 80)
    tr, te = caltech101.split_indices(targets, train_per_class=30, test_per_class=None, seed=3, num_classes=3)
    assert set(tr.tolist()).isdisjoint(te.tolist()) and len(tr) + len(te) == len(targets)
    assert torch.bincount(targets[tr]).tolist() == [30, 30, 30]
    tr2, _ = caltech101.split_indices(targets, train_per_class=30, test_per_class=None, seed=3, num_classes=3)
    assert torch.equal(tr, tr2)


def test_decoded_once_then_cached(tmp_path, monkeypatch):
    _tree(tmp_path, folder="caltech101/101_ObjectCategories", per_class=(33, 33))
    opts = dict(root=tmp_path, cache_dir=tmp_path / "cache", progress=False, image_size=12)
    first = data.create("caltech101", split="test", **opts)
    assert len(list((tmp_path / "cache").glob("caltech101-*-12px.pt"))) == 1
    monkeypatch.setattr(caltech101, "read_folder", lambda *a, **k: pytest.fail("decoded twice"))
    assert torch.equal(data.create("caltech101", split="test", **opts).images, first.images)


def test_load_gives_normalised_batches_at_image_size(tmp_path):
    _tree(tmp_path)
    bundle = data.load("caltech101", root=tmp_path, cache_dir=tmp_path / "cache", progress=False, image_size=24,
                       pad=3, batch_size=16, eval_batch_size=64)
    assert bundle.input_shape == (3, 24, 24) and bundle.num_classes == 3
    assert bundle.mean == data.IMAGENET_MEAN and bundle.std == data.IMAGENET_STD
    x, y = next(iter(bundle.train))
    assert x.shape == (16, 3, 24, 24) and x.dtype == torch.float32


def test_missing_names_every_folder_searched(tmp_path):
    with pytest.raises(UserError) as err:
        data.create("caltech101", root=tmp_path, progress=False)
    text = str(err.value)
    for folder in caltech101.FOLDERS:
        assert str(tmp_path / folder) in text
    with pytest.raises(UserError, match="train_per_class"):
        _tree(tmp_path)
        data.create("caltech101", root=tmp_path, progress=False, train_per_class=0)


def test_the_shared_copy(tmp_path):
    root = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if caltech101.locate(root) is None:
        pytest.skip("caltech101-128px not in the shared data")
    from prunekit.data.folder import scan_folder  # the real folder: 101 classes, BACKGROUND_Google left out

    scanned = scan_folder(caltech101.locate(root), skip=caltech101.SKIP)
    assert scanned.num_classes == 101 and len(scanned) == 8677 and "BACKGROUND_Google" not in scanned.classes
    tr, te = caltech101.split_indices(scanned.targets, train_per_class=30, test_per_class=50, seed=0, num_classes=101)
    assert len(tr) == 3030 and len(te) == 2945
