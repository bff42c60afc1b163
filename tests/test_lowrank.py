"""SVD-factorised layers (prunekit.lowrank) and the `svd` method."""

import math

import pytest
import torch
from tiny_recipe import tiny_recipe  # tests/ is on sys.path under pytest
from torch import nn

import prunekit
from prunekit import lowrank, methods
from prunekit.errors import UserError

@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # On a CPU shared with other jobs, intra-op threads wait on each other (a ResNet-18 step ran
    # 2x faster on one thread than on two); these tiny models gain nothing from a second thread.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


CONVS = [
    dict(in_channels=5, out_channels=7, kernel_size=3, stride=2, padding=1, bias=True),
    dict(in_channels=4, out_channels=6, kernel_size=(3, 5), stride=(1, 2), padding=(2, 1), dilation=(2, 1), bias=False),
    dict(in_channels=6, out_channels=3, kernel_size=1, bias=True),
]


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


@pytest.mark.parametrize("mode", lowrank.MODES)
@pytest.mark.parametrize("spec", CONVS)
def test_full_rank_conv_reproduces_the_layer(mode, spec):
    torch.manual_seed(0)
    conv = nn.Conv2d(**spec)
    x = torch.randn(2, spec["in_channels"], 11, 13)
    with torch.no_grad():
        y = conv(x)
        layer = lowrank.SVDConv2d.from_conv(conv, mode=mode)
        m, n = layer.geometry.matrix_shape()
        assert layer.rank == min(m, n)
        assert _max_err(layer.forward_dense(x), y) <= 1e-5
        assert _max_err(layer.forward_factorised(x), y) <= 1e-5
        assert _max_err(layer.to_plain(form="pair")(x), y) <= 1e-5
        assert _max_err(layer.to_plain(form="dense")(x), y) <= 1e-5


def test_full_rank_linear_reproduces_the_layer():
    torch.manual_seed(0)
    lin = nn.Linear(9, 4)
    x = torch.randn(3, 9)
    with torch.no_grad():
        layer = lowrank.SVDLinear.from_linear(lin)
        assert _max_err(layer(x), lin(x)) <= 1e-5
        assert _max_err(layer.forward_factorised(x), lin(x)) <= 1e-5


def test_factor_shapes_follow_the_mode():
    conv = nn.Conv2d(4, 6, (3, 5))
    ch = lowrank.SVDConv2d.from_conv(conv, mode="channel", rank=2)
    first, second = ch.factor_weights()
    assert first.shape == (2, 4, 3, 5) and second.shape == (6, 2, 1, 1)
    sp = lowrank.SVDConv2d.from_conv(conv, mode="spatial", rank=2)
    first, second = sp.factor_weights()
    assert sp.geometry.matrix_shape() == (6 * 5, 4 * 3)
    assert first.shape == (2, 4, 3, 1) and second.shape == (6, 2, 1, 5)


def test_parameter_counts_follow_the_formula():
    conv = nn.Conv2d(8, 16, 3, bias=True)
    for mode, (m, n) in (("channel", (16, 72)), ("spatial", (48, 24))):
        for r in (1, 5):
            layer = lowrank.SVDConv2d.from_conv(conv, mode=mode, rank=r)
            assert layer.geometry.matrix_shape() == (m, n)
            assert sum(p.numel() for p in layer.parameters()) == r * (m + n + 1) + 16  # U, s, Vh, bias
            pair = layer.to_plain(form="pair")
            assert sum(p.numel() for p in pair.parameters()) == r * (m + n) + 16
            assert lowrank.saves_params(m, n, r) == (r * (m + n) < m * n)
    # at r = 11 the channel pair (11 * 88 = 968) is cheaper than 16 * 72 = 1152, at 14 it is not
    assert isinstance(lowrank.SVDConv2d.from_conv(conv, rank=11).to_plain(), nn.Sequential)
    assert isinstance(lowrank.SVDConv2d.from_conv(conv, rank=14).to_plain(), nn.Conv2d)


@pytest.mark.parametrize("energy,rank", [(0.5, 1), (16 / 30, 1), (0.6, 2), (25 / 30, 2), (0.9, 3), (0.99, 4), (1.0, 4)])
def test_rank_for_energy_on_a_hand_made_spectrum(energy, rank):
    # squares 16, 9, 4, 1 of 30, given unsorted and with a sign: the kept energy must be >= e
    s = torch.tensor([2.0, -4.0, 1.0, 3.0])
    assert lowrank.rank_for_energy(s, energy) == rank


def test_energy_truncation_keeps_the_largest_singular_values():
    torch.manual_seed(0)
    q1, _ = torch.linalg.qr(torch.randn(12, 6))
    q2, _ = torch.linalg.qr(torch.randn(18, 6))
    s = torch.tensor([5.0, 4.0, 3.0, 0.3, 0.2, 0.1])
    lin = nn.Linear(18, 12)
    with torch.no_grad():
        lin.weight.copy_((q1 * s) @ q2.T)
    model = nn.Sequential(lin)
    svd = methods.create("svd", energy=0.99)
    svd.at_init(model, example_inputs=torch.randn(1, 18))
    # 25 + 16 + 9 = 50 of 50.14 (the other six singular values are 0): three hold 99.7%
    svd.finalize(model, example_inputs=torch.randn(1, 18))
    assert svd.info["ranks"]["0"] == {"rank": 3, "full_rank": 12, "form": "pair"}
    pair = model[0]
    got = torch.linalg.svdvals((pair[1].weight @ pair[0].weight).detach())  # 12 x 18 of rank 3
    assert torch.allclose(got[:3], s[:3], atol=1e-4) and float(got[3:].abs().max()) < 1e-4


def test_orthogonality_is_zero_for_orthonormal_factors_and_exact_otherwise():
    torch.manual_seed(0)
    for init in lowrank.INITS:
        layer = lowrank.SVDConv2d.from_conv(nn.Conv2d(4, 6, 3), init=init)
        assert float(layer.orthogonality().detach()) < 1e-10
    with torch.no_grad():
        layer.U.mul_(2.0)  # U^T U = 4 I: ||3 I||^2 = 9 r, divided by r^2
    assert float(layer.orthogonality().detach()) == pytest.approx(9 / layer.rank, rel=1e-5)


def test_random_init_keeps_the_frobenius_norm():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3)
    layer = lowrank.SVDConv2d.from_conv(conv, init="random")
    assert float(layer.dense_weight().detach().norm()) == pytest.approx(float(conv.weight.detach().norm()), rel=1e-5)


def test_sparsity_penalties():
    s = torch.tensor([3.0, -4.0])
    assert float(lowrank.sparsity_penalty(s, "l1")) == pytest.approx(7.0)
    assert float(lowrank.sparsity_penalty(s, "hoyer")) == pytest.approx(7 / 5)
    assert float(lowrank.sparsity_penalty(s, "hoyer_square")) == pytest.approx(49 / 25)


def _small_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2), nn.ReLU(),
                         nn.Flatten(), nn.Linear(8 * 3 * 3, 5))


def test_method_regularizer_is_the_weighted_sum():
    torch.manual_seed(0)
    model = _small_net()
    svd = methods.create("svd", lambda_o=2.0, lambda_s=0.5, penalty="l1", init="random")
    svd.at_init(model, example_inputs=torch.randn(1, 3, 8, 8))
    layers = lowrank.svd_layers(model)
    assert set(layers) == {"0", "2", "5"}
    with torch.no_grad():
        for layer in layers.values():
            layer.U.mul_(1.5)
    expected = sum(2.0 * l.orthogonality() + 0.5 * l.s.abs().sum() for l in layers.values())
    reg = svd.regularizer(model)
    assert float(reg.detach()) == pytest.approx(float(expected.detach()), rel=1e-6)
    reg.backward()
    assert all(l.U.grad is not None and l.s.grad is not None for l in layers.values())


@pytest.mark.parametrize("mode", lowrank.MODES)
def test_svd_init_keeps_the_function_and_finalize_gives_plain_modules(mode):
    torch.manual_seed(0)
    model = _small_net().eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        ref = model(x)
    svd = methods.create("svd", mode=mode, energy=1.0)
    svd.at_init(model, example_inputs=x[:1])
    with torch.no_grad():
        assert _max_err(model(x), ref) <= 1e-5
    svd.finalize(model, example_inputs=x[:1])
    assert not lowrank.svd_layers(model)
    assert all(type(m) in (nn.Conv2d, nn.Linear, nn.ReLU, nn.Flatten, nn.Sequential) for m in model.modules())
    with torch.no_grad():
        assert _max_err(model(x), ref) <= 1e-5  # energy 1 keeps every singular value
    assert set(svd.info["ranks"]) == {"0", "2", "5"}
    # orthogonality during fine-tuning: zero for the SVD factors, a gradient once they drift
    hooks = svd.finetune_hooks()
    pairs = lowrank.factored_pairs(model)
    if pairs:
        assert float(hooks.regularizer(model).detach()) < 1e-8


def test_pair_orthogonality_reads_the_pair_as_u_diag_s_vh():
    torch.manual_seed(0)
    layer = lowrank.SVDConv2d.from_conv(nn.Conv2d(6, 16, 3), rank=3, init="random")
    with torch.no_grad():
        layer.U.add_(0.1 * torch.randn_like(layer.U))
        layer.Vh.add_(0.1 * torch.randn_like(layer.Vh))
        rows = layer.Vh.norm(dim=1, keepdim=True)
        layer.Vh.div_(rows)  # unit rows: the pair's reading recovers exactly this Vh
        pair = layer.to_plain(form="pair")
    assert float(lowrank.pair_orthogonality(pair[0], pair[1]).detach()) == pytest.approx(float(layer.orthogonality().detach()), rel=1e-4)


def test_one_shot_params_target():
    torch.manual_seed(0)
    model = _small_net()
    x = torch.randn(1, 3, 8, 8)
    result = prunekit.prune(model, method="svd", target="params=0.3", example_inputs=x)
    assert 0.3 <= result.achieved["params"] < 0.45
    assert 0.0 < result.info["energy"] < 1.0
    with pytest.raises(UserError, match="target"):
        methods.create("svd", target="channels=0.3")
    with pytest.raises(UserError, match="energy"):
        methods.create("svd", energy=1.5)
    with pytest.raises(UserError, match="mode"):
        methods.create("svd", mode="depth")
    with pytest.raises(UserError, match="not both"):
        methods.create("svd", target="params=0.3", energy=0.9)


@pytest.mark.parametrize("mode", lowrank.MODES)
def test_truncated_model_saves_and_loads(tmp_path, mode):
    from prunekit import io, models

    torch.manual_seed(0)
    model = models.create("resnet20", num_classes=10)
    x = torch.randn(2, 3, 8, 8)
    svd = methods.create("svd", mode=mode, energy=0.9)
    svd.at_init(model, example_inputs=x[:1])
    io.save(model, tmp_path / "training_form.pt")  # the factorised training form replays too
    with torch.no_grad():
        assert torch.equal(io.load(tmp_path / "training_form.pt").eval()(x), model.eval()(x))
    svd.finalize(model, example_inputs=x[:1])
    ranks = svd.info["ranks"]
    assert len(ranks) == 20 and any(r["form"] == "pair" for r in ranks.values())
    assert all(r["rank"] <= r["full_rank"] for r in ranks.values())
    io.save(model, tmp_path / "m.pt")
    loaded = io.load(tmp_path / "m.pt").eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))
    assert prunekit.measure(loaded, x).params == prunekit.measure(model, x).params


@pytest.mark.parametrize("mode", lowrank.MODES)
def test_svd_inside_prunekit_run(tmp_path, mode):
    from prunekit import io, metrics
    from prunekit.experiment import run_experiment
    from prunekit.recipe import Recipe

    recipe = Recipe.model_validate(tiny_recipe(
        name="svd-tiny",
        method={"name": "svd", "options": {"mode": mode, "energy": 0.8}, "train": {"epochs": 1, "lr": 0.01}},
        finetune={"epochs": 1, "lr": 0.01},
    ))
    m = run_experiment(recipe, out_dir=tmp_path / "run", progress=False)
    assert m["status"] == "complete"
    ranks = m["method_info"]["ranks"]
    assert len(ranks) == 20 and all(1 <= r["rank"] <= r["full_rank"] for r in ranks.values())
    assert m["final"]["params"] < m["baseline"]["params"]
    model = io.load(tmp_path / "run" / "model.pt")  # plain modules, rebuilt from the lowrank ops
    assert not lowrank.svd_layers(model)
    measured = metrics.measure(model, torch.zeros(1, 3, 8, 8))
    assert measured.params == m["final"]["params"] and measured.macs == m["final"]["macs"]
