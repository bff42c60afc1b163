"""weights="imagenet": torchvision's file from the torch hub cache, a new classifier, one line offline."""

import shutil
import urllib.error

import pytest
import torch
from torch import nn

from prunekit import models
from prunekit.errors import UserError
from prunekit.models import imagenet

FILE = "mobilenet_v2-b0353104.pth"


@pytest.fixture()
def offline(monkeypatch):
    """Any download attempt fails as an offline machine's would (and is recorded)."""
    calls = []

    def refuse(url, *, progress):
        calls.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(imagenet, "download", refuse)
    return calls


@pytest.fixture()
def hub_with_file(tmp_path, monkeypatch, weights_dir):
    src = weights_dir / FILE
    if not src.exists():
        pytest.skip(f"{FILE} not in the shared weights")
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    shutil.copy(src, tmp_path / "hub" / "checkpoints" / FILE)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    return src


def test_loads_the_cached_file_and_replaces_the_classifier(hub_with_file, offline):
    torch.manual_seed(0)
    model = models.create("mobilenet_v2", num_classes=101, weights="imagenet")
    assert offline == []  # the cached file was used, nothing was downloaded
    raw = torch.load(hub_with_file, weights_only=True, map_location="cpu")
    own = model.state_dict()
    for key in ("features.0.0.weight", "features.7.conv.1.0.weight", "features.18.1.running_mean"):
        assert torch.equal(own[key], raw[key]), key
    head = model.classifier[1]
    assert imagenet.classifier_name(model) == "classifier.1"
    assert isinstance(head, nn.Linear) and head.out_features == 101
    # torchvision's own init for mobilenet_v2's classifier: normal(0, 0.01), zero bias
    assert torch.count_nonzero(head.bias) == 0 and 0.005 < head.weight.std().item() < 0.015
    assert model.prunekit_builder == {"name": "mobilenet_v2", "kwargs": {"num_classes": 101, "small_input": False}}
    with torch.no_grad():
        assert model.eval()(torch.zeros(1, 3, 64, 64)).shape == (1, 101)


def test_1000_classes_keeps_the_imagenet_head(hub_with_file, offline):
    model = models.create("mobilenet_v2", weights="imagenet")
    raw = torch.load(hub_with_file, weights_only=True, map_location="cpu")
    assert torch.equal(model.classifier[1].weight, raw["classifier.1.weight"])


def test_small_input_keeps_the_pretrained_3x3_stem(hub_with_file, offline):
    model = models.create("mobilenet_v2", num_classes=10, small_input=True, weights="imagenet")
    raw = torch.load(hub_with_file, weights_only=True, map_location="cpu")
    stem = model.features[0][0]
    assert stem.stride == (1, 1)
    assert torch.equal(stem.weight, raw["features.0.0.weight"])
    assert torch.equal(model.features[1].conv[0][0].weight, raw["features.1.conv.0.0.weight"])


def test_without_the_file_one_line_naming_file_and_folder(tmp_path, monkeypatch, offline):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(UserError) as err:
        models.create("mobilenet_v2", num_classes=101, weights="imagenet")
    text = str(err.value)
    assert "\n" not in text
    assert FILE in text and str(tmp_path / "hub" / "checkpoints") in text and "URLError" in text
    assert offline == ["https://download.pytorch.org/models/" + FILE]


def test_weights_choices_and_errors(tmp_path, monkeypatch, offline):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert imagenet.weights_enum("mobilenet_v2").name == "IMAGENET1K_V1"
    assert imagenet.weights_enum("mobilenet_v2", "imagenet:DEFAULT").name == "IMAGENET1K_V2"
    assert imagenet.weights_file("resnet18") == tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    with pytest.raises(UserError, match="IMAGENET1K_V9"):
        imagenet.weights_enum("mobilenet_v2", "imagenet:IMAGENET1K_V9")
    with pytest.raises(UserError, match="torchvision architectures"):
        models.create("resnet20", num_classes=10, weights="imagenet")
    assert offline == []


def test_a_damaged_cached_file_is_one_line(tmp_path, monkeypatch, offline):
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "hub" / "checkpoints" / FILE).write_bytes(b"not a torch file")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(UserError, match=FILE):
        models.create("mobilenet_v2", num_classes=101, weights="imagenet")


def _imagenet_recipe(tmp_path, weights="imagenet"):
    import yaml

    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({
        "name": "pretrained", "device": "cpu",
        "data": {"name": "synthetic", "options": {"num_classes": 4, "image_size": 32, "train_size": 8, "test_size": 8}},
        "model": {"name": "mobilenet_v2", "weights": weights, "small_input": True},
        "method": {"name": "none"}, "finetune": {"epochs": 0}}))
    return path


def test_a_recipe_with_imagenet_weights_passes_preflight_when_the_file_is_cached(hub_with_file, offline, tmp_path):
    from prunekit import preflight
    from prunekit.recipe import load_recipe

    preflight.check_run(load_recipe(_imagenet_recipe(tmp_path)))
    assert offline == []  # the cached file is used, nothing downloaded
    with pytest.raises(UserError, match="model.weights.*IMAGENET1K_V9"):
        preflight.check_run(load_recipe(_imagenet_recipe(tmp_path, "imagenet:IMAGENET1K_V9")))


def test_offline_without_the_file_a_run_is_one_line_before_its_directory(tmp_path, monkeypatch, offline, capsys):
    from prunekit.cli.main import main

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    out = tmp_path / "run"
    assert main(["run", str(_imagenet_recipe(tmp_path)), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.weights" in err[0] and FILE in err[0]
    assert not out.exists()
