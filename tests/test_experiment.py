"""`prunekit run` end to end on tiny synthetic data: run-directory files, metrics, unfinished runs, resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from tiny_recipe import TRAINED, tiny_recipe, write_recipe  # tests/ is on sys.path under pytest

from prunekit import io, metrics
from prunekit.cli.main import main
from prunekit.experiment import run_experiment
from prunekit.methods.structured_baselines import L1Filter
from prunekit.recipe import load_recipe
from prunekit.report import compare_table, read_metrics

# 8x8 images, 4 classes, 64 training images in 2 batches: every stage takes a second or so.
TINY = tiny_recipe(**TRAINED, eval__latency_repeats=2, report__plots=True)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # On a CPU shared with other jobs, intra-op threads wait on each other (measured 30x slower
    # for a batch-1 ResNet-20 forward); these tiny models gain nothing from a second thread.
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def recipe_file(tmp_path: Path, **changes) -> Path:
    """Write TINY with `changes` (see tiny_recipe) to tmp_path/tiny.yaml; return its path."""
    return write_recipe(tmp_path / "tiny.yaml", TINY, **changes)


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    return err


@pytest.fixture(scope="module")
def complete_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("complete")
    out = tmp / "run"
    assert main(["run", str(recipe_file(tmp)), "--out", str(out), "--quiet"]) == 0
    return out


def test_run_writes_every_file(complete_run):
    names = {p.name for p in complete_run.iterdir()}
    assert {"recipe.yaml", "metrics.json", "log.jsonl", "report.md", "model.pt", "training_curves.png", "channels_per_layer.png"} <= names
    assert "sparsity_per_layer.png" not in names  # structured pruning zeroes nothing
    for png in complete_run.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(complete_run.rglob("*.tmp"))  # atomic writes leave no temporaries


def test_metrics_are_consistent(complete_run):
    m = read_metrics(complete_run)
    assert m["status"] == "complete" and m["error"] is None and m["target"] == "macs=0.5"
    assert m["completed_stages"] == ["baseline", "method0", "finetune0", "final"]
    base, final = m["baseline"], m["final"]
    keys = ("top1", "top5", "loss", "params", "nonzero_params", "macs", "nonzero_macs", "latency_ms", "latency_device", "latency_batch_size", "netscore")
    for k in keys:
        assert k in base and k in final, k
    assert final["params"] < base["params"] and final["macs"] < base["macs"]
    assert final["latency_device"] == "cpu" and final["latency_batch_size"] == 1 and final["latency_ms"] > 0
    assert m["threads"] == 1 and final["latency_threads"] == 1
    assert 0 <= final["top1"] <= 100 and final["images"] == 32
    a = m["achieved"]
    assert set(a) >= {"channels", "params", "macs", "sparsity", "latency", "accuracy_drop"}
    assert a["params"] == pytest.approx(1 - final["params"] / base["params"])
    assert a["macs"] == pytest.approx(1 - final["macs"] / base["macs"])
    assert a["macs"] == pytest.approx(0.5, abs=0.05)  # the target, in the unit asked
    assert a["latency"] == pytest.approx(1 - final["latency_ms"] / base["latency_ms"])
    assert a["accuracy_drop"] == pytest.approx(base["top1"] - final["top1"])
    assert a["sparsity"] == 0.0
    expected = 20 * math.log10(final["top1"] ** 2 / (math.sqrt(final["params"] / 1e6) * math.sqrt(final["macs"] / 1e9)))
    assert final["netscore"] == pytest.approx(expected)
    assert set(m["wall_time_s"]) == {"baseline", "method0", "finetune0", "final", "total"}
    convs = {row["name"]: row for row in m["layers"]}
    assert convs["conv1"]["out_channels_before"] == 16 and convs["conv1"]["out_channels_after"] < 16


def test_saved_model_is_the_final_model(complete_run):
    m = read_metrics(complete_run)
    model = io.load(complete_run / "model.pt")
    import torch

    measured = metrics.measure(model, torch.zeros(1, 3, 8, 8))
    assert measured.params == m["final"]["params"] and measured.macs == m["final"]["macs"]


def test_log_and_resolved_recipe(complete_run):
    rows = [json.loads(line) for line in (complete_run / "log.jsonl").read_text().splitlines()]
    epochs = [(r["stage"], r["epoch"]) for r in rows if "epoch" in r]
    assert epochs == [("baseline", 0), ("finetune0", 0)]
    assert [r["stage"] for r in rows if r.get("event") == "stage"] == ["baseline", "method0", "finetune0", "final"]
    again = load_recipe(complete_run / "recipe.yaml")
    assert again.method.target == "macs=0.5" and again.data.options["image_size"] == 8


def test_report_md_says_what_it_measured(complete_run):
    text = (complete_run / "report.md").read_text()
    assert "latency (ms, cpu, 1 thread, batch 1, measured median)" in text
    assert "| macs | 0.5 |" in text
    assert "NetScore = 20 log10" in text
    assert "![training curves](training_curves.png)" in text


def test_report_and_compare_commands(complete_run, capsys):
    (complete_run / "report.md").unlink()
    assert main(["report", str(complete_run)]) == 0
    assert (complete_run / "report.md").exists() and "report:" in capsys.readouterr().out
    assert main(["compare", str(complete_run), str(complete_run)]) == 0
    table = capsys.readouterr().out
    row = [line for line in table.splitlines() if line.startswith(f"| {complete_run} |")][0]
    m = read_metrics(complete_run)
    assert f"| {m['baseline']['top1']:.2f} | {m['final']['top1']:.2f} |" in row
    assert "| complete | l1_filter | macs=0.5 |" in row


def test_complete_run_is_not_overwritten(complete_run, capsys):
    before = (complete_run / "metrics.json").read_bytes()
    recipe = complete_run.parent / "tiny.yaml"
    assert main(["run", str(recipe), "--out", str(complete_run), "--quiet"]) == 2
    assert "holds a complete run" in one_line_error(capsys)
    assert main(["run", str(recipe), "--out", str(complete_run), "--resume", "--quiet"]) == 0
    assert (complete_run / "metrics.json").read_bytes() == before
    assert main(["run", str(recipe), "--out", str(complete_run), "--resume", "--set", "seed=5", "--quiet"]) == 2
    assert "seed differs" in one_line_error(capsys)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("method.name=l1_filtr", "tiny.yaml: method.name: unknown method 'l1_filtr'; did you mean l1_filter"),
        ("data.name=cifar11", "tiny.yaml: data.name: unknown dataset 'cifar11'"),
        ("model.name=resnet21", "tiny.yaml: model.name: unknown model 'resnet21'"),
        ("method.options={allocation: sideways}", "tiny.yaml: method: method 'l1_filter': allocation 'sideways'"),
        ("model.weights=missing.th", "tiny.yaml: model.weights: no such file"),
        ("method.stage_epochs=[1, 2]", "tiny.yaml: method.stage_epochs: method 'l1_filter' has 1 stage(s) (l1_filter); give one epoch count per stage, not 2"),
    ],
)
def test_unknown_names_exit_2_with_field_path(tmp_path, capsys, override, expected):
    out = tmp_path / "run"
    assert main(["run", str(recipe_file(tmp_path)), "--out", str(out), "--set", override]) == 2
    assert expected in one_line_error(capsys)
    assert not out.exists()


def test_failed_run_is_unfinished_and_resume_skips_completed_stages(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    recipe = load_recipe(recipe_file(tmp_path))
    seen = {}

    def broken_finalize(self, model, *, example_inputs, data=None):
        seen.update(read_metrics(out))  # what a reader sees on disk in the middle of the run
        raise RuntimeError("simulated crash in finalize")

    monkeypatch.setattr(L1Filter, "finalize", broken_finalize)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_experiment(recipe, out_dir=out, progress=False)
    assert seen["status"] == "running" and seen["stage"] == "method0" and seen["completed_stages"] == ["baseline"]
    m = read_metrics(out)
    assert m["status"] == "failed" and m["stage"] == "method0"
    assert m["error"] == "RuntimeError: simulated crash in finalize"
    assert "final" not in m and not (out / "model.pt").exists()

    assert main(["report", str(out)]) == 2
    err = one_line_error(capsys)
    assert "run is not complete (failed at stage method0: RuntimeError: simulated crash in finalize)" in err
    assert main(["compare", str(out)]) == 0
    assert "**failed** (not a result)" in capsys.readouterr().out

    baseline_file = out / "state" / "baseline.pt"
    baseline_bytes = baseline_file.read_bytes()
    monkeypatch.undo()
    resumed = run_experiment(recipe, out_dir=out, resume=True, progress=False)
    assert resumed["status"] == "complete" and resumed["error"] is None
    assert resumed["baseline"]["top1"] == m["baseline"]["top1"]
    assert baseline_file.read_bytes() == baseline_bytes  # the baseline was loaded, not retrained
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows if r.get("stage") == "baseline" and "epoch" in r] == [0]  # trained once
    assert [r["stage"] for r in rows if r.get("event") == "stage"] == ["baseline", "method0", "finetune0", "final"]
    assert read_metrics(out)["resumed_at"]


def test_unfinished_run_without_resume_starts_over(tmp_path, monkeypatch):
    out = tmp_path / "run"
    recipe = load_recipe(recipe_file(tmp_path, finetune={"epochs": 0}, baseline={"train": {"epochs": 0}}))
    monkeypatch.setattr(L1Filter, "finalize", lambda self, model, **kw: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError):
        run_experiment(recipe, out_dir=out, progress=False)
    monkeypatch.undo()
    m = run_experiment(recipe, out_dir=out, progress=False)
    assert m["status"] == "complete" and "resumed_at" not in m
    assert "training_curves.png" not in {p.name for p in out.iterdir()}  # nothing trained, no curves
    assert f"| {out} | complete | l1_filter | macs=0.5 |" in compare_table([out])


def test_unstructured_run_reports_sparsity_with_its_caveat(tmp_path):
    out = tmp_path / "run"
    recipe = load_recipe(
        recipe_file(tmp_path, baseline={"train": {"epochs": 0}}),
        overrides=["method.name=magnitude", "method.target=sparsity=0.8", "finetune.epochs=1"],
    )
    m = run_experiment(recipe, out_dir=out, progress=False)
    final, base = m["final"], m["baseline"]
    assert final["params"] == base["params"] and final["nonzero_params"] < base["nonzero_params"]
    assert m["achieved"]["sparsity"] == pytest.approx(0.8, abs=0.01)  # of conv/linear weights
    # fine-tuning did not regrow the pruned weights: the saved model holds them at zero
    import torch

    saved = metrics.measure(io.load(out / "model.pt"), torch.zeros(1, 3, 8, 8))
    assert saved.nonzero_params == final["nonzero_params"]
    text = (out / "report.md").read_text()
    assert "zeroed weights reduce non-zero params and non-zero MACs, not dense latency" in text
    assert (out / "sparsity_per_layer.png").exists()


def test_composite_method_records_every_stage(tmp_path):
    out = tmp_path / "run"
    recipe = load_recipe(
        recipe_file(tmp_path, baseline={"train": {"epochs": 0}}),
        overrides=["method.name=double", "method.target=null", "method.options={slimming_target: channels=0.3, magnitude_target: sparsity=0.5}",
                   "method.train.epochs=1", "method.stage_epochs=[1, 0]", "finetune.epochs=1"],
    )
    m = run_experiment(recipe, out_dir=out, progress=False)
    assert m["completed_stages"] == ["baseline", "method0", "finetune0", "method1", "finetune1", "final"]
    first, second = m["stages"]
    assert (first["method"], second["method"]) == ("slimming", "magnitude")
    assert first["params"] < m["baseline"]["params"] and first["nonzero_params"] == first["params"]
    assert second["params"] == first["params"] and second["nonzero_params"] < first["nonzero_params"]
    assert second["params"] == m["final"]["params"] and second["nonzero_params"] == m["final"]["nonzero_params"]
    for st in (first, second):
        expected = 20 * math.log10(st["top1"] ** 2 / (math.sqrt(st["params"] / 1e6) * math.sqrt(st["macs"] / 1e9)))
        assert st["netscore"] == pytest.approx(expected)
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    # stage_epochs [1, 0]: slimming trains with its hooks, one-shot magnitude does not
    assert [r["stage"] for r in rows if "epoch" in r] == ["method0", "finetune0", "finetune1"]
    assert "## Stages" in (out / "report.md").read_text()


def test_resume_continues_the_trainer_from_its_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "run"
    recipe = load_recipe(recipe_file(tmp_path, baseline={"train": {"epochs": 0}}), overrides=["finetune.epochs=2"])

    class CrashInSecondEpoch:
        def after_epoch(self, model, *, epoch):
            if epoch == 1:
                raise RuntimeError("simulated crash in epoch 2")

    monkeypatch.setattr(L1Filter, "finetune_hooks", lambda self: CrashInSecondEpoch())
    with pytest.raises(RuntimeError, match="epoch 2"):
        run_experiment(recipe, out_dir=out, progress=False)
    assert read_metrics(out)["stage"] == "finetune0" and (out / "state" / "finetune0.ckpt").exists()
    monkeypatch.undo()
    m = run_experiment(recipe, out_dir=out, resume=True, progress=False)
    assert m["status"] == "complete"
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows if r.get("stage") == "finetune0" and "epoch" in r] == [0, 1]


def test_prune_command_scores_with_data(tmp_path, capsys):
    out = tmp_path / "snip.pt"
    args = ["prune", "resnet20", "--num-classes", "10", "--method", "snip", "--target", "sparsity=0.9", "--repeats", "1", "--out", str(out)]
    assert main(args) == 2
    assert "pass --data NAME" in one_line_error(capsys)
    assert main([*args, "--data", "synthetic", "--data-batches", "1", "--batch-size", "16", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["achieved"]["sparsity"] == pytest.approx(0.9, abs=0.005)
    assert result["after"]["params"] == result["before"]["params"] and out.exists()
    assert main([*args, "--data", "cifar11"]) == 2
    assert "unknown dataset 'cifar11'" in one_line_error(capsys)


def test_study_runs_the_grid_resumably(tmp_path, capsys):
    base = recipe_file(tmp_path, baseline={"train": {"epochs": 0}}, finetune={"epochs": 0})
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump({
        "name": "grid", "recipe": str(base), "set": ["eval.latency_repeats=1"],
        "grid": {"method.name": ["l1_filter"], "method.target": ["macs=0.3", "macs=0.5"]},
    }))
    out = tmp_path / "study"
    assert main(["study", str(study), "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    runs = {p.name for p in out.iterdir() if p.is_dir()}
    assert runs == {"l1_filter-macs0.3", "l1_filter-macs0.5"}
    achieved = {r: read_metrics(out / r)["achieved"]["macs"] for r in runs}
    assert achieved["l1_filter-macs0.3"] < achieved["l1_filter-macs0.5"]
    assert load_recipe(out / "l1_filter-macs0.5" / "recipe.yaml").name == "grid-l1_filter-macs0.5"
    assert (out / "tradeoff.png").read_bytes()[:4] == b"\x89PNG"
    assert printed.count("| complete | l1_filter |") == 2 and "study.md" in printed
    kept = (out / "l1_filter-macs0.3" / "metrics.json").read_bytes()
    assert main(["study", str(study), "--out", str(out), "--quiet"]) == 0  # complete runs are kept
    assert (out / "l1_filter-macs0.3" / "metrics.json").read_bytes() == kept
    capsys.readouterr()
    study.write_text(yaml.safe_dump({"name": "grid", "recipe": str(base), "grd": {}}))
    assert main(["study", str(study)]) == 2
    assert "study.yaml: grd: unknown field 'grd' (allowed: name, recipe, set, grid, headline)" in one_line_error(capsys)
    study.write_text(yaml.safe_dump({"name": "grid", "recipe": str(base), "grid": {"method.targt": ["macs=0.3"]}}))
    assert main(["study", str(study)]) == 2
    assert "tiny.yaml: method.targt: unknown field 'targt'" in one_line_error(capsys)
