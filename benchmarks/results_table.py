"""Generate docs/results.md from the committed run records in results/*/metrics.json.

Every number on that page comes from a record made by `benchmarks/run_results.py` (a complete
`prunekit run` of recipes/results/STEM.yaml); nothing is typed in by hand. Rows whose record is
not there yet are listed as "not yet run". tests/test_results_page.py checks that the page and
the records agree.

    python benchmarks/results_table.py               # rewrites docs/results.md
    python benchmarks/results_table.py --latency     # first times every row's model.pt and the baseline side by
                                                     # side (1 thread, batch 1, eager and ONNX Runtime) into
                                                     # results/latency-cifar10.json, then rewrites the page
    python benchmarks/results_table.py --check       # exit 1 when docs/results.md is stale
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_budget import STUDY, budget_figure, budget_section  # noqa: E402
from results_ort import double_latency_note, rounded_pairs_note  # noqa: E402
from results_saliency import saliency_note  # noqa: E402
from results_targets import MINUTES_LIMIT, _epoch_log, targets_section  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RECORDS = REPO / "results"
RECIPES = REPO / "recipes" / "results"
PAGE = REPO / "docs" / "results.md"
RUNS = REPO / "runs" / "results"
LATENCY = RECORDS / "latency-cifar10.json"
SALIENCY = RECORDS / "saliency-on-trained.json"  # benchmarks/saliency_on_trained.py
CHANNELS = RECORDS / "ort-channel-counts.json"  # benchmarks/ort_channel_counts.py

TABLES = (
    ("ResNet-20, structured, half the MACs", "resnet20-", ("-macs0.5", "sfp")),
    ("ResNet-20, structured and low-rank, half the parameters", "resnet20-", ("-params0.5", "autorate")),
    ("ResNet-20, unstructured sparsity", "resnet20-", ("sparsity",)),
    ("ResNet-56, structured (its own budget: 2 epochs after its baseline)", "resnet56-", ("-macs0.5", "sfp", "autorate")),
)


def load_records(root: Path = RECORDS) -> dict[str, dict[str, Any]]:
    """Return {stem: metrics} for every complete record under `root`."""
    out = {}
    for path in sorted(root.glob("*/metrics.json")):
        try:
            metrics = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(metrics, dict) and metrics.get("status") == "complete":
            out[path.parent.name] = metrics
    return out


def _human(n: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:.0f}"


def _baseline_start(path: Path) -> tuple[Any, bool]:
    """(baseline training epochs or "?", True when the model starts from pretrained weights) of the recipe at `path`."""
    try:
        import yaml

        body = yaml.safe_load(path.read_text())
        return body["baseline"]["train"]["epochs"], bool(body["model"].get("weights"))
    except (OSError, KeyError, TypeError, ValueError, AttributeError):
        return "?", False


def measure_latency(records: dict[str, dict[str, Any]], *, rounds: int, per_round: int) -> dict[str, Any]:
    """Time the baseline's and every recorded row's model.pt (runs/results/STEM/model.pt) side by side
    at 1x3x32x32 on eager and ONNX Runtime (not the budget study's); return the latency record."""
    import torch
    from latency_record import time_models

    from prunekit import io

    # the budget study's networks have their twins' shapes (the dense control the baseline's): not timed again
    stems = [s for s in records if (RUNS / s / "model.pt").exists() and not STUDY.match(s)]
    if not stems:
        raise SystemExit(f"no model files under {RUNS} to time")
    return time_models({s: io.load(RUNS / s / "model.pt") for s in stems}, torch.randn(1, 3, 32, 32),
                       rounds=rounds, per_round=per_round)


def _pair(latency: dict[str, Any] | None, stem: str, runtime: str) -> tuple[float, float] | None:
    """(baseline ms, row ms) on `runtime` from the side-by-side record, or None."""
    lat = (latency or {}).get("latency_ms", {})
    base, mine = lat.get(f"{stem.split('-')[0]}-baseline", {}).get(runtime), lat.get(stem, {}).get(runtime)
    return (base["median"], mine["median"]) if base and mine else None


def row(stem: str, m: dict[str, Any], latency: dict[str, Any] | None = None) -> str:
    """Return one markdown table row for record `m` (latency from the side-by-side record when it
    has the row, else the run's own interleaved timing)."""
    b, f, a = m["baseline"], m["final"], m["achieved"]
    eager = _pair(latency, stem, "eager") or ((b["latency_ms"], f["latency_ms"]) if f.get("latency_ms") else None)
    speed = eager[0] / eager[1] if eager else None
    macs_ratio = b["macs"] / f["macs"] if f.get("macs") else None
    per_mac = f"{speed / macs_ratio:.2f}" if speed and macs_ratio else "-"
    ort_pair = _pair(latency, stem, "onnxruntime")
    ort = (f"{ort_pair[0]:.2f} -> {ort_pair[1]:.2f} ({ort_pair[0] / ort_pair[1] / macs_ratio:.2f})"
           if ort_pair and macs_ratio else "not recorded")
    eager_text = f"{eager[0]:.2f} -> {eager[1]:.2f}" if eager else "-"
    target = m.get("target") or "-"
    minutes = m.get("wall_time_s", {}).get("total", 0) / 60
    return (f"| [{m['method']}](../recipes/results/{stem}.yaml) | {target} | {b['top1']:.2f} | {f['top1']:.2f} | "
            f"{b['top1'] - f['top1']:+.2f} | {_human(f['params'])} ({100 * a['params']:.1f} %) | "
            f"{_human(f['nonzero_params'])} ({100 * a['nonzero_params']:.1f} %) | {_human(f['macs'])} ({100 * a['macs']:.1f} %) | "
            f"{eager_text} | {per_mac} | {ort} | {minutes:.0f} |")


HEADER = ("| method | target | top-1 before | top-1 after | drop (points) | params (removed) | non-zero params (removed) "
          "| MACs (removed) | CPU ms eager, batch 1, 1 thread | speedup per MAC removed | ONNX Runtime ms (speedup per MAC removed) | wall min |\n"
          "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")


def render(records: dict[str, dict[str, Any]], recipes: list[str], latency: dict[str, Any] | None = None,
           saliency: dict[str, Any] | None = None, channels: dict[str, Any] | None = None) -> str:
    """Return the whole page for `records` (complete runs), `recipes` (every row's stem) and the
    side-by-side `latency` record (None: each run's own timing) and the `saliency` record of
    benchmarks/saliency_on_trained.py (None: no note under the unstructured table) and the `channels`
    record of benchmarks/ort_channel_counts.py (None: the double rows' timing note without it)."""
    lines = [
        "# Results: every method on the whole of CIFAR-10",
        "",
        "Generated by `python benchmarks/results_table.py` from the records in `results/` (each a complete",
        "`prunekit run` of `recipes/results/STEM.yaml`, made by `python benchmarks/run_results.py`); do not edit by hand.",
        "Data: the JPEG copy of CIFAR-10 (`../shared/data/cifar10-jpeg.tar.xz`), whole train (50,000) and test (10,000)",
        "splits. Every row starts from its model's baseline run (`recipes/results/MODEL-baseline.yaml`) and gets the same",
        "budget of training epochs after it (see `benchmarks/results_recipes.py`).",
        "",
    ]
    if latency:
        lines += [f"Latency: every row's model and the baseline timed side by side in one session ({latency['machine']}, "
                  f"{latency['measured_at'][:16].replace('T', ' ')} UTC, load average {latency['load_average'][0]:.1f}, "
                  f"{latency['threads']} thread, batch {latency['batch']}, input {latency['input']}, median of "
                  f"{latency['rounds']} interleaved rounds x {latency['per_round']} calls; `results/latency-cifar10.json`, "
                  "made by `python benchmarks/results_table.py --latency`). Speedup per MAC removed = (dense ms / pruned ms) / "
                  "(dense MACs / pruned MACs). Rows not in that record show their run's own eager timing.", ""]
    else:
        lines += ["Latency: measured by each run on its machine (the project's 2-core CPU machine, 1 thread, batch 1, "
                  "median), baseline and pruned timed interleaved in the same run.", ""]
    for model, name, shipped in (("resnet20", "ResNet-20", "81 %"), ("resnet56", "ResNet-56", "83 %")):
        base = records.get(f"{model}-baseline")
        if base:
            f = base["final"]
            epochs = _baseline_start(RECORDS / f"{model}-baseline" / "recipe.yaml")[0]
            lines += [f"{name} baseline (`recipes/results/{model}-baseline.yaml`): the pretrained {name} (about {shipped} on this "
                      f"JPEG test split as shipped) fine-tuned {epochs} epochs on the whole train split: top-1 {f['top1']:.2f} % on "
                      f"the 10,000 test images, {_human(f['params'])} params, {_human(f['macs'])} MACs, {f['latency_ms']:.2f} ms "
                      f"(its run's own timing), {base['wall_time_s']['total'] / 60:.0f} min.", ""]
        elif f"{model}-baseline" in recipes:
            lines += [f"{name} baseline (`recipes/results/{model}-baseline.yaml`): not yet run.", ""]
    for title, prefix, keys in TABLES:
        # a double row's stem holds "-macs0.5" and "sparsity" too; it has its own table
        stems = [s for s in recipes if s.startswith(prefix) and any(k in s for k in keys) and not s.endswith("-baseline")
                 and "-double-" not in s]
        if not stems:
            continue
        lines += [f"## {title}", ""]
        done = [row(stem, records[stem], latency) for stem in stems if stem in records]
        missing = [stem for stem in stems if stem not in records]
        if done:
            lines += [HEADER, *done, ""]
        if "sparsity" in keys:
            lines += saliency_note(saliency, records)
        over = {stem: why for stem in missing if (why := over_budget(stem, records))}
        if over:
            lines += [f"Not run: `{stem}`, {why}." for stem, why in over.items()] + [""]
        missing = [stem for stem in missing if stem not in over]
        if missing:
            lines += ["Not yet run: " + ", ".join(f"`{s}`" for s in missing) + ".", ""]
    lines += double_table(records, recipes)
    lines += rounded_pairs_note(records)
    lines += double_latency_note(records, latency, channels)
    lines += budget_section(records, recipes, _epoch_log)
    lines += targets_section(records)
    return "\n".join(lines).rstrip() + "\n"


def over_budget(stem: str, records: dict[str, dict]) -> str | None:
    """Return why a missing ResNet-56 row is not run, when the records show it would pass the
    per-run limit: its ResNet-20 twin's method stage scaled by the two baselines' MACs, plus the
    median fine-tuning and evaluation time of the recorded ResNet-56 rows (None: not estimable or
    within the limit)."""
    if not stem.startswith("resnet56-"):
        return None
    twin = records.get("resnet20-" + stem.removeprefix("resnet56-"))
    b20, b56 = records.get("resnet20-baseline"), records.get("resnet56-baseline")
    rows = [m["wall_time_s"] for s, m in records.items() if s.startswith("resnet56-") and not s.endswith("-baseline")]
    rows = [w for w in rows if "finetune0" in w]
    if not (twin and b20 and b56 and rows):
        return None
    ratio = b56["final"]["macs"] / b20["final"]["macs"]
    search = sum(v for k, v in twin["wall_time_s"].items() if k.startswith("method")) * ratio / 60
    rest = sorted((w["finetune0"] + w.get("baseline", 0) + w.get("final", 0)) / 60 for w in rows)[len(rows) // 2]
    if search + rest <= MINUTES_LIMIT * 1.1:
        return None
    return (f"estimated {search + rest:.0f} min from the records, over the {MINUTES_LIMIT:.0f}-minute limit per run: "
            f"the ResNet-20 row's method stage ({search / ratio:.0f} min) x {ratio:.1f} (ResNet-56 / ResNet-20 MACs) "
            f"= {search:.0f} min, plus {rest:.0f} min of fine-tuning and evaluation (median of the recorded ResNet-56 rows)")


#: the double-pruning table's models in the issue's order, as the page names them (others follow by name)
DOUBLE_MODELS = {"resnet20": "ResNet-20", "vgg11_cifar": "VGG-11 (CIFAR)", "mobilenet_v2": "MobileNetV2 (32x32 stem)",
                 "mobilenet_v3_small": "MobileNetV3-small (32x32 stem)"}
DOUBLE_HEADER = ("| model | stage | target | top-1 % | params | non-zero params | MACs | non-zero MACs "
                 "| NetScore, dense counts | NetScore, non-zero counts | wall min |\n"
                 "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")


def double_row(model: str, stage: str, target: str, m: dict[str, Any], minutes: float | None) -> str:
    """Return one markdown row of the double-pruning table: top-1 in %, counts as k/M/G, NetScore in dB
    (from the row's own top-1, params and MACs: dense counts, then non-zero counts), wall time in minutes."""
    from prunekit.metrics import netscore

    a = m["top1"]
    dense, nonzero = netscore(a, m["params"], m["macs"]), netscore(a, m["nonzero_params"], m["nonzero_macs"])
    wall = "-" if minutes is None else f"{minutes:.0f}"
    return (f"| {model} | {stage} | {target} | {a:.2f} | {_human(m['params'])} | {_human(m['nonzero_params'])} | "
            f"{_human(m['macs'])} | {_human(m['nonzero_macs'])} | {dense:.2f} | {nonzero:.2f} | {wall} |")


def double_table(records: dict[str, dict[str, Any]], recipes: list[str]) -> list[str]:
    """Return the double-pruning section's lines: per model the baseline, then the figures after each stage of
    its double row (metrics.json "stages"); a baseline recorded before its row shows alone. [] when no row exists."""
    order = [*DOUBLE_MODELS, *sorted(s.split("-double-")[0] for s in recipes if "-double-" in s)]
    stems = sorted((s for s in recipes if "-double-" in s), key=lambda s: (order.index(s.split("-double-")[0]), s))
    if not stems:
        return []
    lines = ["## Double pruning: slimming, then magnitude, NetScore after each stage", "",
             "Each row (`recipes/results/MODEL-double-*.yaml`) prunes its model's baseline in two stages: network slimming "
             "(training with an L1 penalty on the BatchNorm scales, then the channels with the smallest scales removed), "
             "fine-tuned, then magnitude pruning (the smallest weights of the slim network zeroed), fine-tuned; the recipe's "
             "`method.stage_epochs` and `finetune.epochs` (after each stage) add up to the budget of every other row. "
             "The baseline line is the row's own evaluation of its starting checkpoint (before the row has run: the baseline "
             "run's record); its wall time is the whole baseline run's, a stage's is its pruning and fine-tuning. NetScore (Wong 2019) = 20 log10(a^2 / (sqrt(p) "
             "sqrt(m))) dB, a = top-1 %, p = params in millions, m = MACs in billions: the dense column counts every weight "
             "and MAC of the stored network, the non-zero column only the non-zero weights and the MACs they take part in. "
             "The magnitude stage's zeros lower only the non-zero counts; dense inference does not get faster from them.", ""]
    body, missing, shown = [], [], set()
    for stem in stems:
        model = stem.split("-double-")[0]
        name, base_stem = DOUBLE_MODELS.get(model, model), f"{model}-baseline"
        epochs, pretrained = _baseline_start(RECIPES / f"{base_stem}.yaml")
        start = f"baseline ({'pretrained, fine-tuned' if pretrained else 'from scratch,'} {epochs} epochs)"
        base_run = records.get(base_stem)
        base_minutes = base_run["wall_time_s"]["total"] / 60 if base_run and "wall_time_s" in base_run else None
        m = records.get(stem)
        if m:
            if model not in shown:  # a model's second row (e.g. channels rounded) starts from the same baseline
                body.append(double_row(name, start, "-", m["baseline"], base_minutes))
                shown.add(model)
            wall = m.get("wall_time_s", {})
            infos = (m.get("method_info") or {}).get("stages") or []
            for st in sorted(m.get("stages", []), key=lambda st: st["index"]):
                i = st["index"]
                minutes = (wall[f"method{i}"] + wall[f"finetune{i}"]) / 60 if f"method{i}" in wall and f"finetune{i}" in wall else None
                rounded = ((infos[i] if i < len(infos) else {}).get("round_to") or {}).get("value")
                label = f"after {st['method']}" + (f", channels kept multiples of {rounded}" if rounded else "")
                body.append(double_row(name, label, st.get("target") or "-", st, minutes))
        else:
            if base_run:
                body.append(double_row(name, start, "-", base_run["final"], base_minutes))
            elif base_stem in recipes:
                missing.append(base_stem)
            missing.append(stem)
    if body:
        lines += [DOUBLE_HEADER, *body, ""]
    if missing:
        lines += ["Not yet run: " + ", ".join(f"`{s}`" for s in missing) + ".", ""]
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="exit 1 when docs/results.md differs from the records")
    p.add_argument("--latency", action="store_true", help="time every row's model side by side first (needs runs/results)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--per-round", type=int, default=20)
    args = p.parse_args(argv)
    from prunekit.atomic import atomic_write, atomic_write_text

    recipes = sorted(path.stem for path in RECIPES.glob("*.yaml"))
    records = load_records()
    if args.latency:
        sys.path.insert(0, str(REPO / "benchmarks"))
        atomic_write_text(LATENCY, json.dumps(measure_latency(records, rounds=args.rounds, per_round=args.per_round), indent=1) + "\n")
    latency = json.loads(LATENCY.read_text()) if LATENCY.exists() else None
    saliency = json.loads(SALIENCY.read_text()) if SALIENCY.exists() else None
    channels = json.loads(CHANNELS.read_text()) if CHANNELS.exists() else None
    text = render(records, recipes, latency, saliency, channels)
    if args.check:
        current = PAGE.read_text() if PAGE.exists() else ""
        if current != text:
            print(f"{PAGE} is stale: run python benchmarks/results_table.py", file=sys.stderr)
            return 1
        return 0
    atomic_write_text(PAGE, text)
    print(f"wrote {PAGE}")
    figure = budget_figure(records, recipes, _epoch_log)
    if figure:
        atomic_write(PAGE.parent / "img" / "results-budget.png", figure)
        print(f"wrote {PAGE.parent / 'img' / 'results-budget.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
