"""Unstructured masks on torch.nn.utils.prune: exact counts, persistence through training, baking."""

import pytest
import torch
from torch import nn

from prunekit import masks
from prunekit.errors import UserError


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


def test_global_and_layer_scopes_keep_the_top_scores():
    scores = {"a": torch.tensor([1.0, 5.0, 3.0, 0.5]), "b": torch.tensor([4.0, 0.1])}
    g = masks.masks_from_scores(scores, sparsity=0.5, scope="global")
    assert g["a"].tolist() == [0, 1, 1, 0] and g["b"].tolist() == [1, 0]
    per_layer = masks.masks_from_scores(scores, sparsity=0.5, scope="layer")
    assert per_layer["a"].tolist() == [0, 1, 1, 0] and per_layer["b"].tolist() == [1, 0]


def test_masked_weights_stay_zero_through_sgd_with_momentum_and_decay():
    model = _net()
    layers = masks.prunable_layers(model)
    scores = {n: m.weight.abs() for n, m in layers.items()}
    masks.apply_masks(model, masks.masks_from_scores(scores, sparsity=0.6))
    zero_before = {n: (masks.weight_of(m) == 0) for n, m in layers.items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(4, 6)).sum().backward()
        opt.step()
    for n, m in layers.items():
        assert torch.all(m.weight[zero_before[n]] == 0)
    assert masks.sparsity(model) == pytest.approx(0.6, abs=0.01)


def test_make_permanent_bakes_zeros_and_removes_reparametrisation():
    model = _net()
    masks.apply_masks(model, masks.masks_from_scores({"0": model[0].weight.abs()}, sparsity=0.5))
    masks.make_permanent(model)
    assert not hasattr(model[0], "weight_mask")
    assert isinstance(model[0].weight, nn.Parameter)
    assert int((model[0].weight == 0).sum()) == 24


def test_replacing_a_mask_keeps_one_reparametrisation():
    model = _net()
    masks.apply_masks(model, {"0": torch.ones(8, 6)})
    masks.apply_masks(model, {"0": torch.zeros(8, 6)})
    assert torch.all(model[0].weight == 0)
    assert set(masks.get_masks(model)) == {"0"}


def test_bad_exclude_glob_is_a_user_error():
    with pytest.raises(UserError, match="matches no conv/linear"):
        masks.prunable_layers(_net(), exclude=["conv*"])
