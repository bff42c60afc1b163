"""Readers that turn files on disk into `ArrayDataset`s: image trees (tar archives or folders of
`split/class/image` files, e.g. cifar10-jpeg.tar.xz), CIFAR's python batches, MNIST's IDX files
and SVHN's .mat files.

Nothing here unpickles arbitrary objects: CIFAR's batches are read with an unpickler that only
rebuilds numpy arrays.
"""

from __future__ import annotations

import gzip
import io
import pickle
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from prunekit.data.arrays import ArrayDataset
from prunekit.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
SPLIT_NAMES = ("train", "test", "val", "extra")


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), disable=not enabled
    )


# -- image trees ------------------------------------------------------------------------------


class _CountingReader(io.RawIOBase):
    """A read-only file wrapper that reports how many bytes were read (for a progress bar)."""

    def __init__(self, raw: BinaryIO, on_read) -> None:
        self._raw, self._on_read = raw, on_read

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self._raw.readinto(buffer) or 0
        self._on_read(n)
        return n


def _split_member(name: str) -> tuple[str, str, str] | None:
    """Return (split, class, file) for `.../split/class/file.jpg`, None for anything else."""
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if len(parts) < 3 or parts[-3] not in SPLIT_NAMES or not parts[-1].lower().endswith(IMAGE_SUFFIXES):
        return None
    return parts[-3], parts[-2], parts[-1]


def _open_decompressed(raw: BinaryIO) -> BinaryIO:
    """Return a reader of `raw`'s decompressed bytes, the compression (xz, gzip, bzip2, none) found by its magic."""
    head = raw.peek(6)[:6] if hasattr(raw, "peek") else b""
    if head.startswith(b"\xfd7zXZ"):
        import lzma

        return lzma.open(raw)
    if head.startswith(b"\x1f\x8b"):
        return gzip.open(raw)
    if head.startswith(b"BZh"):
        import bz2

        return bz2.open(raw)
    return raw


def _tar_members(stream: BinaryIO, path: Path, classify: Callable[[str], Any], want: Callable[[Any], bool]) -> Iterator[tuple[Any, bytes | None]]:
    """Yield (classify(name), data or None) for the regular files of a tar stream that `classify`
    does not map to None; the data is read only where `want(key)`.

    A small ustar/GNU/pax header parser: Python's tarfile spends several seconds on the 60000
    headers of CIFAR-10, this loop a fraction of one.
    """
    long_name = None
    while True:
        header = stream.read(512)
        if len(header) < 512 or header == bytes(512):
            return
        stored = header[148:156].rstrip(b"\0 ")
        if not stored or int(stored, 8) != sum(header[:148]) + 256 + sum(header[156:]):
            raise UserError(f"{path} is not a tar archive (or it is corrupt)")
        size_field = header[124:136]
        if size_field[0] & 0x80:
            raise UserError(f"{path} holds a member too large for an image (base-256 size)")
        size = int(size_field.rstrip(b"\0 ") or b"0", 8)
        kind = header[156:157]
        name = long_name or (
            (header[345:500].split(b"\0", 1)[0] + b"/" if header[257:262] == b"ustar" and header[345] else b"")
            + header[:100].split(b"\0", 1)[0]
        ).decode("utf-8", "replace")
        padded = size + (-size) % 512
        if kind in (b"L", b"x"):  # GNU long name / pax header: they name the next member
            data = stream.read(padded)[:size]
            if kind == b"L":
                long_name = data.split(b"\0", 1)[0].decode("utf-8", "replace")
            else:
                for record in data.decode("utf-8", "replace").split("\n"):
                    key, _, value = record.partition(" ")[2].partition("=")
                    if key == "path":
                        long_name = value
            continue
        long_name = None
        key = classify(name) if kind in (b"0", b"\0", b"7") else None
        if key is not None and want(key):
            data = stream.read(padded)
            if len(data) < size:
                raise UserError(f"{path} ends in the middle of {name} (truncated archive)")
            yield key, data[:size]
        else:
            if key is not None:
                yield key, None
            stream.read(padded)


def _iter_tree(path: Path, progress: Progress, wanted: set[str]) -> Iterator[tuple[str, str, str, bytes | None]]:
    """Yield (split, class, file, encoded bytes or None when its split is not wanted) for every image."""
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        task = progress.add_task(f"reading {path.name}", total=len(files))
        for p in files:
            progress.advance(task)
            key = _split_member(p.relative_to(path).as_posix())
            if key:
                yield (*key, p.read_bytes() if key[0] in wanted else None)
        return

    task = progress.add_task(f"reading {path.name}", total=path.stat().st_size)
    with open(path, "rb") as raw:
        counted = io.BufferedReader(_CountingReader(raw, lambda n: progress.advance(task, n)), 1 << 20)
        try:
            for key, data in _tar_members(_open_decompressed(counted), path, _split_member, lambda k: k[0] in wanted):
                yield (*key, data)
        except (EOFError, OSError, ValueError) as err:  # lzma/gzip errors on damaged archives
            raise UserError(f"cannot read the archive {path}: {err}") from None


def _pil_decode(blob: bytes) -> torch.Tensor:
    from PIL import Image

    with Image.open(io.BytesIO(blob)) as im:
        array = np.asarray(im.convert("RGB") if im.mode not in ("L", "RGB") else im)
    return torch.from_numpy(array.copy()).reshape(array.shape[0], array.shape[1], -1).permute(2, 0, 1).contiguous()


def decode_images(blobs: list[bytes], *, jpeg: bool) -> list[torch.Tensor]:
    """Return each encoded image as a uint8 C x H x W tensor (JPEGs in one libjpeg-turbo batch call)."""
    try:
        from torchvision.io import ImageReadMode, decode_image, decode_jpeg
    except ImportError:  # torchvision without image codecs: PIL decodes the same pixels, about 2x slower
        return [_pil_decode(b) for b in blobs]
    tensors = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
    with warnings.catch_warnings():
        # torchvision 0.29 announces a move of its codecs to torchcodec; the ImportError branch
        # above covers their removal
        warnings.simplefilter("ignore", DeprecationWarning)
        return decode_jpeg(tensors) if jpeg else [decode_image(t, mode=ImageReadMode.UNCHANGED) for t in tensors]


def _decode(blobs: list[bytes], names: list[str], progress: Progress, label: str) -> torch.Tensor:
    """Decode encoded images to one uint8 N x C x H x W tensor, with a progress bar."""
    out: list[torch.Tensor] = []
    task = progress.add_task(f"decoding {label}", total=len(blobs))
    chunk = 1000
    for start in range(0, len(blobs), chunk):
        part, part_names = blobs[start : start + chunk], names[start : start + chunk]
        try:
            out.extend(decode_images(part, jpeg=all(n.lower().endswith((".jpg", ".jpeg")) for n in part_names)))
        except (RuntimeError, OSError) as err:
            raise UserError(f"cannot decode an image among {part_names[0]} .. {part_names[-1]}: {err}") from None
        progress.advance(task, len(part))
    channels = {t.shape[0] for t in out}
    if len(channels) > 1 or channels - {1, 3}:  # mixed or RGBA: make every image RGB (drop alpha, repeat grey)
        out = [t[:3] if t.shape[0] >= 3 else t[:1].expand(3, -1, -1) for t in out]
    sizes = {tuple(t.shape) for t in out}
    if len(sizes) > 1:
        raise UserError(f"images of {label} differ in size ({', '.join(map(str, sorted(sizes)[:3]))}); use imagefolder:PATH for such data")
    return torch.stack(out) if out else torch.zeros(0, 3, 1, 1, dtype=torch.uint8)


def read_image_tree(path: Path, wants: dict[str, int | None], *, progress: bool = True) -> dict[str, ArrayDataset]:
    """Read `split/class/image` files from a tar archive (any compression) or a folder.

    `wants` maps each split to read to the number of images to keep per class (the first ones by
    file name) or None for all; only those images are decoded. Classes are the sorted class folder
    names over all splits, so labels agree between splits.
    """
    wanted = set(wants)
    found: dict[str, dict[str, list[tuple[str, bytes]]]] = {s: {} for s in wanted}
    classes: set[str] = set()
    with _progress(progress) as bar:
        for split, cls, name, blob in _iter_tree(path, bar, wanted):
            classes.add(cls)
            if blob is not None:
                found[split].setdefault(cls, []).append((name, blob))
        class_list = sorted(classes)
        result = {}
        for split, keep in wants.items():
            if not found[split]:
                raise UserError(f"{path} holds no images under a {split}/<class>/ folder")
            names, blobs, labels = [], [], []
            for label, cls in enumerate(class_list):
                items = sorted(found[split].get(cls, []))[:keep] if keep else sorted(found[split].get(cls, []))
                names += [f"{split}/{cls}/{n}" for n, _ in items]
                blobs += [b for _, b in items]
                labels += [label] * len(items)
            images = _decode(blobs, names, bar, f"{path.name} {split}")
            result[split] = ArrayDataset(images, torch.tensor(labels, dtype=torch.long), class_list)
    return result


# -- CIFAR python batches ---------------------------------------------------------------------


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only plain containers and numpy arrays (what CIFAR's batches hold)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module == "numpy.core.multiarray":
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return _ArrayUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, OSError) as err:
        raise UserError(f"cannot read {path}: {err}") from None


def read_cifar_batches(folder: Path, split: str, *, fine: bool) -> ArrayDataset:
    """Read torchvision's CIFAR-10 (`cifar-10-batches-py`) or CIFAR-100 (`cifar-100-python`, `fine`) split."""
    if fine:
        files, meta, key, names = ["train" if split == "train" else "test"], "meta", "fine_labels", "fine_label_names"
    else:
        files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        meta, key, names = "batches.meta", "labels", "label_names"
    data, labels = [], []
    for name in files:
        batch = _unpickle(folder / name)
        data.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.extend(batch[key])
    classes = [str(c) for c in _unpickle(folder / meta)[names]]
    return ArrayDataset(torch.from_numpy(np.concatenate(data)), torch.tensor(labels, dtype=torch.long), classes)


# -- MNIST IDX files --------------------------------------------------------------------------


def read_idx(path: Path) -> torch.Tensor:
    """Return the array stored in an IDX file (MNIST's format; `.gz` or plain) as a uint8 tensor."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise UserError(f"{path} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise UserError(f"{path} is truncated: header says {shape}, found {body.size} bytes")
    return torch.from_numpy(body.reshape(shape).copy())


# -- SVHN .mat files --------------------------------------------------------------------------


def read_svhn_mat(path: Path) -> ArrayDataset:
    """Read one of SVHN's `{train,test,extra}_32x32.mat` files (needs scipy); label 10 means digit 0."""
    try:
        from scipy.io import loadmat
    except ImportError:
        raise UserError(f"reading {path} needs scipy (pip install scipy)") from None
    mat = loadmat(str(path))
    images = torch.from_numpy(np.ascontiguousarray(mat["X"].transpose(3, 2, 0, 1)))
    labels = torch.from_numpy(mat["y"].astype(np.int64).reshape(-1) % 10)
    return ArrayDataset(images, labels, [str(d) for d in range(10)])
