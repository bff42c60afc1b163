"""SNIP, structured SNIP, GraSP and SynFlow: scores against hand computations, exact sparsity, masks that hold."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prunekit
from prunekit import masks, methods
from prunekit.errors import UserError
from prunekit.methods.snip import grasp_scores, linearised_copy, snip_scores, synflow_scores


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 12, 3, padding=1, bias=False), nn.BatchNorm2d(12), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 4),
    )


def batches(n: int, shape: tuple[int, ...], classes: int, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, *shape, generator=g), torch.randint(0, classes, (8,), generator=g)) for _ in range(n)]


def mlp_grads_by_hand(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """dL/dW1, dL/dW2 of mean cross-entropy for Linear-ReLU-Linear, by the chain rule written out."""
    W1, b1, W2, b2 = model[0].weight, model[0].bias, model[2].weight, model[2].bias
    with torch.no_grad():
        pre = x @ W1.T + b1
        h = pre.clamp(min=0)
        z = h @ W2.T + b2
        d2 = (torch.softmax(z, dim=1) - F.one_hot(y, 3).float()) / x.shape[0]  # dL/dz
        d1 = (d2 @ W2) * (pre > 0).float()  # dL/dpre
        return d1.T @ x, d2.T @ h


def test_snip_scores_equal_w_times_grad_by_hand():
    model = mlp()
    data = batches(2, (6,), 3)
    g1 = torch.zeros(5, 6)
    g2 = torch.zeros(3, 5)
    for x, y in data:  # the gradient is accumulated (summed) over the batches
        a, b = mlp_grads_by_hand(model, x, y)
        g1 += a
        g2 += b
    raw = snip_scores(model, data=data, batches=2, normalise=False)
    torch.testing.assert_close(raw["0"], (model[0].weight.detach() * g1).abs(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(raw["2"], (model[2].weight.detach() * g2).abs(), rtol=1e-5, atol=1e-7)
    norm = snip_scores(model, data=data, batches=2)
    total = raw["0"].sum() + raw["2"].sum()
    torch.testing.assert_close(norm["0"], raw["0"] / total)
    assert float(norm["0"].sum() + norm["2"].sum()) == pytest.approx(1.0, abs=1e-6)
    # batches=1 uses only the first batch
    one = snip_scores(model, data=data, batches=1, normalise=False)
    torch.testing.assert_close(one["2"], (model[2].weight.detach() * mlp_grads_by_hand(model, *data[0])[1]).abs(), rtol=1e-5, atol=1e-7)


def test_snip_keeps_global_top_and_masks_survive_momentum_and_weight_decay():
    model = small_cnn()
    data = batches(2, (3, 8, 8), 4)
    x = torch.randn(1, 3, 8, 8)
    bn_before = model[1].running_mean.clone()
    scores = snip_scores(model, data=data, batches=2, exclude=("8",))
    assert torch.equal(model[1].running_mean, bn_before)  # scoring leaves BatchNorm statistics alone
    result = prunekit.prune(model, method="snip", target="sparsity=0.7", example_inputs=x, data=data,
                            batches=2, exclude=["8"])
    m = result.model
    layers = {"0": m[0], "3": m[3]}
    n = sum(l.weight.numel() for l in layers.values())
    zeros = sum(int((masks.weight_of(l) == 0).sum()) for l in layers.values())
    assert zeros == round(0.7 * n)  # exact count over the scored layers
    kept = torch.cat([scores[k][masks.get_masks(m)[k] > 0] for k in layers])
    removed = torch.cat([scores[k][masks.get_masks(m)[k] == 0] for k in layers])
    assert kept.min() >= removed.max()  # one global ranking
    # the excluded classifier stays dense and unmasked
    assert not masks.is_masked(m[8]) and int((m[8].weight == 0).sum()) == 0

    pruned = {k: masks.get_masks(m)[k] == 0 for k in layers}
    orig_before = {k: layers[k].weight_orig.detach().clone() for k in layers}
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    m.train()
    for x_b, y_b in data + data[:1]:  # 3 steps
        opt.zero_grad()
        F.cross_entropy(m(x_b), y_b).backward()
        opt.step()
        for k, l in layers.items():
            assert int((masks.weight_of(l)[pruned[k]] != 0).sum()) == 0
    # the optimizer did move the hidden weights (weight decay, momentum): the mask is what holds them at zero
    assert any(not torch.equal(layers[k].weight_orig[pruned[k]], orig_before[k][pruned[k]]) for k in layers)
    masks.make_permanent(m)
    assert sum(int((m[int(k)].weight == 0).sum()) for k in layers) >= round(0.7 * n)


def test_snip_needs_data_and_bad_exclude_is_one_line():
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(UserError, match="data"):
        prunekit.prune(small_cnn(), method="snip", target="sparsity=0.5", example_inputs=x)
    with pytest.raises(UserError, match="nothere"):
        prunekit.prune(small_cnn(), method="snip", target="sparsity=0.5", example_inputs=x,
                       data=batches(1, (3, 8, 8), 4), exclude=["nothere"])


def test_grasp_scores_are_minus_w_hessian_gradient_and_hit_target():
    model = mlp()
    data = batches(2, (6,), 3)
    T = 5.0
    params = [model[0].weight, model[2].weight]

    def loss_of(ws, x, y):
        h = F.relu(x @ ws[0].T + model[0].bias)
        return F.cross_entropy((h @ ws[1].T + model[2].bias) / T, y)

    def total(*ws):
        return sum(loss_of(ws, x, y) for x, y in data)

    g = torch.autograd.grad(total(*params), params)
    _, hg = torch.autograd.functional.hvp(total, tuple(p.detach() for p in params), tuple(gi.detach() for gi in g))
    s = grasp_scores(model, data=data, batches=2, temperature=T)
    torch.testing.assert_close(s["0"], -(params[0].detach() * hg[0]), rtol=1e-4, atol=1e-8)
    torch.testing.assert_close(s["2"], -(params[1].detach() * hg[1]), rtol=1e-4, atol=1e-8)

    x = torch.randn(1, 3, 8, 8)
    cnn_data = batches(1, (3, 8, 8), 4)
    cnn = small_cnn()
    scores = grasp_scores(cnn, data=cnn_data, batches=1)
    m = prunekit.prune(cnn, method="grasp", target="sparsity=0.6", example_inputs=x, data=cnn_data).model
    got = masks.get_masks(m)
    n = sum(v.numel() for v in got.values())
    assert sum(int((v == 0).sum()) for v in got.values()) == round(0.6 * n)
    removed = torch.cat([scores[k][got[k] == 0] for k in got])
    kept = torch.cat([scores[k][got[k] > 0] for k in got])
    assert removed.min() >= kept.max()  # the highest S are removed


def test_grasp_through_hardsigmoid_and_hardswish():
    # MobileNetV3's activations: torch has no second derivative of hardsigmoid_backward, GraSP needs one
    torch.manual_seed(0)
    act = nn.Hardsigmoid()
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Hardswish(), nn.Conv2d(8, 8, 1), act,
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    data = batches(1, (3, 8, 8), 4)
    m = prunekit.prune(model, method="grasp", target="sparsity=0.5", example_inputs=torch.randn(1, 3, 8, 8), data=data).model
    got = masks.get_masks(m)
    assert sum(int((v == 0).sum()) for v in got.values()) == round(0.5 * sum(v.numel() for v in got.values()))
    assert "forward" not in vars(act)  # the exact twice-differentiable form is gone after scoring


def test_synflow_scores_by_hand_and_target_without_data():
    torch.manual_seed(0)
    chain = nn.Sequential(nn.Linear(4, 3, bias=False), nn.Linear(3, 2, bias=False))
    W1, W2 = chain[0].weight.detach(), chain[1].weight.detach()
    s = synflow_scores(linearised_copy(chain), example_inputs=torch.randn(1, 4))
    # R = 1^T |W2| |W1| 1  =>  dR/dW1[i, j] = sum_k |W2[k, i]|,  dR/dW2[k, i] = sum_j |W1[i, j]|
    torch.testing.assert_close(s["0"], (W1.abs() * W2.abs().sum(0)[:, None]).double())
    torch.testing.assert_close(s["1"], (W2.abs() * W1.abs().sum(1)[None, :]).double())
    assert torch.equal(chain[0].weight.detach(), W1)  # the real model keeps its signs

    x = torch.randn(1, 3, 8, 8)
    m = prunekit.prune(small_cnn(), method="synflow", target="sparsity=0.9", example_inputs=x, rounds=20).model
    got = masks.get_masks(m)
    n = sum(v.numel() for v in got.values())
    assert sum(int((v == 0).sum()) for v in got.values()) == round(0.9 * n)
    assert all(int(v.sum()) > 0 for v in got.values())  # iterative scoring avoids layer collapse here


def test_snip_channel_removes_channels_at_init_to_a_params_target():
    x = torch.randn(1, 3, 8, 8)
    model = small_cnn()
    result = prunekit.prune(model, method="snip_channel", target="params=0.4", example_inputs=x, data=batches(1, (3, 8, 8), 4))
    assert result.achieved["params"] == pytest.approx(0.4, abs=0.05)
    assert result.after.sparsity == 0.0  # structured: nothing masked, channels are gone
    assert result.model[0].out_channels < 8 or result.model[3].out_channels < 12
    assert result.model.eval()(x).shape == (1, 4)
    assert result.info["channels_removed"] == sum(result.info["removed_per_group"].values())
    with pytest.raises(UserError, match="sparsity"):
        methods.create("snip_channel", target="sparsity=0.5")
