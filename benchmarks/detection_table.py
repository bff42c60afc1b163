"""The RetinaFace pruning experiment of docs/detection.md: collect the arms' records, time them at
640x480, and write the measured table into the page.

Each arm is `prunekit run recipes/retinaface-STEM-quick.yaml --data-root ../shared/data --out
runs/detection/retinaface-STEM-quick` (one after another; see ARMS). Then:

    python benchmarks/detection_table.py --collect    # copy complete runs' metrics.json + recipe.yaml
                                                      # (no model files) to results/detection/STEM/
    python benchmarks/detection_table.py --latency    # time the dense checkpoint and every arm's
                                                      # model.pt at 640x480, 1 thread, batch 1, eager and
                                                      # ONNX Runtime, interleaved; record in results/detection/
    python benchmarks/detection_table.py              # rewrite the table in docs/detection.md
    python benchmarks/detection_table.py --check      # exit 1 when the page disagrees with the records

Every number of the table comes from those committed records (tests/test_results_page.py checks).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RUNS = REPO / "runs" / "detection"
RECORDS = REPO / "results" / "detection"
LATENCY = RECORDS / "latency-640x480.json"
PAGE = REPO / "docs" / "detection.md"
START, END = "<!-- detection-table:start -->", "<!-- detection-table:end -->"
CHECKPOINT = REPO.parent / "shared" / "weights" / "retinaface-mnet025-biubug6.pth"

#: (record stem, arm as the table names it); the order of the table
ARMS = (
    ("retinaface-dense-quick", "dense, fine-tuned (no pruning)"),
    ("retinaface-snip-quick", "SNIP, every layer"),
    ("retinaface-snip-nossh-quick", "SNIP, `ssh*` excluded"),
    ("retinaface-snip-sparsity0.533-quick", "SNIP, every layer, lower total"),
    ("retinaface-snip-nossh-samesparsity-quick", "SNIP, `ssh*` excluded, arm (a)'s sparsity"),
    ("retinaface-magnitude-quick", "global magnitude, every layer"),
    ("retinaface-snip-channel-quick", "snip_channel, every layer"),
    ("retinaface-snip-channel-nossh-quick", "snip_channel, `ssh*` excluded"),
    ("retinaface-random-quick", "random channels, every layer"),
)


def _complete(path: Path) -> dict[str, Any] | None:
    try:
        m = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) and m.get("status") == "complete" else None


def collect() -> list[str]:
    """Copy every complete arm's metrics.json and recipe.yaml to results/detection/STEM/; return the stems."""
    done = []
    for stem, _ in ARMS:
        if _complete(RUNS / stem / "metrics.json") is None:
            continue
        target = RECORDS / stem
        target.mkdir(parents=True, exist_ok=True)
        for name in ("metrics.json", "recipe.yaml"):
            shutil.copy2(RUNS / stem / name, target / name)
        done.append(stem)
    return done


def load_records() -> dict[str, dict[str, Any]]:
    """Return {stem: metrics} of the committed complete arms."""
    return {stem: m for stem, _ in ARMS if (m := _complete(RECORDS / stem / "metrics.json")) is not None}


def measure_latency(*, rounds: int, per_round: int) -> dict[str, Any]:
    """Time the shipped checkpoint and every arm's model.pt at 640x480 (1 thread, batch 1) on eager
    and ONNX Runtime in interleaved rounds; return the record (medians in ms)."""
    import torch

    sys.path.insert(0, str(REPO / "benchmarks"))
    from latency_record import time_models

    from prunekit import io, models

    nets = {"pretrained": models.create("retinaface_mnet025", activation="relu", weights=str(CHECKPOINT))}
    records = load_records()
    for stem, _ in ARMS:
        if (RUNS / stem / "model.pt").exists() and stem in records:
            nets[stem] = io.load(RUNS / stem / "model.pt")
    return time_models(nets, torch.randn(1, 3, 480, 640), rounds=rounds, per_round=per_round)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def _ap(m: dict[str, Any], level: str) -> str:
    return f"{m['baseline'][f'ap_{level}']:.3f} → {m['final'][f'ap_{level}']:.3f}"


def _human(n: float) -> str:
    for unit, size in (("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n:.0f}"


def render(records: dict[str, dict[str, Any]], latency: dict[str, Any] | None) -> str:
    """Return the markdown of the measured table (between the page's markers) for `records`."""
    lines = ["| arm | removed of all params | of the pruned layers | params (non-zero) | MACs (non-zero), 320x320 | "
             "AP easy | AP medium | AP hard | hard drop (points) | hard vs dense fine-tuned | eager ms | ONNX Runtime ms |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    dense = records.get(ARMS[0][0])
    dense_hard = dense["final"]["ap_hard"] if dense else None
    lat = (latency or {}).get("latency_ms", {})

    def ms(key: str, runtime: str) -> str:
        v = lat.get(key, {}).get(runtime)
        return "not timed" if v is None else f"{v['median']:.1f}"

    if records:
        first = next(iter(records.values()))
        b = first["baseline"]
        lines.append(f"| pretrained, before any arm | 0.0 % | - | {_human(b['params'])} | {_human(b['macs'])} | "
                     f"{b['ap_easy']:.3f} | {b['ap_medium']:.3f} | {b['ap_hard']:.3f} | - | - | {ms('pretrained', 'eager')} | "
                     f"{ms('pretrained', 'onnxruntime')} |")
    for stem, arm in ARMS:
        m = records.get(stem)
        if m is None:
            continue
        f, a, info = m["final"], m["achieved"], m.get("method_info") or {}
        of_pruned = (info["zeroed_weights"] / info["masked_weights"]) if info.get("masked_weights") else None
        if of_pruned is None and isinstance(info.get("sparsity"), (int, float)):
            of_pruned = info["sparsity"]  # magnitude: its sparsity of the layers it prunes
        if of_pruned is None and m.get("method_kind") == "structured":
            of_pruned = a.get("channels")  # structured: the fraction of channels removed
        drop = 100 * (m["baseline"]["ap_hard"] - f["ap_hard"])
        vs_dense = "-" if dense_hard is None or stem == ARMS[0][0] else f"{100 * (f['ap_hard'] - dense_hard):+.1f}"
        lines.append(f"| {arm} (`{stem}`) | {_pct(a['nonzero_params'])} | {_pct(of_pruned)}"
                     f"{' of channels' if m.get('method_kind') == 'structured' else ''} | "
                     f"{_human(f['params'])} ({_human(f['nonzero_params'])}) | {_human(f['macs'])} ({_human(f['nonzero_macs'])}) | "
                     f"{_ap(m, 'easy')} | {_ap(m, 'medium')} | {_ap(m, 'hard')} | {-drop:+.1f} | {vs_dense} | "
                     f"{ms(stem, 'eager')} | {ms(stem, 'onnxruntime')} |")
    missing = [stem for stem, _ in ARMS if stem not in records]
    out = "\n".join(lines)
    if missing:
        out += "\n\nNot yet run: " + ", ".join(f"`{s}`" for s in missing) + "."
    if latency:
        out += (f"\n\nLatency: {latency['input']}, batch {latency['batch']}, {latency['threads']} thread, median of "
                f"{latency['rounds']} interleaved rounds x {latency['per_round']} calls, {latency['machine']}, "
                f"{latency['measured_at'][:10]}"
                + (f", load average {latency['load_average'][0]:.1f}" if latency.get("load_average") else "")
                + " (`results/detection/latency-640x480.json`).")
    walls = [m["wall_time_s"]["total"] for m in records.values() if isinstance(m.get("wall_time_s"), dict)]
    if walls:
        out += f" Wall time per arm: {min(walls) / 60:.1f}-{max(walls) / 60:.1f} min."
    return out


def page_text(records: dict[str, dict[str, Any]], latency: dict[str, Any] | None, page: str) -> str:
    """Return `page` with the text between its markers replaced by the rendered table."""
    if START not in page or END not in page:
        raise SystemExit(f"{PAGE}: markers {START} / {END} not found")
    head, rest = page.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{render(records, latency)}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--collect", action="store_true", help="copy complete runs' records to results/detection/")
    p.add_argument("--latency", action="store_true", help="time every arm at 640x480 and record it")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--per-round", type=int, default=5)
    p.add_argument("--check", action="store_true", help="exit 1 when docs/detection.md is stale")
    args = p.parse_args(argv)
    if args.collect:
        print("collected:", ", ".join(collect()) or "nothing complete")
    if args.latency:
        RECORDS.mkdir(parents=True, exist_ok=True)
        from prunekit.atomic import atomic_write_text

        atomic_write_text(LATENCY, json.dumps(measure_latency(rounds=args.rounds, per_round=args.per_round), indent=1) + "\n")
    latency = json.loads(LATENCY.read_text()) if LATENCY.exists() else None
    page = PAGE.read_text()
    new = page_text(load_records(), latency, page)
    if args.check:
        if new != page:
            print(f"{PAGE.relative_to(REPO)} is stale: run python benchmarks/detection_table.py")
            return 1
        return 0
    if new != page:
        PAGE.write_text(new)
        print(f"wrote {PAGE.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
