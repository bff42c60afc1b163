"""`prunekit run` on a detector end to end: SNIP with and without the SSH context modules on a tiny
synthetic WIDER FACE folder, AP in metrics.json, the dense-vs-pruned picture in report.md."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from torchvision.io import encode_jpeg

from prunekit.cli.main import main


def _wider_folder(root: Path, images: int = 6) -> Path:
    """A val-only WIDER FACE folder: `images` 96x96 noise images over two events, two faces each."""
    lines = []
    gen = torch.Generator().manual_seed(0)
    for i in range(images):
        rel = f"{i % 2}--Ev{i % 2}/img_{i}.jpg"
        lines += [rel, "2", "10 12 30 34 0 0 0 0 0 0", "50 40 36 40 0 0 0 0 0 0"]
        p = root / "WIDER_val" / "images" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():  # torchvision 0.29's notice that its codecs move to torchcodec
            warnings.simplefilter("ignore", DeprecationWarning)
            blob = encode_jpeg(torch.randint(0, 255, (3, 96, 96), dtype=torch.uint8, generator=gen))
        p.write_bytes(blob.numpy().tobytes())
    (root / "wider_face_split").mkdir(parents=True)
    (root / "wider_face_split" / "wider_face_val_bbx_gt.txt").write_text("\n".join(lines) + "\n")
    return root


def _recipe(tmp_path: Path, ignore: list[str], sparsity: float) -> Path:
    recipe = {
        "name": "tiny-retinaface", "device": "cpu", "threads": 1, "seed": 0,
        "task": {"name": "detection", "options": {"report_images": 2}},
        "data": {"name": "widerface", "root": str(tmp_path / "wider"), "batch_size": 2,
                 "options": {"split_val": 0.5, "train_size": 64}},
        "model": {"name": "retinaface_mnet025"},
        "baseline": {"train": {"epochs": 0}},
        "method": {"name": "snip", "target": f"sparsity={sparsity}", "data_batches": 1,
                   "ignore": ["ClassHead.*", "BboxHead.*", "LandmarkHead.*", *ignore]},
        "finetune": {"epochs": 1, "lr": 1e-3},
        "eval": {"latency_repeats": 1},
    }
    path = tmp_path / f"snip{len(ignore)}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture(scope="module")
def wider(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("det")
    _wider_folder(tmp / "wider")
    return tmp


@pytest.mark.parametrize("ignore", [[], ["ssh*"]], ids=["every-layer", "ssh-excluded"])
def test_snip_on_retinaface_through_prunekit_run(wider, ignore):
    out = wider / f"run{len(ignore)}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no .mat keep lists in the synthetic folder: said once, by design
        assert main(["run", str(_recipe(wider, ignore, 0.5)), "--out", str(out), "--quiet"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["status"] == "complete" and m["task"]["name"] == "detection"
    for key in ("ap_easy", "ap_medium", "ap_hard"):
        assert 0.0 <= m["final"][key] <= 1.0 and 0.0 <= m["baseline"][key] <= 1.0
    assert m["final"]["images"] == 2  # per event, images 1 of 0..2 held out (split_val 0.5)
    # SNIP zeroes half of the prunable weights; the heads (and the SSH modules when excluded) stay dense
    zeroed = 1.0 - m["final"]["nonzero_params"] / m["final"]["params"]
    assert zeroed > 0.3
    ssh_rows = [r for r in m["layers"] if r["name"].startswith("ssh")]
    assert ssh_rows
    ssh_sparse = [r for r in ssh_rows if (r.get("sparsity_after") or 0) > 0]
    assert (not ssh_sparse) if ignore else ssh_sparse
    head_rows = [r for r in m["layers"] if r["name"].split(".")[0] in ("ClassHead", "BboxHead", "LandmarkHead")]
    assert head_rows and all(not r.get("sparsity_after") for r in head_rows)
    report = (out / "report.md").read_text()
    assert "(detections.png)" in report
    png = (out / "detections.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_snip_channel_prunes_a_detector_whose_landmark_head_gets_no_gradient(wider):
    # WIDER FACE's box files carry no landmarks, so the landmark head is outside the loss; its
    # channels' sensitivity is zero (it used to stop Torch-Pruning's Taylor score with a None grad)
    recipe = yaml.safe_load(_recipe(wider, [], 0.5).read_text())
    recipe["method"] = {"name": "snip_channel", "target": "params=0.5", "data_batches": 1}
    path = wider / "snip-channel.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = wider / "run-channel"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["run", str(path), "--out", str(out), "--quiet"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["achieved"]["params"] == pytest.approx(0.5, abs=0.02)  # channels really removed
    assert m["final"]["macs"] < m["baseline"]["macs"]


def test_report_images_option_is_checked():
    from prunekit import UserError, tasks

    with pytest.raises(UserError, match="report_images"):
        tasks.create("detection", report_images=-1)
    assert tasks.create("detection", report_images=0).report_pictures(
        dense=None, pruned=None, loader=None, run_dir=".") == []


def test_a_widerface_recipe_without_a_task_is_judged_as_detection(wider):
    from prunekit.recipe import load_recipe

    recipe = yaml.safe_load(_recipe(wider, [], 0.5).read_text())
    recipe.pop("task")
    path = wider / "no-task.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert load_recipe(path).task.name == "detection"
    recipe["data"] = {"name": "synthetic"}
    path.write_text(yaml.safe_dump(recipe))
    assert load_recipe(path).task.name == "classification"


def test_evaluate_a_detector_on_widerface_needs_no_task_flag(capsys):
    import os

    root = Path(os.environ.get("PRUNEKIT_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
    weights = root.parent / "weights" / "retinaface-mnet025-biubug6.pth"
    if not (root / "widerface-val200").is_dir() or not weights.is_file():
        pytest.skip("widerface-val200 or the RetinaFace checkpoint not found")
    assert main(["evaluate", "retinaface_mnet025", "--weights", str(weights), "--data", "widerface",
                 "--data-root", str(root), "--max-batches", "5", "--threads", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["task"] == "detection" and out["metrics"]["images"] == 5 and out["params"] == 426608
    # the first 5 val images, as docs/detection.md states them
    m = out["metrics"]
    assert (round(m["ap_easy"], 3), round(m["ap_medium"], 3), round(m["ap_hard"], 3)) == (1.0, 0.628, 0.255)
