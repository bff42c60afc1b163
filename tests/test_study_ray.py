"""Study executors: the sequential reference and Ray tasks on a local 2-CPU Ray instance.

The Ray tests share one local instance (its start-up is the slow part); the init/shutdown logic of
`run_grid_ray` itself is checked against a small synchronous stand-in for the `ray` module.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import yaml
from tiny_recipe import write_recipe  # tests/ is on sys.path under pytest

from prunekit import study_ray
from prunekit.errors import UserError

HERE = Path(__file__).resolve().parent


def fake_run(point):
    """A run_one for tests: writes <dir>/<slug>.json, fails on 'bad', dies on 'crash', rejects 'user'."""
    slug, (directory, kind) = point
    if kind == "bad":
        raise ValueError(f"diverged at {slug}")
    if kind == "user":
        raise UserError("grid: a mistake every run shares")
    if kind == "skip":
        return None  # another worker holds it: left out of the result
    if kind == "crash":
        os._exit(3)  # the worker process dies, as an out-of-memory kill would
    Path(directory, f"{slug}.json").write_text(json.dumps({"pid": os.getpid()}))
    return "complete"


def grid(tmp_path, kinds):
    return [(f"p{i}", (str(tmp_path), kind)) for i, kind in enumerate(kinds)]


def test_sequential_records_failures_and_goes_on(tmp_path):
    done = []
    points = grid(tmp_path, ["ok", "bad", "user", "skip", "ok"])
    statuses = study_ray.run_grid_sequential(points, run_one=fake_run, on_done=lambda *a: done.append(a))
    assert statuses == {"p0": "complete", "p1": "failed: ValueError: diverged at p1",
                        "p2": "failed: UserError: grid: a mistake every run shares", "p4": "complete"}
    assert [d[:2] for d in done] == [(p, statuses[p[0]]) for p in points if p[0] != "p3"]
    assert all(d[2] >= 0 for d in done)
    dict_points = [{"slug": slug, "index": i, "payload": payload} for i, (slug, payload) in enumerate(points)]
    assert study_ray.run_grid_sequential(dict_points, run_one=lambda p: fake_run((p["slug"], p["payload"]))) == statuses


def test_failure_is_one_line():
    assert study_ray.failure(RuntimeError("out of\n  memory  ")) == "failed: RuntimeError: out of memory"


def test_executor_choice_without_ray_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(UserError) as err:
        study_ray.executor("ray", address="auto")
    assert str(err.value) == "the ray executor needs Ray, which is not installed: pip install 'prunekit[ray]'"
    assert "\n" not in str(err.value)
    assert study_ray.executor("sequential") is study_ray.run_grid_sequential
    with pytest.raises(UserError, match="unknown executor 'rayy'; did you mean ray"):
        study_ray.executor("rayy")


def test_study_command_without_ray_is_one_line_before_any_write(monkeypatch, tmp_path, capsys):
    from prunekit.cli.main import main

    monkeypatch.setitem(sys.modules, "ray", None)
    (tmp_path / "study.yaml").write_text(yaml.safe_dump({"name": "g", "recipe": "recipes/quickstart.yaml",
                                                         "grid": {"seed": [0, 1]}}))
    assert main(["study", str(tmp_path / "study.yaml"), "--out", str(tmp_path / "out"), "--executor", "ray"]) == 2
    err = capsys.readouterr().err
    assert err == "prunekit: error: the ray executor needs Ray, which is not installed: pip install 'prunekit[ray]'\n"
    assert not (tmp_path / "out").exists()
    assert main(["study", str(tmp_path / "study.yaml"), "--ray-address", "auto"]) == 2
    assert "--ray-address goes with --executor ray" in capsys.readouterr().err


class FakeRay:
    """Runs tasks synchronously; records init/shutdown: enough for run_grid_ray's own logic."""

    def __init__(self, cpus=2, gpus=0):
        self.calls, self.initialized, self.have = [], False, {"CPU": cpus, "GPU": gpus}

    def is_initialized(self):
        return self.initialized

    def init(self, **kw):
        self.calls.append(("init", kw))
        self.initialized = True

    def shutdown(self):
        self.calls.append(("shutdown",))
        self.initialized = False

    def cluster_resources(self):
        return self.have

    def put(self, obj):
        return obj

    def remote(self, **kw):
        fake = self

        def deco(fn):
            class Task:
                def options(self, **opts):
                    fake.calls.append(("options", opts))
                    return self

                def remote(self, *args):
                    return ("ref", fn(*args))
            return Task()
        return deco

    def wait(self, pending, num_returns=1):
        return pending[:1], pending[1:]

    def get(self, ref):
        return ref[1]

    def cancel(self, ref):
        self.calls.append(("cancel",))


def test_run_grid_ray_starts_and_stops_its_own_instance(tmp_path, monkeypatch):
    fake = FakeRay()
    monkeypatch.setitem(sys.modules, "ray", fake)
    statuses = study_ray.run_grid_ray(grid(tmp_path, ["ok", "bad"]), run_one=fake_run, num_cpus=2)
    assert statuses == {"p0": "complete", "p1": "failed: ValueError: diverged at p1"}
    assert fake.calls[0] == ("init", {"num_cpus": 2, "include_dashboard": False, "log_to_driver": False})
    assert ("options", {"num_cpus": 1}) in fake.calls and fake.calls[-1] == ("shutdown",)

    fake = FakeRay()
    monkeypatch.setitem(sys.modules, "ray", fake)
    study_ray.run_grid_ray(grid(tmp_path, ["ok"]), run_one=fake_run, address="ray://head:10001")
    assert fake.calls[0] == ("init", {"address": "ray://head:10001", "log_to_driver": False})

    fake = FakeRay()
    fake.initialized = True  # an instance the caller started is used and left running
    monkeypatch.setitem(sys.modules, "ray", fake)
    study_ray.run_grid_ray(grid(tmp_path, ["ok"]), run_one=fake_run)
    assert not any(c[0] in ("init", "shutdown") for c in fake.calls)

    with pytest.raises(UserError, match="each run asks for 1 GPU but the Ray cluster has 0"):
        study_ray.run_grid_ray(grid(tmp_path, ["ok"]), run_one=fake_run, resources_per_run=study_ray.default_resources("cuda"))


# -- on a real local Ray instance with 2 CPUs -------------------------------------------------------


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    old = os.environ.get("PYTHONPATH")
    # workers import this module (fake_run) and prunekit from the same paths as this process
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), str(HERE.parent), old) if p)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
    if old is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = old


@pytest.mark.slow
def test_ray_grid_matches_the_sequential_executor(local_ray, tmp_path):
    kinds = ["ok", "bad", "ok", "crash", "user", "ok", "skip"]
    seq_dir, ray_dir = tmp_path / "seq", tmp_path / "ray"
    seq_dir.mkdir()
    ray_dir.mkdir()
    # the reference without the crash (it would kill this process); p3 is compared on its own below
    expected = study_ray.run_grid_sequential(grid(seq_dir, [k if k != "crash" else "bad" for k in kinds]), run_one=fake_run)
    done = []
    statuses = study_ray.run_grid_ray(grid(ray_dir, kinds), run_one=fake_run, on_done=lambda *a: done.append(a))
    assert list(statuses) == [f"p{i}" for i in range(len(kinds) - 1)]  # grid order, whatever order they finished in; p6 skipped
    assert {k: v for k, v in statuses.items() if k != "p3"} == {k: v for k, v in expected.items() if k != "p3"}
    assert statuses["p3"].startswith("failed: ")  # the worker died: recorded, the grid went on
    assert sorted(p.name for p in ray_dir.iterdir()) == ["p0.json", "p2.json", "p5.json"]
    assert sorted(study_ray.slug_of(d[0]) for d in done) == sorted(statuses)
    assert {study_ray.slug_of(d[0]): d[1] for d in done} == statuses
    pids = {json.loads(p.read_text())["pid"] for p in ray_dir.iterdir()}
    assert os.getpid() not in pids  # the runs ran in Ray workers


@pytest.mark.slow
def test_four_run_study_on_ray_is_resumable_by_either_executor(local_ray, tmp_path):
    from prunekit.report import compare_table, read_metrics
    from prunekit.study import plan

    write_recipe(tmp_path / "tiny.yaml")  # tiny_recipe.BASE: l1_filter to macs=0.5, no training
    (tmp_path / "study.yaml").write_text(yaml.safe_dump({
        "name": "grid", "recipe": str(tmp_path / "tiny.yaml"),
        "grid": {"method.name": ["l1_filter", "random"], "method.target": ["macs=0.3", "macs=0.5"]},
    }))
    from prunekit.cli.main import main

    _, points = plan(tmp_path / "study.yaml")
    out = tmp_path / "out"
    # through the command line: `prunekit study --executor ray` on the local 2-CPU instance the fixture started
    assert main(["study", str(tmp_path / "study.yaml"), "--out", str(out), "--device", "cpu", "--quiet",
                 "--executor", "ray"]) == 0
    slugs = ["l1_filter-macs0.3", "l1_filter-macs0.5", "random-macs0.3", "random-macs0.5"]
    statuses = {s: read_metrics(out / s)["status"] for s in slugs}
    assert statuses == {s: "complete" for s in slugs}
    assert not (out / ".locks").exists()  # the driver released every point it held
    achieved = {s: read_metrics(out / s)["achieved"]["macs"] for s in slugs}
    assert achieved["l1_filter-macs0.3"] < achieved["l1_filter-macs0.5"]
    assert achieved["random-macs0.3"] < achieved["random-macs0.5"]
    table = compare_table([out / s for s in slugs])
    assert table.count("| complete |") == 4
    kept = {s: (out / s / "metrics.json").read_bytes() for s in slugs}
    again = study_ray.run_grid_sequential(points, run_one=study_ray.point_runner(out, device="cpu"))
    assert again == statuses  # the sequential executor keeps the runs Ray completed
    assert {s: (out / s / "metrics.json").read_bytes() for s in slugs} == kept
