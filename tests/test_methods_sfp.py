"""Soft filter pruning: exact zero counts per coupled group, regrowth, exact removal, save/load."""

import copy

import pytest
import torch
from tiny_recipe import tiny_recipe  # tests/ is on sys.path under pytest
from torch import nn

import prunekit
from prunekit import methods
from prunekit.errors import UserError


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # On a CPU shared with other jobs, intra-op threads wait on each other (a ResNet-18 step ran
    # 2x faster on one thread than on two); these tiny models gain nothing from a second thread.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = None
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + (x if self.short is None else self.short(x)))


class TinyResNet(nn.Module):
    """Stem + an identity block + a downsampling block: two residual-coupled groups, two inner groups."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 10, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(10)
        self.block1 = Block(10, 10)
        self.block2 = Block(10, 14, stride=2)
        self.fc = nn.Linear(14, 5)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        x = self.block2(self.block1(x))
        return self.fc(x.mean((2, 3)))


def _zero_rows(w: torch.Tensor) -> set[int]:
    w = w.detach()
    return {i for i in range(w.shape[0]) if float(w[i].abs().sum()) == 0.0}


def _trained(seed: int = 0):
    """A TinyResNet after a few momentum-SGD steps (non-trivial BN statistics and momentum buffers)."""
    torch.manual_seed(seed)
    model = TinyResNet()
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 5, (8,))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model, opt, x, y


def test_epoch_hook_zeroes_round_rate_n_per_group_and_coupled_layers_agree():
    model, _, x, _ = _trained()
    sfp = methods.create("sfp", rate=0.3)
    sfp.at_init(model, example_inputs=x[:1])
    sfp.after_epoch(model, epoch=0)
    groups = {g.root_name: g for g in sfp._groups_of(model)}
    # the residual stream (stem + block1.conv2), block1.conv1, block2.conv1, block2 output (conv2 + shortcut)
    assert len(groups) == 4
    for g in groups.values():
        zero = _zero_rows(g.root.weight)
        assert len(zero) == round(0.3 * g.size)
        graph = g.group._DG
        coupled = [dep.target.module for dep, _ in g.group
                   if isinstance(dep.target.module, nn.Conv2d) and graph.is_out_channel_pruning_fn(dep.handler)]
        for conv in coupled:  # every coupled conv has exactly the same zero filters
            assert _zero_rows(conv.weight) == zero
    assert _zero_rows(model.conv.weight) == _zero_rows(model.block1.conv2.weight)
    assert len(_zero_rows(model.block2.conv2.weight)) == round(0.3 * 14)
    assert _zero_rows(model.block2.conv2.weight) == _zero_rows(model.block2.short[0].weight)
    # BN affine entries of zeroed channels are zero too: the soft network equals the removed one
    bn_w, bn_b = model.bn.weight.detach(), model.bn.bias.detach()
    assert all(float(bn_w[i]) == 0.0 == float(bn_b[i]) for i in _zero_rows(model.conv.weight))


def test_zeroed_filters_are_the_lowest_l2_norms():
    model, _, x, _ = _trained(seed=1)
    norms = model.block1.conv1.weight.detach().flatten(1).norm(dim=1)
    sfp = methods.create("sfp", rate=0.5)
    sfp.at_init(model, example_inputs=x[:1])
    sfp.after_epoch(model, epoch=0)
    assert _zero_rows(model.block1.conv1.weight) == set(torch.argsort(norms)[:5].tolist())


def test_zeroed_filters_regrow_after_an_optimizer_step():
    model, opt, x, y = _trained()
    sfp = methods.create("sfp", rate=0.3)
    sfp.at_init(model, example_inputs=x[:1])
    sfp.after_epoch(model, epoch=0)
    zero = _zero_rows(model.block1.conv1.weight)
    assert len(zero) == 3
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    w = model.block1.conv1.weight.detach()
    assert all(float(w[i].abs().sum()) > 0.0 for i in zero)  # no mask holds them at zero


def test_at_init_zeroing_is_opt_in_and_permanent_with_a_fresh_optimizer():
    # why zero_at_init defaults to False: with no momentum yet, a zeroed ReLU channel never regrows
    torch.manual_seed(0)
    model = TinyResNet()
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 5, (16,))
    methods.create("sfp", rate=0.3).at_init(model, example_inputs=x[:1])
    assert not _zero_rows(model.block1.conv1.weight)
    methods.create("sfp", rate=0.3, zero_at_init=True).at_init(model, example_inputs=x[:1])
    zero = _zero_rows(model.block1.conv1.weight)
    assert len(zero) == 3
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(5):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    assert _zero_rows(model.block1.conv1.weight) == zero


def test_filters_only_zeroing_leaves_norm_layers_and_finalize_still_removes_exactly():
    model, opt, x, y = _trained()
    sfp = methods.create("sfp", rate=0.3, zero_norm=False)
    sfp.at_init(model, example_inputs=x[:1])
    bn_before = model.block1.bn1.weight.detach().clone()
    sfp.after_epoch(model, epoch=0)
    zero = _zero_rows(model.block1.conv1.weight)
    assert len(zero) == 3 and torch.equal(model.block1.bn1.weight.detach(), bn_before)
    assert _zero_rows(model.block2.conv2.weight) == _zero_rows(model.block2.short[0].weight)
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    assert not (zero & _zero_rows(model.block1.conv1.weight))
    # finalize zeroes whole groups, then removes: the result equals that fully zeroed network
    reference = copy.deepcopy(model)
    chosen = methods.create("sfp", rate=0.3)
    chosen._example = x[:1]
    chosen.soft_prune(reference)
    pruned = sfp.finalize(model, example_inputs=x[:1]).eval()
    with torch.no_grad():
        assert torch.allclose(pruned(x), reference.eval()(x), atol=1e-5, rtol=0)


def test_every_k_epochs():
    model, _, x, _ = _trained()
    sfp = methods.create("sfp", rate=0.3, every=2)
    sfp._example = x[:1]
    sfp.after_epoch(model, epoch=0)
    assert not _zero_rows(model.block1.conv1.weight)
    sfp.after_epoch(model, epoch=1)
    assert len(_zero_rows(model.block1.conv1.weight)) == 3


def test_global_scope_zeroes_round_rate_of_all_channels():
    model, _, x, _ = _trained()
    sfp = methods.create("sfp", rate=0.4, scope="global", zero_at_init=True)
    sfp.at_init(model, example_inputs=x[:1])
    chosen = sfp.info["zeroed_channels"]
    total = sum(g.size for g in sfp._groups_of(model))
    assert sum(chosen.values()) == round(0.4 * total)


def test_finalize_removes_exactly_the_zero_channels_and_keeps_the_function():
    model, opt, x, y = _trained()
    sfp = methods.create("sfp", rate=0.3)
    sfp.at_init(model, example_inputs=x[:1])
    sfp.after_epoch(model, epoch=0)
    zeroed = copy.deepcopy(model).eval()
    with torch.no_grad():
        ref = zeroed(x)
    before = prunekit.measure(model, x[:1])
    pruned = sfp.finalize(model, example_inputs=x[:1]).eval()
    assert pruned.block1.conv1.out_channels == 10 - round(0.3 * 10)
    assert pruned.conv.out_channels == pruned.block1.conv2.out_channels == 7
    assert pruned.block2.conv2.out_channels == pruned.block2.short[0].out_channels == 14 - round(0.3 * 14)
    assert pruned.fc.out_features == 5
    with torch.no_grad():
        assert torch.allclose(pruned(x), ref, atol=1e-5, rtol=0)
    after = prunekit.measure(pruned, x[:1])
    assert sfp.info["params_after"] == after.params and sfp.info["params_before"] == before.params
    assert sfp.info["achieved"]["macs"] == pytest.approx(1 - after.macs / before.macs)
    assert sfp.info["removed_channels"]["block1.conv1"] == 3
    assert pruned.prunekit_ops[-1]["op"] == "prune"


def test_one_shot_prune_maps_channels_target_to_rate():
    torch.manual_seed(0)
    model = TinyResNet().eval()
    x = torch.randn(2, 3, 8, 8)
    result = prunekit.prune(model, method="sfp", target="channels=0.5", example_inputs=x)
    assert result.model.block1.conv1.out_channels == 5
    assert result.info["rate"] == 0.5
    assert result.achieved["params"] > 0.5


def test_bad_options_are_user_errors():
    with pytest.raises(UserError, match="contradicts"):
        methods.create("sfp", target="channels=0.3", rate=0.5)
    with pytest.raises(UserError, match="rate"):
        methods.create("sfp", rate=1.2)
    with pytest.raises(UserError, match="scope"):
        methods.create("sfp", scope="net")
    with pytest.raises(UserError, match="every"):
        methods.create("sfp", every=0)
    with pytest.raises(UserError, match="zero_norm"):
        methods.create("sfp", zero_norm="yes")
    with pytest.raises(UserError, match="target"):
        methods.create("sfp", target="params=0.3")


def test_pruned_cifar_resnet_saves_and_loads(tmp_path):
    from prunekit import io, models

    torch.manual_seed(0)
    model = models.create("resnet20", num_classes=10)
    x = torch.randn(2, 3, 8, 8)
    pruned = prunekit.prune(model, method="sfp", target="channels=0.3", example_inputs=x).model.eval()
    io.save(pruned, tmp_path / "m.pt")
    loaded = io.load(tmp_path / "m.pt").eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), pruned(x))


def test_sfp_inside_prunekit_run(tmp_path):
    from prunekit import io, metrics
    from prunekit.experiment import run_experiment
    from prunekit.recipe import Recipe

    recipe = Recipe.model_validate(tiny_recipe(
        name="sfp-tiny",
        method={"name": "sfp", "target": "channels=0.5", "from_scratch": True, "train": {"epochs": 2, "lr": 0.05}},
    ))
    m = run_experiment(recipe, out_dir=tmp_path / "run", progress=False)
    assert m["status"] == "complete"
    info = m["method_info"]
    assert info["zeroings"] == 3  # after each of the 2 epochs, and once more in finalize
    assert len(info["rezeroed_fraction"]) == 2 and info["rezeroed_fraction"][-1] == 1.0  # nothing trained in between
    assert info["removed_channels"]["layer1.0.conv1"] == 8  # round(0.5 * 16)
    assert m["achieved"]["params"] == pytest.approx(1 - info["params_after"] / info["params_before"])
    model = io.load(tmp_path / "run" / "model.pt")
    assert model.layer1[0].conv1.out_channels == 8
    measured = metrics.measure(model, torch.zeros(1, 3, 8, 8))
    assert measured.params == m["final"]["params"]
