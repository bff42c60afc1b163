"""Training throughput: prunekit's on-device loader vs a plain torchvision DataLoader pipeline.

Both pipelines train the same ResNet-18 (small-input stem) on CIFAR-10 with the same loop,
optimizer, device and precision; only where the batches come from differs:

  prunekit     prunekit.data.load("cifar10"): the uint8 dataset sits on the device, crop, flip and
               normalisation happen there, a whole batch at a time.
  torchvision  ImageFolder over the extracted JPEG files + RandomCrop(32, padding=4) +
               RandomHorizontalFlip + ToTensor + Normalize in DataLoader workers.

Prints images/s of training (forward, backward, step) and of the loader alone, for both, and
their ratio. One epoch by default; --steps N times N steps after --warmup steps.

    python benchmarks/train_throughput.py --device cpu --steps 4 --batch-size 64
    python benchmarks/train_throughput.py --device cuda            # one full epoch
"""

from __future__ import annotations

import argparse
import copy
import itertools
import os
import tarfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from prunekit import data as pdata
from prunekit.data.paths import data_root, user_cache_home


def build_model() -> nn.Module:
    """ResNet-18 for 32x32 inputs: prunekit's builder when present, else torchvision's patched inline."""
    try:
        from prunekit import models

        return models.create("resnet18", num_classes=10, small_input=True)
    except ImportError:
        import torchvision

        model = torchvision.models.resnet18(num_classes=10)
        model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
        return model


def extract_train(archive: Path, target: Path) -> Path:
    """Extract train/<class>/*.jpg of the CIFAR-10 JPEG archive once (the baseline reads files)."""
    done = target / ".complete"
    if not done.exists():
        target.mkdir(parents=True, exist_ok=True)
        print(f"extracting {archive} -> {target} (once)")
        with tarfile.open(archive, "r|*") as tar:
            for member in tar:
                if member.isfile() and member.name.startswith("train/"):
                    tar.extract(member, target, filter="data")
        done.touch()
    return target / "train"


def torchvision_loader(folder: Path, *, batch_size: int, num_workers: int, device: torch.device, mean, std):
    """The usual torchvision CIFAR pipeline over image files."""
    import torchvision
    from torchvision import transforms as T

    tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])
    dataset = torchvision.datasets.ImageFolder(str(folder), transform=tf)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=num_workers,
        pin_memory=device.type == "cuda", persistent_workers=num_workers > 0,
        prefetch_factor=4 if num_workers else None,
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(loader, *, model: nn.Module | None, steps: int | None, warmup: int, device: torch.device,
            amp: bool, channels_last: bool) -> tuple[float, int]:
    """Return (images/s, images timed) over `steps` batches after `warmup` (all of one pass when steps is None)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4) if model else None
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if amp and device.type == "cuda" else nullcontext()
    batches = iter(loader)
    for x, y in itertools.islice(batches, warmup):  # first batches: worker start-up, cudnn autotuning
        if model is not None:
            _step(model, opt, x, y, device, fmt, autocast)
    sync(device)
    images, t0 = 0, time.perf_counter()
    for x, y in itertools.islice(batches, steps) if steps else batches:
        if model is not None:
            _step(model, opt, x, y, device, fmt, autocast)
        else:
            x.to(device, non_blocking=True)
        images += y.shape[0]
    sync(device)
    return images / (time.perf_counter() - t0), images


def _step(model, opt, x, y, device, fmt, autocast) -> None:
    x = x.to(device, non_blocking=True).contiguous(memory_format=fmt)
    y = y.to(device, non_blocking=True)
    with autocast:
        loss = F.cross_entropy(model(x).float(), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=None, help="folder with cifar10-jpeg.tar.xz (default $PRUNEKIT_DATA)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: one full epoch)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--loader-steps", type=int, default=None,
                        help="batches timed for the loader alone (default: --steps x 10, or one epoch)")
    parser.add_argument("--num-workers", type=int, default=min(8, os.cpu_count() or 1), help="baseline DataLoader workers")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    parser.add_argument("--no-amp", action="store_true", help="no bf16 autocast on CUDA")
    parser.add_argument("--extract-dir", default=str(user_cache_home() / "cifar10-jpeg-files"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    amp, channels_last = not args.no_amp, device.type == "cuda"
    root = data_root(args.root)

    t0 = time.perf_counter()
    bundle = pdata.load("cifar10", root=root, batch_size=args.batch_size, device=device)
    setup_pk = time.perf_counter() - t0
    folder = extract_train(root / "cifar10-jpeg.tar.xz", Path(args.extract_dir))
    tv = torchvision_loader(folder, batch_size=args.batch_size, num_workers=args.num_workers, device=device,
                            mean=bundle.mean, std=bundle.std)

    torch.manual_seed(0)
    base = build_model()
    results = {}
    for name, loader in (("prunekit", bundle.train), ("torchvision", tv)):
        model = copy.deepcopy(base).to(device=device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        train_rate, n = measure(loader, model=model, steps=args.steps, warmup=args.warmup, device=device, amp=amp,
                                channels_last=channels_last)
        loader_steps = args.loader_steps or (10 * args.steps if args.steps else None)
        load_rate, _ = measure(loader, model=None, steps=loader_steps, warmup=args.warmup, device=device, amp=amp,
                               channels_last=channels_last)
        results[name] = (train_rate, load_rate, n)
        del model

    what = f"{args.steps} steps (loader alone: {loader_steps})" if args.steps else "one epoch"
    print(f"\nResNet-18 (small input), CIFAR-10 JPEG, batch {args.batch_size}, {what} after {args.warmup} warm-up, "
          f"device {device} ({torch.get_num_threads()} threads), amp={'bf16' if amp and device.type == 'cuda' else 'off'}, "
          f"baseline workers {args.num_workers}; prunekit loader set-up {setup_pk:.1f} s")
    print(f"{'pipeline':<12} {'train img/s':>12} {'loader-only img/s':>18} {'images timed':>13}")
    for name, (train_rate, load_rate, n) in results.items():
        print(f"{name:<12} {train_rate:>12.1f} {load_rate:>18.1f} {n:>13}")
    (pk_t, pk_l, _), (tv_t, tv_l, _) = results["prunekit"], results["torchvision"]
    print(f"ratio prunekit / torchvision: training {pk_t / tv_t:.2f}x, loader alone {pk_l / tv_l:.2f}x")


if __name__ == "__main__":
    from prunekit.errors import UserError

    try:
        main()
    except UserError as err:
        raise SystemExit(f"train_throughput: error: {err}") from None
