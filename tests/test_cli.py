"""The core commands: list, analyze, prune; user mistakes are one line and exit code 2."""

import json
import subprocess
import sys

import pytest
import torch

from prunekit import io
from prunekit.cli.main import main


def _one_line_error(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("prunekit: error:"), err
    assert "Traceback" not in err
    return err


def test_list_methods_and_models(capsys):
    assert main(["list", "methods"]) == 0
    out = capsys.readouterr().out
    assert "l1_filter" in out and "magnitude" in out
    assert main(["list", "models"]) == 0
    assert "resnet56" in capsys.readouterr().out.split()


def test_analyze_json_has_measurement_fields(capsys):
    assert main(["analyze", "resnet20", "--json", "--repeats", "2"]) == 0
    result = json.loads(capsys.readouterr().out)
    # 269,722 trainable parameters; the weights README's 271,098 also counts BN running stats (1,376)
    assert result["params"] == 269_722
    assert result["input_size"] == [3, 32, 32]
    assert result["prunable_groups"] > 0 and result["latency_ms"] > 0
    for key in ("nonzero_params", "macs", "nonzero_macs", "size_bytes"):
        assert key in result


def test_prune_writes_a_loadable_smaller_model(tmp_path, capsys):
    out = tmp_path / "r20.pt"
    code = main(["prune", "resnet20", "--method", "l1_filter", "--target", "macs=0.5", "--out", str(out), "--json", "--repeats", "1"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert abs(result["achieved"]["macs"] - 0.5) <= 0.02
    assert result["after"]["params"] < result["before"]["params"]
    # the method's measured decisions come along (round_to resolved on this machine)
    assert result["info"]["round_to"]["asked"] == "auto" and "value" in result["info"]["round_to"]
    model = io.load(out)
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
    assert torch.load(out, weights_only=True)["format"].startswith("prunekit.model")
    # a saved model analyses at the input size it was pruned at
    assert main(["analyze", str(out), "--json", "--repeats", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["macs"] == result["after"]["macs"]


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["analyze", "resnet1800"], "unknown model"),
        (["prune", "resnet20", "--method", "l1", "--target", "macs=0.5", "--out", "x.pt"], "unknown method"),
        (["prune", "resnet20", "--method", "l1_filter", "--target", "mac=0.5", "--out", "x.pt"], "unknown target unit"),
        (["prune", "resnet20", "--method", "l1_filter", "--target", "macs=1.5", "--out", "x.pt"], "outside (0, 1)"),
        (["prune", "resnet20", "--method", "l1_filter", "--target", "macs=0", "--out", "x.pt"], "outside (0, 1)"),
        (["analyze", "missing/model.pt"], "no such file"),
        (["prune", "resnet20", "--method", "l1_filter", "--target", "macs=0.5", "--ignore", "nothing*", "--out", "x.pt"], "matches no module"),
        (["prune", "resnet20", "--method", "magnitude", "--target", "macs=0.5", "--out", "x.pt"], "takes a target in"),
        (["analyze", "resnet20", "--input-size", "3xx"], "--input-size"),
        (["prune", "resnet20", "--method", "l1_filter", "--target", "macs=0.5", "--out", "/no/such/dir/x.pt"], "does not exist"),
    ],
)
def test_user_mistakes_are_one_line_and_exit_2(capsys, tmp_path, monkeypatch, argv, fragment):
    monkeypatch.chdir(tmp_path)
    assert fragment in _one_line_error(capsys, argv)


def test_unreadable_file_is_a_user_error(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file")
    _one_line_error(capsys, ["analyze", str(bad)])


def test_console_script_exit_code_and_version():
    done = subprocess.run([sys.executable, "-m", "prunekit.cli.main", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("prunekit ")
    done = subprocess.run([sys.executable, "-m", "prunekit.cli.main", "analyze", "nosuchmodel"], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]


def test_prune_prints_the_measured_round_to_and_latency_search():
    from prunekit.cli.prune_cmd import _info_lines

    info = {
        "round_to": {"asked": "auto", "value": 8, "measured": 8, "reason": "measured multiple 8 on cpu"},
        "latency": {"device": "cpu", "batch_size": 1, "target": 0.5, "before_ms": 10.0, "after_ms": 5.25,
                    "achieved": 0.475, "attempts": [{}, {}]},
    }
    assert _info_lines(info) == [
        "round_to: 8 (measured multiple 8 on cpu)",
        "latency search: 10.00 -> 5.25 ms (cpu, batch 1), 0.475 removed for a target of 0.500, 2 pruned candidates timed",
    ]
    assert _info_lines({"round_to": {"asked": None, "value": None, "reason": ""}}) == ["round_to: none"]
    assert _info_lines({"ranks": {}}) == []
