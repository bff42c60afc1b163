"""Structural pruning over every torchvision CNN family: real removal, correct coupling, targets."""

import copy
from functools import partial

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models import convnext, densenet, resnet, vgg

import prunekit
from prunekit import models, structure
from prunekit.errors import UserError


def _vgg():
    # torchvision's VGG classifier assumes 512 x 7 x 7 inputs; a narrow head keeps the test small
    m = vgg.VGG(vgg.make_layers([16, "M", 32, "M", 512, "M"], batch_norm=True), num_classes=10)
    m.classifier = nn.Sequential(nn.Linear(512 * 7 * 7, 64), nn.ReLU(True), nn.Dropout(), nn.Linear(64, 10))
    return m


# Small members of each torchvision family (same classes and code paths as the big builders).
FAMILIES = {
    "resnet": partial(torchvision.models.resnet18, num_classes=10),
    "resnext": partial(resnet.ResNet, resnet.Bottleneck, [1, 1, 1, 1], groups=8, width_per_group=4, num_classes=10),
    "wide_resnet": partial(resnet.ResNet, resnet.Bottleneck, [1, 1, 1, 1], width_per_group=128, num_classes=10),
    "vgg": _vgg,
    "mobilenet_v2": partial(torchvision.models.mobilenet_v2, num_classes=10),
    "mobilenet_v3": partial(torchvision.models.mobilenet_v3_small, num_classes=10),
    "efficientnet": partial(torchvision.models.efficientnet_b0, num_classes=10),
    "regnet": partial(torchvision.models.regnet_x_400mf, num_classes=10),
    "densenet": partial(densenet.DenseNet, growth_rate=8, block_config=(2, 2, 2), num_init_features=16, num_classes=10),
    "googlenet": partial(torchvision.models.googlenet, num_classes=10, aux_logits=False, init_weights=True),
    "convnext": partial(convnext.ConvNeXt, [convnext.CNBlockConfig(32, 64, 1), convnext.CNBlockConfig(64, None, 1)], num_classes=10),
    "mnasnet": partial(torchvision.models.mnasnet0_5, num_classes=10),
    # prunekit's builder makes the channel shuffle traceable (prunekit/models/shufflenet.py)
    "shufflenet": partial(models.create, "shufflenet_v2_x0_5", num_classes=10),
    "squeezenet": partial(torchvision.models.squeezenet1_1, num_classes=10),
}
# LayerNorm over channels sees the zeroed channels, so a zeroed copy is not the same function.
NOT_ZERO_EQUIVALENT = {"convnext"}


def _randomised(model: nn.Module) -> nn.Module:
    """Give BatchNorms non-trivial statistics so a wrongly coupled channel would show."""
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=gen) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=gen) * 0.2 - 0.1)
    return model.eval()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_prunes_for_real(family):
    torch.manual_seed(0)
    model = _randomised(FAMILIES[family]())
    reference = copy.deepcopy(model)
    x = torch.randn(2, 3, 32, 32)
    result = prunekit.prune(model, method="l1_filter", target="channels=0.3", example_inputs=x[:1])
    y = result.model(x)
    assert y.shape == (2, 10)
    assert result.after.params < result.before.params
    assert result.after.macs < result.before.macs
    # ShuffleNet's block outputs are fixed (even channel split), so fewer channels are prunable
    assert (0.15 if family == "shufflenet" else 0.25) <= result.achieved["channels"] <= 0.35
    if family not in NOT_ZERO_EQUIVALENT:
        history = [h for op in model.prunekit_ops for h in op["history"]]
        structure.zero_channels(reference, x[:1], history=history)
        torch.testing.assert_close(y, reference(x), atol=1e-5, rtol=0)


def test_macs_target_is_hit_within_tolerance():
    model = models.create("resnet20", num_classes=10)
    x = torch.randn(1, 3, 32, 32)
    result = prunekit.prune(model, method="l2_filter", target="macs=0.5", example_inputs=x, round_to=4)
    assert abs(result.achieved["macs"] - 0.5) <= 0.02
    assert result.after.macs == prunekit.measure(result.model, x).macs


def test_params_target_with_global_allocation():
    model = torchvision.models.mobilenet_v3_small(num_classes=10)
    x = torch.randn(1, 3, 32, 32)
    result = prunekit.prune(model, method="l1_filter", target="params=0.4", example_inputs=x, allocation="global")
    assert abs(result.achieved["params"] - 0.4) <= 0.02


def test_round_to_is_honoured_and_classifier_kept():
    model = torchvision.models.resnet18(num_classes=10)
    x = torch.randn(1, 3, 64, 64)
    prunekit.prune(model, method="l1_filter", target="channels=0.3", example_inputs=x, round_to=8)
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d) and name != "conv1":
            assert m.out_channels % 8 == 0, (name, m.out_channels)
    assert model.fc.out_features == 10


def test_no_layer_loses_all_channels():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 3), nn.Flatten(), nn.LazyLinear(3))
    x = torch.randn(1, 3, 8, 8)
    model(x)
    prunekit.prune(model, method="l1_filter", target="channels=0.9", example_inputs=x)
    assert model[0].out_channels >= 1 and model[3].out_channels >= 1
    assert model(x).shape == (1, 3)


def test_ignore_globs_leave_layers_untouched_and_bad_glob_fails():
    model = torchvision.models.resnet18(num_classes=10)
    x = torch.randn(1, 3, 64, 64)
    prunekit.prune(model, method="l1_filter", target="channels=0.5", example_inputs=x, ignore=["layer1.*"])
    assert model.layer1[0].conv1.out_channels == 64
    assert model.layer2[0].conv1.out_channels < 128
    with pytest.raises(UserError, match="matches no module"):
        prunekit.prune(model, method="l1_filter", target="channels=0.5", example_inputs=x, ignore=["nothing.here*"])


def test_l1_removes_the_smallest_filters():
    conv = nn.Conv2d(1, 4, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([3.0, -0.1, 2.0, 0.2]).view(4, 1, 1, 1))
    model = nn.Sequential(conv, nn.ReLU(), nn.Conv2d(4, 2, 1))
    x = torch.randn(1, 1, 4, 4)
    prunekit.prune(model, method="l1_filter", target="channels=0.5", example_inputs=x)
    assert sorted(model[0].weight.flatten().tolist()) == [2.0, 3.0]


def test_random_method_is_seeded():
    def kept(seed):
        model = torchvision.models.resnet18(num_classes=10)
        prunekit.prune(model, method="random", target="channels=0.5", example_inputs=torch.randn(1, 3, 32, 32), seed=seed)
        return model.prunekit_ops[0]["history"]

    assert kept(1) == kept(1)
    assert kept(1) != kept(2)


def test_shufflenet_builder_keeps_torchvision_function():
    torch.manual_seed(0)
    plain = torchvision.models.shufflenet_v2_x0_5(num_classes=10).eval()
    ours = models.create("shufflenet_v2_x0_5", num_classes=10).eval()
    ours.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(ours(x), plain(x), atol=1e-6, rtol=0)


def test_tp_group_l2_meets_macs_target_and_saves():
    import prunekit
    from prunekit import io as pio

    model = prunekit.models.create("resnet20")
    x = torch.randn(1, 3, 32, 32)
    result = prunekit.prune(model, method="tp_group_l2", target="macs=0.5", example_inputs=x)
    assert abs(result.achieved["macs"] - 0.5) < 0.05
    assert result.model(x).shape == (1, 1000)  # models.create defaults to 1000 classes
    assert 0 < result.info["tp_ratio"] < 0.95
    with pytest.raises(prunekit.UserError, match="do not round"):
        prunekit.prune(prunekit.models.create("resnet20"), method="tp_group_l2", target="macs=0.5", example_inputs=x, round_to=8)
    with pytest.raises(prunekit.UserError, match="bisection_steps"):
        prunekit.methods.create("tp_group_l2", target="macs=0.5", bisection_steps=0)


def test_tp_group_l2_model_round_trips(tmp_path):
    import prunekit

    model = prunekit.models.create("resnet20")
    x = torch.randn(1, 3, 32, 32)
    pruned = prunekit.prune(model, method="tp_group_l2", target="params=0.4", example_inputs=x).model.eval()
    prunekit.save(pruned, tmp_path / "m.pt")
    again = prunekit.load(tmp_path / "m.pt").eval()
    assert torch.allclose(again(x), pruned(x), atol=1e-5)
