"""`prunekit detect MODEL_OR_FILE IMAGE... --out DIR`: face detections as PNGs and one JSON.

For each image, DIR/<stem>.png shows the detections of score >= --score, and DIR/detections.json
holds every image's boxes (x1, y1, x2, y2 in the image's pixels), scores and landmarks (when the
model has them) of score >= --score.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from prunekit.errors import UserError


def add_parser(sub: Any) -> None:
    p = sub.add_parser("detect", help="draw a face detector's detections on images (PNG per image + JSON)")
    p.add_argument("model", metavar="MODEL_OR_FILE", help="a detector name (e.g. retinaface_mnet025) or a saved prunekit file")
    p.add_argument("images", metavar="IMAGE", nargs="+", help="image files")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--weights", help="a weight file for a model name (e.g. the shipped RetinaFace checkpoint)")
    p.add_argument("--activation", choices=["relu", "leaky"], default=None, help="RetinaFace activation (default relu)")
    p.add_argument("--score", type=float, default=0.5, help="draw and list detections with at least this score (default 0.5)")
    p.add_argument("--max-size", type=int, default=None, help="resize each image so its longer side is this (default: own size)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads")
    p.set_defaults(func=run)


def _load(args: Any):
    from prunekit import io, models

    target = args.model
    if os.path.sep in target or target.endswith((".pt", ".pth", ".th")) or os.path.exists(target):
        if not os.path.isfile(target):
            raise UserError(f"{target}: no such file")
        if args.weights or args.activation:
            raise UserError("--weights and --activation go with a model name, not with a saved file")
        return io.load(target)
    kwargs = {"activation": args.activation} if args.activation else {}
    return models.create(target, weights=args.weights, **kwargs)


def run(args: Any) -> int:
    import torch

    from prunekit.detection_plots import detect_images, draw_detections, read_image

    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads {args.threads} must be >= 1")
        torch.set_num_threads(args.threads)
    if not 0 <= args.score <= 1:
        raise UserError(f"--score {args.score} must be in [0, 1]")
    if args.max_size is not None and args.max_size < 32:
        raise UserError(f"--max-size {args.max_size} must be at least 32")
    pics = [read_image(p) for p in args.images]
    model = _load(args).eval()
    dets = detect_images(model, pics, max_size=args.max_size)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    listing = []
    stems: dict[str, int] = {}
    for path, im, det in zip(args.images, pics, dets):
        stem = Path(path).stem
        stems[stem] = stems.get(stem, 0) + 1
        name = stem if stems[stem] == 1 else f"{stem}-{stems[stem]}"
        png = draw_detections(im, det, out / f"{name}.png", score=args.score)
        keep = det["scores"] >= args.score
        entry = {"image": str(path), "png": str(png), "width": int(im.shape[-1]), "height": int(im.shape[-2]),
                 "boxes": [[round(float(v), 2) for v in b] for b in det["boxes"][keep]],
                 "scores": [round(float(s), 4) for s in det["scores"][keep]]}
        if "landmarks" in det:
            entry["landmarks"] = [[round(float(v), 2) for v in lm] for lm in det["landmarks"][keep]]
        listing.append(entry)
        print(f"{path}: {len(entry['scores'])} faces (score >= {args.score:g}) -> {png}")
    (out / "detections.json").write_text(json.dumps({"model": args.model, "score": args.score, "images": listing}, indent=1))
    print(f"wrote {out / 'detections.json'}")
    return 0
