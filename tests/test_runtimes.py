"""Runtimes for every measured latency (eager, onnxruntime, compile), the cached channel multiple,
the MACs bound of latency targets, and `import prunekit` reaching every documented module."""

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

import prunekit
from prunekit import allocation, bench, channel_multiple
from prunekit.errors import UserError
from prunekit.planner import LayerSpec

from test_allocation import StairTimer, X, _net  # noqa: E402  (the deterministic timer)


def _tiny():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


def test_latency_on_each_runtime_and_errors():
    pytest.importorskip("onnxruntime")
    x = torch.randn(1, 3, 16, 16)
    for runtime in ("eager", "onnxruntime"):
        assert bench.latency(_tiny(), x, repeats=3, warmup=1, runtime=runtime) > 0
    with pytest.raises(UserError, match="runtime 'tpu' is not one of eager, onnxruntime, compile"):
        bench.latency(_tiny(), x, runtime="tpu")
    assert bench.describe(runtime="onnxruntime", threads=1) == "cpu, onnxruntime, batch 1, 1 thread"


def test_missing_onnxruntime_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(UserError) as err:
        bench.latency(_tiny(), torch.randn(1, 3, 8, 8), runtime="onnxruntime")
    assert "onnx extra" in str(err.value) and "\n" not in str(err.value)


def test_onnxruntime_layer_timer_builds_each_layer_kind():
    pytest.importorskip("onnxruntime")
    timer = allocation.DeviceTimer(runtime="onnxruntime", repeats=1, warmup=1, num_threads=1)
    conv = LayerSpec("conv", 8, 16, (3, 3), (1, 1), (1, 1), (1, 1), 1, True, (8, 8), 1)
    for spec in (conv, conv.with_channels(8, 8, groups=8), LayerSpec("linear", 16, 4, bias=True)):
        assert timer.layer_ms(spec) > 0
    assert timer.model_ms(_tiny(), torch.randn(1, 3, 8, 8)) > 0


def test_channel_multiple_is_cached_per_device_runtime_dtype_on_disk(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv(allocation.ENV_MULTIPLE, raising=False)
    monkeypatch.setattr(channel_multiple, "_MULTIPLE_CACHE", {})
    key = channel_multiple.cache_key("cpu", "onnxruntime")
    assert "onnxruntime" in key and "float32" in key and key != channel_multiple.cache_key("cpu", "eager")
    channel_multiple._store(key, 16)
    stored = json.loads((tmp_path / "prunekit" / "channel_multiple.json").read_text())
    assert stored[key]["multiple"] == 16
    monkeypatch.setattr(channel_multiple, "_MULTIPLE_CACHE", {})  # a new process: read back from disk
    assert allocation.measure_channel_multiple(runtime="onnxruntime") == 16
    monkeypatch.setenv(allocation.ENV_MULTIPLE, "4")  # the environment still pins it
    assert allocation.measure_channel_multiple(runtime="onnxruntime") == 4


def test_latency_target_never_passes_the_macs_bound_and_says_what_limits_it():
    model = _net(64)
    timer = StairTimer(8)
    timer.overhead_ms = 2.0 * timer.model_ms(model, X)  # most of the time does not shrink with channels
    with allocation.use_timer(timer), pytest.warns(UserWarning, match="latency target 0.5 not met.*max_macs_removed=0.6"):
        result = prunekit.prune(model, method="l1_filter", target="latency=0.5", example_inputs=X, max_macs_removed=0.6)
    report = result.info["latency"]
    assert result.achieved["macs"] <= 0.6 + 1e-9 and report["macs_removed"] <= 0.6 + 1e-9
    assert report["reached"] is False and report["limit"]["fixed_share"] > 0.5 and report["limit"]["layers"]
    assert result.info["warnings"] == [report["warning"]]
    json.dumps(result.info)


def test_import_prunekit_reaches_documented_modules():
    code = ("import prunekit, sys; assert 'prunekit.bench' not in sys.modules; "
            "print(prunekit.bench.latency.__name__, prunekit.structure.remove_planned.__name__, prunekit.masks.__name__, "
            "prunekit.allocation.prune_to_latency.__name__, prunekit.train.__name__, prunekit.data.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split()[:2] == ["latency", "remove_planned"]


def test_cli_analyze_and_prune_take_a_runtime(capsys, tmp_path):
    pytest.importorskip("onnxruntime")
    from prunekit.cli.main import main

    assert main(["analyze", "resnet20", "--json", "--repeats", "2", "--runtime", "onnxruntime"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["latency_runtime"] == "onnxruntime" and out["latency_ms"] > 0
    assert main(["prune", "resnet20", "--method", "l1_filter", "--target", "macs=0.3", "--round-to", "4", "--repeats", "2",
                 "--runtime", "onnxruntime", "--out", str(tmp_path / "r.pt")]) == 0
    text = capsys.readouterr().out
    assert "CPU latency, onnxruntime, batch 1" in text
