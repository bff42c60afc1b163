"""Models by name: torchvision stems for 32x32 inputs, CIFAR ResNets/VGGs, pruning through ShortcutA."""

import copy
import json

import pytest
import torch
import torch_pruning as tp
from torch import nn

import prunekit.structure
from prunekit import models
from prunekit.errors import UserError
from prunekit.models import ShortcutA

# family -> (smallest practical member, stem conv's output channels, max-pools left after the
# adaptation, side of the last conv's output map for a 32x32 input). The last is 32 divided by the
# downsampling that remains once the stem's stride (and stem pool) are gone: 8 for the ResNet-like
# nets (stages 2-4), 16 for the mobile nets (four stride-2 stages), 32 for VGG (five pools, and
# its stem is untouched), 4 for squeezenet (two pools left).
FAMILIES = {
    "resnet": ("resnet18", 64, 0, 4),
    "resnext": ("resnext50_32x4d", 64, 0, 4),
    "wide_resnet": ("wide_resnet50_2", 64, 0, 4),
    "vgg": ("vgg11_bn", 64, 5, 2),
    "mobilenet_v2": ("mobilenet_v2", 32, 0, 2),
    "mobilenet_v3": ("mobilenet_v3_small", 16, 0, 2),
    "efficientnet": ("efficientnet_b0", 32, 0, 2),
    "regnet": ("regnet_x_400mf", 32, 0, 2),
    "shufflenet": ("shufflenet_v2_x0_5", 24, 0, 4),
    "densenet": ("densenet121", 64, 0, 4),
    "googlenet": ("googlenet", 64, 12, 4),
    "convnext": ("convnext_tiny", 96, 0, 4),
    "mnasnet": ("mnasnet0_5", 16, 0, 2),
    "squeezenet": ("squeezenet1_1", 64, 2, 8),
}


def _count(model: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_small_input_stem(family):
    name, stem_channels, pools, last_side = FAMILIES[family]
    torch.manual_seed(0)
    model = models.create(name, num_classes=10, small_input=True).eval()
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert (conv.kernel_size, conv.stride, conv.padding) == ((3, 3), (1, 1), (1, 1))
    assert (conv.in_channels, conv.out_channels) == (3, stem_channels)
    assert _count(model, nn.MaxPool2d) == pools
    sides = []
    hooks = [m.register_forward_hook(lambda m, i, o: sides.append(o.shape[-1]))
             for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    for h in hooks:
        h.remove()
    assert sides[0] == 32 and sides[-1] == last_side
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()
    assert model.prunekit_builder == {"name": name, "kwargs": {"num_classes": 10, "small_input": True}}


def test_small_input_refused_for_transformers():
    with pytest.raises(UserError, match="vision transformer"):
        models.create("vit_b_16", num_classes=10, small_input=True)


def test_list_models_and_unknown_name():
    names = models.list_models()
    for n in ("resnet18", "mobilenet_v2", "convnext_tiny", "resnet20", "resnet32", "resnet56", "resnet110",
              "vgg16_cifar", "vgg19_cifar"):
        assert n in names
    with pytest.raises(UserError, match="resnet56"):
        models.create("resnet65")
    with pytest.raises(UserError, match="num_classes"):
        models.create("resnet20", num_classes=0)
    with pytest.raises(UserError, match="unexpected keyword"):
        models.create("resnet20", depth=3)


def test_builder_recipe_is_plain_data_and_rebuilds():
    m = models.create("resnet20", num_classes=7, shortcut="B")
    assert json.loads(json.dumps(m.prunekit_builder)) == {"name": "resnet20", "kwargs": {"num_classes": 7, "small_input": False, "shortcut": "B"}}
    again = models.create(m.prunekit_builder["name"], **m.prunekit_builder["kwargs"])
    assert [(k, v.shape) for k, v in again.state_dict().items()] == [(k, v.shape) for k, v in m.state_dict().items()]


def _cifar_resnet_params(n: int, num_classes: int) -> tuple[int, int]:
    """(learnable parameters, BN running-stat entries) of a 6n+2 CIFAR ResNet with option-A shortcuts."""
    conv = 3 * 16 * 9
    bn_channels = 16
    in_c = 16
    for c in (16, 32, 64):
        for _ in range(n):
            conv += in_c * c * 9 + c * c * 9
            bn_channels += 2 * c
            in_c = c
    linear = 64 * num_classes + num_classes
    return conv + 2 * bn_channels + linear, 2 * bn_channels


@pytest.mark.parametrize("name,n,checkpoint_entries", [("resnet20", 3, 271_098), ("resnet56", 9, 857_082)])
def test_cifar_resnet_param_counts(name, n, checkpoint_entries):
    m = models.create(name, num_classes=10)
    params = sum(p.numel() for p in m.parameters())
    learnable, running = _cifar_resnet_params(n, 10)
    assert params == learnable
    # The checkpoints' README counts every stored float: parameters plus BN running mean/var.
    stored = sum(v.numel() for k, v in m.state_dict().items() if not k.endswith("num_batches_tracked"))
    assert stored == params + running == checkpoint_entries
    assert {type(b.shortcut) for b in m.modules() if hasattr(b, "shortcut")} == {nn.Identity, ShortcutA}


def test_cifar_resnet_shortcut_b_and_depths():
    m = models.create("resnet20", num_classes=10, shortcut="B")
    learnable, _ = _cifar_resnet_params(3, 10)
    # two 1x1 conv + BN shortcuts: 16->32 and 32->64
    assert sum(p.numel() for p in m.parameters()) == learnable + (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)
    for name, blocks in (("resnet32", 5), ("resnet110", 18)):
        assert len(models.create(name, num_classes=10).layer2) == blocks
    with pytest.raises(UserError, match="shortcut"):
        models.create("resnet20", shortcut="C")


def test_cifar_vgg_shapes_and_counts():
    for name, convs in (("vgg16_cifar", 13), ("vgg19_cifar", 16)):
        m = models.create(name, num_classes=10).eval()
        assert _count(m, nn.Conv2d) == convs and _count(m, nn.BatchNorm2d) == convs and _count(m, nn.MaxPool2d) == 4
        with torch.no_grad():
            assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
    chans = [c for c in cfg if c != "M"]
    convs = sum(i * o * 9 + 2 * o for i, o in zip([3] + chans[:-1], chans))
    assert sum(p.numel() for p in models.create("vgg16_cifar", num_classes=10).parameters()) == convs + 512 * 10 + 10


def _randomise_bn(model: nn.Module) -> None:
    # Non-trivial BN statistics, so that zeroing a channel is visible downstream.
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)


def _zeroed_copy(model: nn.Module, graph, group) -> nn.Module:
    """A copy of `model` where every output channel the group removes is zeroed instead."""
    ref = copy.deepcopy(model)
    names = {m: n for n, m in model.named_modules()}
    with torch.no_grad():
        for dep, idxs in group:
            target = dep.target.module
            if target not in names or not graph.is_out_channel_pruning_fn(dep.handler):
                continue
            r = ref.get_submodule(names[target])
            idxs = [int(i) for i in idxs]
            if isinstance(r, nn.Conv2d):
                r.weight[idxs] = 0
            elif isinstance(r, nn.BatchNorm2d):
                r.weight[idxs] = 0
                r.bias[idxs] = 0
            elif isinstance(r, ShortcutA):
                r.index[idxs] = -1
    return ref


@pytest.mark.parametrize("root,idxs", [("conv1", [0, 1, 2]), ("layer2.0.conv2", [0, 9, 20])])
def test_pruning_through_option_a_shortcut_equals_zeroing(root, idxs):
    torch.manual_seed(0)
    model = models.create("resnet20", num_classes=10).eval()
    _randomise_bn(model)
    x = torch.randn(4, 3, 32, 32)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=x[:1], customized_pruners=prunekit.structure.CUSTOM_PRUNERS)
    group = graph.get_pruning_group(model.get_submodule(root), tp.prune_conv_out_channels, idxs=idxs)
    shortcut_deps = [type(dep.target.module) for dep, _ in group if isinstance(dep.target.module, ShortcutA)]
    assert shortcut_deps, "the group must reach an option-A shortcut"
    ref = _zeroed_copy(model, graph, group)
    group.prune()
    params_before = sum(p.numel() for p in ref.parameters())
    assert sum(p.numel() for p in model.parameters()) < params_before
    with torch.no_grad():
        out, expected = model(x), ref(x)
    scale = expected.abs().max().item()
    assert torch.allclose(out, expected, rtol=0, atol=1e-5 * max(1.0, scale))
    sc = model.layer2[0].shortcut
    assert sc.out_channels == model.layer2[0].bn2.num_features
    assert sc.in_channels == model.layer1[-1].bn2.num_features


def test_shortcut_a_pruner_index_arithmetic():
    sc = ShortcutA(4, 8)
    assert sc.index.tolist() == [-1, -1, 0, 1, 2, 3, -1, -1]
    pruner = models.ShortcutAPruner()
    pruner.prune_in_channels(sc, [1])
    assert sc.index.tolist() == [-1, -1, 0, -1, 1, 2, -1, -1] and sc.in_channels == 3
    pruner.prune_out_channels(sc, [0, 4])
    assert sc.index.tolist() == [-1, 0, -1, 2, -1, -1] and sc.out_channels == 6
    x = torch.randn(1, 3, 4, 4)
    y = sc(x)
    assert y.shape == (1, 6, 2, 2)
    assert torch.equal(y[:, 1], x[:, 0, ::2, ::2]) and torch.equal(y[:, 3], x[:, 2, ::2, ::2])
    assert not y[:, [0, 2, 4, 5]].any()


def _write(path, obj):
    torch.save(obj, path)
    return path


def test_load_weights_formats_and_errors(tmp_path):
    src = models.create("resnet20", num_classes=10)
    sd = {k: v for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked")}
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = src.eval()(x)
    for i, obj in enumerate([sd, {"state_dict": {"module." + k: v for k, v in sd.items()}}, {"model": sd, "epoch": 3}]):
        dst = models.load_weights(models.create("resnet20", num_classes=10), _write(tmp_path / f"w{i}.pt", obj)).eval()
        with torch.no_grad():
            assert torch.equal(dst(x), expected)
    wrong = dict(sd)
    wrong["extra.weight"] = torch.zeros(1)
    del wrong["linear.bias"]
    with pytest.raises(UserError, match=r"bad\.pt.*missing keys linear\.bias.*unexpected keys extra\.weight"):
        models.load_weights(models.create("resnet20", num_classes=10), _write(tmp_path / "bad.pt", wrong))
    with pytest.raises(UserError, match=r"shape mismatch linear\.weight \(10, 64\) in file vs \(5, 64\)"):
        models.load_weights(models.create("resnet20", num_classes=5), tmp_path / "w0.pt")
    with pytest.raises(UserError, match="no such file"):
        models.create("resnet20", weights=tmp_path / "absent.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(UserError, match=r"junk\.pt: not a torch file that loads safely"):
        models.load_weights(src, tmp_path / "junk.pt")


def _akamaster_forward(sd: dict, x: torch.Tensor, n: int) -> torch.Tensor:
    """The checkpoint's own architecture, written with functional ops from its README (eval mode)."""
    import torch.nn.functional as F

    def bn(t, p):
        return F.batch_norm(t, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"], sd[p + ".bias"])

    out = F.relu(bn(F.conv2d(x, sd["module.conv1.weight"], padding=1), "module.bn1"))
    for stage in (1, 2, 3):
        for i in range(n):
            p = f"module.layer{stage}.{i}"
            stride = 2 if stage > 1 and i == 0 else 1
            y = F.relu(bn(F.conv2d(out, sd[p + ".conv1.weight"], stride=stride, padding=1), p + ".bn1"))
            y = bn(F.conv2d(y, sd[p + ".conv2.weight"], padding=1), p + ".bn2")
            if stride == 2:  # akamaster's LambdaLayer: subsample, zero-pad planes//4 channels each side
                planes = y.shape[1]
                out = F.pad(out[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4))
            out = F.relu(y + out)
    out = F.adaptive_avg_pool2d(out, 1).flatten(1)
    return F.linear(out, sd["module.linear.weight"], sd["module.linear.bias"])


def test_pretrained_resnet20_checkpoint(weights_dir):
    path = weights_dir / "resnet20-12fca82f.th"
    a = models.create("resnet20", num_classes=10, weights=path).eval()
    b = models.create("resnet20", num_classes=10, weights=path).eval()
    raw = torch.load(path, weights_only=True, map_location="cpu")["state_dict"]
    assert torch.equal(a.conv1.weight, raw["module.conv1.weight"])
    assert "weights" not in a.prunekit_builder["kwargs"]
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ya, yb, ref = a(x), b(x), _akamaster_forward(raw, x, 3)
    assert torch.isfinite(ya).all() and torch.equal(ya, yb)
    assert torch.allclose(ya, ref, rtol=0, atol=1e-4)
