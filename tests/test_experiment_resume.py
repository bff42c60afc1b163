"""A resumed run equals an uninterrupted one; run-directory state never lies or blocks (issue 14)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from tiny_recipe import TRAINED, tiny_recipe, under  # tests/ is on sys.path under pytest
from tiny_recipe import write_recipe as write_tiny

from prunekit import io
from prunekit import report as report_mod
from prunekit.cli.main import main
from prunekit.experiment import RunInterrupted, run_experiment, stages
from prunekit.recipe import load_recipe
from prunekit.report import read_metrics

TINY = tiny_recipe(**TRAINED, data__batch_size=16,
                   method={"name": "snip_channel", "target": "channels=0.3", "data_batches": 1})


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: CPU runs are bit-for-bit deterministic
    yield
    torch.set_num_threads(before)


def write_recipe(tmp_path: Path, **method) -> Path:
    """Write TINY with `method`'s fields set to tmp_path/tiny.yaml; return its path."""
    return write_tiny(tmp_path / "tiny.yaml", TINY, **under("method", **method))


def crash(monkeypatch, stage_class, exc=RuntimeError("simulated kill")):
    def run(self, x, model):
        raise exc

    monkeypatch.setattr(stage_class, "run", run)


def same_results(a: Path, b: Path) -> None:
    ma, mb = read_metrics(a), read_metrics(b)
    skip = {"latency_ms", "latency_repeats"}
    for part in ("baseline", "final"):
        assert {k: v for k, v in ma[part].items() if k not in skip} == {k: v for k, v in mb[part].items() if k not in skip}, part
    for unit in ("channels", "params", "macs", "sparsity", "accuracy_drop"):
        assert ma["achieved"][unit] == mb["achieved"][unit], unit
    assert ma["method_info"] == mb["method_info"]
    sa = io.load(a / "model.pt").state_dict()
    sb = io.load(b / "model.pt").state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


AUTORATE = {"rounds": 1, "epochs_per_round": 1, "batches": 1, "train": {"max_steps_per_epoch": 2}}


# every data-scored method (synflow is data-free)
@pytest.mark.parametrize(("method", "target", "options"), [
    ("snip_channel", "channels=0.3", {}), ("snip", "sparsity=0.5", {}), ("grasp", "sparsity=0.5", {}),
    ("autorate", "accuracy_drop=100", AUTORATE),
])
def test_resume_after_the_baseline_scores_the_same_batches(tmp_path, monkeypatch, method, target, options):
    recipe = load_recipe(write_recipe(tmp_path, name=method, target=target, options=options))
    whole = run_experiment(recipe, out_dir=tmp_path / "whole", progress=False)
    assert whole["status"] == "complete"

    crash(monkeypatch, stages.MethodStep)  # killed just after the baseline completed
    with pytest.raises(RuntimeError):
        run_experiment(recipe, out_dir=tmp_path / "resumed", progress=False)
    assert read_metrics(tmp_path / "resumed")["completed_stages"] == ["baseline"]
    monkeypatch.undo()
    resumed = run_experiment(recipe, out_dir=tmp_path / "resumed", resume=True, progress=False)
    assert resumed["status"] == "complete"
    same_results(tmp_path / "whole", tmp_path / "resumed")


def test_resume_after_the_method_keeps_method_info_and_the_report_section(tmp_path, monkeypatch):
    recipe = load_recipe(write_recipe(tmp_path))
    whole = run_experiment(recipe, out_dir=tmp_path / "whole", progress=False)
    assert whole["method_info"]  # snip_channel records how round_to was resolved

    crash(monkeypatch, stages.Finetune)
    with pytest.raises(RuntimeError):
        run_experiment(recipe, out_dir=tmp_path / "resumed", progress=False)
    monkeypatch.undo()
    resumed = run_experiment(recipe, out_dir=tmp_path / "resumed", resume=True, progress=False)
    assert resumed["method_info"] == read_metrics(tmp_path / "whole")["method_info"]
    assert "## Method details" in (tmp_path / "resumed" / "report.md").read_text()
    same_results(tmp_path / "whole", tmp_path / "resumed")


QUICK = ["baseline.train.epochs=0", "finetune.epochs=0", "method.name=l1_filter", "method.target=macs=0.5"]


@pytest.mark.parametrize("resume", [False, True])
def test_a_directory_with_only_temp_files_counts_as_empty(tmp_path, capsys, resume):
    out = tmp_path / "run"
    out.mkdir()
    leftover = out / ".metrics.json.12345.0123abcd.tmp"  # a kill during the very first metrics.json write
    leftover.write_text('{"status": "runn')
    (out / "state").mkdir()
    (out / "state" / ".baseline.pt.12345.89abcdef.tmp").write_bytes(b"PK")
    args = ["run", str(write_recipe(tmp_path)), "--out", str(out), "--quiet", *(f"--set={o}" for o in QUICK)]
    assert main([*args, *(["--resume"] if resume else [])]) == 0, capsys.readouterr().err
    assert read_metrics(out)["status"] == "complete"
    assert not leftover.exists() and not list(out.rglob("*.tmp"))


def test_report_never_says_complete_before_metrics_json(tmp_path, monkeypatch):
    out = tmp_path / "run"
    seen = []
    real = report_mod.write_markdown

    def spy(run_dir, metrics, **kw):
        seen.append((metrics["status"], read_metrics(run_dir)["status"]))
        return real(run_dir, metrics, **kw)

    monkeypatch.setattr(report_mod, "write_markdown", spy)
    recipe = load_recipe(write_recipe(tmp_path), overrides=QUICK)
    run_experiment(recipe, out_dir=out, progress=False)
    assert seen == [("complete", "complete")]  # rendered "complete" only once metrics.json said so
    monkeypatch.undo()
    # killed between the two writes: metrics.json complete, report.md missing -> --resume renders it
    (out / "report.md").unlink()
    again = run_experiment(recipe, out_dir=out, resume=True, progress=False)
    assert again["status"] == "complete" and "This run is not complete" not in (out / "report.md").read_text()


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
def test_sigterm_and_sighup_are_handled_like_sigint(tmp_path, monkeypatch, capsys, signame):
    sig = getattr(signal, signame)
    before = signal.getsignal(sig)

    def killed(self, x, model):
        os.kill(os.getpid(), sig)
        raise AssertionError("the signal should have stopped the run")

    monkeypatch.setattr(stages.MethodStep, "run", killed)
    out = tmp_path / "run"
    args = ["run", str(write_recipe(tmp_path)), "--out", str(out), "--quiet", *(f"--set={o}" for o in QUICK)]
    assert main(args) == 130
    assert "interrupted" in capsys.readouterr().err
    m = read_metrics(out)
    assert m["status"] == "failed" and m["stage"] == "method0" and m["error"] == f"interrupted by {signame}"
    assert signal.getsignal(sig) == before  # the run's handler is gone again
    monkeypatch.undo()
    resumed = run_experiment(load_recipe(write_recipe(tmp_path), overrides=QUICK), out_dir=out, resume=True, progress=False)
    assert resumed["status"] == "complete"
    with pytest.raises(KeyboardInterrupt):
        raise RunInterrupted("a KeyboardInterrupt: the CLI maps it to exit code 130")


def test_a_diverged_stage_resumes_with_new_settings_and_the_change_is_recorded(tmp_path, capsys):
    # diverges in the fine-tune, after baseline and method completed
    path = write_tiny(tmp_path / "tiny.yaml", TINY, finetune__lr=1.0e30)
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--resume --set finetune.lr=LOWER" in err, err
    first = read_metrics(out)
    assert first["status"] == "failed" and "baseline" in first["completed_stages"]
    baseline = (out / "state" / "baseline.pt").read_bytes()

    # a completed stage's settings may not change on resume: one line, nothing changed
    assert main(["run", str(out / "recipe.yaml"), "--out", str(out), "--resume", "--quiet",
                 "--set", "baseline.train.lr=0.01", "--set", "finetune.lr=0.01"]) == 2
    assert "baseline.train.lr differs" in capsys.readouterr().err
    # the unfinished stage's may: it restarts with them, the completed stages are kept
    assert main(["run", str(out / "recipe.yaml"), "--out", str(out), "--resume", "--quiet", "--set", "finetune.lr=0.01"]) == 0
    done = read_metrics(out)
    assert done["status"] == "complete" and (out / "state" / "baseline.pt").read_bytes() == baseline
    assert [(c["field"], c["to"]) for c in done["resume_changes"]] == [("finetune.lr", 0.01)]
    assert done["resume_changes"][0]["from"] == 1.0e30


def test_a_full_disk_while_logging_is_one_line(tmp_path, monkeypatch):
    import errno

    from prunekit.errors import UserError
    from prunekit.experiment import rundir

    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rundir, "open", full, raising=False)
    with pytest.raises(UserError, match=r"no space left on device writing .*log\.jsonl: nothing was written"):
        rundir.RunDir(tmp_path / "run").log({"event": "x"})
