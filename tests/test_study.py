"""`prunekit study`: named axes, every point validated first, failures recorded, runs resumed one by
one after a kill, a progress line, and study.md / plots / headline re-rendered from the run dirs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from tiny_recipe import tiny_recipe, write_recipe  # tests/ is on sys.path under pytest

from prunekit import study as study_mod
from prunekit.cli.main import main
from prunekit.report import read_metrics

TINY = tiny_recipe(method={"name": "magnitude", "options": {"schedule": "oneshot"}, "train": {"epochs": 1, "lr": 0.05}})
PRUNE = {
    "dense": {"method.name": "none", "method.options": {}},
    "mag0.5": {"method.target": "sparsity=0.5"},
    "mag0.9": {"method.target": "sparsity=0.9"},
}


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_study(tmp_path: Path, grid=None, **extra) -> Path:
    base = write_recipe(tmp_path / "tiny.yaml", TINY)
    spec = {"name": "s", "recipe": str(base),
            "grid": grid or {"init": {"trained": {"seed": 0}, "other": {"seed": 1}}, "prune": PRUNE},
            "headline": {"arms": "init", "dense": {"prune": "dense"}, "within": 100.0}, **extra}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    return err


def test_a_bad_later_point_fails_before_anything_runs(tmp_path, capsys):
    prune = {**PRUNE, "bad": {"method.name": "l1filter"}}
    path = write_study(tmp_path, grid={"init": {"a": {"seed": 0}}, "prune": prune})
    out = tmp_path / "out"
    assert main(["study", str(path), "--out", str(out), "--quiet"]) == 2
    err = one_line_error(capsys)
    assert "grid point 4/4 (init=a, prune=bad)" in err and "method.name: unknown method 'l1filter'" in err
    assert not out.exists()
    bad_option = {"init": {"a": {"seed": 0}}, "prune": {**PRUNE, "x": {"data.options.colour": 1}}}
    assert main(["study", str(write_study(tmp_path, grid=bad_option)), "--out", str(out), "--quiet"]) == 2
    assert "prune=x" in (err := one_line_error(capsys)) and "data.options" in err and "colour" in err
    head = write_study(tmp_path, headline={"arms": "init", "dense": {"prune": "nope"}})
    assert main(["study", str(head), "--out", str(out)]) == 2
    assert "headline.dense.prune: 'nope' is not one of its values" in one_line_error(capsys)
    assert not out.exists()


def test_study_runs_resumes_and_renders(tmp_path, capsys, monkeypatch):
    path = write_study(tmp_path)
    out = tmp_path / "out"
    from prunekit.experiment import stages

    # kill the 5th run (other-mag0.5) in its last stage, as a Ctrl-C would
    real_final = stages.Final.run

    def killed(self, x, model):
        if x.rundir.path.name == "other-mag0.5":
            raise KeyboardInterrupt
        return real_final(self, x, model)

    monkeypatch.setattr(stages.Final, "run", killed)
    assert main(["study", str(path), "--out", str(out)]) == 130
    printed = capsys.readouterr().out
    assert "study s: 4/6 runs done, 2 left, about" in printed and "s per run" in printed
    assert read_metrics(out / "other-mag0.5")["status"] == "failed"
    assert "not run" in (out / "study.md").read_text()  # rendered on the way out
    kept = (out / "trained-dense" / "metrics.json").read_bytes()
    monkeypatch.setattr(stages.Final, "run", real_final)

    assert main(["study", str(path), "--out", str(out), "--quiet"]) == 0
    assert (out / "trained-dense" / "metrics.json").read_bytes() == kept  # complete: skipped
    resumed = read_metrics(out / "other-mag0.5")
    assert resumed["status"] == "complete" and resumed.get("resumed_at")  # partial: resumed, not restarted
    record = json.loads((out / "study.json").read_text())
    assert [p["slug"] for p in record["points"]][:2] == ["trained-dense", "trained-mag0.5"]
    assert record["points"][0]["labels"] == {"init": "trained", "prune": "dense"}

    dense = read_metrics(out / "trained-dense")
    assert dense["method"] == "none" and dense["final"]["params"] == dense["baseline"]["params"]
    assert abs(study_mod._removed(dense)) < 0.001  # trained, not pruned: no zeros beyond chance
    assert study_mod._removed(read_metrics(out / "trained-mag0.9")) > 0.85

    for name in ("study.md", "tradeoff.png", "accuracy_vs_params-all.png"):
        (out / name).unlink()
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    text = capsys.readouterr().out
    assert (out / "accuracy_vs_params-all.png").read_bytes()[:4] == b"\x89PNG" and (out / "tradeoff.png").exists()
    assert "## Headline" in text and "| - | magnitude |" in text and "6/6 runs complete" in text
    # within 100 points everything counts: the largest level tried, for both arms, ratio 1
    assert text.count("(the largest level tried)") == 2 and "| 1.00 |" in text


def test_a_failed_run_does_not_stop_the_others(tmp_path, capsys):
    # a run that passes every check before it starts and then fails: its training diverges
    grid = {"init": {"a": {"seed": 0}}, "prune": {"broken": {"method.target": "sparsity=0.5", "method.train.lr": 1.0e+30},
                                                  "mag0.5": {"method.target": "sparsity=0.5"}}}
    path = write_study(tmp_path, grid=grid, headline=None)
    out = tmp_path / "out"
    assert main(["study", str(path), "--out", str(out), "--quiet"]) == 1
    printed = capsys.readouterr().out
    assert "not complete: a-broken: failed" in printed
    assert read_metrics(out / "a-mag0.5")["status"] == "complete"
    row = next(line for line in (out / "study.md").read_text().splitlines() if line.startswith("| a | broken |"))
    assert "**failed**" in row and "loss became" in row


def _fake(method, removed, top1):
    return {"status": "complete", "method": method, "final": {"top1": top1}, "achieved": {"nonzero_params": removed}}


def test_headline_largest_fraction_within_one_point_and_ratio():
    points = []
    results = {}
    for ds in ("c101", "c10"):
        for arm, dense_top1, curve in (("imagenet", 80.0, [(0.5, 80.2), (0.7, 79.5), (0.9, 78.0)]),
                                       ("scratch", 60.0, [(0.5, 59.5), (0.7, 57.0), (0.9, 50.0)])):
            slug = f"{ds}-{arm}-dense"
            points.append({"slug": slug, "labels": {"data": ds, "init": arm, "prune": "dense"}})
            results[slug] = _fake("none", 0.0, dense_top1)
            for removed, top1 in curve:
                slug = f"{ds}-{arm}-{removed}"
                points.append({"slug": slug, "labels": {"data": ds, "init": arm, "prune": str(removed)}})
                results[slug] = _fake("magnitude", removed, top1)
    record = {"points": points, "headline": {"arms": "init", "panels": "data", "dense": {"prune": "dense"}, "within": 1.0}}
    rows = study_mod.headline(record, results)
    assert [(r["panel"], r["method"]) for r in rows] == [("c101", "magnitude"), ("c10", "magnitude")]
    assert rows[0]["best"] == {"imagenet": 0.7, "scratch": 0.5}
    assert rows[0]["ratio"] == pytest.approx(1.4)
    results["c10-scratch-0.5"] = _fake("magnitude", 0.5, 58.0)  # no level of scratch within a point
    assert study_mod.headline(record, results)[1]["best"]["scratch"] is None
    text = study_mod.headline_markdown(record, study_mod.headline(record, results))
    assert "none of the levels tried" in text and "70.0%" in text
    pngs = study_mod.plot_arms(record, results, rows)
    assert set(pngs) == {"c101", "c10"}


def test_progress_line():
    points = [{}] * 10
    line = study_mod.progress_line("s", points, {"a": "complete", "b": "failed: x", "c": "complete"}, [100.0, 200.0])
    assert line == "study s: 2/10 runs done (1 failed), 7 left, about 17 min 30 s left at the measured 150 s per run"
    line = study_mod.progress_line("s", points, {"a": "complete"}, [100.0], workers=2)
    assert line == "study s: 1/10 runs done, 9 left, about 7 min 30 s left at the measured 100 s per run with 2 study processes"


def test_workers_counts_live_lock_holders(tmp_path, monkeypatch):
    import os

    (tmp_path / study_mod.LOCK_DIR).mkdir()
    assert study_mod._workers(tmp_path) == 1  # no locks: this process alone
    for slug, pid in (("a", 111), ("b", 222), ("c", 222), ("d", os.getpid())):
        (tmp_path / study_mod.LOCK_DIR / f"{slug}.lock").write_text(str(pid))
    monkeypatch.setattr(study_mod, "_alive", lambda pid: pid == 222)
    assert study_mod._workers(tmp_path) == 2  # 222 holds two points; 111 is gone; our own lock is us


def test_report_on_a_folder_that_is_neither(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    one_line_error(capsys)


def test_two_workers_split_the_grid(tmp_path, monkeypatch):
    import os

    lock = tmp_path / "x.lock"
    assert study_mod._claim(lock) and lock.read_text() == str(os.getpid())
    lock.write_text("999999999")  # a process that is gone: its lock is taken over
    assert study_mod._claim(lock)
    monkeypatch.setattr(study_mod, "_alive", lambda pid: True)
    lock.write_text("1")  # a live other process holds it
    assert not study_mod._claim(lock)
    # a study skips a point another live worker holds, runs the rest
    path = write_study(tmp_path, grid={"init": {"a": {"seed": 0}}, "prune": {"dense": PRUNE["dense"], "mag0.5": PRUNE["mag0.5"]}}, headline=None)
    out = tmp_path / "out"
    (out / ".locks").mkdir(parents=True)
    (out / ".locks" / "a-dense.lock").write_text("1")
    result = study_mod.run_study(path, out_dir=out, progress=False)
    assert result["runs"] == {"a-mag0.5": "complete"} and not (out / "a-dense").exists()
    assert not (out / ".locks" / "a-mag0.5.lock").exists() and (out / ".locks" / "a-dense.lock").exists()
    (out / ".locks" / "a-dense.lock").unlink()
    assert study_mod.run_study(path, out_dir=out, progress=False)["runs"] == {"a-dense": "complete", "a-mag0.5": "complete"}
    assert not (out / ".locks").exists()  # removed once empty


def test_method_none_takes_no_target():
    from prunekit import methods
    from prunekit.errors import UserError

    assert methods.create("none").kind == "none"
    with pytest.raises(UserError, match="takes no target"):
        methods.create("none", target="sparsity=0.5")


def test_the_shipped_pretrained_vs_scratch_studies_plan(monkeypatch):
    repo = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(repo)
    spec, points = study_mod.plan("recipes/study-pretrained-vs-scratch.yaml")  # every point validated
    assert len(points) == 48 and spec.headline.arms == "init"
    by_slug = {p["slug"]: p["recipe"] for p in points}
    mag = by_slug["caltech101-imagenet-mag0.9"]
    assert mag.model.weights == "imagenet" and mag.method.options["schedule"] == "gradual"
    assert mag.data.options["image_size"] == 64 and mag.method.train.epochs == 8 and mag.finetune.epochs == 0
    l1 = by_slug["cifar10-scratch-l1_0.5"]
    assert l1.model.weights is None and l1.model.small_input and (l1.method.train.epochs, l1.finetune.epochs) == (6, 2)
    assert by_slug["cifar10-imagenet-dense"].method.name == "none"
    _, gpu = study_mod.plan("recipes/study-pretrained-vs-scratch-gpu.yaml", check=False)
    assert len(gpu) == 36 and gpu[0]["recipe"].data.options["image_size"] == 224


def test_the_estimate_uses_each_runs_recorded_wall_time(tmp_path):
    import json as _json

    run = tmp_path / "r"
    run.mkdir()
    (run / "metrics.json").write_text(_json.dumps({"status": "complete", "wall_time_s": {"baseline": 10.0, "total": 290.5}}))
    # a run resumed near its end took this process seconds; its record says what it cost in all
    assert study_mod._run_seconds(run) == 290.5
    (run / "metrics.json").write_text(_json.dumps({"status": "running"}))
    assert study_mod._run_seconds(run) is None
    assert study_mod._run_seconds(tmp_path / "missing") is None
