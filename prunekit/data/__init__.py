"""Datasets by name, and fast batches for training.

    bundle = prunekit.data.load("cifar10", batch_size=128, device="cuda", subset=200, val_fraction=0.1)
    for x, y in bundle.train: ...          # augmented on the device, float, normalised

Small datasets (cifar10, cifar100, svhn, mnist, fashion_mnist, synthetic) are decoded once,
cached as uint8 and augmented on the device a batch at a time; large ones (imagenet, caltech101,
imagefolder:PATH) go through DataLoader workers. See docs/data-and-training.md.
"""

from prunekit.data.arrays import ArrayDataset
from prunekit.data.bundle import COMMON_OPTIONS, LOADER_OPTIONS, DataBundle, create, dataset_spec, default_task, list_datasets, load
from prunekit.data.catalog import CIFAR10_STATS, CIFAR100_STATS, DATASETS, IMAGENET_MEAN, IMAGENET_STD, DatasetSpec
from prunekit.data.folder import FolderDataset
from prunekit.data.loaders import DeviceLoader, WorkerLoader
from prunekit.data.paths import cache_dir, data_root

__all__ = [
    "ArrayDataset",
    "CIFAR10_STATS",
    "CIFAR100_STATS",
    "COMMON_OPTIONS",
    "LOADER_OPTIONS",
    "default_task",
    "DATASETS",
    "DataBundle",
    "DatasetSpec",
    "DeviceLoader",
    "FolderDataset",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "WorkerLoader",
    "cache_dir",
    "create",
    "data_root",
    "dataset_spec",
    "list_datasets",
    "load",
]
