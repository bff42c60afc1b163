"""Prior matching and the MultiBox loss of RetinaFace (Liu et al. 2016, SSD; Deng et al. 2019).

Matching, per image (as the biubug6 reference):
1. IoU of every ground-truth box with every prior (corner form, fractions of the image).
2. Every prior takes the ground truth it overlaps most; it is a positive when that IoU is at
   least `pos_iou` (0.35), background otherwise.
3. Every ground truth whose best prior overlaps it by at least `min_best_iou` (0.2) forces that
   prior to be its positive (so each findable face gets one prior); faces below 0.2 are too
   small or odd for every prior and are not forced.

Loss (sums over the batch, divided by the number of positives N, at least 1):
- `box`: smooth-L1 between predicted and encoded deltas over the positives, times `box_weight` (2.0);
- `cls`: cross-entropy over the positives and the hardest negatives, `neg_pos_ratio` (7, what the
  reference trains with; SSD used 3) negatives per positive in each image, ranked by their
  background loss;
- `landmark`: smooth-L1 over the positives whose face has landmarks (divided by their count);
  absent when the model or the targets have no landmarks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.ops import box_iou

from prunekit.tasks.detection.boxes import encode, encode_landmarks, prior_corners


@dataclass(frozen=True)
class LossConfig:
    pos_iou: float = 0.35
    min_best_iou: float = 0.2
    neg_pos_ratio: int = 7
    box_weight: float = 2.0
    landmark_weight: float = 1.0


@dataclass
class Match:
    """Per-prior targets of one image: labels (0 background), box and landmark targets, landmark mask."""

    labels: torch.Tensor      # P, long
    boxes: torch.Tensor       # P x 4 encoded
    landmarks: torch.Tensor   # P x 10 encoded (zeros where unknown)
    has_landmarks: torch.Tensor  # P, bool


def match(boxes: torch.Tensor, labels: torch.Tensor, priors: torch.Tensor, variances: tuple[float, float],
          config: LossConfig = LossConfig(), landmarks: torch.Tensor | None = None,
          landmark_valid: torch.Tensor | None = None) -> Match:
    """Return the targets of every prior for one image's ground truth.

    `boxes` G x 4 corners and `priors` P x 4 (cx, cy, w, h) in the same frame; `labels` G (>= 1);
    `landmarks` G x 10 in that frame with `landmark_valid` G saying which faces have them.
    """
    p = priors.shape[0]
    dev = priors.device
    empty = Match(torch.zeros(p, dtype=torch.long, device=dev), torch.zeros(p, 4, device=dev),
                  torch.zeros(p, 10, device=dev), torch.zeros(p, dtype=torch.bool, device=dev))
    if boxes.numel() == 0:
        return empty
    iou = box_iou(boxes.float(), prior_corners(priors))          # G x P
    best_prior_iou, best_prior = iou.max(dim=1)                   # per ground truth
    findable = best_prior_iou >= config.min_best_iou
    if not findable.any():
        return empty
    best_truth_iou, best_truth = iou.max(dim=0)                  # per prior
    best_truth_iou = best_truth_iou.clone()
    best_truth_iou[best_prior[findable]] = 2.0                   # force the best prior of each findable face
    best_truth = best_truth.clone()
    for g in range(boxes.shape[0]):                              # later faces win a shared prior, as the reference
        best_truth[best_prior[g]] = g
    prior_labels = labels.long()[best_truth].clone()
    prior_labels[best_truth_iou < config.pos_iou] = 0
    box_t = encode(boxes.float()[best_truth], priors, variances)
    if landmarks is not None:
        lm_t = encode_landmarks(landmarks.float()[best_truth], priors, variances)
        valid = (landmark_valid if landmark_valid is not None else torch.ones(boxes.shape[0], dtype=torch.bool, device=dev))[best_truth]
        has = valid & (prior_labels > 0)
        lm_t = torch.where(has[:, None], lm_t, torch.zeros_like(lm_t))
    else:
        lm_t, has = empty.landmarks, empty.has_landmarks
    return Match(prior_labels, box_t, lm_t, has)


def multibox_loss(box_deltas: torch.Tensor, logits: torch.Tensor, landmark_deltas: torch.Tensor | None,
                  matches: list[Match], config: LossConfig = LossConfig()) -> dict[str, torch.Tensor]:
    """Return {"box", "cls"[, "landmark"]} for predictions N x P x {4, C, 10} against `matches`."""
    labels = torch.stack([m.labels for m in matches])             # N x P
    box_t = torch.stack([m.boxes for m in matches])
    pos = labels > 0
    n_pos = pos.sum(dim=1)
    denom = n_pos.sum().clamp_min(1).float()
    box_deltas, logits = box_deltas.float(), logits.float()
    box_loss = F.smooth_l1_loss(box_deltas[pos], box_t[pos], reduction="sum") / denom

    # hard negatives: rank each image's background priors by their background cross-entropy
    with torch.no_grad():
        bg_loss = torch.logsumexp(logits, dim=-1) - logits[..., 0]
        bg_loss[pos] = 0.0
        rank = bg_loss.argsort(dim=1, descending=True).argsort(dim=1)
        n_neg = (config.neg_pos_ratio * n_pos).clamp(max=labels.shape[1] - 1)
        neg = (rank < n_neg[:, None]) & ~pos
    chosen = pos | neg
    cls_loss = F.cross_entropy(logits[chosen], labels[chosen], reduction="sum") / denom
    out = {"box": config.box_weight * box_loss, "cls": cls_loss}
    if landmark_deltas is not None:
        has = torch.stack([m.has_landmarks for m in matches])
        lm_t = torch.stack([m.landmarks for m in matches])
        n_lm = has.sum().clamp_min(1).float()
        out["landmark"] = config.landmark_weight * F.smooth_l1_loss(landmark_deltas.float()[has], lm_t[has], reduction="sum") / n_lm
    return out
