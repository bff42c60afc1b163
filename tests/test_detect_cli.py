"""`prunekit detect` and the dense-beside-pruned picture."""

import json
import warnings

import torch
from torchvision.io import encode_jpeg

from prunekit import io, models
from prunekit.cli.main import main
from prunekit.detection_plots import dense_vs_pruned


def _jpeg(path, h=96, w=128):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        path.write_bytes(encode_jpeg(torch.randint(0, 255, (3, h, w), dtype=torch.uint8)).numpy().tobytes())
    return path


def test_detect_writes_png_and_json(tmp_path, capsys):
    torch.manual_seed(0)
    model = models.create("retinaface_mnet025")
    saved = tmp_path / "rf.pt"
    io.save(model, saved)
    img = _jpeg(tmp_path / "a.jpg")
    rc = main(["detect", str(saved), str(img), str(_jpeg(tmp_path / "b.jpg", 70, 50)), "--out", str(tmp_path / "out"), "--score", "0.0", "--threads", "1"])
    assert rc == 0
    listing = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert [e["image"] for e in listing["images"]] == [str(img), str(tmp_path / "b.jpg")]
    first = listing["images"][0]
    assert first["width"] == 128 and len(first["boxes"]) == len(first["scores"]) == len(first["landmarks"])
    assert (tmp_path / "out" / "a.png").stat().st_size > 0 and (tmp_path / "out" / "b.png").exists()


def test_detect_missing_image_is_one_line_error(tmp_path, capsys):
    assert main(["detect", "retinaface_mnet025", str(tmp_path / "nope.jpg"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "nope.jpg: no such image" in err and err.count("\n") == 1


def test_dense_vs_pruned_picture(tmp_path):
    torch.manual_seed(0)
    a, b = models.create("retinaface_mnet025"), models.create("retinaface_mnet025")
    path = dense_vs_pruned(a, b, [_jpeg(tmp_path / "a.jpg"), _jpeg(tmp_path / "b.jpg")], tmp_path / "pics" / "d.png", score=0.5)
    assert path.exists() and path.stat().st_size > 1000
