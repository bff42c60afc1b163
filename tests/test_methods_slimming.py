"""Network slimming (subgradient, global threshold, residual coupling) and double pruning."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prunekit
from prunekit import masks, methods
from prunekit.errors import UserError


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 12, 3, padding=1, bias=False), nn.BatchNorm2d(12), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 4),
    )


def resnet20() -> nn.Module:
    from prunekit import models

    torch.manual_seed(0)
    return models.create("resnet20", num_classes=10, small_input=True, weights=None)


def test_regulariser_moves_gamma_by_the_l1_subgradient():
    lam, lr = 1e-2, 0.5
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 4, (4,))
    method = methods.create("slimming", target="channels=0.5", sparsity_lambda=lam)
    m = small_cnn()
    with torch.no_grad():
        m[1].weight.copy_(torch.tensor([0.5, -0.3, 0.0, 1.0, -2.0, 0.1, -0.1, 0.7]))
    m = method.at_init(m, example_inputs=x[:1])
    gammas = {k: m[k].weight.detach().clone() for k in (1, 4)}
    m.train()
    F.cross_entropy(m(x), y).backward()
    task = {k: m[k].weight.grad.clone() for k in (1, 4)}
    conv_grad = m[0].weight.grad.clone()
    method.after_backward(m)
    for k in (1, 4):
        # d/dgamma of lam * |gamma| is lam * sign(gamma) (0 at gamma = 0, as torch.sign)
        torch.testing.assert_close(m[k].weight.grad, task[k] + lam * torch.sign(gammas[k]))
    assert torch.equal(m[0].weight.grad, conv_grad)  # only BatchNorm scales are touched
    torch.optim.SGD(m.parameters(), lr=lr).step()
    expected = gammas[1] - lr * (task[1] + lam * torch.sign(gammas[1]))
    torch.testing.assert_close(m[1].weight.detach(), expected)
    assert float(m[1].weight.detach()[2]) == pytest.approx(-lr * float(task[1][2]))  # gamma = 0: no L1 push


def test_slimming_resnet_global_threshold_and_coupled_residual_channels():
    model = resnet20()
    x = torch.randn(1, 3, 32, 32)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.weight.copy_(torch.rand(mod.num_features, generator=g) * 2 - 1)  # signs must not matter
    names = dict(model.named_modules())
    # the groups without residual coupling: each block's conv1 -> bn1 (the rest are coupled by the adds)
    single_bn = {f"layer{s}.{b}.conv1": f"layer{s}.{b}.bn1" for s in (1, 2, 3) for b in range(3)}
    gamma = {bn: names[bn].weight.detach().abs().clone() for bn in single_bn.values()}

    result = prunekit.prune(model, method="slimming", target="channels=0.4", example_inputs=x)
    pruned = result.model
    removed = {root: set(idxs) for op in pruned.prunekit_ops for root, is_out, idxs in op["history"] if is_out}
    kept_vals, gone_vals = [], []
    for root, bn in single_bn.items():
        gone = removed.get(root, set())
        gone_vals += [float(gamma[bn][i]) for i in gone]
        kept_vals += [float(gamma[bn][i]) for i in range(len(gamma[bn])) if i not in gone]
    assert gone_vals, "something was removed from the uncoupled groups"
    assert min(kept_vals) >= max(gone_vals)  # one global threshold on |gamma|
    assert result.info["channels_removed"] == pytest.approx(0.4 * result.info["channels_scored"], abs=1)

    # residual-coupled channels were decided together: every add in a stage sees equal widths
    p = dict(pruned.named_modules())
    for stage, stem in (("layer1", "bn1"), ("layer2", None), ("layer3", None)):
        widths = {p[f"{stage}.{i}.bn2"].num_features for i in range(3)} | ({p[stem].num_features} if stem else set())
        assert len(widths) == 1, (stage, widths)
    assert all(mod.num_features >= 1 for mod in pruned.modules() if isinstance(mod, nn.BatchNorm2d))
    assert pruned.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert result.achieved["params"] > 0.1


def tiny_first_layer() -> nn.Module:
    m = small_cnn()
    with torch.no_grad():
        m[1].weight.fill_(1e-6)  # the whole first layer is below any threshold
        m[4].weight.copy_(torch.linspace(0.5, 1.0, 12))
    return m


def test_no_layer_loses_all_channels_even_when_all_its_gammas_are_tiny():
    x = torch.randn(1, 3, 8, 8)
    r = prunekit.prune(tiny_first_layer(), method="slimming", target="channels=0.5", example_inputs=x)
    assert r.model[0].out_channels == 1  # capped: keeps one channel, not zero (max 95% of 8 -> 7 removed)
    assert r.model[3].out_channels == 12 - (10 - 7)  # the global count is met by the next lowest gammas
    assert r.model.eval()(x).shape == (1, 4)
    # round_to: every pruned group keeps a positive multiple (Torch-Pruning alone would round 1 -> 0 and
    # skip the group); the 10 channels asked become 4 + 8 once both kept counts are rounded down to 4
    r = prunekit.prune(tiny_first_layer(), method="slimming", target="channels=0.5", example_inputs=x, round_to=4)
    assert (r.model[0].out_channels, r.model[3].out_channels) == (4, 4)


def test_slimming_macs_target_and_errors():
    x = torch.randn(1, 3, 8, 8)
    # a 20-channel net cannot hit 50 % of MACs exactly: the method says how close it came
    with pytest.warns(UserWarning, match=r"target macs=0.5 reached only within [0-9.]+ points"):
        r = prunekit.prune(small_cnn(), method="slimming", target="macs=0.5", example_inputs=x)
    assert r.achieved["macs"] == pytest.approx(0.5, abs=0.05)
    with pytest.raises(UserError, match="sparsity_lambda"):
        methods.create("slimming", target="channels=0.5", sparsity_lambda=-1)
    no_bn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 2))
    with pytest.raises(UserError, match="BatchNorm"):
        prunekit.prune(no_bn, method="slimming", target="channels=0.5", example_inputs=x)


def test_double_one_shot_runs_both_stages_in_order():
    x = torch.randn(1, 3, 8, 8)
    r = prunekit.prune(small_cnn(), method="double", target="sparsity=0.5", example_inputs=x, slimming_target="channels=0.25")
    m = r.model
    assert m[0].out_channels + m[3].out_channels == 20 - 5  # 25% of 20 channels
    live = sum(l.weight_orig.numel() for l in (m[0], m[3], m[8]))
    assert sum(int((masks.weight_of(l) == 0).sum()) for l in (m[0], m[3], m[8])) == round(0.5 * live)
    assert [s["method"] for s in r.info["stages"]] == ["slimming", "magnitude"]
    method = methods.create("double", slimming={"sparsity_lambda": 1e-5}, magnitude={"schedule": "gradual", "end_epoch": 4})
    assert [str(s.target) for s in method.stages] == ["channels=0.5", "sparsity=0.5"]
    assert method.stages[0].options["sparsity_lambda"] == 1e-5 and method.stages[1].options["end_epoch"] == 4
    with pytest.raises(UserError, match="disagree"):
        methods.create("double", target="sparsity=0.3", magnitude_target="sparsity=0.5")


def test_double_stages_in_metrics_json(tmp_path):
    experiment = pytest.importorskip("prunekit.experiment")
    pytest.importorskip("prunekit.train")
    from prunekit.recipe import recipe_from_dict

    recipe = recipe_from_dict({
        "name": "double-tiny", "device": "cpu",
        "data": {"name": "synthetic", "batch_size": 8, "eval_batch_size": 16, "options": {"image_size": 8, "train_size": 32, "test_size": 16}},
        "model": {"name": "resnet20"},
        "method": {"name": "double", "options": {"slimming_target": "channels=0.3", "magnitude_target": "sparsity=0.5"},
                   "train": {"epochs": 1, "max_steps_per_epoch": 1}},
        "finetune": {"epochs": 0},
        "eval": {"latency_repeats": 2}, "report": {"plots": False},
    })
    metrics = experiment.run_experiment(recipe, out_dir=tmp_path / "run", progress=False)
    on_disk = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert on_disk["status"] == "complete"
    stages = on_disk["stages"]
    assert [s["method"] for s in stages] == ["slimming", "magnitude"]
    for s in stages:
        assert s["params"] > 0 and s["macs"] > 0 and 0 <= s["top1"] <= 100
        # NetScore (Wong 2019): 20 log10(a^2 / (sqrt(p) sqrt(m))), p in millions, m in billions (None when a = 0)
        if s["top1"] > 0:
            expected = 20 * math.log10(s["top1"] ** 2 / (math.sqrt(s["params"] / 1e6) * math.sqrt(s["macs"] / 1e9)))
            assert s["netscore"] == pytest.approx(expected, rel=1e-6)
        else:
            assert s["netscore"] is None
    assert stages[0]["params"] < metrics["baseline"]["params"]  # slimming removed channels
    assert stages[1]["params"] == stages[0]["params"] and stages[1]["nonzero_params"] < stages[0]["nonzero_params"]
