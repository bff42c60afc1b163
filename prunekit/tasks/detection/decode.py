"""From the model's raw outputs to detections in pixels: decode, score threshold, NMS.

The defaults are those of the reference's WIDER FACE test script: keep priors whose face
probability exceeds 0.02, non-maximum suppression at IoU 0.4 (`torchvision.ops.batched_nms`;
the reference's NMS adds 1 pixel to widths and heights, torchvision does not, a sub-pixel
difference), at most `top_k` candidates before NMS and `keep_top_k` after (the reference's
WIDER script keeps all; 5000 and 750 are its demo script's values and rarely bind).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.ops import batched_nms

from prunekit.tasks.detection.boxes import decode, decode_landmarks
from prunekit.tasks.detection.priors import MNET, PriorConfig, priors_for


@dataclass(frozen=True)
class DecodeConfig:
    score_threshold: float = 0.02
    nms_iou: float = 0.4
    top_k: int | None = 5000
    keep_top_k: int | None = 750


def split_outputs(outputs: object) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Return (box deltas, class logits, landmark deltas or None) from a detector's output tuple."""
    from prunekit.errors import UserError

    if isinstance(outputs, dict):
        return outputs["boxes"], outputs["logits"], outputs.get("landmarks")
    if isinstance(outputs, (tuple, list)) and len(outputs) in (2, 3) and all(isinstance(t, torch.Tensor) for t in outputs):
        return outputs[0], outputs[1], (outputs[2] if len(outputs) == 3 else None)
    raise UserError("the detection task expects the model to return (box_deltas, class_logits[, landmark_deltas]) "
                    f"tensors of shape N x priors x (4, classes, 10); got {type(outputs).__name__}")


@torch.no_grad()
def detect(outputs: object, input_size: tuple[int, int], *, sizes: list[tuple[int, int]] | None = None,
           scales: list[float] | None = None, priors: PriorConfig = MNET,
           config: DecodeConfig = DecodeConfig()) -> list[dict[str, torch.Tensor]]:
    """Return per image {"boxes" K x 4 (x1, y1, x2, y2, pixels of the original image), "scores" K,
    "labels" K, "landmarks" K x 10 when the model has them}, sorted by score, highest first.

    `input_size` (H, W) is the size of the batch tensor (priors are laid on it); `sizes` the
    (H, W) of each image inside it (padding right/bottom), used to clip boxes; `scales` the
    factor each image was resized by before the model (boxes are divided by it).
    """
    box_d, logits, lm_d = split_outputs(outputs)
    h, w = input_size
    pri = priors_for(h, w, priors, device=box_d.device)
    if pri.shape[0] != box_d.shape[1]:
        from prunekit.errors import UserError

        raise UserError(f"the model gives {box_d.shape[1]} predictions for a {h}x{w} input but the priors number {pri.shape[0]}; "
                        "the heads or the prior configuration do not fit")
    frame = torch.tensor([w, h, w, h], dtype=torch.float32, device=box_d.device)
    probs = logits.float().softmax(dim=-1)
    boxes_all = decode(box_d.float(), pri, priors.variances) * frame
    marks_all = decode_landmarks(lm_d.float(), pri, priors.variances) * frame.repeat(3)[:10] if lm_d is not None else None
    out = []
    for i in range(box_d.shape[0]):
        fg = probs[i, :, 1:]
        scores, labels = fg.max(dim=1)
        labels = labels + 1
        keep = (scores > config.score_threshold).nonzero().squeeze(1)
        if config.top_k is not None and keep.numel() > config.top_k:
            keep = keep[scores[keep].topk(config.top_k).indices]
        b, s, lab = boxes_all[i, keep], scores[keep], labels[keep]
        kept = batched_nms(b, s, lab, config.nms_iou)
        if config.keep_top_k is not None:
            kept = kept[: config.keep_top_k]
        b, s, lab = b[kept], s[kept], lab[kept]
        det = {"boxes": b, "scores": s, "labels": lab}
        if marks_all is not None:
            det["landmarks"] = marks_all[i, keep][kept]
        if sizes is not None:
            ih, iw = sizes[i]
            det["boxes"] = torch.stack([b[:, 0].clamp(0, iw), b[:, 1].clamp(0, ih), b[:, 2].clamp(0, iw), b[:, 3].clamp(0, ih)], dim=1) if b.numel() else b
        if scales is not None and scales[i] != 1.0:
            det["boxes"] = det["boxes"] / scales[i]
            if "landmarks" in det:
                det["landmarks"] = det["landmarks"] / scales[i]
        out.append(det)
    return out
