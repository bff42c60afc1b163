"""The one channel planner: analytic counts, per-group rounding that lands on the target, one cap."""

import copy

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models import densenet

import prunekit
from prunekit import planner, structure
from prunekit.methods import autorate, sfp, slimming
from prunekit.planner import ChannelPlanner

MODELS = {
    "resnet18": lambda: torchvision.models.resnet18(num_classes=10),
    "mobilenet_v2": lambda: torchvision.models.mobilenet_v2(num_classes=10),
    "densenet": lambda: densenet.DenseNet(growth_rate=8, block_config=(2, 2, 2), num_init_features=16, num_classes=10),
    "resnext": lambda: torchvision.models.resnet.ResNet(torchvision.models.resnet.Bottleneck, [1, 1, 1, 1], groups=8,
                                                          width_per_group=4, num_classes=10),
    "resnet20": lambda: prunekit.models.create("resnet20", num_classes=10),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_counts_of_a_plan_match_the_pruned_model(name):
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    x = torch.randn(1, 3, 32, 32)
    before = prunekit.measure(model, x)
    p = ChannelPlanner(model, x)
    assert p.base["params"] == before.params and p.base["macs"] == before.macs
    gen = torch.Generator().manual_seed(1)
    plan = [int(torch.randint(0, cap + 1, (1,), generator=gen)) // c * c for cap, c in zip(p.caps(), p.ch_groups)]
    counted = p.counts(plan)
    structure.remove_planned(model, x, planner=p, plan=plan, importance=structure.MagnitudeImportance())
    after = prunekit.measure(model, x)
    assert counted["params"] == after.params and counted["macs"] == after.macs
    assert model(x).shape == (1, 10)


def test_rounding_chooses_up_or_down_per_group_to_land_on_the_target():
    for target in ("macs=0.5", "params=0.5", "macs=0.3"):
        model = torchvision.models.resnet34(num_classes=10)
        x = torch.randn(1, 3, 64, 64)
        result = prunekit.prune(model, method="l1_filter", target=target, example_inputs=x, round_to=16)
        unit, value = target.split("=")
        assert abs(result.achieved[unit] - float(value)) <= 0.01, (target, result.achieved)
        assert all(m.out_channels % 16 == 0 for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and n != "conv1")
        assert abs(result.info["plan"]["planned"] - result.achieved[unit]) < 1e-9  # the analytic count is the real one


def test_one_cap_for_every_method():
    assert slimming.MAX_RATIO is planner.MAX_REMOVED and sfp.MAX_RATIO is planner.MAX_REMOVED
    assert planner.max_removed(20) == 19 and planner.max_removed(8) == 7 and planner.max_removed(1) == 0
    import inspect

    from prunekit import latency_search

    assert inspect.signature(latency_search.prune_to_latency).parameters["max_ratio"].default is planner.MAX_REMOVED


def test_rounding_rules_of_each_method():
    # slimming: down, never below round_to; sfp: kept rounded up; autorate: down as Torch-Pruning (may empty)
    assert planner.round_removed(16, 10, 4, direction="down", min_kept=4) == 12
    assert planner.round_removed(16, 14, 4, direction="down", min_kept=4) == 12
    assert planner.round_removed(4, 3, 4, direction="down", min_kept=4) == 0
    assert planner.round_removed(16, 10, 4, direction="up") == 8
    assert sfp.n_pruned(16, 0.6, round_to=4) == 8
    assert autorate.removed_count(10, 0.3, round_to=4) == 6 and autorate.removed_count(6, 0.5, round_to=4) == 6
    assert planner.global_counts([torch.tensor([0.0, 0.1, 5.0]), torch.tensor([0.05, 9.0])], 3, [1, 1]) == [1, 1]


def test_global_and_channels_targets_through_the_planner():
    model = torchvision.models.mobilenet_v3_small(num_classes=10)
    x = torch.randn(1, 3, 32, 32)
    ref = copy.deepcopy(model)
    r = prunekit.prune(model, method="l1_filter", target="params=0.4", example_inputs=x, allocation="global", round_to=8)
    assert abs(r.achieved["params"] - 0.4) <= 0.01
    r = prunekit.prune(ref, method="l1_filter", target="channels=0.5", example_inputs=x)
    groups = structure.channel_groups(torchvision.models.mobilenet_v3_small(num_classes=10), x)
    assert abs(r.achieved["channels"] - 0.5) <= 0.05 and len(groups) > 10
