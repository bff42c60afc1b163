"""A task and a model from the user's own module run through `prunekit run` with no prunekit edits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from tiny_recipe import tiny_recipe, write_recipe  # tests/ is on sys.path under pytest

from prunekit.cli.main import main
from prunekit.recipe import load_recipe
from prunekit.report import compare_table, read_metrics

# the task of this module: tests/user_task_example.py (tests/ is on sys.path under pytest)
TASK = "user_task_example:TwoHeadRegression"

RECIPE = tiny_recipe(
    name="user-task",
    task={"name": TASK, "options": {"brightness_weight": 0.5}},
    data__batch_size=16, data__eval_batch_size=32, data__options__train_size=32,
    model={"name": "two_head_test"},
    method={"name": "l1_filter", "target": "channels=0.5", "ignore": ["scores", "brightness"]},
)



@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write(tmp_path: Path, **changes) -> Path:
    """Write RECIPE with whole sections replaced by `changes` to tmp_path/user.yaml; return its path."""
    return write_recipe(tmp_path / "user.yaml", RECIPE, **changes)


@pytest.mark.parametrize(
    ("task", "expected"),
    [
        ("regresion", "user.yaml: task.name: unknown task 'regresion'"),
        ({"name": "classification", "options": {"smooth": 1}}, "user.yaml: task.options: task 'classification' has no option(s) smooth"),
        ({"name": TASK, "options": {"weight": 1}}, "user.yaml: task.options: "),
        ("user_task_example:Nope", "user.yaml: task.name: task 'user_task_example:Nope': user_task_example.Nope is not a prunekit.tasks.Task subclass"),
        ("no_such_module_xyz:Task", "user.yaml: task.name: task 'no_such_module_xyz:Task': cannot import module"),
        ("a:b:c", "user.yaml: task.name: 'a:b:c' is neither a task name nor module:Class"),
        ({"nme": "classification"}, "user.yaml: task.nme: unknown field 'nme' (allowed: name, options)"),
    ],
)
def test_task_mistakes_are_one_line_before_anything_is_written(tmp_path, capsys, task, expected):
    out = tmp_path / "run"
    assert main(["run", str(write(tmp_path, task=task)), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and expected in err, err
    assert not out.exists()


def test_task_shorthand_and_default(tmp_path):
    assert load_recipe(write(tmp_path, task="classification")).task.name == "classification"
    data = dict(RECIPE)
    data.pop("task")
    path = tmp_path / "plain.yaml"
    path.write_text(yaml.safe_dump(data))
    recipe = load_recipe(path)
    assert recipe.task.name == "classification" and recipe.task.options == {}


def check_run(out: Path) -> dict:
    m = read_metrics(out)
    assert m["status"] == "complete"
    assert m["task"] == {"name": "two_head_regression", "options": {"brightness_weight": 0.5},
                         "primary": {"name": "mse", "unit": "mse", "higher_is_better": False}}
    base, final = m["baseline"], m["final"]
    assert "top1" not in final and final["mse"] > 0 and final["images"] == 32
    assert final["netscore"] is None  # NetScore needs an accuracy in percent
    assert m["achieved"]["accuracy_drop"] == pytest.approx(final["mse"] - base["mse"])  # worse is positive
    assert final["params"] < base["params"]
    text = (out / "report.md").read_text()
    assert "| mse (mse, primary) |" in text and "top-1" not in text.split("## Target")[0]
    table = compare_table([out])
    assert "mse base (mse)" in table and "mse final (mse)" in table
    return m


def test_user_task_runs_end_to_end_one_shot(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", str(write(tmp_path)), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "mse (mse)" in printed  # the summary table names the task's primary metric
    check_run(out)


def test_user_task_trains_prunes_and_fine_tunes(tmp_path):
    out = tmp_path / "run"
    recipe = write(tmp_path, baseline={"train": {"epochs": 1, "lr": 0.05}}, finetune={"epochs": 1, "lr": 0.01})
    assert main(["run", str(recipe), "--out", str(out), "--quiet"]) == 0
    m = check_run(out)
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["epoch"]) for r in rows if "epoch" in r] == [("baseline", 0), ("finetune0", 0)]
    assert m["completed_stages"] == ["baseline", "method0", "finetune0", "final"]
