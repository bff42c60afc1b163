"""docs/results.md is generated from the committed records in results/ and agrees with them."""

import json
import math
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


def _netscore(top1, params, macs):
    """NetScore in dB by its definition (Wong 2019): a = top-1 %, p = params in M, m = MACs in G."""
    return 20 * math.log10(top1**2 / (math.sqrt(params / 1e6) * math.sqrt(macs / 1e9)))


def _counts(top1, params, nonzero_params, macs, nonzero_macs):
    return {"top1": top1, "params": params, "nonzero_params": nonzero_params, "macs": macs, "nonzero_macs": nonzero_macs}


def test_double_table_shows_every_stage_with_both_netscores():
    base = _counts(90.0, 2.0e6, 2.0e6, 0.4e9, 0.4e9)
    slim = {"index": 0, "method": "slimming", "target": "macs=0.5", **_counts(88.5, 1.1e6, 1.1e6, 0.2e9, 0.2e9)}
    sparse = {"index": 1, "method": "magnitude", "target": "sparsity=0.5", **_counts(87.25, 1.1e6, 0.55e6, 0.2e9, 0.12e9)}
    double = {"status": "complete", "method": "double", "target": None, "baseline": base, "stages": [sparse, slim],
              "final": {**base, **sparse}, "wall_time_s": {"baseline": 30, "method0": 60, "finetune0": 540, "method1": 1,
                                                           "finetune1": 479, "final": 40, "total": 1150}}
    records = {"vgg11_cifar-baseline": {"status": "complete", "final": base, "wall_time_s": {"total": 1800}},
               "vgg11_cifar-double-macs0.5-sparsity0.5": double}
    stems = ["resnet20-baseline", "resnet20-double-macs0.5-sparsity0.5", "resnet20-l1_filter-macs0.5",
             "vgg11_cifar-baseline", "vgg11_cifar-double-macs0.5-sparsity0.5"]
    page = results_table.render(records, stems)
    ns = lambda c: f"{_netscore(c['top1'], c['params'], c['macs']):.2f} | {_netscore(c['top1'], c['nonzero_params'], c['nonzero_macs']):.2f}"
    # the stages in their order whatever the record's; the baseline's wall time is its own run's (30 min)
    assert (f"| VGG-11 (CIFAR) | baseline (from scratch, {_scratch_epochs()} epochs) | - | 90.00 | 2.00M | 2.00M | 400.00M | 400.00M | "
            f"{ns(base)} | 30 |\n"
            f"| VGG-11 (CIFAR) | after slimming | macs=0.5 | 88.50 | 1.10M | 1.10M | 200.00M | 200.00M | {ns(slim)} | 10 |\n"
            f"| VGG-11 (CIFAR) | after magnitude | sparsity=0.5 | 87.25 | 1.10M | 550.00k | 200.00M | 120.00M | {ns(sparse)} | 8 |") in page
    assert ns(sparse) == "84.21 | 89.44"  # 20 log10 of 87.25^2 / sqrt(1.1 * 0.2) = 16230 and of 87.25^2 / sqrt(0.55 * 0.12) = 29632
    # neither double row is a row of the ResNet-20 tables; the missing ones are listed in model order
    assert "`resnet20-double" not in page.split("## Double pruning")[0]
    assert "Not yet run: `resnet20-baseline`, `resnet20-double-macs0.5-sparsity0.5`." in page  # no baseline record either
    assert "Not yet run: `resnet20-l1_filter-macs0.5`." in page


def test_a_baseline_recorded_before_its_double_row_shows_alone():
    base = _counts(60.0, 1.5e6, 1.5e6, 5.5e6, 5.5e6)
    records = {"mobilenet_v3_small-baseline": {"status": "complete", "final": base, "wall_time_s": {"total": 600}}}
    page = results_table.render(records, ["mobilenet_v3_small-baseline", "mobilenet_v3_small-double-macs0.5-sparsity0.5",
                                          "vgg11_cifar-baseline", "vgg11_cifar-double-macs0.5-sparsity0.5"])
    assert f"| MobileNetV3-small (32x32 stem) | baseline (from scratch, {_scratch_epochs()} epochs) | - | 60.00 |" in page
    assert f"| {_netscore(60.0, 1.5e6, 5.5e6):.2f} | {_netscore(60.0, 1.5e6, 5.5e6):.2f} | 10 |" in page
    # in the model order (VGG before the MobileNets), not by name
    assert ("Not yet run: `vgg11_cifar-baseline`, `vgg11_cifar-double-macs0.5-sparsity0.5`, "
            "`mobilenet_v3_small-double-macs0.5-sparsity0.5`.") in page


def _scratch_epochs():
    import results_recipes

    return results_recipes.SCRATCH_EPOCHS


import detection_table  # noqa: E402


def test_detection_page_matches_the_records():
    assert detection_table.main(["--check"]) == 0, "docs/detection.md is stale: run python benchmarks/detection_table.py"


def test_detection_table_renders_every_record_number():
    side = lambda ap, params, macs: {"ap_easy": ap + 0.2, "ap_medium": ap + 0.1, "ap_hard": ap, "params": params,
                                     "nonzero_params": params, "macs": macs, "nonzero_macs": macs}
    record = {"status": "complete", "method_kind": "structured", "wall_time_s": {"total": 540.0},
              "baseline": side(0.30, 426608, 245e6), "final": side(0.25, 132000, 96e6),
              "achieved": {"nonzero_params": 0.6906, "channels": 0.5}, "method_info": {}}
    latency = {"input": "1x3x480x640", "batch": 1, "threads": 1, "rounds": 5, "per_round": 5, "machine": "test CPU",
               "measured_at": "2026-12-01T00:00:00+00:00",
               "latency_ms": {"pretrained": {"eager": {"median": 160.0}}, "retinaface-snip-channel-quick": {"eager": {"median": 40.0}}}}
    page = detection_table.render({"retinaface-snip-channel-quick": record}, latency)
    assert "| 69.1 % | 50.0 % of channels | 132.0k (132.0k) | 96.0M (96.0M) |" in page
    assert "0.300 → 0.250" in page and "| -5.0 | - |" in page  # no dense record: no comparison with it
    assert "| 40.0 | not timed |" in page and "| 160.0 | not timed |" in page
    assert "Not yet run: `retinaface-dense-quick`" in page and "9.0-9.0 min" in page


def test_side_by_side_latency_record_replaces_the_runs_own_timing():
    records = {"resnet20-baseline": _record(88.0, 1.0, 88.0, 1.0), "resnet20-l1_filter-macs0.5": _record(88.0, 1.0, 86.5, 0.5)}
    latency = {"machine": "test CPU", "measured_at": "2026-12-01T01:00:00+00:00", "load_average": [1.0, 1.0, 1.0],
               "threads": 1, "batch": 1, "input": "1x3x32x32", "rounds": 5, "per_round": 20,
               "latency_ms": {"resnet20-baseline": {"eager": {"median": 3.0}, "onnxruntime": {"median": 1.0}},
                              "resnet20-l1_filter-macs0.5": {"eager": {"median": 2.0}, "onnxruntime": {"median": 0.625}}}}
    page = results_table.render(records, ["resnet20-baseline", "resnet20-l1_filter-macs0.5"], latency)
    # eager 3.0 -> 2.0 ms is 1.5x for 2x fewer MACs: 0.75; ONNX Runtime 1.6x: 0.80
    assert "| 3.00 -> 2.00 | 0.75 | 1.00 -> 0.62 (0.80) |" in page
    assert "timed side by side in one session (test CPU, 2026-12-01 01:00 UTC, load average 1.0" in page


import speedup_table  # noqa: E402


def test_speedup_table_renders_speedup_efficiency_and_macs_removed():
    def row(variant, ms, macs_removed, **extra):
        speed = 10.0 / ms
        return {"model": "mobilenet_v2", "target": "macs=0.5", "device": "cpu", "runtime": "onnxruntime", "variant": variant,
                "median_ms": ms, "spread": 0.02, "speedup": speed, "efficiency": speed * (1 - macs_removed),
                "macs_removed": macs_removed, **extra}
    results = {"machine": {"cpu_threads": 1, "torch": "2.14.1", "load_average_start": [1.0], "load_average_end": [1.5]},
               "rows": [row("dense", 10.0, 0.0), row("prunekit", 5.0, 0.5, round_to={"value": 4}),
                        row("latency-onnxruntime", 5.0, 0.6, latency_search={"warning": "latency target 0.5 overshot"})]}
    page = speedup_table.render(results)
    assert "| mobilenet_v2 (224) | `macs=0.5` | ONNX Runtime | 10.00 (2 %) | - | 2.00x (1.00), round_to 4 |" in page
    assert "2.00x (0.80), 60 % of MACs (warned) |" in page and "load average 1.00 at the start" in page


def test_study_page_matches_the_study_record():
    import study_record

    assert study_record.main(["--check", str(REPO / "results" / "pvs")]) == 0, (
        "docs/pretrained-vs-scratch.md is stale: run python benchmarks/study_record.py results/pvs")


def test_study_page_check_fails_on_a_changed_record(tmp_path):
    import shutil

    import study_record

    record = tmp_path / "pvs"
    shutil.copytree(REPO / "results" / "pvs", record)
    page = tmp_path / "page.md"
    page.write_text("intro\n", encoding="utf-8")
    assert study_record.main(["--page", str(page), str(record)]) == 0  # appends the generated part
    text = page.read_text(encoding="utf-8")
    assert text.startswith("intro\n") and study_record.BEGIN in text and "48/48" not in text
    metrics = json.loads((record / "cifar10-scratch-dense" / "metrics.json").read_text())
    assert f"| {metrics['final']['top1']:.2f} |" in text
    metrics["final"]["top1"] = 12.34
    (record / "cifar10-scratch-dense" / "metrics.json").write_text(json.dumps(metrics))
    assert study_record.main(["--check", "--page", str(page), str(record)]) == 1


def _row(method, target, before, after, params_removed, macs_removed, minutes=10):
    m = _record(before, 1.0, after, 1.0 - macs_removed)
    m.update(method=method, target=target, wall_time_s={"total": minutes * 60})
    m["achieved"]["params"] = params_removed
    return m


def test_targets_section_judges_each_target_from_the_records():
    import results_targets

    records = {
        "resnet20-l1_filter-macs0.5": _row("l1_filter", "macs=0.5", 88.0, 87.2, 0.45, 0.5),   # -0.8
        "resnet20-slimming-macs0.5": _row("slimming", "macs=0.5", 88.0, 86.0, 0.40, 0.5),
        "resnet20-tp_group_l2-macs0.5": _row("tp_group_l2", "macs=0.5", 88.0, 86.7, 0.45, 0.5),  # best is +0.50 above it
        "resnet20-random-macs0.5": _row("random", "macs=0.5", 88.0, 86.5, 0.45, 0.5),
        "resnet20-sfp-channels0.3": _row("sfp", "channels=0.3", 88.0, 86.0, 0.51, 0.5),          # -2.0: missed
        "resnet20-svd-channel-params0.5": _row("svd", "params=0.5", 88.0, 87.0, 0.50, 0.4),      # -1.0 at 50 %: met
        "resnet20-autorate-drop1": _row("autorate", "accuracy_drop=1", 88.0, 87.5, 0.30, 0.3, minutes=41),
    }
    records["resnet20-svd-channel-params0.5"]["resumed_at"] = ["2026-12-04T05:24:46+00:00"]
    text = "\n".join(results_targets.targets_section(records))
    assert "1 recorded run(s) were killed part-way and resumed" in text and "resumed_at" in text
    assert "`resnet20-l1_filter-macs0.5`, lost 0.80 points (50.0 % of MACs removed). Within 1.0 point: **met**" in text
    assert "+0.50 points of top-1. At least +0.3: **met**" in text
    assert "at or below it: `resnet20-sfp-channels0.3`, `resnet20-slimming-macs0.5`." in text
    assert "`sfp` >= 50 % of parameters removed at <= 1.5 points: **missed** (`resnet20-sfp-channels0.3` 51.0 % removed, lost 2.00 points)" in text
    assert "`svd` >= 50 % of parameters removed at <= 1.5 points: **met**" in text
    assert "within its accuracy_drop (1 points): **missed** (`resnet20-autorate-drop1`: 30.0 % removed, lost 0.50 points)" in text
    assert "**missed** (longest `resnet20-autorate-drop1`, 41 min" in text
    records["resnet20-l1_filter-macs0.5"] = _row("l1_filter", "macs=0.5", 88.0, 86.8, 0.45, 0.5)  # now below tp
    text = "\n".join(results_targets.targets_section(records))
    assert "Within 1.0 point: **missed**" in text and "+0.10 points of top-1. At least +0.3: **missed**" in text
    assert "not yet measured" not in text
    assert "not yet measured" in "\n".join(results_targets.targets_section({}))


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors of a markdown page: lower case, punctuation but '-' dropped, spaces to '-'."""
    import re

    heads = [line.lstrip("#").strip() for line in page.read_text(encoding="utf-8").splitlines() if line.startswith("#")]
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in heads}


def test_readme_method_table_links_every_method_to_its_results():
    import re

    import prunekit.methods  # noqa: F401  (registers the methods)
    from prunekit.methods.base import METHODS, list_methods

    rows = {line.split("`")[1]: line for line in (REPO / "README.md").read_text(encoding="utf-8").splitlines()
            if line.startswith("| `")}
    # only the methods prunekit ships: other tests register their own (e.g. a recorder) in the same registry
    shipped = [name for name in list_methods() if METHODS.get(name).__module__.startswith("prunekit.")]
    assert len(shipped) >= 10, shipped
    for name in shipped:
        assert name in rows, f"README's method table has no row for {name}"
        last_cell = re.split(r"(?<!\\)\|", rows[name].rstrip(" |"))[-1]
        links = re.findall(r"\]\((docs/[^)#]+)#([^)]+)\)", last_cell)
        assert links, f"README: {name}'s row links to no results section"
        for doc, anchor in links:
            assert anchor in _anchors(REPO / doc), f"README: {name} links to {doc}#{anchor}, no such heading"


def test_shortfall_explains_a_missed_target_with_the_records_numbers():
    import results_targets

    def conv(name, before, after):
        return {"name": name, "kind": "Conv2d", "out_channels_before": before, "out_channels_after": after}

    best = _row("snip_channel", "macs=0.5", 88.0, 86.0, 0.30, 0.5)                       # lost 2.00
    best["layers"] = [conv("conv1", 16, 16), conv("layer1.0.conv1", 16, 10), conv("layer1.0.conv2", 16, 10),
                      conv("layer3.0.conv1", 64, 60), conv("layer3.0.conv2", 64, 60)]
    records = {"resnet20-snip_channel-macs0.5": best, "resnet20-l1_filter-macs0.5": _row("l1_filter", "macs=0.5", 88.0, 84.0, 0.52, 0.5)}
    text = "\n".join(results_targets.shortfall(records))
    assert "**Budget.** Every row gets 3 epochs" in text
    assert "`l1_filter-macs0.5` 52.0 % (lost 4.00 points), `snip_channel-macs0.5` 30.0 % (lost 2.00 points)" in text
    assert "removes 38 % of the conv channels of `layer1`" in text and "6 % of `layer3`" in text  # 12/32 and 8/128
    assert "Measured (the budget study" not in text
    svd = {"resnet20-svd-spatial-params0.5": _row("svd", "params=0.5", 88.0, 86.0, 0.501, 0.5)}
    assert results_targets._at_longer_budget({**svd, "budget9-resnet20-svd-spatial-params0.5": _row(
        "svd", "params=0.5", 88.0, 87.0, 0.501, 0.5)}, svd) == (
        " With a longer fine-tune: `resnet20-svd-spatial-params0.5` at 9 epochs (the budget study): 50.1 % removed, "
        "lost 1.00 points, **met**.")
    assert results_targets._at_longer_budget(svd, svd) == ""
    records["budget9-resnet20-snip_channel-macs0.5"] = _row("snip_channel", "macs=0.5", 88.0, 86.75, 0.30, 0.5)
    records["budget9-resnet20-dense"] = _row("none", None, 88.0, 89.0, 0.0, 0.0)
    text = "\n".join(results_targets.shortfall(records))
    assert ("with 9 epochs `resnet20-snip_channel-macs0.5` loses 1.25 points, 0.75 of its 2.00 won back; the dense network "
            "gains 1.00 points from the same epochs, so the pruned row ends 2.25 points behind it.") in text
    records["resnet20-snip_channel-macs0.5"] = _row("snip_channel", "macs=0.5", 88.0, 87.5, 0.30, 0.5)
    assert results_targets.shortfall(records) == []  # within a point: nothing to explain


def test_autorate_miss_names_its_search_from_the_record():
    import results_targets

    row = _row("autorate", "accuracy_drop=1", 88.0, 88.1, 0.0, 0.0)
    row["baseline"]["params"] = 1000
    row["method_info"] = {
        "baseline_top1": 88.0, "epochs": 5, "stopped": "rounds", "config": {"epochs_per_round": 3, "acc_control": 1.0},
        "rounds": [
            {"round": 1, "accepted": False, "top1": [60.0, 70.0], "params": 500},
            {"round": 2, "accepted": False, "top1": [], "note": "same candidate as round 1"},
            {"round": 3, "accepted": True, "top1": [87.5], "params": 900},
            {"round": 4, "accepted": False, "top1": [85.0, 86.5], "params": 800},
        ],
    }
    text = "\n".join(results_targets.targets_section({"resnet20-autorate-drop1": row}))
    assert "**missed**" in text
    assert "4 rounds, 3 candidates retrained (up to 3 retraining pass(es) each, 5 in all" in text
    assert "1 accepted, the last at 10.0 % of the parameters removed" in text
    assert "closest rejected candidate (20.0 % of the parameters removed) reached 86.50 % where more than 87.00 % was needed" in text


def test_a_resnet56_row_over_the_run_limit_is_estimated_from_the_records():
    import results_table

    b20, b56 = _record(88.0, 1.0, 88.0, 1.0), _record(90.0, 3.0, 90.0, 3.0)  # 3x the MACs
    twin = _row("autorate", "accuracy_drop=1", 88.0, 88.0, 0.2, 0.2)
    twin["wall_time_s"] = {"baseline": 30, "method0": 600, "finetune0": 700, "final": 30, "total": 1360}
    r56 = _row("l1_filter", "macs=0.5", 90.0, 89.0, 0.5, 0.5)
    r56["wall_time_s"] = {"baseline": 60, "method0": 10, "finetune0": 1080, "final": 60, "total": 1210}
    records = {"resnet20-baseline": b20, "resnet56-baseline": b56, "resnet20-autorate-drop1": twin, "resnet56-l1_filter-macs0.5": r56}
    why = results_table.over_budget("resnet56-autorate-drop1", records)
    # 10 min x 3.0 = 30 min of search + 20 min of fine-tuning and evaluation
    assert why.startswith("estimated 50 min from the records, over the 30-minute limit per run")
    assert "(10 min) x 3.0 (ResNet-56 / ResNet-20 MACs) = 30 min, plus 20 min" in why
    twin["wall_time_s"]["method0"] = 60  # 3 + 20 min: within the limit, so it is simply not yet run
    assert results_table.over_budget("resnet56-autorate-drop1", records) is None
    assert results_table.over_budget("resnet56-sfp-channels0.3", records) is None  # no ResNet-20 twin recorded
    page = results_table.render({**records, "resnet20-autorate-drop1": {**twin, "wall_time_s": {**twin["wall_time_s"], "method0": 600}}},
                                ["resnet56-baseline", "resnet56-l1_filter-macs0.5", "resnet56-autorate-drop1"], None)
    assert "Not run: `resnet56-autorate-drop1`, estimated 50 min" in page


def test_saliency_note_tabulates_the_record_beside_the_rows():
    import results_saliency

    crit = lambda l1, overlap, top1: {"zeroed": 100, "l1_removed": l1, "overlap_with_magnitude": overlap, "top1_pruned": top1}
    saliency = {"images": 2000, "machine": "x86_64, 2 CPUs", "threads": 1, "started_at": "2026-12-04T09:50:00+00:00",
                "dense_top1": 88.0, "criteria": {"magnitude": {"0.5": crit(0.16, 1.0, 87.9)}, "grasp": {"0.5": crit(0.51, 0.49, 10.0)}}}
    records = {"resnet20-grasp-sparsity0.5": _row("grasp", "sparsity=0.5", 88.0, 45.0, 0.0, 0.0)}
    text = "\n".join(results_saliency.saliency_note(saliency, records))
    assert "| magnitude | 0.5 | 16.0 % | 100.0 % | 87.90 | not recorded |" in text
    assert "| grasp | 0.5 | 51.0 % | 49.0 % | 10.00 | 45.00 |" in text
    assert "GraSP zeroes 51.0 % of the weights' L1 mass where magnitude pruning zeroes 16.0 %, and 49.0 %" in text
    assert "2,000 test images (200 per class)" in text
    saliency["criteria"]["grasp"]["0.5"]["overlap_with_magnitude"] = 0.9  # then the sentence would not hold: left out
    assert "GraSP zeroes" not in "\n".join(results_saliency.saliency_note(saliency, records))
    assert results_saliency.saliency_note(None, records) == []


def test_sfp_rows_are_explained_from_their_per_epoch_logs(tmp_path, monkeypatch):
    import json

    import results_table
    import results_targets

    monkeypatch.setattr(results_table, "RECORDS", tmp_path)
    rows = {}
    for stem, zero_norm, vals in (("resnet20-sfp-channels0.3", True, (12.7, 51.4)), ("resnet20-sfp-filters-only-channels0.3", False, (12.3, 10.0))):
        (tmp_path / stem).mkdir()
        (tmp_path / stem / "recipe.yaml").write_text(f"method:\n  name: sfp\n  options:\n    zero_norm: {str(zero_norm).lower()}\n")
        log = [{"stage": "method0", "epoch": i, "val_top1": v, "train_top1": 90.0 - 10 * i} for i, v in enumerate(vals)]
        log += [{"event": "stage", "stage": "method0", "status": "done"}, {"stage": "finetune0", "epoch": 0, "val_top1": 70.0, "train_top1": 60.0}]
        (tmp_path / stem / "log.jsonl").write_text("\n".join(json.dumps(e) for e in log) + "\n")
        rows[stem] = _row("sfp", "channels=0.3", 88.0, 80.0 if zero_norm else 70.0, 0.51, 0.52)
    text = "\n".join(results_targets.targets_section(rows))
    assert "`resnet20-sfp-channels0.3` (whole groups zeroed): SFP zeroes after each epoch" in text
    assert "right after each zeroing 12.30, 10.00 % (training top-1 during those epochs 90.0, 80.0 %); 1 fine-tuning epoch(s)" in text
    assert "after the last zeroing it scored 10.00 % against 51.40 % with whole groups zeroed" in text
    (tmp_path / "resnet20-sfp-channels0.3" / "log.jsonl").unlink()  # a record without its log: no epoch line, no comparison
    text = "\n".join(results_targets.targets_section(rows))
    assert "(whole groups zeroed)" not in text and "after the last zeroing" not in text


def test_resnet56_rows_are_set_beside_the_literature():
    import results_targets

    rows = {"resnet56-l1_filter-macs0.5": _row("l1_filter", "macs=0.5", 89.0, 87.5, 0.48, 0.5),
            "resnet56-baseline": _row("dense", "-", 89.0, 89.0, 0.0, 0.0)}
    text = "\n".join(results_targets.targets_section(rows))
    assert "- ResNet-56 here (2 epochs after its baseline): `resnet56-l1_filter-macs0.5` lost 1.50 points with 50.0 % of the MACs" in text
    assert "resnet56-baseline`" not in text
    assert "ResNet-56 here" not in "\n".join(results_targets.targets_section({}))


def test_budget_study_sets_each_longer_run_beside_its_row_and_the_dense_control():
    import results_budget
    from results_budget import budget_section

    def run(before, after, params_removed=0.5, target="macs=0.5"):
        return {**_record(before, 1.0, after, 0.5), "target": target, "achieved": {"params": params_removed, "macs": 0.5}}

    records = {"resnet20-snip_channel-macs0.5": run(88.0, 85.5), "budget9-resnet20-snip_channel-macs0.5": run(88.0, 87.25),
               "resnet20-tp_group_l2-macs0.5": run(88.0, 84.0), "budget9-resnet20-tp_group_l2-macs0.5": run(88.0, 86.0),
               "budget9-resnet20-svd-spatial-params0.5": run(88.0, 86.75, 0.501, "params=0.5"),
               "budget9-resnet20-dense": {**run(88.0, 89.5, 0.0), "target": None}}
    logs = {"budget9-resnet20-svd-spatial-params0.5": {"finetune0": [{"val_top1": 86.0}, {"val_top1": 86.75}],
                                                       "method0": [{"val_top1": 84.04}]}}
    stems = [*records, "budget9-resnet20-sfp-channels0.3"]
    text = "\n".join(budget_section(records, stems, lambda s: logs.get(s, {})))
    # 3 epochs lost 2.50, 9 lost 0.75: 1.75 won back, 2.25 behind the dense network's 89.50
    assert "| [resnet20-snip_channel-macs0.5](../recipes/results/budget9-resnet20-snip_channel-macs0.5.yaml) | macs=0.5 | 88.00 | " \
           "85.50 (+2.50) | 87.25 (+0.75) | +1.75 | 89.50 | 2.25 | - | 10 |" in text
    assert "| dense, no method (the control) | - | 88.00 | - | 89.50 (-1.50) | - | 89.50 | - |" in text
    assert "| 84.0, 86.0, 86.8 |" in text  # the hook epoch first, then the fine-tuning
    assert "`resnet20-snip_channel-macs0.5`, loses 0.75 points: within 1.0 point **met**" in text
    assert "is +1.25 points ahead of it: at least +0.3 **met**" in text
    assert "50.1 % of the parameters removed at 1.25 points lost: >= 50 % at <= 1.5 points **met**" in text
    assert "gains 1.50 points from 9 more epochs (88.00 -> 89.50 %)" in text
    assert "Not yet run: `budget9-resnet20-sfp-channels0.3`." in text
    assert "](img/results-budget.png)" in text
    png = results_budget.budget_figure(records, stems, lambda s: logs.get(s, {}))
    assert png.startswith(b"\x89PNG")
    assert results_budget.budget_figure(records, ["resnet20-snip_channel-macs0.5"], lambda s: {}) is None
    # a miss is called a miss
    records["budget9-resnet20-snip_channel-macs0.5"] = run(88.0, 86.5)
    assert "loses 1.50 points: within 1.0 point **missed**" in "\n".join(budget_section(records, stems))
    assert budget_section(records, ["resnet20-snip_channel-macs0.5"]) == []


def test_double_rows_timing_note_counts_channels_off_the_block_and_names_the_slow_rows():
    from results_ort import double_latency_note

    layers = [{"kind": "Conv2d", "out_channels_after": c} for c in (16, 15, 24, 1)] + [{"kind": "Linear", "out_channels_after": 10}]
    records = {"mobilenet_v2-double-macs0.5-sparsity0.5": {"layers": layers, "baseline": {"macs": 100}, "final": {"macs": 50}},
               "mobilenet_v2-double-macs0.5-sparsity0.5-round8": {"layers": layers[:1] + layers[2:3]}}
    ms = lambda e, o: {"eager": {"median": e}, "onnxruntime": {"median": o}}
    latency = {"latency_ms": {"mobilenet_v2-baseline": ms(6.0, 0.8), "mobilenet_v2-double-macs0.5-sparsity0.5": ms(4.0, 1.6),
                              "mobilenet_v2-double-macs0.5-sparsity0.5-round8": ms(4.0, 0.4)}}
    timing = {"machine": "x86_64 test CPU, 2 cores", "measured_at": "2026-12-04T13:00:00+00:00", "rounds": 5, "per_round": 20,
              "latency_ms": {"dense": ms(3.0, 1.0), "round_to=1": ms(2.0, 2.0), "round_to=8": ms(2.0, 0.5)}}
    channels = {"method": "l1_filter", "target": "macs=0.5", "models": {"mobilenet_v2": {"timing": timing, "variants": {
        "dense": {"macs": 100}, "round_to=1": {"macs": 50}, "round_to=8": {"macs": 48}}}}}
    text = "\n".join(double_latency_note(records, latency, channels))
    # half the MACs: 1.5x eager is 0.75 per MAC removed; a record without MACs shows the speedup alone
    assert ("| `mobilenet_v2-double-macs0.5-sparsity0.5` | 2 of 4 | 6.00 -> 4.00 (1.50x, 0.75 per MAC removed) | "
            "0.80 -> 1.60 (0.50x, 0.25 per MAC removed) |") in text
    assert "| `mobilenet_v2-double-macs0.5-sparsity0.5-round8` | 0 of 2 | 6.00 -> 4.00 (1.50x) | 0.80 -> 0.40 (2.00x) |" in text
    assert "| mobilenet_v2 | ONNX Runtime | 1.00 | 2.00 (50 %) | 0.50 (52 %) |" in text
    assert "Rows slower than their baseline on ONNX Runtime: `mobilenet_v2-double-macs0.5-sparsity0.5` (2 convs off 8)." in text
    assert double_latency_note(records, None, channels) == []


def test_a_models_rounded_double_row_shares_its_baseline_line_and_names_its_rounding():
    base = _counts(60.0, 1.5e6, 1.5e6, 5.5e6, 5.5e6)
    slim = {"index": 0, "method": "slimming", "target": "macs=0.5", **_counts(55.0, 0.8e6, 0.8e6, 2.7e6, 2.7e6)}
    row = lambda rounded: {"status": "complete", "method": "double", "baseline": base, "stages": [slim], "final": {**base, **slim},
                           "method_info": {"stages": [{"round_to": {"value": rounded}}]}}
    stem = "mobilenet_v3_small-double-macs0.5-sparsity0.5"
    page = results_table.render({stem: row(None), f"{stem}-round8": row(8)}, [stem, f"{stem}-round8"])
    assert page.count("| MobileNetV3-small (32x32 stem) | baseline") == 1
    assert "| MobileNetV3-small (32x32 stem) | after slimming | macs=0.5 |" in page
    assert "| MobileNetV3-small (32x32 stem) | after slimming, channels kept multiples of 8 | macs=0.5 |" in page


def test_double_comparison_names_the_best_netscore_and_what_mobilenet_v3_would_score_at_its_top1():
    import results_targets

    final = lambda top1, ns: {"top1": top1, "netscore_nonzero": ns, "netscore": ns - 5}
    records = {"resnet20-double-macs0.5-sparsity0.5": {"baseline": {"top1": 88.0}, "final": final(80.0, 107.0)},
               "mobilenet_v3_small-double-macs0.5-sparsity0.5": {
                   "baseline": {"top1": 58.0}, "final": final(40.0, 96.0),
                   "stages": [{"method": "slimming", "top1": 34.0}, {"method": "magnitude", "top1": 40.0}]}}
    text = "\n".join(results_targets._double_comparison(records))
    # 96 + 40 log10(80 / 40) = 108.04 dB > 107: the gap is top-1
    assert "`resnet20-double-macs0.5-sparsity0.5` (ResNet-20, 107.00 dB with non-zero counts, 102.00 dense)" in text
    assert "slimming leaves 34.00 %; with ResNet-20's 80.00 % its counts would score 108.04 dB." in text
    assert "The gap is top-1" in text
    records["mobilenet_v3_small-double-macs0.5-sparsity0.5"]["final"] = final(40.0, 90.0)  # 102.04 < 107: no such claim
    assert "The gap is top-1" not in "\n".join(results_targets._double_comparison(records))
    records["mobilenet_v3_small-double-macs0.5-sparsity0.5"]["final"] = final(80.0, 110.0)
    assert "MobileNetV3 scores best, as in the Inha seed." in "\n".join(results_targets._double_comparison(records))


def test_rounded_pairs_note_sets_a_rounded_double_row_beside_its_twin():
    from results_ort import rounded_pairs_note

    conv = lambda c: {"kind": "Conv2d", "out_channels_after": c}
    row = lambda widths, slim, final: {"layers": [conv(c) for c in widths], "final": {"top1": final},
                                       "stages": [{"method": "slimming", "top1": slim}, {"method": "magnitude", "top1": final}]}
    stem = "mobilenet_v2-double-macs0.5-sparsity0.5"
    records = {stem: row([16, 1, 24], 30.0, 35.5), f"{stem}-round8": row([16, 8, 24], 50.0, 52.25)}
    text = "\n".join(rounded_pairs_note(records))
    assert (f"- `{stem}` and its `-round8` twin: the narrowest conv keeps 1 against 8 channels (round_to is also the fewest "
            "a layer keeps); top-1 after slimming 30.00 % against 50.00 %, after both stages 35.50 % against 52.25 %.") in text
    assert rounded_pairs_note({f"{stem}-round8": records[f"{stem}-round8"]}) == []  # no twin, no line
