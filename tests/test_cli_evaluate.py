"""`prunekit evaluate` (a model's task metrics on a dataset split) and `prunekit list tasks`."""

from __future__ import annotations

import json

import pytest
import torch

from prunekit import io, metrics, models
from prunekit.cli.main import main


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_list_tasks(capsys):
    assert main(["list", "tasks"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("classification") and "top1 (%, higher is better)" in out


def test_evaluate_a_saved_classification_file(tmp_path, capsys):
    model = models.create("resnet20", num_classes=10)
    path = tmp_path / "r20.pt"
    io.save(model, path)
    assert main(["evaluate", str(path), "--data", "synthetic", "--json", "--max-batches", "1", "--batch-size", "64"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["task"] == "classification" and result["primary"]["name"] == "top1"
    assert set(result["metrics"]) == {"top1", "top5", "loss", "images"} and result["metrics"]["images"] == 64
    expected = metrics.measure(model, torch.zeros(1, 3, 32, 32))
    assert result["params"] == expected.params and result["macs"] == expected.macs
    assert result["netscore"] == pytest.approx(metrics.netscore(result["metrics"]["top1"], expected.params, expected.macs))
    # the table form, and a named model with a weights file gives the same numbers
    weights = tmp_path / "r20-state.pt"
    torch.save(model.state_dict(), weights)
    assert main(["evaluate", "resnet20", "--weights", str(weights), "--data", "synthetic", "--max-batches", "1", "--batch-size", "64"]) == 0
    table = capsys.readouterr().out
    assert f"{result['metrics']['top1']:.2f}" in table and "top-1 (%, primary)" in table and "MACs per image" in table


def test_evaluate_with_a_users_task(tmp_path, capsys):
    import user_task_example  # noqa: F401  (registers the two_head_test model)

    path = tmp_path / "two.pt"
    io.save(models.create("two_head_test", num_classes=10), path)
    argv = ["evaluate", str(path), "--data", "synthetic", "--task", "user_task_example:TwoHeadRegression", "--json", "--max-batches", "1"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["primary"] == {"name": "mse", "unit": "mse", "higher_is_better": False}
    assert result["metrics"]["mse"] > 0 and result["netscore"] is None


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["evaluate", "resnet20", "--data", "synthetic", "--task", "regresion"], "unknown task 'regresion'"),
        (["evaluate", "resnet21", "--data", "synthetic"], "unknown model 'resnet21'"),
        (["evaluate", "resnet20", "--data", "cifar11"], "unknown dataset 'cifar11'"),
        (["evaluate", "missing/model.pt", "--data", "synthetic"], "no such file"),
        (["evaluate", "resnet20", "--data", "synthetic", "--batch-size", "0"], "--batch-size: 0 is less than 1"),
        (["evaluate", "resnet20", "--data", "synthetic", "--batch-size", "1000000000"], "--batch-size"),
        (["evaluate", "resnet20", "--data", "synthetic", "--threads", "100000"], "--threads"),
        (["evaluate", "resnet20", "--data", "synthetic", "--num-classes", "0"], "--num-classes"),
        # a model that cannot take the dataset: fewer outputs than classes, other channels
        (["evaluate", "resnet20", "--data", "synthetic", "--num-classes", "4"], "4 outputs but --data synthetic has 10 classes"),
        (["evaluate", "resnet20", "--data", "synthetic", "--data-option", "channels=1"], "--data synthetic: resnet20 cannot run"),
    ],
)
def test_evaluate_mistakes_are_one_line(capsys, argv, fragment):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and fragment in err, err


def test_evaluate_refuses_weights_for_a_saved_file(tmp_path, capsys):
    path = tmp_path / "r20.pt"
    io.save(models.create("resnet20"), path)
    assert main(["evaluate", str(path), "--data", "synthetic", "--weights", str(path)]) == 2
    assert "--weights is for a model built by name" in capsys.readouterr().err
