"""prunekit.distributed: collectives, sharding and DDP on 2 gloo CPU processes launched by torchrun.

One torchrun launch (module fixture) runs tests/dist_worker.py; the tests below check what each
rank saw against formulas and against torch's DistributedSampler, and the DDP weights against a
one-process run with the same global batch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dist_worker  # tests/ is on sys.path (pytest's rootdir-relative import)
import pytest
import torch
from torch.utils.data import DistributedSampler

from prunekit import distributed
from prunekit.cli.launch import strip_nproc, torchrun_command
from prunekit.errors import UserError

HERE = Path(__file__).resolve().parent
WORLD = 2
# the torchrun launch costs three torch imports (agent + 2 ranks): ~30 s CPU, about a minute on a shared 2-core machine
slow = pytest.mark.slow


def _env() -> dict[str, str]:
    env = dict(os.environ)
    for key in distributed.ENV_KEYS:
        env.pop(key, None)
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), env.get("PYTHONPATH", "")])
    return env


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> tuple[list[dict], Path]:
    out = tmp_path_factory.mktemp("dist")
    cmd = torchrun_command([str(HERE / "dist_worker.py"), str(out)], WORLD)
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(WORLD)], out


@slow
def test_env_and_identity(ranks):
    seen, _ = ranks
    for r, s in enumerate(seen):
        assert (s["rank"], s["world_size"], s["local_rank"], s["device"]) == (r, WORLD, r, "cpu")
        assert s["is_main"] == (r == 0)


@slow
def test_broadcast_and_gather(ranks):
    seen, _ = ranks
    for s in seen:
        assert s["from0"] == {"who": 0, "choice": [0, 0]}
        assert s["from1"] == f"rank {WORLD - 1}"
        assert s["gathered"] == [r * r for r in range(WORLD)]


@slow
def test_all_reduce_by_formula(ranks):
    seen, _ = ranks
    for s in seen:
        assert s["sum"] == [WORLD * (WORLD + 1) / 2] * 3                      # sum of r + 1
        assert s["sum_int"] == [WORLD * (WORLD + 1) // 2, WORLD * (WORLD - 1)]  # sum of r + 1, of 2r
        assert s["mean"] == pytest.approx([(WORLD - 1) / 2, 10 * (WORLD - 1) / 2])
        assert s["metrics"] == pytest.approx({"correct": WORLD * (WORLD + 1) / 2, "images": 10.0 * WORLD,
                                              "loss": 0.5 * WORLD * (WORLD - 1) / 2})


@slow
@pytest.mark.parametrize("key, n, epoch, seed, drop_last", [("shard", 10, 3, 7, False), ("shard_drop", 11, 0, 1, True)])
def test_shard_matches_distributed_sampler(ranks, key, n, epoch, seed, drop_last):
    seen, _ = ranks
    for r, s in enumerate(seen):
        sampler = DistributedSampler(range(n), num_replicas=WORLD, rank=r, shuffle=True, seed=seed, drop_last=drop_last)
        sampler.set_epoch(epoch)
        assert s[key] == list(sampler)
    lengths = {len(s[key]) for s in seen}
    assert len(lengths) == 1  # equal length on every rank


@slow
def test_broadcast_tensors_in_place(ranks):
    seen, _ = ranks
    for s in seen:  # rank 1's values everywhere
        assert s["masks"] == {"a": [[1.0] * 3] * 2, "b": [False, True], "c": [[1.0] * 4] * 2}


@slow
def test_shard_without_shuffle_pads_by_repeating(ranks):
    seen, _ = ranks
    # [5..9] padded to 6 with its first element, then every 2nd element from the rank's position
    assert [s["shard_plain"] for s in seen] == [[5, 7, 9], [6, 8, 5]]
    assert [s["shard_eval"] for s in seen] == [[0, 2, 4], [1, 3]]  # pad=False: each index once (evaluation)


@slow
def test_broadcast_module_state_and_mismatch(ranks):
    seen, _ = ranks
    torch.manual_seed(100)  # rank 0's seed in the worker: every rank ends with rank 0's weights
    expected = float(sum(v.double().sum() for v in dist_worker.tiny_cnn().state_dict().values()))
    for s in seen:
        assert s["state_sum"] == pytest.approx(expected, rel=1e-9)
    for s in seen:
        assert s["mismatch"] is not None and "rank 1's model differs from rank 0's" in s["mismatch"]


@slow
def test_ddp_two_processes_match_one_process_at_same_global_batch(ranks):
    seen, out = ranks
    ddp = torch.load(out / "ddp.pt", weights_only=True)
    single, losses = dist_worker.train_tiny(distributed.DistInfo())
    # the same global batches, gradients averaged by DDP: equal up to float32 summation order
    for key, value in single.items():
        torch.testing.assert_close(ddp[key], value, rtol=1e-4, atol=1e-5, msg=key)
    for s in seen:
        assert s["losses"] == pytest.approx(losses, rel=1e-4)


def test_one_process_is_a_no_op():
    info = distributed.init_from_env("cpu")
    assert info == distributed.DistInfo() and not info.distributed and info.is_main
    t = torch.tensor([1.0, 2.0])
    assert distributed.all_reduce_mean(distributed.all_reduce_sum(t)) is t and t.tolist() == [1.0, 2.0]
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}
    assert distributed.reduce_metrics({"b": 2, "a": torch.tensor(1)}) == {"a": 1.0, "b": 2.0}
    model = torch.nn.Linear(2, 2)
    assert distributed.wrap_ddp(model, info) is model and distributed.broadcast_module_state(model) is model
    assert distributed.shard(4, epoch=0, shuffle=False).tolist() == [0, 1, 2, 3]
    gen = torch.Generator().manual_seed(5)
    assert distributed.shard(6, epoch=9, generator=gen).tolist() == torch.randperm(6, generator=torch.Generator().manual_seed(5)).tolist()
    with distributed.main_first():
        distributed.barrier()
    with pytest.raises(TypeError):
        distributed.all_reduce_mean(torch.tensor([1, 2]))


def test_local_batch_size():
    assert distributed.local_batch_size(128, distributed.DistInfo(world_size=4)) == 32
    with pytest.raises(UserError, match="multiple of the 3 processes"):
        distributed.local_batch_size(128, distributed.DistInfo(world_size=3))


def test_launch_command_line():
    assert strip_nproc(["run", "r.yaml", "--nproc", "2", "--quiet"]) == ["run", "r.yaml", "--quiet"]
    assert strip_nproc(["run", "--nproc=4", "r.yaml"]) == ["run", "r.yaml"]
    assert torchrun_command(["-m", "prunekit", "run", "r.yaml"], 2) == [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "prunekit", "run", "r.yaml"]
    with pytest.raises(UserError, match="--nproc"):
        torchrun_command(["x.py"], 0)
    with pytest.raises(UserError, match="needs a number"):
        strip_nproc(["run", "--nproc"])


def test_launch_reruns_the_command_under_torchrun(monkeypatch):
    from prunekit.cli import launch as launch_mod

    calls = []
    monkeypatch.setattr(launch_mod.subprocess, "call", lambda cmd, env: calls.append((cmd, env)) or 0)
    for key in distributed.ENV_KEYS:
        monkeypatch.delenv(key, raising=False)
    assert launch_mod.launch(["run", "r.yaml", "--nproc", "3", "--device", "cpu"], 3) == 0
    cmd, _ = calls[0]
    assert cmd == torchrun_command(["-m", "prunekit", "run", "r.yaml", "--device", "cpu"], 3)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError, match="already one of 2"):
        launch_mod.launch(["run", "r.yaml", "--nproc", "2"], 2)


def test_run_with_nproc_inside_torchrun_is_one_line_and_exit_2(monkeypatch, capsys, tmp_path):
    from prunekit.cli.main import main

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["run", str(tmp_path / "r.yaml"), "--nproc", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already one of 2" in err[0]
