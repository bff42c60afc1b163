"""A corpus of malformed recipes, files and command lines (issue 14): every one is exit code 2, ONE
stderr line naming the file or field, no traceback, and nothing written (no run directory)."""

from __future__ import annotations

import codecs
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from tiny_recipe import DROP, tiny_recipe  # tests/ is on sys.path under pytest

from prunekit import io, models
from prunekit.cli.main import main

# 8x8 synthetic images: a recipe that passes validation would run in seconds (and fail its test).
BASE = tiny_recipe(name="case", eval__latency_repeats=2, report=DROP)


class NotPlain:
    pass


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Bad files shared by the cases (and a good model file to spoil)."""
    d = tmp_path_factory.mktemp("inputs")
    r20 = models.create("resnet20", num_classes=4)
    good = dict(format=io.FORMAT, prunekit_version="0", builder=r20.prunekit_builder, ops=[],
                state_dict={k: v.clone() for k, v in r20.state_dict().items()})
    out = {}

    def save(name: str, obj) -> None:
        torch.save(obj, d / name)
        out[name] = d / name

    def raw(name: str, data: bytes) -> None:
        (d / name).write_bytes(data)
        out[name] = d / name

    save("good_model.pt", good)
    save("r20_state.pt", r20.state_dict())
    save("r32_state.pt", models.create("resnet32", num_classes=4).state_dict())
    save("r20_10classes.pt", models.create("resnet20", num_classes=10).state_dict())
    blob = (d / "r20_state.pt").read_bytes()
    raw("truncated_state.pt", blob[: len(blob) // 2])
    raw("garbage.pt", bytes(range(256)) * 40)
    raw("text.pt", b"this is not a checkpoint\n")
    raw("empty.pt", b"")
    raw("json.pt", b'{"format": "prunekit.model/1"}')
    save("pickled.pt", {"x": NotPlain()})
    save("list.pt", [1, 2, 3])
    save("tensor.pt", torch.zeros(3))
    save("nontensor_state.pt", {"conv1.weight": "abc"})
    model_blob = (d / "good_model.pt").read_bytes()
    raw("truncated_model.pt", model_blob[: len(model_blob) * 2 // 3])

    def hostile(name: str, **changes) -> None:
        obj = {**good, **changes}
        save(name, obj)

    hostile("huge_classes.pt", builder={"name": "resnet20", "kwargs": {"num_classes": 10**9, "small_input": False}})
    hostile("float_classes.pt", builder={"name": "resnet20", "kwargs": {"num_classes": 1e9, "small_input": False}})
    hostile("kwargs_list.pt", builder={"name": "resnet20", "kwargs": ["num_classes", 10]})
    hostile("kwargs_weights.pt", builder={"name": "resnet20", "kwargs": {"num_classes": 4, "weights": "/etc/passwd"}})
    hostile("kwargs_unknown.pt", builder={"name": "resnet20", "kwargs": {"num_classes": 4, "bogus": 1}})
    hostile("builder_list.pt", builder=["resnet20"])
    hostile("builder_unknown.pt", builder={"name": "resnet2000", "kwargs": {}})
    hostile("ops_dict.pt", ops={"op": "prune"})
    hostile("ops_unknown.pt", ops=[{"op": "frobnicate"}])
    hostile("ops_garbage.pt", ops=[{"op": "prune", "input_shape": [3, 32, 32], "history": "garbage"}])
    hostile("ops_bad_shape.pt", ops=[{"op": "prune", "input_shape": [3, 10**9, 32], "history": []}])
    hostile("ops_bad_module.pt", ops=[{"op": "prune", "input_shape": [3, 32, 32], "history": [["nope.conv", True, [0]]]}])
    hostile("ops_bad_index.pt", ops=[{"op": "prune", "input_shape": [3, 32, 32], "history": [["conv1", True, [10**6]]]}])
    hostile("ops_neg_index.pt", ops=[{"op": "prune", "input_shape": [3, 32, 32], "history": [["conv1", True, [-1]]]}])
    hostile("ops_entry_short.pt", ops=[{"op": "prune", "input_shape": [3, 32, 32], "history": [["conv1", True]]}])
    hostile("lowrank_bad.pt", ops=[{"op": "lowrank", "layers": [{"name": "conv1", "form": "svd", "mode": "channel", "rank": -4}]}])
    hostile("state_list.pt", state_dict=[1, 2])
    hostile("state_wrong_shapes.pt", state_dict={k: torch.zeros(1) for k in good["state_dict"]})
    hostile("no_builder.pt", builder=None)
    hostile("format_other.pt", format="other/1")
    (d / "a_directory").mkdir()
    out["a_directory"] = d / "a_directory"
    raw("plain_file", b"x")
    return out


def run_dir(root: Path, metrics) -> Path:
    """A run directory whose metrics.json holds `metrics` (bytes written as they are)."""
    root.mkdir(parents=True, exist_ok=True)
    data = metrics if isinstance(metrics, bytes) else json.dumps(metrics).encode()
    (root / "metrics.json").write_bytes(data)
    return root


def listing(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def one_line_exit_2(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exit:  # argparse's own refusals (a flag's type)
        code = exit.code
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2, f"exit {code}: {err or captured.out[-300:]}"
    assert len(err.splitlines()) == 1, err
    assert err.startswith("prunekit: error:"), err
    assert "Traceback" not in err and "\x1b[" not in err, err
    assert "weights_only=False" not in err, err
    return err


# ------------------------------------------------------------------------------------------------
# recipes: (id, mutation of BASE as {dotted.path: value} or raw bytes, fragment expected in the line)

DEL = DROP


def mutate(changes: dict) -> dict:
    """Return a copy of BASE with `changes` ({dotted.path: value}, DEL removes) applied."""
    return tiny_recipe(BASE, **{dotted.replace(".", "__"): value for dotted, value in changes.items()})


INF, NAN = float("inf"), float("nan")
RECIPE_FIELDS = [
    # epochs and other stage limits
    ("epochs-huge", {"finetune.epochs": 10**12}, "finetune.epochs"),
    ("baseline-epochs-huge", {"baseline.train.epochs": 1_000_000}, "baseline.train.epochs"),
    ("method-epochs-huge", {"method.train.epochs": 100_001}, "method.train.epochs"),
    ("epochs-negative", {"finetune.epochs": -1}, "finetune.epochs"),
    ("epochs-fraction", {"finetune.epochs": 1.5}, "finetune.epochs"),
    ("epochs-text", {"finetune.epochs": "many"}, "finetune.epochs"),
    ("epochs-list", {"finetune.epochs": [1]}, "finetune.epochs"),
    ("eval-every-negative", {"finetune.eval_every": -1}, "finetune.eval_every"),
    ("eval-every-huge", {"finetune.eval_every": 10**9}, "finetune.eval_every"),
    ("max-steps-zero", {"finetune.max_steps_per_epoch": 0}, "finetune.max_steps_per_epoch"),
    ("stage-epochs-negative", {"method.stage_epochs": [-1]}, "method.stage_epochs"),
    ("stage-epochs-huge", {"method.stage_epochs": [10**9]}, "method.stage_epochs"),
    ("stage-epochs-count", {"method.stage_epochs": [1, 2]}, "method.stage_epochs"),
    # numbers that are not finite or out of range
    ("lr-inf", {"finetune.lr": INF}, "finetune.lr"),
    ("lr-minus-inf", {"finetune.lr": -INF}, "finetune.lr"),
    ("lr-nan", {"finetune.lr": NAN}, "finetune.lr"),
    ("lr-zero", {"finetune.lr": 0}, "finetune.lr"),
    ("lr-negative", {"finetune.lr": -0.1}, "finetune.lr"),
    ("lr-text", {"finetune.lr": "fast"}, "finetune.lr"),
    ("method-lr-inf", {"method.train.lr": INF}, "method.train.lr"),
    ("baseline-lr-nan", {"baseline.train.lr": NAN}, "baseline.train.lr"),
    ("momentum-nan", {"finetune.momentum": NAN}, "finetune.momentum"),
    ("momentum-one", {"finetune.momentum": 1.0}, "finetune.momentum"),
    ("momentum-negative", {"finetune.momentum": -0.1}, "finetune.momentum"),
    ("weight-decay-inf", {"finetune.weight_decay": INF}, "finetune.weight_decay"),
    ("weight-decay-negative", {"finetune.weight_decay": -1}, "finetune.weight_decay"),
    ("gamma-inf", {"finetune.gamma": INF}, "finetune.gamma"),
    ("gamma-zero", {"finetune.gamma": 0}, "finetune.gamma"),
    ("warmup-inf", {"finetune.warmup_epochs": INF}, "finetune.warmup_epochs"),
    ("warmup-negative", {"finetune.warmup_epochs": -1}, "finetune.warmup_epochs"),
    ("label-smoothing-one", {"finetune.label_smoothing": 1.0}, "finetune.label_smoothing"),
    ("label-smoothing-nan", {"finetune.label_smoothing": NAN}, "finetune.label_smoothing"),
    ("grad-clip-inf", {"finetune.grad_clip": INF}, "finetune.grad_clip"),
    ("grad-clip-zero", {"finetune.grad_clip": 0}, "finetune.grad_clip"),
    ("milestones-outside", {"finetune.milestones": [1.5]}, "finetune.milestones"),
    ("milestones-nan", {"finetune.milestones": [NAN]}, "finetune.milestones"),
    ("method-option-inf", {"method.options": {"scale": INF}}, "method.options.scale"),
    ("method-option-round-to", {"method.options": {"round_to": 8}}, "method.round_to"),
    ("method-option-target", {"method.options": {"target": "macs=0.3"}}, "method.target"),
    ("double-stage-round-to", {"method.name": "double", "method.target": DEL, "method.options": {"slimming": {"round_to": 4}}},
     "may not set round_to"),
    ("double-stage-target", {"method.name": "double", "method.target": DEL, "method.options": {"magnitude": {"target": "sparsity=0.3"}}},
     "magnitude_target"),
    # combinations
    ("nesterov-adamw", {"finetune.nesterov": True, "finetune.optimizer": "adamw"}, "finetune.nesterov"),
    ("nesterov-adamw-method", {"method.train.nesterov": True, "method.train.optimizer": "adamw"}, "method.train.nesterov"),
    ("nesterov-adamw-baseline", {"baseline.train.nesterov": True, "baseline.train.optimizer": "adamw"}, "baseline.train.nesterov"),
    ("nesterov-no-momentum", {"finetune.nesterov": True, "finetune.momentum": 0}, "finetune.nesterov"),
    ("optimizer-unknown", {"finetune.optimizer": "adam"}, "finetune.optimizer"),
    ("schedule-unknown", {"finetune.schedule": "linear"}, "finetune.schedule"),
    ("finetune-typo", {"finetune.epoch": 3}, "finetune.epoch"),
    ("train-typo", {"method.train.lrr": 3}, "method.train.lrr"),
    # threads, device, seed, name
    ("threads-huge", {"threads": 100_000}, "threads"),
    ("threads-zero", {"threads": 0}, "threads"),
    ("threads-negative", {"threads": -1}, "threads"),
    ("threads-text", {"threads": "many"}, "threads"),
    ("threads-fraction", {"threads": 1.5}, "threads"),
    ("device-unknown", {"device": "tpu"}, "device"),
    ("seed-text", {"seed": "x"}, "seed"),
    ("name-not-plain", {"name": "bad name!"}, "name"),
    ("top-level-typo", {"finetun": {"epochs": 1}}, "finetun"),
    ("report-plots-text", {"report.plots": "maybe"}, "report.plots"),
    # data
    ("subset-misspelt-split", {"data.subset": {"trian": 5}}, "data.subset.trian"),
    ("subset-misspelt-test", {"data.subset": {"train": 5, "tset": 3}}, "data.subset.tset"),
    ("subset-zero", {"data.subset": {"train": 0}}, "data.subset"),
    ("subset-negative", {"data.subset": -3}, "data.subset"),
    ("subset-text", {"data.subset": "half"}, "data.subset"),
    ("batch-size-zero", {"data.batch_size": 0}, "data.batch_size"),
    ("batch-size-huge", {"data.batch_size": 10**9}, "data.batch_size"),
    ("eval-batch-size-zero", {"data.eval_batch_size": 0}, "data.eval_batch_size"),
    ("eval-batch-size-huge", {"data.eval_batch_size": 10**8}, "data.eval_batch_size"),
    ("val-fraction-one", {"data.val_fraction": 1.0}, "data.val_fraction"),
    ("val-fraction-negative", {"data.val_fraction": -0.1}, "data.val_fraction"),
    ("val-fraction-nan", {"data.val_fraction": NAN}, "data.val_fraction"),
    ("num-workers-huge", {"data.num_workers": 100_000}, "data.num_workers"),
    ("num-workers-negative", {"data.num_workers": -1}, "data.num_workers"),
    ("dataset-unknown", {"data.name": "cifar11"}, "data.name"),
    ("dataset-number", {"data.name": 5}, "data.name"),
    ("dataset-option-unknown", {"data.options": {"bogus": 1}}, "data.options.bogus"),
    ("data-root-missing", {"data.name": "cifar10", "data.options": {}, "data.root": "/nonexistent/prunekit-data"}, "data.root"),
    ("data-typo", {"data.sbset": 5}, "data.sbset"),
    # model
    ("model-unknown", {"model.name": "resnet2000"}, "model.name"),
    ("model-kwargs-unknown", {"model.kwargs": {"bogus": 1}}, "model"),
    ("model-kwargs-bad-value", {"model.kwargs": {"shortcut": "Z"}}, "model"),
    ("model-kwargs-list", {"model.kwargs": [1, 2]}, "model.kwargs"),
    ("num-classes-zero", {"model.num_classes": 0}, "model.num_classes"),
    ("num-classes-huge", {"model.num_classes": 10**9}, "model.num_classes"),
    ("num-classes-negative", {"model.num_classes": -5}, "model.num_classes"),
    ("model-typo", {"model.wieghts": "x.pt"}, "model.wieghts"),
    ("small-input-text", {"model.small_input": "yes please"}, "model.small_input"),
    # method
    ("method-unknown", {"method.name": "l1"}, "method.name"),
    ("target-too-big", {"method.target": "macs=2"}, "method.target"),
    ("target-unit-unknown", {"method.target": "mac=0.5"}, "method.target"),
    ("target-unit-wrong", {"method.target": "sparsity=0.9"}, "method"),
    ("target-missing", {"method.target": DEL}, "method.target"),
    ("target-zero", {"method.target": "macs=0"}, "method.target"),
    ("target-text", {"method.target": "half"}, "method.target"),
    ("ignore-matches-nothing", {"method.ignore": ["nothing*"]}, "method.ignore"),
    ("ignore-not-list", {"method.ignore": {"a": 1}}, "method.ignore"),
    ("method-option-unknown", {"method.options": {"bogus": 1}}, "method"),
    ("allocation-unknown", {"method.options": {"allocation": "everywhere"}}, "method"),
    ("round-to-zero", {"method.round_to": 0}, "method.round_to"),
    ("round-to-text", {"method.round_to": "fast"}, "method.round_to"),
    ("data-batches-zero", {"method.data_batches": 0}, "method.data_batches"),
    ("data-batches-huge", {"method.data_batches": 10**9}, "method.data_batches"),
    ("from-scratch-text", {"method.from_scratch": "maybe"}, "method.from_scratch"),
    ("method-typo", {"method.targt": "macs=0.5"}, "method.targt"),
    # eval
    ("latency-repeats-zero", {"eval.latency_repeats": 0}, "eval.latency_repeats"),
    ("latency-repeats-huge", {"eval.latency_repeats": 10**9}, "eval.latency_repeats"),
    ("latency-batch-zero", {"eval.latency_batch_size": 0}, "eval.latency_batch_size"),
    ("latency-batch-huge", {"eval.latency_batch_size": 10**9}, "eval.latency_batch_size"),
    ("latency-device-unknown", {"eval.latency_device": "tpu"}, "eval.latency_device"),
    ("max-batches-zero", {"eval.max_batches": 0}, "eval.max_batches"),
    # sections of the wrong type
    ("data-scalar", {"data": 5}, "data"),
    ("method-list", {"method": ["l1_filter"]}, "method"),
    ("finetune-text", {"finetune": "yes"}, "finetune"),
]

# files the recipe points at: (id, recipe field, name in `files`, fragment)
RECIPE_FILES = [
    ("weights-missing", "model.weights", None, "model.weights"),
    ("weights-wrong-architecture", "model.weights", "r32_state.pt", "do not fit"),
    ("weights-wrong-classes", "model.weights", "r20_10classes.pt", "shape mismatch"),
    ("weights-truncated", "model.weights", "truncated_state.pt", "model.weights"),
    ("weights-garbage", "model.weights", "garbage.pt", "model.weights"),
    ("weights-text", "model.weights", "text.pt", "model.weights"),
    ("weights-empty", "model.weights", "empty.pt", "empty file"),
    ("weights-json", "model.weights", "json.pt", "model.weights"),
    ("weights-pickled", "model.weights", "pickled.pt", "never unpickles code"),
    ("weights-list", "model.weights", "list.pt", "no state dict"),
    ("weights-tensor", "model.weights", "tensor.pt", "no state dict"),
    ("weights-non-tensors", "model.weights", "nontensor_state.pt", "no state dict"),
    ("weights-directory", "model.weights", "a_directory", "model.weights"),
    ("weights-model-file", "model.weights", "good_model.pt", "baseline.checkpoint"),
    ("checkpoint-missing", "baseline.checkpoint", None, "baseline.checkpoint"),
    ("checkpoint-text", "baseline.checkpoint", "text.pt", "baseline.checkpoint"),
    ("checkpoint-garbage", "baseline.checkpoint", "garbage.pt", "baseline.checkpoint"),
    ("checkpoint-truncated", "baseline.checkpoint", "truncated_model.pt", "baseline.checkpoint"),
    ("checkpoint-wrong-architecture", "baseline.checkpoint", "r32_state.pt", "do not fit"),
    ("checkpoint-pickled", "baseline.checkpoint", "pickled.pt", "never unpickles code"),
    ("checkpoint-list", "baseline.checkpoint", "list.pt", "baseline.checkpoint"),
    ("checkpoint-huge-classes", "baseline.checkpoint", "huge_classes.pt", "num_classes"),
    ("checkpoint-kwargs-weights", "baseline.checkpoint", "kwargs_weights.pt", "weights"),
    ("checkpoint-kwargs-list", "baseline.checkpoint", "kwargs_list.pt", "kwargs"),
    ("checkpoint-garbage-ops", "baseline.checkpoint", "ops_garbage.pt", "history"),
    ("checkpoint-unknown-op", "baseline.checkpoint", "ops_unknown.pt", "frobnicate"),
    ("checkpoint-directory", "baseline.checkpoint", "a_directory", "baseline.checkpoint"),
]


def _dump(data: dict) -> str:
    return yaml.safe_dump(data, sort_keys=False)


BASE_TEXT = _dump(BASE)
# raw recipe files: (id, bytes, fragment)
RECIPE_BYTES = [
    ("binary", bytes(range(256)) * 4, "not a text file"),
    ("nul-in-text", BASE_TEXT.encode()[:40] + b"\x00" + BASE_TEXT.encode()[40:], "NUL"),
    ("utf16-bom", codecs.BOM_UTF16_LE + BASE_TEXT.encode("utf-16-le"), "UTF-16"),
    ("utf16-be-bom", codecs.BOM_UTF16_BE + BASE_TEXT.encode("utf-16-be"), "UTF-16"),
    ("utf16-no-bom", BASE_TEXT.encode("utf-16-le"), "UTF-16"),
    ("utf32", BASE_TEXT.encode("utf-32"), "UTF-32"),
    ("latin1", "name: caf\u00e9\n".encode("latin-1"), "not UTF-8"),
    ("empty", b"", "empty recipe"),
    ("whitespace", b"   \n\n  \n", "empty recipe"),
    ("comments-only", b"# nothing here\n# at all\n", "empty recipe"),
    ("explicit-null", b"null\n", "empty recipe"),
    ("empty-mapping", b"{}\n", "empty recipe"),
    ("top-list", b"- method\n- data\n", "top level must be a mapping"),
    ("top-scalar", b"just a string\n", "top level must be a mapping"),
    ("top-number", b"42\n", "top level must be a mapping"),
    ("duplicate-top-key", (BASE_TEXT + "threads: 2\n").encode(), "duplicate key 'threads'"),
    ("duplicate-nested-key", b"method:\n  name: l1_filter\n  target: macs=0.5\n  target: macs=0.3\n", "duplicate key 'target'"),
    ("duplicate-flow-key", b"method: {name: l1_filter, name: random, target: macs=0.5}\n", "duplicate key 'name'"),
    ("unclosed-bracket", b"method: {name: l1_filter, target: macs=0.5\n", "line"),
    ("bad-indent", b"method:\n  name: l1_filter\n target: macs=0.5\n", "line"),
    ("tab-indent", b"method:\n\tname: l1_filter\n", "line"),
    ("unclosed-quote", b"name: 'case\nmethod: {name: l1_filter}\n", "line"),
    ("bad-alias", b"method: *nothing\n", "line"),
    ("python-tag", b"method: !!python/object:os.system {}\n", "line"),
    ("deep-nesting", b"data: " + b"[" * 200 + b"]" * 200 + b"\n", "nested too deeply"),
    ("oversize", b"# " + b"x" * (1024 * 1024 + 10) + b"\n", "bytes allowed"),
    ("non-string-key", b"1: 2\nmethod: {name: l1_filter, target: macs=0.5}\n", "1"),
]

SET_CASES = [
    ("set-epochs-huge", ["finetune.epochs=1000000000000"], "finetune.epochs"),
    ("set-lr-inf", ["finetune.lr=.inf"], "finetune.lr"),
    ("set-bad-yaml", ["method.options={allocation: [x"], "--set"),
    ("set-no-equals", ["finetune.epochs"], "--set"),
    ("set-empty-key", ["=3"], "--set"),
    ("set-into-value", ["data.name.x=1"], "--set"),
    ("set-threads-huge", ["threads=100000"], "threads"),
    ("set-subset-typo", ["data.subset={trian: 5}"], "data.subset.trian"),
    ("set-unknown-field", ["finetune.epoch=3"], "finetune.epoch"),
    ("set-nesterov-adamw", ["finetune.optimizer=adamw", "finetune.nesterov=true"], "finetune.nesterov"),
]


def _check_run(capsys, tmp_path, recipe: Path, extra: list[str] = (), out: Path | None = None) -> str:
    out = out or tmp_path / "out"
    before = listing(tmp_path)
    err = one_line_exit_2(capsys, ["run", str(recipe), "--out", str(out), "--quiet", *extra])
    assert not out.exists(), "a run directory was written"
    assert listing(tmp_path) == before, "files were written"
    return err


@pytest.mark.parametrize("changes, fragment", [pytest.param(c, f, id=i) for i, c, f in RECIPE_FIELDS])
def test_recipe_field_mistakes(capsys, tmp_path, monkeypatch, changes, fragment):
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "case.yaml"
    recipe.write_text(_dump(mutate(changes)))
    err = _check_run(capsys, tmp_path, recipe)
    assert "case.yaml" in err and fragment in err, err


@pytest.mark.parametrize("field, name, fragment", [pytest.param(f, n, fr, id=i) for i, f, n, fr in RECIPE_FILES])
def test_recipe_file_mistakes(capsys, tmp_path, monkeypatch, files, field, name, fragment):
    monkeypatch.chdir(tmp_path)
    target = str(files[name]) if name else str(tmp_path / "absent.pt")
    recipe = tmp_path / "case.yaml"
    recipe.write_text(_dump(mutate({field: target})))
    err = _check_run(capsys, tmp_path, recipe)
    assert "case.yaml" in err and field in err and fragment in err, err


@pytest.mark.parametrize("data, fragment", [pytest.param(d, f, id=i) for i, d, f in RECIPE_BYTES])
def test_recipe_file_contents(capsys, tmp_path, monkeypatch, data, fragment):
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "case.yaml"
    recipe.write_bytes(data)
    err = _check_run(capsys, tmp_path, recipe)
    assert "case.yaml" in err and fragment in err, err


@pytest.mark.parametrize("overrides, fragment", [pytest.param(o, f, id=i) for i, o, f in SET_CASES])
def test_set_override_mistakes(capsys, tmp_path, monkeypatch, overrides, fragment):
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "case.yaml"
    recipe.write_text(BASE_TEXT)
    extra = [a for o in overrides for a in ("--set", o)]
    err = _check_run(capsys, tmp_path, recipe, extra)
    assert fragment in err, err


@pytest.mark.parametrize("path, fragment", [
    pytest.param("/dev/null", "empty recipe", id="dev-null"),
    pytest.param("{tmp}/absent.yaml", "not found", id="missing"),
    pytest.param("{tmp}", "is a directory", id="directory"),
])
def test_recipe_paths(capsys, tmp_path, monkeypatch, path, fragment):
    monkeypatch.chdir(tmp_path)
    err = _check_run(capsys, tmp_path, Path(path.format(tmp=tmp_path)))
    assert fragment in err, err


def test_run_out_under_a_file_or_a_file(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "case.yaml"
    recipe.write_text(BASE_TEXT)
    (tmp_path / "afile").write_text("x")
    err = _check_run(capsys, tmp_path, recipe, out=tmp_path / "afile" / "run")
    assert "--out" in err and "afile" in err, err
    before = listing(tmp_path)
    err = one_line_exit_2(capsys, ["run", str(recipe), "--out", str(tmp_path / "afile"), "--quiet"])
    assert "--out" in err and "not a directory" in err, err
    assert listing(tmp_path) == before and (tmp_path / "afile").read_text() == "x"


# ------------------------------------------------------------------------------------------------
# analyze and prune

ANALYZE = [
    ("repeats-zero", ["resnet20", "--repeats", "0"], "--repeats"),
    ("repeats-negative", ["resnet20", "--repeats", "-1"], "--repeats"),
    ("repeats-huge", ["resnet20", "--repeats", "1000000000"], "--repeats"),
    ("threads-zero", ["resnet20", "--threads", "0"], "--threads"),
    ("threads-huge", ["resnet20", "--threads", "100000"], "--threads"),
    ("input-gray-on-rgb", ["resnet20", "--input-size", "1x32x32"], "--input-size"),
    ("input-zero-side", ["resnet20", "--input-size", "3x0x32"], "--input-size"),
    ("input-huge", ["resnet20", "--input-size", "3x100000x100000"], "--input-size"),
    ("input-malformed", ["resnet20", "--input-size", "3xx"], "--input-size"),
    ("input-text", ["resnet20", "--input-size", "big"], "--input-size"),
    ("input-five-dims", ["resnet20", "--input-size", "3x2x2x2x2"], "--input-size"),
    ("input-too-small-for-pools", ["vgg11_cifar", "--input-size", "3x8x8"], "cannot run on inputs of shape 3x8x8"),
    ("input-two-dims", ["resnet20", "--input-size", "3x32"], "cannot run on inputs of shape 3x32"),
    ("num-classes-zero", ["resnet20", "--num-classes", "0"], "--num-classes"),
    ("num-classes-huge", ["resnet20", "--num-classes", "1000000000"], "--num-classes"),
    ("num-classes-text", ["resnet20", "--num-classes", "ten"], "--num-classes"),
    ("model-unknown", ["resnet2000"], "unknown model"),
    ("file-missing", ["{tmp}/absent.pt"], "no such file"),
    ("small-input-cifar-ok-but-vit", ["vit_b_16", "--small-input"], "small"),
]
ANALYZE_FILES = [
    ("garbage", "garbage.pt", "garbage.pt"),
    ("text", "text.pt", "text.pt"),
    ("empty", "empty.pt", "empty file"),
    ("truncated-model", "truncated_model.pt", "truncated_model.pt"),
    ("json", "json.pt", "json.pt"),
    ("pickled", "pickled.pt", "never unpickles code"),
    ("list", "list.pt", "list.pt"),
    ("tensor", "tensor.pt", "tensor.pt"),
    ("state-dict", "r20_state.pt", "not a prunekit model file"),
    ("huge-classes", "huge_classes.pt", "num_classes"),
    ("float-classes", "float_classes.pt", "num_classes"),
    ("kwargs-list", "kwargs_list.pt", "kwargs"),
    ("kwargs-weights", "kwargs_weights.pt", "kwargs.weights"),
    ("kwargs-unknown", "kwargs_unknown.pt", "bogus"),
    ("builder-list", "builder_list.pt", "builder"),
    ("builder-unknown", "builder_unknown.pt", "resnet2000"),
    ("ops-dict", "ops_dict.pt", "ops"),
    ("ops-unknown", "ops_unknown.pt", "frobnicate"),
    ("ops-garbage", "ops_garbage.pt", "history"),
    ("ops-bad-shape", "ops_bad_shape.pt", "input_shape"),
    ("ops-bad-module", "ops_bad_module.pt", "nope.conv"),
    ("ops-bad-index", "ops_bad_index.pt", "channel indices"),
    ("ops-negative-index", "ops_neg_index.pt", "channel indices"),
    ("ops-short-entry", "ops_entry_short.pt", "history[0]"),
    ("lowrank-bad-rank", "lowrank_bad.pt", "rank"),
    ("state-list", "state_list.pt", "state_dict"),
    ("state-wrong-shapes", "state_wrong_shapes.pt", "do not fit"),
    ("no-builder", "no_builder.pt", "builder"),
    ("format-other", "format_other.pt", "other/1"),
]


@pytest.mark.parametrize("args, fragment", [pytest.param(a, f, id=i) for i, a, f in ANALYZE])
def test_analyze_mistakes(capsys, tmp_path, monkeypatch, args, fragment):
    monkeypatch.chdir(tmp_path)
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    err = one_line_exit_2(capsys, ["analyze", *args])
    assert fragment in err, err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("name, fragment", [pytest.param(n, f, id=i) for i, n, f in ANALYZE_FILES])
def test_analyze_bad_model_files(capsys, tmp_path, monkeypatch, files, name, fragment):
    monkeypatch.chdir(tmp_path)
    err = one_line_exit_2(capsys, ["analyze", str(files[name])])
    assert name in err and fragment in err, err
    assert not list(tmp_path.iterdir())


PRUNE_OK = ["resnet20", "--method", "l1_filter", "--target", "macs=0.5", "--repeats", "1"]
PRUNE = [
    ("repeats-zero", {"--repeats": "0"}, "--repeats"),
    ("repeats-negative", {"--repeats": "-1"}, "--repeats"),
    ("option-bad-yaml", {"--option": "allocation=[x"}, "--option"),
    ("option-bad-yaml-brace", {"--option": "allocation={a"}, "--option"),
    ("option-no-equals", {"--option": "allocation"}, "--option"),
    ("option-empty-key", {"--option": "=3"}, "--option"),
    ("option-unknown", {"--option": "bogus=1"}, "bogus"),
    ("option-bad-allocation", {"--option": "allocation=everywhere"}, "allocation"),
    ("option-round-to", {"--option": "round_to=8"}, "--round-to"),
    ("option-target", {"--option": "target=macs=0.3"}, "--target"),
    ("option-example-inputs", {"--option": "example_inputs=1"}, "--input-size"),
    ("option-model", {"--option": "model=resnet56"}, "not a method option"),
    ("option-task-number", {"--option": "task=3"}, "task"),
    ("random-seed-nan", {"--method": "random", "--option": "seed=.nan"}, "seed"),
    ("random-seed-text", {"--method": "random", "--option": "seed=abc"}, "seed"),
    ("random-seed-huge", {"--method": "random", "--option": "seed=100000000000000000000000"}, "seed"),
    ("magnitude-exclude-number", {"--method": "magnitude", "--target": "sparsity=0.5", "--option": "exclude=5"}, "exclude"),
    ("snip-exclude-numbers", {"--method": "snip", "--target": "sparsity=0.5", "--option": "exclude=[1, 2]",
                              "--data": "synthetic"}, "exclude"),
    ("grasp-temperature-nan", {"--method": "grasp", "--target": "sparsity=0.5", "--option": "temperature=.nan",
                               "--data": "synthetic"}, "temperature"),
    ("sfp-rate-text", {"--method": "sfp", "--target": "channels=0.3", "--option": "rate=abc"}, "rate"),
    ("svd-seed-fraction", {"--method": "svd", "--target": "params=0.3", "--option": "seed=1.5"}, "seed"),
    ("svd-lambda-s-inf", {"--method": "svd", "--target": "params=0.3", "--option": "lambda_s=.inf"}, "lambda_s"),
    ("svd-lambda-o-nan", {"--method": "svd", "--target": "params=0.3", "--option": "lambda_o=.nan"}, "lambda_o"),
    ("slimming-lambda-inf", {"--method": "slimming", "--target": "channels=0.3", "--option": "sparsity_lambda=.inf"},
     "sparsity_lambda"),
    ("out-directory", {"--out": "{tmp}/adir"}, "is a directory"),
    ("out-under-file", {"--out": "{tmp}/afile/x.pt"}, "afile"),
    ("out-missing-dir", {"--out": "{tmp}/no/such/x.pt"}, "does not exist"),
    ("target-bad", {"--target": "macs=1.5"}, "outside (0, 1)"),
    ("target-unit", {"--target": "mac=0.5"}, "unknown target unit"),
    ("method-unknown", {"--method": "l1"}, "unknown method"),
    ("round-to-zero", {"--round-to": "0"}, "--round-to"),
    ("round-to-text", {"--round-to": "fast"}, "--round-to"),
    ("ignore-nothing", {"--ignore": "nothing*"}, "matches no module"),
    ("data-batches-zero", {"--data": "synthetic", "--data-batches": "0"}, "--data-batches"),
    ("batch-size-zero", {"--data": "synthetic", "--batch-size": "0"}, "--batch-size"),
    ("batch-size-huge", {"--data": "synthetic", "--batch-size": "1000000000"}, "--batch-size"),
    ("data-batches-huge", {"--data": "synthetic", "--data-batches": "1000000000"}, "--data-batches"),
    ("data-unknown", {"--data": "cifar11"}, "unknown dataset"),
    ("threads-huge", {"--threads": "100000"}, "--threads"),
    ("input-gray-on-rgb", {"--input-size": "1x32x32"}, "--input-size"),
    ("needs-data", {"--method": "snip_channel", "--target": "params=0.5"}, "--data"),
]


@pytest.mark.parametrize("changes, fragment", [pytest.param(c, f, id=i) for i, c, f in PRUNE])
def test_prune_mistakes(capsys, tmp_path, monkeypatch, changes, fragment):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("x")
    argv = ["prune", *PRUNE_OK, "--out", str(tmp_path / "out.pt")]
    for flag, value in changes.items():
        value = value.replace("{tmp}", str(tmp_path))
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    before = listing(tmp_path)
    err = one_line_exit_2(capsys, argv)
    assert fragment in err, err
    assert listing(tmp_path) == before


# ------------------------------------------------------------------------------------------------
# report and compare on damaged run directories

GOOD_METRICS = {"status": "complete", "recipe": "r", "method": "l1_filter", "target": "macs=0.5",
                "baseline": {"top1": 50.0, "params": 100, "macs": 1000, "latency_ms": 1.0},
                "final": {"top1": 49.0, "params": 50, "macs": 500, "latency_ms": 0.8, "sparsity": 0.0,
                          "latency_device": "cpu", "latency_batch_size": 1},
                "achieved": {"params": 0.5, "macs": 0.5, "sparsity": 0.0}, "wall_time_s": {"total": 1.0},
                "layers": [], "report": {"plots": False}}


def _bad(**changes):
    return {**GOOD_METRICS, **changes}


METRICS = [
    ("list", b"[1, 2, 3]", "not an object"),
    ("string", b'"complete"', "not an object"),
    ("binary", bytes(range(256)) * 4, "not UTF-8"),
    ("utf16", codecs.BOM_UTF16_LE + json.dumps(GOOD_METRICS).encode("utf-16-le"), "not UTF-8"),
    ("empty", b"", "empty file"),
    ("truncated", json.dumps(GOOD_METRICS).encode()[:50], "not valid JSON"),
    ("not-json", b"status: complete\n", "not valid JSON"),
    ("deep", b"[" * 100_000 + b"]" * 100_000, "metrics.json"),
    ("status-number", _bad(status=5), "status"),
    ("status-unknown", _bad(status="done"), "status"),
    ("baseline-string", _bad(baseline="x"), "baseline"),
    ("final-list", _bad(final=[1]), "final"),
    ("final-top1-text", _bad(final={**GOOD_METRICS["final"], "top1": "abc"}), "final.top1"),
    ("final-sparsity-null", _bad(final={**GOOD_METRICS["final"], "sparsity": None}), "final.sparsity"),
    ("achieved-text", _bad(achieved={"macs": "half"}), "achieved.macs"),
    ("achieved-sparsity-null", _bad(achieved={"sparsity": None}), "achieved.sparsity"),
    ("wall-text", _bad(wall_time_s={"total": "long"}), "wall_time_s.total"),
    ("stages-strings", _bad(stages=["x"]), "stages[0]"),
    ("layers-numbers", _bad(layers=[5]), "layers[0]"),
    ("layers-no-name", _bad(layers=[{"kind": "conv"}]), "layers[0]"),
    ("method-info-list", _bad(method_info=[1]), "method_info"),
    ("target-number", _bad(target=5), "target"),
    ("seed-text", _bad(seed="x"), "seed"),
    ("completed-stages-dict", _bad(completed_stages={"a": 1}), "completed_stages"),
]


@pytest.mark.parametrize("content, fragment", [pytest.param(c, f, id=i) for i, c, f in METRICS])
@pytest.mark.parametrize("command", ["report", "compare"])
def test_report_and_compare_on_damaged_metrics(capsys, tmp_path, command, content, fragment):
    run = run_dir(tmp_path / "run", content)
    before = listing(tmp_path)
    err = one_line_exit_2(capsys, [command, str(run)])
    assert "metrics.json" in err and fragment in err, err
    assert listing(tmp_path) == before


@pytest.mark.parametrize("setup, fragment", [
    pytest.param("none", "not a prunekit run directory", id="no-metrics"),
    pytest.param("missing", "not a prunekit run directory", id="missing-dir"),
    pytest.param("metrics-dir", "metrics.json", id="metrics-is-directory"),
    pytest.param("running", "not complete", id="unfinished-run"),
])
def test_report_on_other_directories(capsys, tmp_path, setup, fragment):
    run = tmp_path / "run"
    if setup == "none":
        run.mkdir()
    elif setup == "metrics-dir":
        (run / "metrics.json").mkdir(parents=True)
    elif setup == "running":
        run_dir(run, {**GOOD_METRICS, "status": "running"})
    before = listing(tmp_path)
    err = one_line_exit_2(capsys, ["report", str(run)])
    assert fragment in err, err
    assert listing(tmp_path) == before


@pytest.mark.parametrize("out, fragment", [
    pytest.param("{tmp}/adir", "is a directory", id="out-directory"),
    pytest.param("{tmp}/afile/table.md", "afile", id="out-under-file"),
])
def test_compare_out_mistakes(capsys, tmp_path, out, fragment):
    run = run_dir(tmp_path / "run", GOOD_METRICS)
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("x")
    before = listing(tmp_path)
    err = one_line_exit_2(capsys, ["compare", str(run), "--out", out.format(tmp=tmp_path)])
    assert fragment in err, err
    assert listing(tmp_path) == before


# ------------------------------------------------------------------------------------------------
# a few as real processes: exit code, stderr, nothing else

@pytest.mark.parametrize("argv, fragment", [
    pytest.param(["run", "{tmp}/bin.yaml", "--out", "{tmp}/out"], "not a text file", id="run-binary-recipe"),
    pytest.param(["report", "{tmp}/run"], "not an object", id="report-list-metrics"),
])
def test_as_a_process(tmp_path, argv, fragment):
    (tmp_path / "bin.yaml").write_bytes(bytes(range(256)))
    run_dir(tmp_path / "run", b"[]")
    before = listing(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "prunekit.cli.main", *[a.format(tmp=tmp_path) for a in argv]],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    err = done.stderr.strip()
    assert done.returncode == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("prunekit: error:") and fragment in err, err
    assert "Traceback" not in err and "Warning" not in err
    assert listing(tmp_path) == before


@pytest.mark.parametrize("grid, fragment", [
    pytest.param({"method.name": ["l1_filter", "l1"]}, "method.name", id="bad-method-in-a-later-point"),
    pytest.param({"method.target": ["macs=0.5", "macs=2"]}, "method.target", id="bad-target-in-a-later-point"),
    pytest.param({"finetune.lr": [0.01, ".inf"]}, "finetune.lr", id="lr-inf-in-a-later-point"),
    pytest.param({"data.subset": [{"train": 5}, {"trian": 5}]}, "data.subset.trian", id="subset-typo-in-a-later-point"),
    pytest.param({"method.ignore": [[], ["nothing*"]]}, "method.ignore", id="ignore-in-a-later-point"),
])
def test_study_checks_every_point_before_the_first_runs(capsys, tmp_path, monkeypatch, grid, fragment):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "base.yaml").write_text(BASE_TEXT)
    (tmp_path / "study.yaml").write_text(_dump({"name": "grid", "recipe": str(tmp_path / "base.yaml"), "grid": grid}))
    before = listing(tmp_path)
    err = one_line_exit_2(capsys, ["study", str(tmp_path / "study.yaml"), "--out", str(tmp_path / "out"), "--quiet"])
    assert fragment in err, err
    assert listing(tmp_path) == before and not (tmp_path / "out").exists()


@pytest.mark.parametrize("content, fragment", [
    pytest.param(b"", "empty study", id="empty"),
    pytest.param(b"name: a\nname: b\n", "duplicate key 'name'", id="duplicate-key"),
    pytest.param(codecs.BOM_UTF16_LE + "name: a\n".encode("utf-16-le"), "UTF-16", id="utf16"),
])
def test_study_file_mistakes(capsys, tmp_path, monkeypatch, content, fragment):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "study.yaml").write_bytes(content)
    err = one_line_exit_2(capsys, ["study", str(tmp_path / "study.yaml"), "--out", str(tmp_path / "out")])
    assert "study.yaml" in err and fragment in err, err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------
# a resumed run whose state/ files were replaced


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("resume")
    recipe = tmp / "case.yaml"
    recipe.write_text(_dump(mutate({"method.round_to": 1, "report": {"plots": False}})))
    out = tmp / "run"
    assert main(["run", str(recipe), "--out", str(out), "--quiet"]) == 0
    return recipe, out


@pytest.mark.parametrize("completed, name, content, fragment", [
    pytest.param(["baseline"], "baseline_masks.pt", "pickled", "never unpickles code", id="masks-pickled"),
    pytest.param(["baseline"], "baseline_masks.pt", "garbage", "baseline_masks.pt", id="masks-garbage"),
    pytest.param(["baseline", "method0"], "method0_method_state.pt", "pickled", "never unpickles code", id="method-state-pickled"),
    pytest.param(["baseline"], "baseline.pt", "huge", "num_classes", id="stage-model-hostile"),
])
def test_resume_with_replaced_state_files(capsys, finished_run, files, tmp_path, completed, name, content, fragment):
    import shutil

    recipe, done = finished_run
    out = tmp_path / "run"
    shutil.copytree(done, out)
    metrics = json.loads((out / "metrics.json").read_text())
    metrics.update(status="running", completed_stages=completed)
    metrics.pop("final", None)
    (out / "metrics.json").write_text(json.dumps(metrics))
    source = {"pickled": "pickled.pt", "garbage": "garbage.pt", "huge": "huge_classes.pt"}[content]
    shutil.copy(files[source], out / "state" / name)
    err = one_line_exit_2(capsys, ["run", str(recipe), "--out", str(out), "--resume", "--quiet"])
    assert name in err and fragment in err, err


def test_prune_data_whose_images_the_model_cannot_take_names_data(capsys, tmp_path, monkeypatch):
    """Grey MNIST digits into an RGB ResNet: the error names --data, which the user gave, not --input-size."""
    import gzip

    import numpy as np

    monkeypatch.chdir(tmp_path)
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for stem in ("train", "t10k"):
        for kind, array in (("images-idx3", np.zeros((4, 28, 28), np.uint8)), ("labels-idx1", np.arange(4, dtype=np.uint8))):
            header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
            (raw / f"{stem}-{kind}-ubyte.gz").write_bytes(gzip.compress(header + array.tobytes()))
    err = one_line_exit_2(capsys, ["prune", "resnet20", "--method", "snip_channel", "--target", "params=0.5", "--data", "mnist",
                                   "--data-root", str(tmp_path), "--data-batches", "1", "--out", str(tmp_path / "out.pt")])
    assert "--data mnist" in err and "--input-size" not in err and "1 channel" in err, err
    assert not (tmp_path / "out.pt").exists()
