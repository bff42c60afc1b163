"""The compact markdown table of a `benchmarks/speedup.py --out FILE.json` run, for the docs.

One row per model, MACs target and runtime; each variant's speedup over the dense model and, in
brackets, its efficiency (speedup / MACs ratio); latency and time variants also say how much of
the MACs they removed.

    python benchmarks/speedup_table.py results/speedup-2026-12-02.json
"""

from __future__ import annotations

import json
import sys
from typing import Any

COLUMNS = ("tp-default", "prunekit", "unrounded", "time-eager", "time-onnxruntime", "latency-eager", "latency-onnxruntime")
SIZES = {"resnet18": "32x32", "resnet50": "224", "mobilenet_v2": "224"}
RUNTIME_NAMES = {"eager": "eager", "onnxruntime": "ONNX Runtime", "compile": "torch.compile"}


def cell(row: dict[str, Any] | None) -> str:
    """Return "1.93x (0.97)" for a variant's row, with its MACs removed for time and latency variants."""
    if row is None:
        return "-"
    text = f"{row['speedup']:.2f}x ({row['efficiency']:.2f})"
    if row["variant"].startswith(("latency-", "time-")):
        text += f", {100 * row['macs_removed']:.0f} % of MACs"
        search = row.get("latency_search") or {}
        if search.get("warning"):
            text += " (warned)"
    if row["variant"] == "prunekit" and (row.get("round_to") or {}).get("value"):
        text += f", round_to {row['round_to']['value']}"
    return text


def render(results: dict[str, Any]) -> str:
    """Return the markdown table of `results` (speedup.py's JSON)."""
    rows = results["rows"]
    keys = []
    for r in rows:
        key = (r["model"], r["target"], r["device"], r["runtime"])
        if key not in keys:
            keys.append(key)
    lines = ["| model | target | runtime | dense ms (spread) | " + " | ".join(COLUMNS) + " |",
             "|---|---|---|---|" + "---|" * len(COLUMNS)]
    for model, target, device, runtime in keys:
        group = {r["variant"]: r for r in rows if (r["model"], r["target"], r["device"], r["runtime"]) == (model, target, device, runtime)}
        dense = group.get("dense")
        dense_text = f"{dense['median_ms']:.2f} ({100 * dense['spread']:.0f} %)" if dense else "-"
        where = RUNTIME_NAMES.get(runtime, runtime) + ("" if device == "cpu" else f" ({device})")
        lines.append(f"| {model} ({SIZES.get(model, '?')}) | `{target}` | {where} | {dense_text} | "
                     + " | ".join(cell(group.get(c)) for c in COLUMNS) + " |")
    m = results.get("machine", {})
    lines.append("")
    lines.append(f"(speedup over dense, (efficiency = speedup / MACs ratio); {m.get('cpu_threads')} CPU thread(s), torch "
                 f"{m.get('torch')}, load average {m.get('load_average_start', ['?'])[0]:.2f} at the start and "
                 f"{m.get('load_average_end', ['?'])[0]:.2f} at the end.)")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[-1].strip())
        return 2
    with open(argv[0], encoding="utf-8") as fh:
        print(render(json.load(fh)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
