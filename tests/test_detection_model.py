"""RetinaFace model, priors, matching and the MultiBox loss, decoding."""

import math
import os
from pathlib import Path

import pytest
import torch

import prunekit
from prunekit import UserError, models, tasks
from prunekit.tasks.detection.boxes import decode, encode, prior_corners
from prunekit.tasks.detection.decode import detect
from prunekit.tasks.detection.loss import LossConfig, match, multibox_loss
from prunekit.tasks.detection.priors import count_priors, make_priors


def _weights_dir() -> Path:
    data = os.environ.get("PRUNEKIT_DATA")
    for cand in ([Path(data).parent / "weights"] if data else []) + [Path(__file__).resolve().parents[2] / "shared" / "weights"]:
        if (cand / "retinaface-mnet025-biubug6.pth").exists():
            return cand
    pytest.skip("retinaface weights not found")


@pytest.mark.parametrize("h,w", [(640, 640), (416, 416), (333, 417)])
def test_prior_count_by_formula(h, w):
    expected = sum(math.ceil(h / s) * math.ceil(w / s) * 2 for s in (8, 16, 32))
    assert count_priors(h, w) == expected == make_priors(h, w).shape[0]
    if h == w == 640:
        assert expected == (80 ** 2 + 40 ** 2 + 20 ** 2) * 2 == 16800
    m = models.create("retinaface_mnet025").eval()
    with torch.no_grad():
        out = m(torch.zeros(1, 3, h, w))
    assert [tuple(t.shape) for t in out] == [(1, expected, 4), (1, expected, 2), (1, expected, 10)]


def test_prior_layout_first_cells():
    p = make_priors(64, 64)
    # level 0, cell (0, 0): sizes 16 and 32 centred at (4, 4); then cell (0, 1) at (12, 4)
    assert torch.allclose(p[0], torch.tensor([4 / 64, 4 / 64, 16 / 64, 16 / 64]))
    assert torch.allclose(p[1], torch.tensor([4 / 64, 4 / 64, 32 / 64, 32 / 64]))
    assert torch.allclose(p[2], torch.tensor([12 / 64, 4 / 64, 16 / 64, 16 / 64]))


def test_encode_decode_roundtrip():
    pri = make_priors(64, 64)[:10]
    boxes = prior_corners(pri) + 0.01
    assert torch.allclose(decode(encode(boxes, pri, (0.1, 0.2)), pri, (0.1, 0.2)), boxes, atol=1e-6)


def _exact_case(neg_pos_ratio=7):
    h = w = 640
    pri = make_priors(h, w)
    k = 2 * (10 * 80 + 20)  # level 0, row 10, column 20, the 16-pixel prior
    frame = torch.tensor([w, h, w, h], dtype=torch.float32)
    gt = prior_corners(pri[k:k + 1]) * frame
    target = {"boxes": gt, "labels": torch.ones(1, dtype=torch.long)}
    return pri, k, frame, target


def test_prior_matching_gt_exactly_gives_zero_box_loss():
    pri, k, frame, target = _exact_case()
    m = match(target["boxes"] / frame, target["labels"], pri, (0.1, 0.2))
    assert m.labels.nonzero().squeeze(1).tolist() == [k]     # only that prior (its neighbours overlap < 0.35)
    assert torch.allclose(m.boxes[k], torch.zeros(4), atol=1e-4)  # float32 rounding of log(1)
    p = pri.shape[0]
    box_d = torch.zeros(1, p, 4)
    logits = torch.zeros(1, p, 2)
    losses = multibox_loss(box_d, logits, None, [m])
    assert losses["box"].item() == pytest.approx(0.0, abs=1e-9)
    # all-zero logits: every chosen prior costs log 2; 1 positive + 7 hard negatives, divided by 1 positive
    assert losses["cls"].item() == pytest.approx(8 * math.log(2), rel=1e-5)
    assert multibox_loss(box_d, logits, None, [m], LossConfig(neg_pos_ratio=3))["cls"].item() == pytest.approx(4 * math.log(2), rel=1e-5)
    # a 0.5 error in one delta: smooth-L1 0.5 * 0.5^2 = 0.125, weighted 2
    box_d[0, k, 0] = 0.5
    assert multibox_loss(box_d, logits, None, [m])["box"].item() == pytest.approx(0.25, rel=1e-5)


def test_hard_negative_mining_picks_the_most_confident_background():
    pri, k, frame, target = _exact_case()
    m = match(target["boxes"] / frame, target["labels"], pri, (0.1, 0.2))
    p = pri.shape[0]
    logits = torch.zeros(1, p, 2)
    hard = [5, 50, 500]
    logits[0, hard, 1] = 5.0       # background priors that look like faces: the hardest negatives
    logits[0, k, 1] = 5.0          # the positive is confident and right
    loss = multibox_loss(torch.zeros(1, p, 4), logits, None, [m], LossConfig(neg_pos_ratio=3))["cls"].item()
    ce_pos = math.log(1 + math.exp(-5))
    ce_hard = math.log(1 + math.exp(5))
    assert loss == pytest.approx(ce_pos + 3 * ce_hard, rel=1e-5)


def test_detection_task_loss_with_landmarks_and_sgd_steps():
    torch.manual_seed(0)
    task = tasks.create("detection")
    model = models.create("retinaface_mnet025")
    x = torch.randn(2, 3, 128, 128) * 50
    targets = [
        {"boxes": torch.tensor([[10.0, 10.0, 40.0, 44.0], [60.0, 50.0, 120.0, 118.0]]), "labels": torch.ones(2, dtype=torch.long),
         "landmarks": torch.tensor([[20.0, 20, 30, 20, 25, 27, 20, 35, 30, 35]] * 2), "has_landmarks": torch.tensor([True, False])},
        {"boxes": torch.tensor([[30.0, 30.0, 90.0, 100.0]]), "labels": torch.ones(1, dtype=torch.long)},
    ]
    batch = (x, targets)
    losses = task.loss(model, batch)
    assert set(losses) == {"box", "cls", "landmark"} and all(torch.isfinite(v) for v in losses.values())
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    first = None
    for _ in range(6):
        total = sum(task.loss(model, batch).values())
        first = first if first is not None else total.item()
        opt.zero_grad()
        total.backward()
        opt.step()
    assert sum(task.loss(model, batch).values()).item() < first


def test_no_faces_gives_finite_zero_box_loss():
    task = tasks.create("detection")
    model = models.create("retinaface_mnet025", landmarks=False)
    losses = task.loss(model, (torch.zeros(1, 3, 64, 64), [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]))
    assert set(losses) == {"box", "cls"} and losses["box"].item() == 0.0 and losses["cls"].item() == 0.0


def test_decode_recovers_a_box_and_nms_removes_the_duplicate():
    h = w = 128
    pri = make_priors(h, w)
    p = pri.shape[0]
    box_d = torch.zeros(1, p, 4)
    logits = torch.full((1, p, 2), 0.0)
    logits[..., 0] = 10.0
    logits[0, [0, 2], 1] = 20.0     # two neighbouring 16-px priors: IoU 1/3 < 0.4, both kept
    logits[0, 1, 1] = 15.0          # the 32-px prior at cell 0: overlaps prior 0 by 0.25, kept
    dets = detect((box_d, logits), (h, w))[0]
    assert dets["boxes"].shape[0] == 3
    assert torch.allclose(dets["boxes"][0], prior_corners(pri[:1])[0] * torch.tensor([w, h, w, h]), atol=1e-4)
    logits[0, 2, 1] = -20.0
    box_d[0, 2] = torch.tensor([-1.0, 0.0, 0.0, 0.0])  # moved onto prior 0's place: a duplicate
    logits[0, 2, 1] = 19.0
    dets = detect((box_d, logits), (h, w))[0]
    assert dets["boxes"].shape[0] == 2 and dets["scores"][0] > dets["scores"][1]


def test_checkpoint_loads_strictly_and_heads_are_protected():
    w = _weights_dir()
    m = models.create("retinaface_mnet025", weights=w / "retinaface-mnet025-biubug6.pth")
    assert m.prunekit_builder["kwargs"]["num_classes"] == 2
    assert sum(p.numel() for p in m.parameters()) == 426608
    x = torch.zeros(1, 3, 96, 128)
    protected = tasks.create("detection").protected(m, x)
    assert len(protected) == 9 and set(protected) == set(m.head_convs())
    for name in ("ssh1", "ssh2", "ssh3"):
        assert hasattr(m, name)
    # the ImageNet backbone file goes into the body
    b = models.create("retinaface_mnet025", weights=w / "mobilenetv1-x0.25-imagenet-biubug6.pth.tar")
    sd = torch.load(w / "mobilenetv1-x0.25-imagenet-biubug6.pth.tar", weights_only=True, map_location="cpu")["state_dict"]
    assert torch.equal(b.body.stage2[3][3].weight, sd["module.stage2.3.3.weight"])
    # without the landmark head the file still loads (its landmark weights are dropped)
    assert len(models.create("retinaface_mnet025", landmarks=False, weights=w / "retinaface-mnet025-biubug6.pth")(x)) == 2


def test_wrong_checkpoint_is_one_line_user_error():
    w = _weights_dir()
    with pytest.raises(UserError, match="weights do not fit RetinaFace: missing keys body.stage1") as err:
        models.create("retinaface_mnet025", weights=w / "resnet20-12fca82f.th")
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="activation"):
        models.create("retinaface_mnet025", activation="gelu")


def test_leaky_and_relu_differ():
    m_relu = models.create("retinaface_mnet025").eval()
    m_leaky = models.create("retinaface_mnet025", activation="leaky").eval()
    m_leaky.load_state_dict(m_relu.state_dict())
    x = torch.randn(1, 3, 64, 64) * 50
    with torch.no_grad():
        assert not torch.allclose(m_relu(x)[0], m_leaky(x)[0])
    assert sum(isinstance(mod, torch.nn.LeakyReLU) for mod in m_leaky.modules()) > 20
    assert not any(isinstance(mod, torch.nn.LeakyReLU) for mod in m_relu.modules())


def test_whole_model_l1_filter_keeps_output_shapes():
    model = models.create("retinaface_mnet025")
    x = torch.zeros(1, 3, 128, 128)
    with torch.no_grad():
        before = [t.shape for t in model.eval()(x)]
    heads = tasks.create("detection").protected(model, x)
    result = prunekit.prune(model, method="l1_filter", target="macs=0.5", example_inputs=x, ignore=heads, round_to=4)
    with torch.no_grad():
        after = [t.shape for t in result.model.eval()(x)]
    assert after == before
    assert result.achieved["macs"] == pytest.approx(0.5, abs=0.05)
    assert result.model.ssh1.conv3X3[0].out_channels < 32
