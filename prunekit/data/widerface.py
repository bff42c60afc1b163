"""WIDER FACE (Yang et al. 2016) in its official layout, for the `detection` task.

Layout under the data root (or `root/widerface`, `root/widerface-val200`, `root/WIDER_FACE`):

    WIDER_train/images/<event>/<name>.jpg, WIDER_val/images/<event>/<name>.jpg
    wider_face_split/wider_face_{train,val}_bbx_gt.txt
    ground_truth/wider_face_val.mat, wider_{easy,medium,hard}_val.mat   (optional; the keep lists)

The box file repeats: a relative image path, a face count, then one line per face
`x y w h blur expression illumination invalid occlusion pose` (a count of 0 is followed by one
dummy line of zeros, as the official files have it).

Rules:
- **training** drops faces marked invalid and boxes of zero width or height (the faces the
  reference's training labels leave out);
- **evaluation** keeps every face; a face counts in setting S when it is in the keep list of
  `wider_S_val.mat`, else is ignored in S. Without the .mat files every valid face counts in
  every setting (a warning says so: the three APs are then one number);
- **a box outside its image** is clipped to the image, with one warning per dataset naming the
  first file and line; a box entirely outside is an error (boxes of zero width or height, which
  the official val file has for some invalid faces, are kept as they are and never match). A
  malformed line, a count that does not match, or an image listed but missing are a `UserError`
  naming the file and line.
- **`split_val: f`** splits the val images into two disjoint parts by a fixed rule: within each
  event, images sorted by file name, image i (0-based) goes to the *tune* part when
  ceil((i + 1) f) > ceil(i f), else to the *held-out* part (so ceil(n f) of an event's n images
  tune). The tune part is served as `train` (augmented), the held-out part as `test`/`val`.
  f = 0.5 alternates: images 0, 2, 4, ... of every event tune, 1, 3, 5, ... are held out.

Images are any size. Training batches are `train_size` squares (640, the reference's), made by
the reference's augmentation: a random square crop of 0.3-1 of the shorter side that keeps at
least one whole face (faces whose centre leaves the crop are dropped), photometric distortion
(brightness, contrast, saturation, hue, in linear tensor ops), padding to a square
when no crop fits, a horizontal flip (landmarks swap eyes and mouth corners), resize.
Evaluation batches keep every image at its own size (`eval_size: null`, `eval_batch: 1`; the
loader's `eval_batch_size` is not used, since images of different sizes only batch with padding);
`eval_size: N` resizes the longer side to N (the factor is kept as the target's `scale`, so boxes
are scored in the original pixels); a batch of several images is padded right and bottom to a
multiple of 32 with the mean colour. Resizing uses `torchvision.transforms.v2.functional.resize`.
`subset: N` keeps the first N images of a split in box-file order (not N per class). A folder
without a train split still loads for evaluation; iterating its `train` says to set `split_val`.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from prunekit.data.detection_batches import DetectionLoader, EvalTransform, TrainTransform, collate, to_model_input
from prunekit.errors import UserError
from prunekit.models.retinaface import BGR_MEAN

__all__ = ["WiderFace", "parse_bbx_gt", "split_indices", "build", "load_bundle", "OPTIONS", "SETTINGS",
           "DetectionLoader", "EvalTransform", "TrainTransform", "collate", "to_model_input"]

SETTINGS = ("easy", "medium", "hard")
OPTIONS = {"split_val": None, "train_size": 640, "eval_size": None, "eval_batch": 1, "num_workers": 0}
_FOLDERS = ("", "widerface", "widerface-val200", "WIDER_FACE", "wider_face")


@dataclass
class Face:
    box: tuple[float, float, float, float]  # x, y, w, h
    attrs: tuple[int, ...]                  # blur expression illumination invalid occlusion pose
    line: int

    @property
    def invalid(self) -> bool:
        return len(self.attrs) > 3 and self.attrs[3] == 1


@dataclass
class ImageEntry:
    path: Path
    rel: str
    faces: list[Face]
    line: int
    keep: dict[str, list[int]] = field(default_factory=dict)  # setting -> 0-based face indices


def parse_bbx_gt(path: str | os.PathLike) -> list[tuple[str, list[Face], int]]:
    """Return [(relative image path, faces, line)] from an official `*_bbx_gt.txt` file."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot read the box file ({type(err).__name__})") from None
    out = []
    i = 0
    while i < len(lines):
        name = lines[i].strip()
        if not name:
            i += 1
            continue
        start = i + 1
        if not name.lower().endswith((".jpg", ".jpeg", ".png")):
            raise UserError(f"{path}:{start}: expected an image path, got {name[:60]!r}")
        if i + 1 >= len(lines):
            raise UserError(f"{path}:{start + 1}: the face count of {name} is missing")
        try:
            count = int(lines[i + 1].strip())
        except ValueError:
            raise UserError(f"{path}:{start + 1}: expected the face count of {name}, got {lines[i + 1].strip()[:60]!r}") from None
        if count < 0:
            raise UserError(f"{path}:{start + 1}: negative face count {count}")
        faces = []
        rows = max(count, 1)  # a count of 0 is followed by one dummy line
        for k in range(rows):
            n = i + 2 + k
            if n >= len(lines):
                raise UserError(f"{path}:{n + 1}: {name} announces {count} faces but the file ends after {k}")
            parts = lines[n].split()
            try:
                values = [float(v) for v in parts]
            except ValueError:
                raise UserError(f"{path}:{n + 1}: malformed face line {lines[n].strip()[:60]!r} (expected x y w h and 6 attributes)") from None
            if len(values) < 4 or (count > 0 and len(values) not in (4, 10)):
                raise UserError(f"{path}:{n + 1}: malformed face line {lines[n].strip()[:60]!r} (expected x y w h and 6 attributes)")
            if count > 0:
                faces.append(Face(tuple(values[:4]), tuple(int(v) for v in values[4:]), n + 1))
        out.append((name, faces, start))
        i += 2 + rows
    return out


def _read_keep_lists(gt_dir: Path) -> dict[str, dict[str, list[int]]] | None:
    """Return {event/name: {setting: 0-based keep indices}} from the official .mat files, or None."""
    files = {s: gt_dir / f"wider_{s}_val.mat" for s in SETTINGS}
    if not all(f.is_file() for f in files.values()):
        return None
    from scipy.io import loadmat

    out: dict[str, dict[str, list[int]]] = {}
    for setting, f in files.items():
        try:
            mat = loadmat(str(f))
            events, file_lists, gt_lists = mat["event_list"], mat["file_list"], mat["gt_list"]
        except Exception as err:  # a damaged .mat is the user's file
            raise UserError(f"{f}: not a WIDER FACE ground-truth file ({type(err).__name__}: {str(err)[:100]})") from None
        for e in range(len(events)):
            event = str(events[e][0][0])
            for j in range(len(file_lists[e][0])):
                name = str(file_lists[e][0][j][0][0])
                keep = gt_lists[e][0][j][0].ravel().astype(int) - 1
                out.setdefault(f"{event}/{name}", {})[setting] = sorted(int(k) for k in keep)
    return out


def find_root(root: Path) -> Path:
    """Return the folder holding `wider_face_split/` under `root` (a few usual names tried)."""
    tried = []
    for sub in _FOLDERS:
        base = root / sub if sub else root
        tried.append(base / "wider_face_split")
        if (base / "wider_face_split").is_dir():
            return base
    raise UserError(f"WIDER FACE not found: none of {', '.join(str(t) for t in tried)} exists "
                    "(official layout: WIDER_val/images/..., wider_face_split/wider_face_val_bbx_gt.txt)")


def split_indices(entries: Sequence[ImageEntry], fraction: float) -> tuple[list[int], list[int]]:
    """Return (tune, held-out) indices of `entries` by the documented per-event alternation rule."""
    if not isinstance(fraction, (int, float)) or isinstance(fraction, bool) or not 0 < fraction < 1:
        raise UserError(f"split_val must be a fraction in (0, 1), got {fraction!r}")
    by_event: dict[str, list[int]] = {}
    for i, e in enumerate(entries):
        by_event.setdefault(e.rel.split("/")[0], []).append(i)
    tune, held = [], []
    for event in sorted(by_event):
        idx = sorted(by_event[event], key=lambda i: entries[i].rel)
        for k, i in enumerate(idx):
            (tune if math.ceil((k + 1) * fraction) > math.ceil(k * fraction) else held).append(i)
    return sorted(tune), sorted(held)


class WiderFace(Dataset):
    """One split of WIDER FACE; items are (image uint8 RGB 3 x H x W, target dict in pixels)."""

    def __init__(self, root: str | os.PathLike, split: str = "val", *, training: bool = False,
                 entries: list[ImageEntry] | None = None) -> None:
        self.split = split
        self.training = training
        if entries is not None:
            self.entries = entries
            self.root = Path(root)
            return
        if split not in ("train", "val"):
            raise UserError(f"widerface has splits train and val; not {split!r}")
        base = find_root(Path(root))
        self.root = base
        gt_file = base / "wider_face_split" / f"wider_face_{split}_bbx_gt.txt"
        if not gt_file.is_file():
            raise UserError(f"{gt_file}: no such file (the {split} split's box file)")
        images = base / f"WIDER_{split}" / "images"
        keeps = _read_keep_lists(base / "ground_truth") if split == "val" else None
        self.keep_source = "official" if keeps is not None else "all valid faces"
        self.entries = []
        for rel, faces, line in parse_bbx_gt(gt_file):
            p = images / rel
            if not p.is_file():
                raise UserError(f"{gt_file}:{line}: image {rel} is listed but {p} does not exist")
            entry = ImageEntry(p, rel, faces, line)
            key = rel.rsplit(".", 1)[0]
            if keeps is not None:
                if key not in keeps:
                    raise UserError(f"{gt_file}:{line}: image {rel} has no keep lists in {base / 'ground_truth'}")
                entry.keep = keeps[key]
                bad = [k for s in SETTINGS for k in entry.keep[s] if k >= len(faces)]
                if bad:
                    raise UserError(f"{base / 'ground_truth'}: keep list of {rel} names face {bad[0] + 1} but the box file has {len(faces)}")
            else:
                valid = [k for k, f in enumerate(faces) if not f.invalid and f.box[2] > 0 and f.box[3] > 0]
                entry.keep = {s: valid for s in SETTINGS}
            self.entries.append(entry)
        if keeps is None and split == "val":
            warnings.warn(f"{base / 'ground_truth'}: no wider_{{easy,medium,hard}}_val.mat; every valid face counts in every "
                          "setting, so ap_easy, ap_medium and ap_hard are the same number", UserWarning, stacklevel=2)
        self._clip_warned = False

    def select(self, indices: Sequence[int], *, training: bool | None = None) -> "WiderFace":
        """Return the images at `indices` as a new dataset (same root)."""
        ds = WiderFace(self.root, self.split, training=self.training if training is None else training,
                       entries=[self.entries[i] for i in indices])
        ds.keep_source = getattr(self, "keep_source", "official")
        ds._clip_warned = False
        return ds

    def __len__(self) -> int:
        return len(self.entries)

    def read_image(self, i: int) -> torch.Tensor:
        """Return image `i` as uint8 RGB 3 x H x W."""
        from prunekit.data.folder import decode_rgb

        return decode_rgb(str(self.entries[i].path))

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        e = self.entries[i]
        image = self.read_image(i)
        h, w = image.shape[-2:]
        boxes, labels, keep_masks = [], [], {s: [] for s in SETTINGS}
        for k, f in enumerate(e.faces):
            x, y, bw, bh = f.box
            if self.training and (f.invalid or bw <= 0 or bh <= 0):
                continue
            x1, y1, x2, y2 = x, y, x + bw, y + bh
            if bw <= 0 or bh <= 0:  # degenerate boxes (the official val files have some, marked invalid): kept as they are
                pass
            elif x2 <= 0 or y2 <= 0 or x1 >= w or y1 >= h:
                raise UserError(f"{self._gt_file()}:{f.line}: face box {x:g} {y:g} {bw:g} {bh:g} lies entirely outside "
                                f"the {w}x{h} image {e.rel}")
            elif x1 < 0 or y1 < 0 or x2 > w or y2 > h:
                if not self._clip_warned:
                    warnings.warn(f"{self._gt_file()}:{f.line}: face box of {e.rel} reaches outside the {w}x{h} image; "
                                  "clipped to it (later boxes outside their image are clipped silently)", UserWarning, stacklevel=2)
                    self._clip_warned = True
                x1, y1, x2, y2 = max(x1, 0.0), max(y1, 0.0), min(x2, float(w)), min(y2, float(h))
            boxes.append((x1, y1, x2, y2))
            labels.append(1)
            for s in SETTINGS:
                keep_masks[s].append(k in e.keep.get(s, ()))
        target = {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                  "labels": torch.tensor(labels, dtype=torch.long)}
        if not self.training:
            for s in SETTINGS:
                target[f"keep_{s}"] = torch.tensor(keep_masks[s], dtype=torch.bool)
        return image, target

    def _gt_file(self) -> Path:
        return self.root / "wider_face_split" / f"wider_face_{self.split}_bbx_gt.txt"


class _Transformed(Dataset):
    def __init__(self, ds: WiderFace, transform: Any) -> None:
        self.ds, self.transform = ds, transform

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.transform(*self.ds[i])


class _NoTrain:
    """Stands for a training split that does not exist; using it raises the reason."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def set_epoch(self, epoch: int) -> None:
        pass

    def __len__(self) -> int:
        raise UserError(self.reason)

    def __iter__(self) -> Iterator[Any]:
        raise UserError(self.reason)


def build(req: Any, wants: dict[str, int | None]) -> dict[str, WiderFace]:
    """The catalog's build function: {split: WiderFace} (raw items, no transform)."""
    opts = req.options
    frac = opts.get("split_val")
    out = {}
    for split, n in wants.items():
        if frac is not None:
            whole = WiderFace(req.root, "val")
            tune, held = split_indices(whole.entries, frac)
            ds = whole.select(tune if split == "train" else held, training=split == "train")
        else:
            ds = WiderFace(req.root, split, training=split == "train")
        out[split] = ds if n is None else ds.select(range(min(n, len(ds))))
    return out


def load_bundle(spec: Any, req: Any, *, batch_size: int, device: torch.device, subset: Any, seed: int, augment: bool,
                num_workers: int | None) -> Any:
    """Return a `DataBundle` of WIDER FACE batches (see the module docstring)."""
    from prunekit.data.arrays import parse_subset
    from prunekit.data.bundle import DataBundle

    opts = req.options
    size = opts.get("train_size", 640)
    eval_size = opts.get("eval_size")
    eval_bs = opts.get("eval_batch", 1)
    for label, v in (("train_size", size), ("eval_batch", eval_bs)) + ((("eval_size", eval_size),) if eval_size is not None else ()):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise UserError(f"widerface option {label} must be a positive integer, got {v!r}")
    workers = int(opts.get("num_workers", 0) if num_workers is None else num_workers)
    sets = build(req, {"val": parse_subset(subset, "val")})
    try:
        train_ds = build(req, {"train": parse_subset(subset, "train")})["train"]
    except UserError as err:  # a val-only folder: evaluation works, training says why it cannot
        train: Any = _NoTrain(f"{err} (for a folder with only the val split, set the dataset option split_val, e.g. 0.5)")
    else:
        train_tf = TrainTransform(size) if augment else EvalTransform(size)
        train = DetectionLoader(_Transformed(train_ds, train_tf), batch_size=batch_size, device=device, shuffle=True,
                                drop_last=len(train_ds) >= batch_size, num_workers=workers, seed=seed)
    test = DetectionLoader(_Transformed(sets["val"], EvalTransform(eval_size)), batch_size=eval_bs, device=device,
                           num_workers=workers)
    return DataBundle(train=train, val=None, test=test, num_classes=2, input_shape=(3, size, size), mean=BGR_MEAN,
                      std=(1.0, 1.0, 1.0), name="widerface", classes=["background", "face"], device=str(device))
