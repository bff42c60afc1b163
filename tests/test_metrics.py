"""Measurement: counts equal the formulas from layer shapes; NetScore; latency."""

import math

import pytest
import torch
from torch import nn

import prunekit
from prunekit import bench, masks
from prunekit.metrics import achieved, measure, netscore


def conv_macs(conv: nn.Conv2d, h_out: int, w_out: int) -> int:
    return conv.out_channels * h_out * w_out * (conv.in_channels // conv.groups) * conv.kernel_size[0] * conv.kernel_size[1]


def test_conv_and_linear_macs_equal_the_formula():
    c1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)  # 16x16 -> 8x8
    dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
    pw = nn.Conv2d(8, 16, 1, bias=False)
    fc = nn.Linear(16, 5)
    model = nn.Sequential(c1, nn.ReLU(), dw, pw, nn.AdaptiveAvgPool2d(1), nn.Flatten(), fc)
    m = measure(model, torch.randn(4, 3, 16, 16))
    expected = conv_macs(c1, 8, 8) + conv_macs(dw, 8, 8) + conv_macs(pw, 8, 8) + 16 * 5
    assert m.macs == expected
    layers = m.by_module()
    assert layers["0"].macs == conv_macs(c1, 8, 8)
    assert layers["2"].macs == 8 * 8 * 8 * 1 * 9
    assert layers["6"].macs == 80
    assert m.params == sum(p.numel() for p in model.parameters())
    assert m.channels == 8 + 8 + 16 + 5


def test_nonzero_counts_follow_masks():
    fc = nn.Linear(10, 10, bias=False)
    model = nn.Sequential(fc)
    mask = torch.zeros(10, 10)
    mask[:, :3] = 1  # 30 % dense
    masks.apply_masks(model, {"0": mask})
    m = measure(model, torch.randn(1, 10))
    assert m.params == 100 and m.nonzero_params <= 30
    assert m.macs == 100
    assert m.nonzero_macs == m.nonzero_params  # one MAC per weight of a linear layer at batch 1
    assert m.sparsity == pytest.approx(1 - m.nonzero_params / 100)


def test_achieved_fractions():
    big = measure(nn.Linear(10, 10), torch.randn(1, 10))
    small = measure(nn.Linear(10, 5), torch.randn(1, 10))
    got = achieved(big, small)
    assert got["params"] == pytest.approx(1 - 55 / 110)
    assert got["macs"] == pytest.approx(0.5)


def test_netscore_formula():
    # a = 90 %, p = 2 M, m = 0.5 G: 20 log10(8100 / (sqrt(2) sqrt(0.5))) = 20 log10(8100)
    assert netscore(90.0, 2_000_000, 500_000_000) == pytest.approx(20 * math.log10(8100))
    assert math.isnan(netscore(0.0, 1, 1))


def test_latency_is_a_positive_median_and_does_not_touch_the_model():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU())
    before = [p.clone() for p in model.parameters()]
    ms = bench.latency(model, torch.randn(1, 3, 16, 16), repeats=5, warmup=1)
    assert ms > 0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert model.training


def test_magnitude_one_shot_reaches_sparsity_exactly():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4))
    x = torch.randn(1, 3, 8, 8)
    result = prunekit.prune(model, method="magnitude", target="sparsity=0.75", example_inputs=x)
    weights = [model[0].weight, model[3].weight]
    total = sum(w.numel() for w in weights)
    zeros = sum(int((w == 0).sum()) for w in weights)
    assert zeros == round(0.75 * total)
    assert result.after.sparsity == pytest.approx(zeros / total)
    assert result.after.params == result.before.params  # unstructured: dense size unchanged
