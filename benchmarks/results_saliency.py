"""The note under docs/results.md's unstructured table: what each criterion removes from the trained
baseline, from the record benchmarks/saliency_on_trained.py writes (results/saliency-on-trained.json),
beside each row's top-1 after its fine-tuning (the row records)."""

from __future__ import annotations

from typing import Any

#: the criteria in the record's order, and which recorded row (stem prefix) shows each after fine-tuning
ROWS = {"magnitude": "resnet20-magnitude-oneshot-sparsity", "snip": "resnet20-snip-sparsity",
        "grasp": "resnet20-grasp-sparsity", "synflow": "resnet20-synflow-sparsity"}


def saliency_note(saliency: dict[str, Any] | None, records: dict[str, dict[str, Any]]) -> list[str]:
    """Return the page's lines (a table and the sentence it supports) for the saliency record, or []
    without one. Shares are percentages of the weights' L1 mass and of the zeroed weights; top-1 in %."""
    if not saliency:
        return []
    lines = ["### What each criterion removes from the trained network", "",
             "SNIP, GraSP and SynFlow were designed to prune at initialisation; these rows apply them to the fine-tuned "
             f"baseline. `python benchmarks/saliency_on_trained.py` pruned that baseline with each criterion at each "
             f"sparsity and measured, before any fine-tuning, the share of the weights' L1 mass zeroed, the share of the "
             f"zeroed weights that global magnitude pruning at the same sparsity also zeroes (a random mask would share "
             f"as many as the sparsity), and top-1 on {saliency['images']:,} test images ({saliency['images'] // 10} per "
             f"class) (record `results/saliency-on-trained.json`, {saliency['machine']}, {saliency['threads']} thread, "
             f"{saliency['started_at'][:16].replace('T', ' ')} UTC; dense top-1 on those images {saliency['dense_top1']:.2f} %). "
             "The last column is the row's top-1 after its fine-tuning.", "",
             "| criterion | sparsity | L1 mass zeroed | zeroed weights shared with magnitude | top-1 % right after pruning "
             "| top-1 % after fine-tuning (row) |",
             "|---|---:|---:|---:|---:|---:|"]
    criteria = saliency["criteria"]
    for name in (n for n in ROWS if n in criteria):
        for s, r in sorted(criteria[name].items(), key=lambda kv: float(kv[0])):
            row = records.get(f"{ROWS[name]}{s}")
            after = f"{row['final']['top1']:.2f}" if row else "not recorded"
            lines.append(f"| {name} | {s} | {100 * r['l1_removed']:.1f} % | {100 * r['overlap_with_magnitude']:.1f} % "
                         f"| {r['top1_pruned']:.2f} | {after} |")
    lines.append("")
    half = {n: criteria[n].get("0.5") for n in ("grasp", "magnitude") if n in criteria}
    if all(half.get(n) for n in ("grasp", "magnitude")) and half["grasp"]["overlap_with_magnitude"] < 0.75:
        g, m = half["grasp"], half["magnitude"]
        lines += [f"At sparsity 0.5, GraSP zeroes {100 * g['l1_removed']:.1f} % of the weights' L1 mass where magnitude "
                  f"pruning zeroes {100 * m['l1_removed']:.1f} %, and {100 * g['overlap_with_magnitude']:.1f} % of the weights "
                  "it zeroes are ones magnitude pruning also zeroes (a random half would share 50 % and zero about 50 % "
                  "of the mass): on a trained network its score -w Hg does not single out the small weights, and the 3 "
                  "fine-tuning epochs do not win back the large ones it removes. The GraSP paper scores a network at "
                  "initialisation, where weight magnitudes carry no training signal yet.", ""]
    return lines
