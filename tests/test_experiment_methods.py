"""The method protocol inside `prunekit run`: setup(MethodContext) once, retrain/evaluate/log, autorate's settings."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_recipe import tiny_recipe, under, write_recipe  # tests/ is on sys.path under pytest

from prunekit.cli.main import main
from prunekit.experiment import run_experiment
from prunekit.methods import METHODS, Method, register
from prunekit.methods.autorate import DEFAULT_RETRAIN
from prunekit.recipe import load_recipe

TINY = tiny_recipe(data__batch_size=16, method__data_batches=3)


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write(tmp_path, method):
    """Write TINY with `method`'s fields set to tmp_path/tiny.yaml; return its path."""
    return write_recipe(tmp_path / "tiny.yaml", TINY, **under("method", **method))


class Recorder(Method):
    name = "_context_recorder"
    kind = "unstructured"
    units = ("sparsity",)
    seen: dict = {}

    def setup(self, context):
        super().setup(context)
        Recorder.seen["setups"] = Recorder.seen.get("setups", 0) + 1

    def finalize(self, model, *, example_inputs, data=None):
        c = self.context
        Recorder.seen.update(
            task=c.task.name, batches=sum(1 for _ in c.batches), device=str(c.device), out_dir=c.out_dir,
            same_data=data is not None and sum(1 for _ in data) == 3,
        )
        model = c.retrain(model)
        Recorder.seen["metrics"] = c.evaluate(model)
        c.log("recorder: retrained one epoch")
        self.info["retrained"] = True
        return model


if Recorder.name not in METHODS:
    register(Recorder)


def test_setup_gives_the_run_context_once(tmp_path):
    Recorder.seen.clear()
    out = tmp_path / "run"
    m = run_experiment(load_recipe(write(tmp_path, {"name": Recorder.name, "target": None})), out_dir=out, progress=False)
    seen = Recorder.seen
    assert seen["setups"] == 1 and seen["task"] == "classification" and seen["batches"] == 3 and seen["same_data"]
    assert seen["device"] == "cpu" and seen["out_dir"] == out
    assert set(seen["metrics"]) >= {"top1", "top5", "loss"}
    assert m["method_info"] == {"retrained": True}
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    messages = [(r["stage"], r["text"]) for r in rows if r.get("event") == "message"]
    assert messages == [("method0", "recorder: retrained one epoch")]


def test_autorate_train_option_is_checked_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "run"
    recipe = write(tmp_path, {"name": "autorate", "target": "accuracy_drop=1", "options": {"train": {"lrr": 0.1}}})
    assert main(["run", str(recipe), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "tiny.yaml: method.options.train: autorate: option train has unknown setting(s) lrr" in err and "\n" not in err
    assert not out.exists()
    recipe = write(tmp_path, {"name": "autorate", "target": "accuracy_drop=1", "options": {"train": {"lr": -1}}})
    assert main(["run", str(recipe), "--out", str(out)]) == 2
    assert "tiny.yaml: method.options.train: " in capsys.readouterr().err and not out.exists()
    assert DEFAULT_RETRAIN["schedule"] == "constant"  # still importable from the method's module


def test_autorate_runs_through_the_experiment(tmp_path):
    recipe = load_recipe(write(tmp_path, {
        "name": "autorate", "target": "accuracy_drop=100", "data_batches": 1,
        "options": {"rounds": 1, "epochs_per_round": 1, "batches": 1, "train": {"max_steps_per_epoch": 1}},
    }))
    m = run_experiment(recipe, out_dir=tmp_path / "run", progress=False)
    assert m["status"] == "complete" and m["method_info"]["rounds"][0]["accepted"] is True
    assert m["final"]["params"] < m["baseline"]["params"]
