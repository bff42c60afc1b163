"""Saving and loading models as data (no pickled code), ONNX export, atomic writes."""

import importlib.util
import os
import sys

import pytest
import torch
import torch_pruning as tp
from torch import nn
from torch.nn.utils import prune as torch_prune

import prunekit.structure  # registers the "prune" replay, when the engine provides it
from prunekit import io, models
from prunekit.errors import UserError


class NotPlainData:
    """A class that only arbitrary unpickling could restore."""

    def __init__(self) -> None:
        self.payload = 1


def _replay_test_prune(model: nn.Module, op: dict) -> nn.Module:
    graph = tp.DependencyGraph().build_dependency(
        model, example_inputs=torch.zeros(1, *op["input_shape"]), customized_pruners=prunekit.structure.CUSTOM_PRUNERS)
    graph.load_pruning_history([(n, bool(o), list(i)) for n, o, i in op["history"]])
    return model


# The engine's own replay when it is registered; a local one (same op format) otherwise.
PRUNE_OP = "prune" if "prune" in io.REPLAYS else "_test_prune"
if PRUNE_OP == "_test_prune" and "_test_prune" not in io.REPLAYS:
    io.register_replay("_test_prune", _replay_test_prune)


def _prune_with_graph(model: nn.Module, roots: dict[str, list[int]]) -> nn.Module:
    """Remove output channels of the named convs through a DependencyGraph and record the op."""
    x = torch.zeros(1, 3, 32, 32)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=x, customized_pruners=prunekit.structure.CUSTOM_PRUNERS)
    for name, idxs in roots.items():
        graph.get_pruning_group(model.get_submodule(name), tp.prune_conv_out_channels, idxs=idxs).prune()
    history = [[n, bool(o), [int(i) for i in idxs]] for n, o, idxs in graph.pruning_history()]
    model.prunekit_ops = [{"op": PRUNE_OP, "input_shape": [3, 32, 32], "history": history}]
    return model


def _outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(x)


def _train_a_little(model: nn.Module) -> None:
    # Non-default weights and BN statistics, so that a roundtrip that dropped anything would show.
    model.train()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
        model(torch.randn(8, 3, 32, 32))


@pytest.mark.parametrize("name,kwargs", [("resnet20", {}), ("mobilenet_v3_small", {"small_input": True})])
def test_roundtrip_unpruned(tmp_path, name, kwargs):
    torch.manual_seed(0)
    model = models.create(name, num_classes=10, **kwargs)
    _train_a_little(model)
    path = io.save(model, tmp_path / "m.pt")
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "prunekit.model/1" and raw["ops"] == []
    assert raw["builder"] == {"name": name, "kwargs": {"num_classes": 10, "small_input": bool(kwargs)}}
    loaded = io.load(path)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(_outputs(loaded, x), _outputs(model, x))
    assert loaded.prunekit_builder == model.prunekit_builder and loaded.prunekit_ops == []


def test_roundtrip_a_model_that_reads_its_state_dict_version(tmp_path):
    # torchvision's MNASNet refuses a state dict without per-module versions (_metadata), which a
    # plain dict of tensors (a prunekit file, a filtered state dict) does not carry
    model = models.create("mnasnet0_5", num_classes=4, small_input=True)
    _train_a_little(model)
    loaded = io.load(io.save(model, tmp_path / "m.pt"))
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(_outputs(loaded, x), _outputs(model, x))
    torch.save({k: v for k, v in model.state_dict().items()}, tmp_path / "sd.pt")
    again = models.load_weights(models.create("mnasnet0_5", num_classes=4, small_input=True), tmp_path / "sd.pt")
    assert torch.equal(_outputs(again, x), _outputs(model, x))


def test_roundtrip_a_model_whose_builder_computes_with_tensors(tmp_path):
    # RegNet turns its stage widths into a list while it builds: the meta-device check of a model
    # file could not build it, so every saved regnet_* was refused as "damaged or hostile"
    from prunekit.safe_load import estimate_params

    model = models.create("regnet_x_400mf", num_classes=4, small_input=True)
    count, _ = estimate_params("regnet_x_400mf", {"num_classes": 4, "small_input": True})
    assert count == sum(t.numel() for t in (*model.parameters(), *model.buffers()))
    loaded = io.load(io.save(model, tmp_path / "m.pt"))
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(_outputs(loaded, x), _outputs(model, x))


def test_roundtrip_pruned(tmp_path):
    # resnet20: residual coupling and the option-A shortcut's channel map (a non-persistent buffer)
    # both have to come back from the replay alone.
    torch.manual_seed(0)
    model = models.create("resnet20", num_classes=10)
    roots = {"conv1": [0, 5], "layer2.0.conv2": [1, 9, 30], "layer3.1.conv1": [3]}
    params_before = sum(p.numel() for p in model.parameters())
    _prune_with_graph(model, roots)
    _train_a_little(model)
    assert sum(p.numel() for p in model.parameters()) < params_before
    path = io.save(model, tmp_path / "pruned.pt")
    raw = torch.load(path, weights_only=True)
    assert raw["ops"] == model.prunekit_ops
    loaded = io.load(path)
    assert [(k, v.shape) for k, v in loaded.state_dict().items()] == [(k, v.shape) for k, v in model.state_dict().items()]
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(_outputs(loaded, x), _outputs(model, x))
    assert loaded.prunekit_ops == model.prunekit_ops
    for block in ("layer2.0", "layer3.0"):
        assert torch.equal(loaded.get_submodule(block).shortcut.index, model.get_submodule(block).shortcut.index)


def test_masks_are_baked_into_a_copy(tmp_path):
    torch.manual_seed(0)
    model = models.create("resnet20", num_classes=10)
    torch_prune.l1_unstructured(model.layer1[0].conv1, name="weight", amount=0.5)
    torch_prune.random_unstructured(model.linear, name="weight", amount=0.3)
    x = torch.randn(2, 3, 32, 32)
    expected = _outputs(model, x)
    loaded = io.load(io.save(model, tmp_path / "masked.pt"))
    assert torch_prune.is_pruned(model), "the caller's model keeps its masks"
    assert not torch_prune.is_pruned(loaded)
    assert int((loaded.layer1[0].conv1.weight == 0).sum()) == loaded.layer1[0].conv1.weight.numel() // 2
    assert torch.equal(_outputs(loaded, x), expected)


def test_save_refuses_models_it_cannot_rebuild(tmp_path):
    with pytest.raises(UserError, match="prunekit.models.create"):
        io.save(nn.Linear(2, 2), tmp_path / "x.pt")
    odd = models.create("resnet18", num_classes=10, norm_layer=nn.BatchNorm2d)
    with pytest.raises(UserError, match=r"builder\.kwargs\.norm_layer is a type, not plain data"):
        io.save(odd, tmp_path / "x.pt")
    model = models.create("resnet20", num_classes=10)
    model.prunekit_ops = [{"op": "no_such_op"}]
    with pytest.raises(UserError, match="no_such_op"):
        io.save(model, tmp_path / "x.pt")
    assert not os.listdir(tmp_path)


def test_load_refuses_foreign_and_unsafe_files(tmp_path):
    model = models.create("resnet20", num_classes=10)
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    with pytest.raises(UserError, match=r"plain\.pt: not a prunekit model file"):
        io.load(tmp_path / "plain.pt")
    torch.save({"format": "prunekit.model/1", "builder": model.prunekit_builder, "ops": [],
                "state_dict": model.state_dict(), "extra": NotPlainData()}, tmp_path / "evil.pt")
    with pytest.raises(UserError, match=r"evil\.pt: refused: .*NotPlainData.*never unpickles code"):
        io.load(tmp_path / "evil.pt")
    torch.save({"format": "prunekit.model/1", "builder": model.prunekit_builder, "ops": [{"op": "frobnicate"}],
                "state_dict": model.state_dict()}, tmp_path / "future.pt")
    with pytest.raises(UserError, match=r"future\.pt: op 0 is 'frobnicate'"):
        io.load(tmp_path / "future.pt")
    with pytest.raises(UserError, match="no such file"):
        io.load(tmp_path / "absent.pt")


def test_atomic_writes(tmp_path):
    target = tmp_path / "sub" / "notes.txt"
    assert io.atomic_write(target, "first") == str(target)
    io.atomic_write(target, b"second")
    assert target.read_bytes() == b"second"
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(target).st_mode & 0o777 == 0o666 & ~umask  # as open() would create it, not 0600
    io.atomic_torch_save({"a": torch.arange(3)}, tmp_path / "t.pt")
    with pytest.raises(Exception):
        io.atomic_torch_save({"f": lambda: None}, tmp_path / "t.pt")  # unpicklable: torch.save fails midway
    assert torch.equal(torch.load(tmp_path / "t.pt", weights_only=True)["a"], torch.arange(3))
    assert sorted(os.listdir(tmp_path)) == ["sub", "t.pt"] and os.listdir(tmp_path / "sub") == ["notes.txt"]


def test_export_onnx_missing_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # makes `import onnxscript` raise ImportError
    with pytest.raises(UserError, match=r"pip install prunekit\[onnx\]"):
        io.export_onnx(models.create("resnet20", num_classes=10), tmp_path / "m.onnx", example_inputs=torch.zeros(1, 3, 32, 32))


@pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in ("onnx", "onnxscript", "onnxruntime")),
                    reason="the onnx extra is not installed")
def test_export_onnx_pruned_resnet20_matches_torch(tmp_path):
    import onnxruntime

    torch.manual_seed(0)
    model = _prune_with_graph(models.create("resnet20", num_classes=10), {"conv1": [0, 5], "layer2.0.conv2": [1, 9]}).train()
    path = io.export_onnx(model, tmp_path / "m.onnx", example_inputs=torch.randn(2, 3, 32, 32))
    assert model.training, "export works on a copy"
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, 32, 32)  # another batch size: the batch dimension is dynamic
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    expected = _outputs(model, x)
    assert torch.allclose(torch.from_numpy(got), expected, rtol=0, atol=1e-4 * max(1.0, expected.abs().max().item()))
