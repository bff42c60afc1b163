"""Seeded fuzz of every loader (issue 14): damaged model files, checkpoints, state dicts, recipes and
metrics.json (truncations, bit flips, inserted and deleted bytes) may load or be refused with a
`UserError`; nothing else may escape. Also: a full disk while writing is one line, no partial file."""

from __future__ import annotations

import errno
import json
import os
import random
import struct
import warnings
import zipfile
from pathlib import Path

import pytest
import torch

import prunekit
from prunekit import io, models, report, safe_load
from prunekit.errors import UserError
from prunekit.recipe import load_recipe

SEED = 1414


def damage(blob: bytes, rng: random.Random, hot: list[tuple[int, int]] | None = None, hot_share: float = 0.9) -> bytes:
    """Return `blob` damaged once: truncated, bits flipped, bytes inserted, deleted or overwritten.

    Positions fall in the `hot` byte ranges (structure: pickles, zip headers) with probability
    `hot_share` (a flip in tensor data only changes a weight: the file still loads, slowly).
    """
    b = bytearray(blob)

    def pos() -> int:
        if hot and rng.random() < hot_share:
            lo, hi = rng.choice(hot)
            return rng.randrange(lo, max(lo + 1, min(hi, len(b))))
        return rng.randrange(len(b))

    kind = rng.choice(["truncate", "flip", "flip", "flips", "insert", "delete", "overwrite"])
    if kind == "truncate":
        return bytes(b[: rng.randrange(len(b))])
    if kind == "flip":
        p = pos()
        b[p] ^= 1 << rng.randrange(8)
    elif kind == "flips":
        for _ in range(rng.randint(2, 16)):
            p = pos()
            b[p] ^= 1 << rng.randrange(8)
    elif kind == "insert":
        p = pos()
        b[p:p] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    elif kind == "delete":
        p = pos()
        del b[p: p + rng.randint(1, 8)]
    else:
        p = pos()
        n = rng.randint(1, 32)
        b[p: p + n] = bytes(rng.randrange(256) for _ in range(n))
    return bytes(b)


def hot_ranges(path: Path) -> list[tuple[int, int]]:
    """Return the byte ranges of a torch zip file that hold structure: the pickle, headers, the directory."""
    size = path.stat().st_size
    if not zipfile.is_zipfile(path):
        return [(0, min(size, 4096))]
    ranges = []
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            start = info.header_offset
            end = start + 30 + len(info.filename) + len(info.extra) + 64
            if info.filename.endswith(".pkl"):
                end = start + 30 + len(info.filename) + len(info.extra) + info.file_size + 64
            ranges.append((start, min(size, end)))
    ranges.append((max(0, size - 1024), size))  # central directory and end record
    return ranges


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("seeds")
    torch.manual_seed(0)
    model = models.create("resnet20", num_classes=4)
    pruned = prunekit.prune(models.create("resnet20", num_classes=4), method="l1_filter", target="channels=0.75",
                            example_inputs=torch.zeros(1, 3, 32, 32), round_to=None).model
    paths = {
        "model": d / "model.pt",
        "pruned": d / "pruned.pt",
        "state": d / "state.pt",
        "legacy_state": d / "legacy_state.th",
        "checkpoint": d / "checkpoint.pt",
    }
    io.save(model, paths["model"])
    io.save(pruned, paths["pruned"])
    small = models.create("resnet20", num_classes=4).state_dict()
    torch.save(small, paths["state"])
    torch.save({"state_dict": small, "epoch": 3, "best_prec1": 91.0}, paths["legacy_state"], _use_new_zipfile_serialization=False)
    torch.save({"format": "prunekit.train/1", "epoch": 2, "model": small, "config": {"lr": 0.1, "milestones": [0.5]},
                "rng": {"torch": torch.get_rng_state()}, "history": [{"epoch": 0, "loss": 1.0}]}, paths["checkpoint"])
    return paths


def _fuzz(blob: bytes, hot, n: int, seed: int, load, tmp: Path, suffix: str) -> dict[str, int]:
    rng = random.Random(seed)
    counts = {"loaded": 0, "refused": 0}
    for i in range(n):
        path = tmp / f"case{i}{suffix}"
        path.write_bytes(damage(blob, rng, hot))
        try:
            load(path)
            counts["loaded"] += 1
        except UserError as err:
            assert "\n" not in str(err) and "Traceback" not in str(err) and "weights_only" not in str(err), err
            counts["refused"] += 1
        path.unlink(missing_ok=True)
    return counts


def test_fuzz_model_files(seeds, tmp_path):
    # io.load of the prunekit format, both a plain and a pruned (op history) model
    for i, name in enumerate(("pruned", "model")):
        path = seeds[name]
        counts = _fuzz(path.read_bytes(), hot_ranges(path), 40, SEED + i, io.load, tmp_path, ".pt")
        assert counts["refused"] > 0


def test_fuzz_torch_files(seeds, tmp_path):
    with torch.device("meta"):
        meta = models.create("resnet20", num_classes=4)

    def weights(path):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            models.load_weights(meta, path)

    total = 0
    for i, (name, load) in enumerate((("state", weights), ("legacy_state", weights), ("checkpoint", safe_load.read_torch_file),
                                      ("state", models.read_torch_file))):
        path = seeds[name]
        counts = _fuzz(path.read_bytes(), hot_ranges(path), 40, SEED + 10 + i, load, tmp_path, path.suffix)
        total += sum(counts.values())
    assert total == 160


def test_fuzz_recipes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = (Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml").read_text(encoding="utf-8").encode()
    counts = _fuzz(recipe, None, 60, SEED + 20, load_recipe, tmp_path, ".yaml")
    assert counts["refused"] > 0


def test_fuzz_metrics(tmp_path):
    metrics = {"status": "complete", "recipe": "r", "method": "l1_filter", "method_kind": "structured", "target": "macs=0.5",
               "dataset": "cifar10", "model": "resnet20", "seed": 0, "device": "cpu",
               "baseline": {"top1": 81.3, "top5": 99.0, "loss": 0.6, "params": 269722, "macs": 40550000, "latency_ms": 7.2,
                            "netscore": 96.0, "latency_device": "cpu", "latency_batch_size": 1},
               "final": {"top1": 75.0, "params": 148590, "macs": 19910000, "nonzero_params": 148000, "sparsity": 0.0,
                         "latency_ms": 6.7, "netscore": 100.3, "latency_device": "cpu", "latency_batch_size": 1, "latency_threads": 1},
               "achieved": {"params": 0.449, "macs": 0.509, "sparsity": 0.0, "latency": 0.07, "accuracy_drop": 6.3},
               "wall_time_s": {"baseline": 1.0, "total": 2.0}, "completed_stages": ["baseline", "final"],
               "stages": [{"index": 0, "method": "l1_filter", "top1": 75.0, "params": 148590}],
               "layers": [{"name": "conv1", "kind": "Conv2d", "out_channels_before": 16, "out_channels_after": 8,
                           "sparsity_after": 0.0}],
               "method_info": {"round_to": {"value": 4}}, "report": {"plots": False}}
    blob = json.dumps(metrics, indent=1).encode()
    run = tmp_path / "run"
    run.mkdir()

    def read_and_render(path: Path) -> None:
        os.replace(path, run / "metrics.json")
        m = report.read_metrics(run)
        report.render_markdown(m)
        report.compare_table([run])

    counts = _fuzz(blob, None, 60, SEED + 30, read_and_render, tmp_path, ".json")
    assert counts["refused"] > 0


def test_fuzz_log_lines_never_break_the_report(tmp_path):
    # log.jsonl is append-only and may be damaged anywhere: bad lines are skipped, the plots still render
    rows = [{"event": "epoch", "stage": "finetune0", "epoch": e, "train_loss": 1.0 / (e + 1), "test_top1": 10.0 * e}
            for e in range(4)]
    blob = "".join(json.dumps(r) + "\n" for r in rows).encode()
    rng = random.Random(SEED + 40)
    for i in range(30):
        (tmp_path / "log.jsonl").write_bytes(damage(blob, rng))
        try:
            rows = report.read_log(tmp_path)
            if i % 10 == 0:  # a plot costs a figure: draw a few
                report.plot_training(rows)
        except UserError:
            pass
    (tmp_path / "log.jsonl").write_text('{"event": "epoch", "stage": "s", "epoch": "abc"}\n{"epoch": true}\n[1]\n')
    assert report.read_log(tmp_path) == []


def test_refused_pickle_is_prunekits_own_sentence(tmp_path, recwarn):
    import collections

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(UserError) as info:
        safe_load.read_torch_file(tmp_path / "evil.pt")
    text = str(info.value)
    assert "refused" in text and "never unpickles code" in text and "\n" not in text
    assert "weights_only" not in text and "\x1b[" not in text
    assert not [w for w in recwarn.list if "pickle" in str(w.message).lower() or issubclass(w.category, FutureWarning)]
    torch.save(collections.OrderedDict(a=torch.zeros(1)), tmp_path / "od.pt")
    assert list(safe_load.read_torch_file(tmp_path / "od.pt")) == ["a"]  # OrderedDict is plain data


def test_zip_member_larger_than_the_file_is_refused(tmp_path, seeds):
    # a 1 KB archive may declare a 4 GB member: refused from the zip directory, before torch allocates it
    blob = bytearray(seeds["state"].read_bytes())
    with zipfile.ZipFile(seeds["state"]) as zf:
        name = next(i for i in zf.infolist() if "/data/" in i.filename).filename.encode()
    entry = blob.find(b"PK\x01\x02")
    while entry != -1:  # central directory entries: uncompressed size at +24, name length at +28, name at +46
        n = struct.unpack_from("<H", blob, entry + 28)[0]
        if bytes(blob[entry + 46: entry + 46 + n]) == name:
            struct.pack_into("<I", blob, entry + 24, 0xFFFFFFF0)
        entry = blob.find(b"PK\x01\x02", entry + 4)
    (tmp_path / "big.pt").write_bytes(bytes(blob))
    with pytest.raises(UserError, match="declares"):
        safe_load.read_torch_file(tmp_path / "big.pt")


# ------------------------------------------------------------------------------------------------
# a full disk while writing


class _FullDisk:
    """A file object whose writes fail with ENOSPC after `room` bytes."""

    def __init__(self, f, room: int) -> None:
        self.f, self.room = f, room

    def write(self, data) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


@pytest.fixture
def full_disk(monkeypatch):
    real = os.fdopen

    def fdopen(fd, *args, **kwargs):
        return _FullDisk(real(fd, *args, **kwargs), room=100)

    monkeypatch.setattr(io.os, "fdopen", fdopen)


@pytest.mark.parametrize("writer", ["atomic_write", "atomic_torch_save", "save"])
def test_full_disk_is_one_line_and_leaves_nothing(tmp_path, full_disk, writer):
    target = tmp_path / "sub" / "out.pt"
    with pytest.raises(UserError) as info:
        if writer == "atomic_write":
            io.atomic_write(target, b"x" * 10_000)
        elif writer == "atomic_torch_save":
            io.atomic_torch_save({"a": torch.zeros(1000)}, target)
        else:
            io.save(models.create("resnet20", num_classes=4), target)
    text = str(info.value)
    assert text.startswith(f"no space left on device writing {target}") and "\n" not in text
    assert "inline_container" not in text
    assert os.listdir(target.parent) == []  # no partial file, no temporary file


def test_full_disk_in_the_cli_is_exit_2(tmp_path, full_disk, capsys):
    from prunekit.cli.main import main

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"status": "complete", "recipe": "r", "report": {"plots": False}}))
    assert main(["compare", str(run), "--out", str(tmp_path / "table.md")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"prunekit: error: no space left on device writing {tmp_path / 'table.md'}: nothing was written; free some space and run again"
    assert sorted(os.listdir(tmp_path)) == ["run"]


def test_write_error_names_other_failures(tmp_path):
    assert safe_load.write_error(ValueError("x"), "f") is None
    err = safe_load.write_error(PermissionError(errno.EACCES, "Permission denied"), tmp_path / "f")
    assert str(err) == f"cannot write {tmp_path / 'f'}: permission denied"
    wrapped = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos")
    wrapped.__context__ = OSError(errno.ENOSPC, "No space left on device")
    assert str(safe_load.write_error(wrapped, "m.pt")).startswith("no space left on device writing m.pt")
