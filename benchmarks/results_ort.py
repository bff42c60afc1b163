"""docs/results.md's note under the double-pruning table: each double row's dense inference time beside
its baseline's (the side-by-side latency record, results/latency-cifar10.json), how many of its convs
keep channel counts off a multiple of 8 (the row's own record), and the measured cause when a row runs
slower than its baseline on ONNX Runtime (results/ort-channel-counts.json, written by
benchmarks/ort_channel_counts.py)."""

from __future__ import annotations

from typing import Any

from prunekit.report import CHANNEL_BLOCK as BLOCK  # ONNX Runtime's CPU conv kernels step every 8 channels here

RUNTIMES = {"eager": "eager", "onnxruntime": "ONNX Runtime"}


def off_block(m: dict[str, Any], block: int = BLOCK) -> tuple[int, int]:
    """Return (convs whose kept channel count is not a multiple of `block`, convs) from a record's layers."""
    convs = [layer["out_channels_after"] for layer in m.get("layers", []) if layer.get("kind") == "Conv2d"]
    return sum(c % block != 0 for c in convs), len(convs)


def double_latency_note(records: dict[str, dict[str, Any]], latency: dict[str, Any] | None,
                        channels: dict[str, Any] | None) -> list[str]:
    """Return the note's lines ([] without a latency record or a timed double row): a table of the double
    rows' milliseconds (1 thread, batch 1) and, from the `channels` record, the same pruning with and without
    channel counts rounded, timed side by side."""
    from results_table import _pair

    if not latency:
        return []
    rows = []
    for stem in sorted(s for s in records if "-double-" in s):
        pairs = {r: _pair(latency, stem, r) for r in RUNTIMES}
        if not all(pairs.values()):
            continue
        off, convs = off_block(records[stem])
        m = records[stem]
        fewer = m["baseline"]["macs"] / m["final"]["macs"] if m.get("baseline", {}).get("macs") and m.get("final", {}).get("macs") else None
        per_mac = lambda a, b: f", {a / b / fewer:.2f} per MAC removed" if fewer else ""
        cells = " | ".join(f"{a:.2f} -> {b:.2f} ({a / b:.2f}x{per_mac(a, b)})" for a, b in pairs.values())
        rows.append((stem, pairs, off, f"| `{stem}` | {off} of {convs} | {cells} |"))
    if not rows:
        return []
    lines = ["### Inference time of the double rows", "",
             f"Each row's final network beside its baseline, from the side-by-side latency record (1 thread, batch 1, "
             "32x32; speedup and speedup per MAC removed in brackets, (dense ms / row ms) / (dense MACs / row MACs)); the magnitude stage's zeros leave the dense kernels' work unchanged, so this is "
             f"the slim network's time. The second column counts the convs whose kept channel count is not a multiple of "
             f"{BLOCK} (from the row's record).", "",
             f"| row | convs off a multiple of {BLOCK} | eager ms, baseline -> row | ONNX Runtime ms, baseline -> row |",
             "|---|---:|---:|---:|", *(r[3] for r in rows), ""]
    slower = [(stem, off) for stem, pairs, off, _ in rows if pairs["onnxruntime"][1] > pairs["onnxruntime"][0]]
    if channels:
        lines += _channels_table(channels)
    if slower:
        measured = (", and the table above measures what counts off that block cost the same pruning. " if channels
                    else " (`python benchmarks/ort_channel_counts.py` measures what that costs). ")
        lines += ["Rows slower than their baseline on ONNX Runtime: " + ", ".join(
            f"`{stem}` ({off} convs off {BLOCK})" for stem, off in slower) + ". Slimming keeps whatever channel counts "
            f"its global threshold leaves (its `round_to` default is none); ONNX Runtime's CPU convolutions run channels in "
            f"blocks of {BLOCK}{measured}Setting `method.round_to: {BLOCK}` (or `auto`, measured on the runtime named by "
            "`method.options.runtime`) keeps the slim network on the fast kernels.", ""]
    return lines


def _channels_table(channels: dict[str, Any]) -> list[str]:
    """The record of benchmarks/ort_channel_counts.py as a table: ms per runtime for dense and each multiple."""
    timing = next(iter(channels["models"].values()))["timing"]
    variants = list(next(iter(channels["models"].values()))["variants"])
    lines = [f"The same cut measured on its own (`python benchmarks/ort_channel_counts.py`, record "
             f"`results/ort-channel-counts.json`, {timing['machine']}, {timing['measured_at'][:16].replace('T', ' ')} UTC, "
             f"median of {timing['rounds']} interleaved rounds x {timing['per_round']} calls): each model with random weights, "
             f"`{channels['method']}` to {channels['target']} keeping channel counts that are multiples of 1 (any count), "
             f"8 or 16, timed beside the dense model; ms (MACs removed in brackets).", "",
             "| model | runtime | " + " | ".join(variants) + " |", "|---|---|" + "---:|" * len(variants)]
    for name, entry in channels["models"].items():
        v, ms = entry["variants"], entry["timing"]["latency_ms"]
        dense_macs = v["dense"]["macs"]
        for runtime, label in RUNTIMES.items():
            cells = [f"{ms[k][runtime]['median']:.2f}" + ("" if k == "dense" else f" ({100 * (1 - v[k]['macs'] / dense_macs):.0f} %)")
                     for k in variants]
            lines.append(f"| {name} | {label} | " + " | ".join(cells) + " |")
    return lines + [""]


def rounded_pairs_note(records: dict[str, dict[str, Any]]) -> list[str]:
    """Return one line per recorded pair of a double row and its `-roundN` twin: the narrowest conv each keeps and
    top-1 (%) after slimming and after both stages (round_to is also the fewest channels a group keeps); [] without a pair."""
    import re

    out = []
    for stem in sorted(records):
        found = re.match(r"^(.+-double-.+)-round(\d+)$", stem)
        twin = records.get(found.group(1)) if found else None
        if not twin:
            continue
        rounded = records[stem]
        narrow = {k: min((layer["out_channels_after"] for layer in m.get("layers", []) if layer.get("kind") == "Conv2d"), default=0)
                  for k, m in (("plain", twin), ("rounded", rounded))}
        slim = {k: next((st["top1"] for st in m.get("stages", []) if st.get("method") == "slimming"), None)
                for k, m in (("plain", twin), ("rounded", rounded))}
        after = (f"after slimming {slim['plain']:.2f} % against {slim['rounded']:.2f} %, "
                 if None not in slim.values() else "")
        out.append(f"- `{found.group(1)}` and its `-round{found.group(2)}` twin: the narrowest conv keeps {narrow['plain']} "
                   f"against {narrow['rounded']} channels (round_to is also the fewest a layer keeps); top-1 {after}after both "
                   f"stages {twin['final']['top1']:.2f} % against {rounded['final']['top1']:.2f} %.")
    return (["Rounded against unrounded slimming, same baseline and budget:", "", *out, ""]) if out else []
