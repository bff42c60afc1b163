"""The recipe schema: defaults, file, --set overrides, and one-line errors naming file and field path."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from prunekit.cli.main import main
from prunekit.errors import UserError
from prunekit.recipe import Recipe, TrainSettings, apply_overrides, load_recipe

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(path: Path, overrides: tuple[str, ...] = ()) -> str:
    with pytest.raises(UserError) as info:
        load_recipe(path, overrides=list(overrides))
    message = str(info.value)
    assert "\n" not in message
    return message


def test_defaults_and_name_from_file(tmp_path):
    recipe = load_recipe(write(tmp_path, "method: {name: l1_filter, target: macs=0.5}\n"))
    assert recipe.name == "exp"
    assert recipe.data.batch_size == 128 and recipe.data.eval_batch_size == 512
    assert recipe.method.target == "macs=0.5"
    assert recipe.finetune == TrainSettings()
    assert recipe.baseline.checkpoint is None and recipe.baseline.train.epochs == 0
    assert recipe.eval.latency_batch_size == 1 and recipe.report.plots is True


def test_empty_file_is_an_error_not_all_defaults(tmp_path):
    # an empty recipe used to run every default for minutes and fail on the missing target (issue 14)
    message = error_of(write(tmp_path, ""))
    assert message.startswith("exp.yaml: empty recipe") and "method" in message
    assert load_recipe(write(tmp_path, "seed: 0\n")).to_dict() == Recipe(name="exp").to_dict()


def test_wrong_type_names_file_and_field_path(tmp_path):
    path = write(tmp_path, "data:\n  batch_size: many\n")
    message = error_of(path)
    assert message.startswith("exp.yaml: data.batch_size: ")
    assert "integer" in message and "'many'" in message


def test_fractional_int_and_nested_train_field(tmp_path):
    message = error_of(write(tmp_path, "finetune:\n  epochs: 1.5\n"))
    assert message.startswith("exp.yaml: finetune.epochs: ")
    message = error_of(write(tmp_path, "method:\n  train:\n    lr: -1\n"))
    assert message.startswith("exp.yaml: method.train.lr: ") and "greater than 0" in message


def test_unknown_key_lists_allowed_fields(tmp_path):
    message = error_of(write(tmp_path, "data:\n  name: cifar10\n  batchsize: 64\n"))
    assert message.startswith("exp.yaml: data.batchsize: unknown field 'batchsize' (allowed: name, root, subset,")
    message = error_of(write(tmp_path, "metod: {}\n"))
    assert message.startswith("exp.yaml: metod: unknown field 'metod' (allowed: name, seed, device, threads, data, model,")


def test_bad_target_and_choice(tmp_path):
    message = error_of(write(tmp_path, "method: {target: macs=1.5}\n"))
    assert message.startswith("exp.yaml: method.target: ") and "outside (0, 1)" in message
    message = error_of(write(tmp_path, "method: {target: flops=0.5}\n"))
    assert "unknown target unit 'flops'" in message
    message = error_of(write(tmp_path, "device: gpu\n"))
    assert message.startswith("exp.yaml: device: ") and "'auto', 'cpu' or 'cuda'" in message


def test_union_fields_name_the_field_not_the_branch(tmp_path):
    path = write(tmp_path, "method: {round_to: many}\n")
    message = error_of(path)
    assert message.startswith("exp.yaml: method.round_to: Input should be a valid integer")
    assert "Input should be 'auto'" in message and "(got 'many')" in message
    assert load_recipe(path, overrides=["method.round_to=auto"]).method.round_to == "auto"
    assert load_recipe(path, overrides=["method.round_to=8"]).method.round_to == 8
    assert error_of(path, ("method.round_to=0",)).startswith("exp.yaml: method.round_to: round_to must be a positive integer")
    assert error_of(path, ("method.round_to=8", "data.subset={train: 0}")).startswith("exp.yaml: data.subset: images per class must be >= 1")
    assert load_recipe(path, overrides=["method.round_to=8", "data.subset={train: 5}"]).data.subset == {"train": 5}


def test_several_errors_stay_one_line(tmp_path):
    message = error_of(write(tmp_path, "seed: x\ndata: {batch_size: y}\n"))
    assert "\n" not in message
    assert message.endswith("(+1 more error, at data.batch_size)") or message.endswith("(+1 more error, at seed)")
    message = error_of(write(tmp_path, "seed: x\ndata: {batch_size: y, eval_batch_size: z}\nthreads: w\ndevice: 3\n"))
    assert "(+" in message and "more errors, at " in message and message.count(", ") >= 2


def test_not_yaml_and_not_mapping(tmp_path):
    assert error_of(write(tmp_path, "data: [1, 2\n")).startswith("exp.yaml: not valid YAML: ")
    assert "top level must be a mapping" in error_of(write(tmp_path, "- 1\n- 2\n"))
    with pytest.raises(UserError, match="not found"):
        load_recipe(tmp_path / "missing.yaml")


def test_set_overrides_beat_the_file(tmp_path):
    path = write(tmp_path, "finetune: {epochs: 5, lr: 0.01}\nmethod: {name: l1_filter, target: macs=0.5}\n")
    recipe = load_recipe(
        path,
        overrides=["finetune.epochs=2", "method.target=params=0.3", "method.ignore=[linear]", "baseline.train.epochs=1", "name=other"],
    )
    assert recipe.finetune.epochs == 2 and recipe.finetune.lr == 0.01
    assert recipe.method.target == "params=0.3"
    assert recipe.method.ignore == ["linear"]
    assert recipe.baseline.train.epochs == 1  # a section absent from the file is created
    assert recipe.name == "other"


def test_set_errors(tmp_path):
    path = write(tmp_path, "data: {name: cifar10}\n")
    assert error_of(path, ("data.batch_size=abc",)).endswith("[from --set]")
    assert error_of(path, ("data.nme=x",)).startswith("exp.yaml: data.nme: unknown field 'nme'")
    with pytest.raises(UserError, match="expected KEY=VALUE"):
        load_recipe(path, overrides=["finetune.epochs"])
    with pytest.raises(UserError, match="data.name is a value, not a section"):
        load_recipe(path, overrides=["data.name.x=1"])


def test_apply_overrides_does_not_touch_its_input():
    data = {"a": {"b": 1}}
    assert apply_overrides(data, ["a.b=2", "a.c=x y"]) == {"a": {"b": 2, "c": "x y"}}
    assert data == {"a": {"b": 1}}


def test_relative_paths_resolve_against_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, "model: {weights: w/r20.th}\ndata: {root: ../data}\n", name="r.yaml")
    recipe = load_recipe(path)
    assert recipe.model.weights == str(tmp_path / "w" / "r20.th")
    assert recipe.data.root == str(tmp_path.parent / "data")


def test_resolved_yaml_round_trips(tmp_path):
    recipe = load_recipe(write(tmp_path, "seed: 3\nmethod: {name: magnitude, target: sparsity=0.9, options: {scope: layer}}\n"))
    again = load_recipe(write(tmp_path, recipe.resolved_yaml(), name="again.yaml"))
    assert again.to_dict() == {**recipe.to_dict(), "name": "exp"}
    assert yaml.safe_load(recipe.resolved_yaml())["method"]["options"] == {"scope": "layer"}


@pytest.mark.parametrize("name", ["quickstart.yaml", "cifar10-resnet56-l1.yaml"])
def test_shipped_recipes_validate(name):
    recipe = load_recipe(ROOT / "recipes" / name)
    assert recipe.method.name == "l1_filter" and recipe.method.target == "macs=0.5"


def test_cli_recipe_errors_exit_2_with_one_line(tmp_path, capsys):
    path = write(tmp_path, "data: {name: synthetic, batch_size: many}\n")
    assert main(["run", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("prunekit: error: exp.yaml: data.batch_size: ")
    assert main(["run", str(path), "--set", "data.batch_size=4", "--set", "model.foo=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "exp.yaml: model.foo: unknown field 'foo'" in err
    assert not (tmp_path / "run").exists()
