"""docs/results.md is generated from the committed records in results/ and agrees with them."""

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import results_table  # noqa: E402


def test_page_matches_the_records():
    assert results_table.main(["--check"]) == 0, "docs/results.md is stale: run python benchmarks/results_table.py"


def test_every_record_number_is_on_the_page(tmp_path):
    records = {"resnet20-baseline": _record(88.0, 1.0, 88.0, 1.0), "resnet20-l1_filter-macs0.5": _record(88.0, 1.0, 86.5, 0.5)}
    page = results_table.render(records, ["resnet20-baseline", "resnet20-l1_filter-macs0.5", "resnet20-random-macs0.5"])
    assert "| 88.00 | 86.50 | +1.50 |" in page
    assert "(50.0 %)" in page  # MACs removed, from achieved
    assert "Not yet run: `resnet20-random-macs0.5`" in page


def _record(top1_before, macs_before, top1_after, macs_after):
    side = lambda top1, macs: {"top1": top1, "params": 270e3 * macs, "nonzero_params": 270e3 * macs, "macs": 40e6 * macs, "latency_ms": 4.0 * macs}
    return {"status": "complete", "method": "l1_filter", "target": "macs=0.5", "wall_time_s": {"total": 600},
            "baseline": side(top1_before, macs_before), "final": side(top1_after, macs_after),
            "achieved": {"params": 1 - macs_after / macs_before, "nonzero_params": 1 - macs_after / macs_before, "macs": 1 - macs_after / macs_before}}
