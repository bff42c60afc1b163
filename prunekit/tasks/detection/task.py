"""The `detection` task: RetinaFace-style face detection judged by the WIDER FACE protocol.

Batches are `(images, targets)`: images N x 3 x H x W as the model expects them (for
RetinaFace: BGR minus (104, 117, 123), 0-255 scale; `prunekit.data.widerface` prepares them),
targets a list of N dicts:

- `boxes` G x 4 (x1, y1, x2, y2) in pixels of the batch tensor, `labels` G (1 = face);
- optional `landmarks` G x 10 with `has_landmarks` G (bool): five points per face;
- for evaluation: `keep_easy`, `keep_medium`, `keep_hard` (G bool, the official keep lists;
  faces outside a list are ignored in that setting) and `scale` (the factor the image was
  resized by; 1 at its own size). Without keep lists every face counts in every setting.

Losses: `box` (smooth-L1, weighted 2), `cls` (cross-entropy with hard-negative mining),
`landmark` (when the model and targets have landmarks); see `loss.py`. Metrics: `ap_easy`,
`ap_medium`, `ap_hard` (fractions in [0, 1], WIDER protocol at IoU 0.5, see `wider_eval.py`),
`loss` (mean summed loss per batch over the evaluation batches), `images`, `faces` (hard-setting
faces). The **primary** metric is `ap_hard`: the hard setting holds every valid face, so damage
to small and occluded faces (what pruning hurts first) shows there.

Protected modules: every prediction head conv (found through the model's outputs, e.g. the 9
head convs of RetinaFace), so pruning never changes the number of anchors or outputs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from prunekit.errors import UserError
from prunekit.tasks.base import Metric, Task, register
from prunekit.tasks.detection.decode import DecodeConfig, detect, split_outputs
from prunekit.tasks.detection.loss import LossConfig, match, multibox_loss
from prunekit.tasks.detection.priors import PriorConfig, priors_for
from prunekit.tasks.detection.wider_eval import SETTINGS, ImageRecord, wider_ap

_OPTIONS = {
    # priors
    "min_sizes": [[16, 32], [64, 128], [256, 512]], "steps": [8, 16, 32], "variances": [0.1, 0.2],
    # matching and loss
    "pos_iou": 0.35, "neg_pos_ratio": 7, "box_weight": 2.0, "landmark_weight": 1.0,
    # decoding and evaluation
    "score_threshold": 0.02, "nms_iou": 0.4, "top_k": 5000, "keep_top_k": 750, "iou_threshold": 0.5,
    # report.md of a run: dense beside pruned on the first N evaluation images (0: no picture)
    "report_images": 3,
}


def _autocast(device: torch.device, amp: bool) -> Any:
    return torch.autocast("cuda", dtype=torch.bfloat16) if amp and device.type == "cuda" else nullcontext()


@register
class Detection(Task):
    """Face detection (RetinaFace priors, MultiBox loss, WIDER FACE easy/medium/hard AP)."""

    name = "detection"
    primary = Metric("ap_hard", unit="fraction", higher_is_better=True, description="WIDER FACE hard-setting AP at IoU 0.5")
    description = "face detection: MultiBox loss, WIDER FACE easy/medium/hard AP (RetinaFace priors)"

    def configure(self, **options: Any) -> dict[str, Any]:
        unknown = sorted(set(options) - set(_OPTIONS))
        if unknown:
            raise UserError(f"task 'detection' has no option(s) {', '.join(unknown)} (its options: {', '.join(_OPTIONS)})")
        opts = {**_OPTIONS, **options}
        try:
            self.priors = PriorConfig(tuple(tuple(int(s) for s in m) for m in opts["min_sizes"]), tuple(int(s) for s in opts["steps"]),
                                      (float(opts["variances"][0]), float(opts["variances"][1])))
            if len(self.priors.min_sizes) != len(self.priors.steps):
                raise ValueError("min_sizes and steps need one entry per level")
            self.loss_config = LossConfig(pos_iou=float(opts["pos_iou"]), neg_pos_ratio=int(opts["neg_pos_ratio"]),
                                          box_weight=float(opts["box_weight"]), landmark_weight=float(opts["landmark_weight"]))
            self.decode_config = DecodeConfig(float(opts["score_threshold"]), float(opts["nms_iou"]),
                                              None if opts["top_k"] is None else int(opts["top_k"]),
                                              None if opts["keep_top_k"] is None else int(opts["keep_top_k"]))
            self.iou_threshold = float(opts["iou_threshold"])
            self.report_images = opts["report_images"]
            if isinstance(self.report_images, bool) or not isinstance(self.report_images, int) or self.report_images < 0:
                raise ValueError(f"report_images must be a non-negative integer, got {self.report_images!r}")
        except (TypeError, ValueError, IndexError) as err:
            raise UserError(f"task 'detection': bad option ({err})") from None
        return opts

    def collate(self, samples: Any) -> Any:
        """Return (images, list of target dicts); images of different sizes are padded (see
        `prunekit.data.widerface.collate`)."""
        from prunekit.data.detection_batches import collate

        return collate(samples)

    # training ----------------------------------------------------------------------------------
    def losses(self, outputs: Any, batch: Any) -> dict[str, torch.Tensor]:
        box_d, logits, lm_d = split_outputs(outputs)
        images, targets = self.inputs(batch), self.targets(batch)
        h, w = int(images.shape[-2]), int(images.shape[-1])
        pri = priors_for(h, w, self.priors, device=box_d.device)
        if pri.shape[0] != box_d.shape[1]:
            raise UserError(f"the model gives {box_d.shape[1]} predictions for a {h}x{w} input but the priors number {pri.shape[0]}")
        frame = torch.tensor([w, h, w, h], dtype=torch.float32, device=box_d.device)
        matches = []
        use_landmarks = lm_d is not None and any("landmarks" in t for t in targets)
        for t in targets:
            boxes, labels = t["boxes"].float(), t["labels"]
            if "keep_hard" in t:  # evaluation targets: the loss sees the valid faces only
                k = t["keep_hard"].bool()
                boxes, labels = boxes[k], labels[k]
                lms = t["landmarks"][k] if use_landmarks and "landmarks" in t else None
                valid = t["has_landmarks"][k] if lms is not None else None
            else:
                lms = t.get("landmarks") if use_landmarks else None
                valid = t.get("has_landmarks") if lms is not None else None
            matches.append(match(boxes / frame, labels, pri, self.priors.variances, self.loss_config,
                                 landmarks=None if lms is None else lms.float() / frame.repeat(3)[:10], landmark_valid=valid))
        return multibox_loss(box_d, logits, lm_d if use_landmarks else None, matches, self.loss_config)

    # judging -----------------------------------------------------------------------------------
    def detect(self, model: nn.Module, images: torch.Tensor, *, scales: list[float] | None = None) -> list[dict[str, torch.Tensor]]:
        """Return the detections of `model` on a batch of prepared images (boxes in pixels of the
        original images when `scales` says how each was resized)."""
        return detect(model(images), (int(images.shape[-2]), int(images.shape[-1])), scales=scales,
                      priors=self.priors, config=self.decode_config)

    def report_pictures(self, *, dense: nn.Module, pruned: nn.Module, loader: Iterable, run_dir: str | os.PathLike) -> list[str]:
        """Write detections.png (dense left, pruned right, on the first `report_images` images of
        `loader`'s dataset, boxes of score >= 0.5) into `run_dir`; return ["detections.png"], or []
        when the option is 0 or the dataset cannot hand out its original images."""
        from prunekit.detection_plots import dense_vs_pruned

        dataset = getattr(loader, "dataset", None)
        while dataset is not None and not hasattr(dataset, "read_image"):
            dataset = getattr(dataset, "ds", None) or getattr(dataset, "dataset", None)
        if not self.report_images or dataset is None or len(dataset) == 0:
            return []
        images = [dataset.read_image(i) for i in range(min(self.report_images, len(dataset)))]
        dense_vs_pruned(dense, pruned, images, Path(run_dir) / "detections.png", task=self)
        return ["detections.png"]

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: Iterable, *, device: str | torch.device = "cpu", amp: bool = True,
                 max_batches: int | None = None) -> dict[str, float]:
        """Return {"ap_easy", "ap_medium", "ap_hard" (fractions), "loss", "images", "faces"}."""
        device = torch.device(device)
        was_training = model.training
        model.eval()
        records: list[ImageRecord] = []
        loss_sum, batches = 0.0, 0
        try:
            for i, batch in enumerate(loader):
                if max_batches is not None and i >= max_batches:
                    break
                batch = self.to_device(batch, device)
                images, targets = self.inputs(batch), self.targets(batch)
                with _autocast(device, amp):
                    outputs = self.forward(model, batch)
                loss_sum += float(sum(v.item() for v in self.losses(outputs, batch).values()))
                batches += 1
                scales = [float(t.get("scale", torch.tensor(1.0))) for t in targets]
                dets = detect(outputs, (int(images.shape[-2]), int(images.shape[-1])), scales=scales,
                              priors=self.priors, config=self.decode_config)
                for t, d, s in zip(targets, dets, scales):
                    gt = (t["boxes"].float() / s).cpu().numpy()
                    keep = {k: (t[f"keep_{k}"].bool().cpu().numpy() if f"keep_{k}" in t else np.ones(len(gt), dtype=bool)) for k in SETTINGS}
                    records.append(ImageRecord(d["boxes"].float().cpu().numpy(), d["scores"].float().cpu().numpy(), gt, keep))
        finally:
            model.train(was_training)
        if not records:
            raise UserError("evaluation got no batches (empty split?)")
        ap = wider_ap(records, iou_threshold=self.iou_threshold)
        return {"ap_easy": ap["easy"], "ap_medium": ap["medium"], "ap_hard": ap["hard"], "loss": loss_sum / max(batches, 1),
                "images": len(records), "faces": int(sum(r.keep["hard"].sum() for r in records))}
