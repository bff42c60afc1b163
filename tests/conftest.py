import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The directory holding cifar10-jpeg.tar.xz (PRUNEKIT_DATA), or skip."""
    root = os.environ.get("PRUNEKIT_DATA") or str(REPO.parent / "shared" / "data")
    path = Path(root)
    if not (path / "cifar10-jpeg.tar.xz").exists():
        pytest.skip("CIFAR-10 archive not found (set PRUNEKIT_DATA)")
    return path


@pytest.fixture(scope="session")
def weights_dir() -> Path:
    """The directory with the pretrained CIFAR ResNets, or skip."""
    path = REPO.parent / "shared" / "weights"
    if not (path / "resnet20-12fca82f.th").exists():
        pytest.skip("pretrained weights not found")
    return path
