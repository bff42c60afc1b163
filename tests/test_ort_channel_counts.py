"""benchmarks/ort_channel_counts.py prunes each model to the same MACs with three channel multiples and
times them beside the dense model on both runtimes."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def test_record_has_every_variant_counted_and_timed(tmp_path):
    pytest.importorskip("onnxruntime")
    import ort_channel_counts

    assert ort_channel_counts.main(["--models", "resnet20", "--rounds", "1", "--per-round", "1", "--out", str(tmp_path / "o.json")]) == 0
    import json

    record = json.loads((tmp_path / "o.json").read_text())
    entry = record["models"]["resnet20"]
    v = entry["variants"]
    assert list(v) == ["dense", "round_to=1", "round_to=8", "round_to=16"]
    assert v["dense"]["channels_not_multiple_of_8"] == 0 and v["round_to=8"]["channels_not_multiple_of_8"] == 0
    assert v["round_to=1"]["channels_not_multiple_of_8"] > 0  # a uniform half of 16/32/64 channels is odd somewhere
    for k in ("round_to=1", "round_to=8"):
        assert 0.45 < 1 - v[k]["macs"] / v["dense"]["macs"] < 0.55
    for k in v:
        assert set(entry["timing"]["latency_ms"][k]) == {"eager", "onnxruntime"}
        assert entry["timing"]["latency_ms"][k]["eager"]["median"] > 0
