"""The WIDER FACE evaluation protocol (Yang et al. 2016), as the official evaluation code does it.

For each setting (easy, medium, hard) every image has a *keep list*: the indices of its faces
that count in that setting (the official `wider_{easy,medium,hard}_val.mat` files, `gt_list`,
1-based). Then:

1. Scores are normalised over **all** predictions of all images: (s - min) / (max - min), with
   min started at 1 and max at 0 as the official code does.
2. Per image, predictions in descending score order each take the face they overlap most (IoU
   with the +1-pixel convention of the official `bbox_overlaps`). If that IoU is >= 0.5: a face
   outside the keep list makes the prediction *ignored* (it is no proposal, neither true nor
   false); a kept face not yet found becomes found; a kept face already found leaves the
   prediction a false positive (no re-assignment to the second-best face).
3. For 1000 thresholds t = 1 - (k + 1) / 1000 (k = 0..999) each image contributes the number of
   its non-ignored predictions with normalised score >= t and the number of kept faces they found.
   Images without faces or without predictions contribute nothing except their kept faces to
   the total. Precision = found / proposals (0 where there are no proposals yet, which changes
   no AP: recall is 0 there), recall = found / all kept faces.
4. AP is the VOC formula: the area under the precision envelope (precision made monotone from
   the right) over the recall steps.

Differences from the official scripts: predictions are taken as floats (the official files
truncate them to integer pixels) and the official NMS's +1 pixel is not used; both change boxes
by under a pixel.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

SETTINGS = ("easy", "medium", "hard")
THRESHOLDS = 1000


def overlaps_plus_one(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Return the IoU matrix (len(pred) x len(gt)) of corner boxes with the +1-pixel convention."""
    pred = np.asarray(pred, dtype=np.float64).reshape(-1, 4)
    gt = np.asarray(gt, dtype=np.float64).reshape(-1, 4)
    iw = np.minimum(pred[:, None, 2], gt[None, :, 2]) - np.maximum(pred[:, None, 0], gt[None, :, 0]) + 1
    ih = np.minimum(pred[:, None, 3], gt[None, :, 3]) - np.maximum(pred[:, None, 1], gt[None, :, 1]) + 1
    inter = np.where((iw > 0) & (ih > 0), iw * ih, 0.0)
    area_p = (pred[:, 2] - pred[:, 0] + 1) * (pred[:, 3] - pred[:, 1] + 1)
    area_g = (gt[:, 2] - gt[:, 0] + 1) * (gt[:, 3] - gt[:, 1] + 1)
    union = area_p[:, None] + area_g[None, :] - inter
    return np.where(inter > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def image_pr(scores: np.ndarray, pred_boxes: np.ndarray, gt_boxes: np.ndarray, keep: np.ndarray,
             iou_threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Return, for one image's predictions sorted by descending score, (proposal, found_so_far):
    `proposal[h]` 1 when prediction h counts (0 when it hit an ignored face), `found_so_far[h]` the
    number of kept faces found by predictions 0..h. `keep` is a boolean mask over the faces."""
    n = len(scores)
    proposal = np.ones(n)
    found_so_far = np.zeros(n)
    if n == 0 or len(gt_boxes) == 0:
        return proposal, found_so_far
    iou = overlaps_plus_one(pred_boxes, gt_boxes)
    best = iou.argmax(axis=1)
    best_iou = iou[np.arange(n), best]
    state = np.zeros(len(gt_boxes))  # 0 unseen, 1 found, -1 ignored and hit
    found = 0
    for h in range(n):
        if best_iou[h] >= iou_threshold:
            g = best[h]
            if not keep[g]:
                state[g] = -1
                proposal[h] = 0
            elif state[g] == 0:
                state[g] = 1
                found += 1
        found_so_far[h] = found
    return proposal, found_so_far


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """Return the VOC AP: area under the right-to-left maximum of precision over recall steps."""
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


@dataclass
class ImageRecord:
    """One image's predictions (corner boxes in pixels, scores) and ground truth with keep lists."""

    pred_boxes: np.ndarray   # K x 4
    scores: np.ndarray       # K
    gt_boxes: np.ndarray     # G x 4 corners
    keep: Mapping[str, np.ndarray]  # setting -> boolean mask over the G faces


def normalise_scores(records: Sequence[ImageRecord]) -> list[np.ndarray]:
    """Return every image's scores normalised over all predictions, as the official `norm_score`."""
    lo, hi = 1.0, 0.0
    for r in records:
        if len(r.scores):
            lo, hi = min(lo, float(np.min(r.scores))), max(hi, float(np.max(r.scores)))
    diff = hi - lo
    return [((np.asarray(r.scores, dtype=np.float64) - lo) / diff) if diff > 0 else np.asarray(r.scores, dtype=np.float64)
            for r in records]


def pr_curve(records: Sequence[ImageRecord], setting: str, *, iou_threshold: float = 0.5,
             thresholds: int = THRESHOLDS, normalised: list[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return (precision, recall) at the `thresholds` score levels for `setting`."""
    normalised = normalise_scores(records) if normalised is None else normalised
    levels = 1.0 - (np.arange(thresholds) + 1) / thresholds
    proposals = np.zeros(thresholds)
    found = np.zeros(thresholds)
    faces = 0
    for r, s in zip(records, normalised):
        keep = np.asarray(r.keep[setting], dtype=bool)
        faces += int(keep.sum())
        if len(r.gt_boxes) == 0 or len(s) == 0:
            continue
        order = np.argsort(-s, kind="stable")
        s_sorted = s[order]
        prop, fnd = image_pr(s_sorted, np.asarray(r.pred_boxes)[order], r.gt_boxes, keep, iou_threshold)
        count = np.searchsorted(-s_sorted, -levels, side="right")  # predictions with score >= level
        has = count > 0
        cum_prop = np.cumsum(prop)
        proposals[has] += cum_prop[count[has] - 1]
        found[has] += fnd[count[has] - 1]
    precision = np.divide(found, proposals, out=np.zeros_like(found), where=proposals > 0)
    recall = found / faces if faces else np.zeros_like(found)
    return precision, recall


def wider_ap(records: Sequence[ImageRecord], *, iou_threshold: float = 0.5, thresholds: int = THRESHOLDS,
             settings: Sequence[str] = SETTINGS) -> dict[str, float]:
    """Return {setting: AP} (fractions in [0, 1]) by the WIDER FACE protocol."""
    normalised = normalise_scores(records)
    out = {}
    for setting in settings:
        precision, recall = pr_curve(records, setting, iou_threshold=iou_threshold, thresholds=thresholds, normalised=normalised)
        out[setting] = voc_ap(recall, precision)
    return out
