"""The WIDER FACE protocol on hand-built cases (AP by hand), and a cross-check with pycocotools."""

import numpy as np
import pytest

from prunekit.tasks.detection.wider_eval import ImageRecord, image_pr, overlaps_plus_one, voc_ap, wider_ap

G1, G2, G3 = [0, 0, 99, 99], [200, 0, 299, 99], [0, 0, 99, 99]
FP = [400, 400, 499, 499]


def _records(easy_keeps_g2: bool):
    # image A: faces g1, g2; predictions p1 (0.9, on g1), p5 (0.85, on g2), p2 (0.8, nothing), p4 (0.6, g1 again)
    # image B: face g3; prediction p3 (0.7, on g3)
    a = ImageRecord(np.array([G1, G2, FP, G1], float), np.array([0.9, 0.85, 0.8, 0.6]), np.array([G1, G2], float),
                    {"easy": np.array([True, easy_keeps_g2]), "medium": np.array([True, True]), "hard": np.array([True, True])})
    b = ImageRecord(np.array([G3], float), np.array([0.7]), np.array([G3], float),
                    {"easy": np.array([True]), "medium": np.array([True]), "hard": np.array([True])})
    return [a, b]


def test_voc_ap_formula():
    # recall 1/3 at precision 1, 2/3 at 2/3: envelope area = 1/3 + 2/9
    assert voc_ap(np.array([1 / 3, 1 / 3, 2 / 3, 2 / 3]), np.array([1, 0.5, 2 / 3, 0.5])) == pytest.approx(5 / 9)


def test_hand_case_hard_and_ignore_rule():
    ap = wider_ap(_records(easy_keeps_g2=False))
    # hard (3 faces): in score order TP, TP, FP, TP, FP -> precision 1, 1, 2/3, 3/4, 3/5 at recall 1/3, 2/3, 2/3, 1, 1
    # AP = 1/3 * 1 + 1/3 * 1 + 1/3 * 3/4 = 11/12
    assert ap["hard"] == pytest.approx(11 / 12, abs=1e-12)
    assert ap["medium"] == pytest.approx(11 / 12, abs=1e-12)
    # easy (g2 not kept): p5 hits an ignored face, so it is no proposal; TP, FP, TP, FP over 2 faces:
    # precision 1, 1/2, 2/3, 1/2 at recall 1/2, 1/2, 1, 1 -> AP = 1/2 + 1/2 * 2/3 = 5/6
    assert ap["easy"] == pytest.approx(5 / 6, abs=1e-12)
    # the same face kept everywhere: easy equals hard
    assert wider_ap(_records(easy_keeps_g2=True))["easy"] == pytest.approx(11 / 12)


def test_duplicate_is_false_positive_without_reassignment():
    # two faces side by side; the second prediction overlaps face 0 best (already found), face 1 second best:
    # the official rule makes it a false positive instead of giving it face 1
    gt = np.array([[0, 0, 99, 99], [30, 0, 129, 99]], float)
    pred = np.array([[0, 0, 99, 99], [10, 0, 109, 99]], float)
    iou = overlaps_plus_one(pred, gt)
    assert iou[1, 0] > iou[1, 1] >= 0.5
    prop, found = image_pr(np.array([1.0, 0.9]), pred, gt, np.array([True, True]))
    assert prop.tolist() == [1, 1] and found.tolist() == [1, 1]


def test_images_without_predictions_count_their_faces_and_scores_are_normalised():
    a = ImageRecord(np.array([G1], float), np.array([0.3]), np.array([G1], float), {s: np.array([True]) for s in ("easy", "medium", "hard")})
    b = ImageRecord(np.zeros((0, 4)), np.zeros(0), np.array([G3], float), {s: np.array([True]) for s in ("easy", "medium", "hard")})
    # one of two faces found, precision 1: AP 0.5 whatever the raw score (normalisation)
    assert wider_ap([a, b])["hard"] == pytest.approx(0.5)


def test_plus_one_iou():
    # 10 x 10 pixel boxes written as [0, 9]: identical -> 1; shifted by 5 -> 50 / 150
    assert overlaps_plus_one(np.array([[0, 0, 9, 9]]), np.array([[0, 0, 9, 9]]))[0, 0] == 1.0
    assert overlaps_plus_one(np.array([[5, 0, 14, 9]]), np.array([[0, 0, 9, 9]]))[0, 0] == pytest.approx(50 / 150)


def test_cross_check_with_pycocotools_ap50():
    """Random faces and predictions, every face kept: WIDER AP vs COCO AP at IoU 0.5.

    Protocol differences: WIDER quantises normalised scores to 1000 thresholds, uses +1-pixel
    IoU and never re-assigns a prediction to its second-best face; COCO samples precision at
    fixed recall points (here 10001 of them, so its interpolation converges to the VOC area).
    Faces are 40-90 px and well apart and predictions are either clearly on (IoU > 0.7) or off
    a face, so matching agrees; what is left is score quantisation: within 0.01.
    """
    pytest.importorskip("pycocotools")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rng = np.random.default_rng(0)
    records, images, anns, dets = [], [], [], []
    aid = 1
    for img in range(20):
        gts = []
        for cell in rng.choice(16, size=rng.integers(1, 8), replace=False):
            r, c = divmod(int(cell), 4)
            s = rng.uniform(40, 90)
            x, y = c * 150 + rng.uniform(0, 40), r * 150 + rng.uniform(0, 40)
            gts.append([x, y, x + s, y + s])
        gts = np.array(gts)
        preds, scores = [], []
        for g in gts:
            if rng.random() < 0.8:  # found, slightly off
                j = rng.uniform(-2, 2, size=4)
                preds.append(g + j)
                scores.append(rng.uniform(0.3, 1.0))
        for _ in range(rng.integers(0, 4)):  # false positives away from faces
            x, y = rng.uniform(620, 800), rng.uniform(0, 500)
            preds.append([x, y, x + 50, y + 50])
            scores.append(rng.uniform(0.0, 0.8))
        preds = np.array(preds).reshape(-1, 4)
        scores = np.array(scores)
        records.append(ImageRecord(preds, scores, gts, {s: np.ones(len(gts), bool) for s in ("easy", "medium", "hard")}))
        images.append({"id": img, "width": 900, "height": 700})
        for g in gts:
            anns.append({"id": aid, "image_id": img, "category_id": 1, "bbox": [g[0], g[1], g[2] - g[0], g[3] - g[1]],
                         "area": float((g[2] - g[0]) * (g[3] - g[1])), "iscrowd": 0})
            aid += 1
        for p, s in zip(preds, scores):
            dets.append({"image_id": img, "category_id": 1, "bbox": [p[0], p[1], p[2] - p[0], p[3] - p[1]], "score": float(s)})
    coco = COCO()
    coco.dataset = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "face"}]}
    coco.createIndex()
    ev = COCOeval(coco, coco.loadRes(dets), "bbox")
    ev.params.iouThrs = np.array([0.5])
    ev.params.recThrs = np.linspace(0, 1, 10001)
    ev.params.maxDets = [1000]
    ev.params.areaRng = [[0, 1e10]]
    ev.params.areaRngLbl = ["all"]
    ev.evaluate()
    ev.accumulate()
    precision = ev.eval["precision"][0, :, 0, 0, 0]
    coco_ap = float(np.mean(np.where(precision < 0, 0, precision)))
    ours = wider_ap(records)["hard"]
    assert 0.5 < coco_ap < 0.95
    assert ours == pytest.approx(coco_ap, abs=0.01)
