"""Run the rows of docs/results.md one after another, resumably, and keep their records.

For every recipe in recipes/results/ (the baselines first, then the order below), run
`prunekit run RECIPE --out runs/results/STEM --resume`; when a run is complete, copy its
metrics.json, resolved recipe.yaml and per-epoch log.jsonl (no model files) to results/STEM/, the committed record
docs/results.md is generated from. A complete record is skipped, an interrupted run resumes.
One run at a time (two training processes on two cores run slower than one after the other).

    python benchmarks/run_results.py                 # everything not yet recorded
    python benchmarks/run_results.py resnet20-l1_filter-macs0.5 resnet20-random-macs0.5
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes" / "results"
RUNS = REPO / "runs" / "results"
RECORDS = REPO / "results"

#: run order: every baseline (each model's rows start from its model.pt), then the double-pruning table
#: (its stems also hold "-macs0.5" and "sparsity0.5": the first key a stem holds ranks it), then the
#: macs=0.5 table, then unstructured, then the rest
PRIORITY = ("baseline", "-double-", "-macs0.5", "sparsity0.9", "sparsity0.5", "sparsity0.8", "sfp", "svd", "autorate", "-params0.5")


def _rank(stem: str) -> int:
    return next((i for i, key in enumerate(PRIORITY) if key in stem), len(PRIORITY))


def complete(path: Path) -> bool:
    """Return True when `path` (a metrics.json) says the run is complete."""
    try:
        return json.loads(path.read_text()).get("status") == "complete"
    except (OSError, ValueError, AttributeError):
        return False


def run(stem: str) -> bool:
    """Run (or resume) one row and copy its record; return True when it completed."""
    record = RECORDS / stem
    if complete(record / "metrics.json"):
        print(f"{stem}: recorded", flush=True)
        return True
    out = RUNS / stem
    cmd = [sys.executable, "-m", "prunekit.cli.main", "run", str(RECIPES / f"{stem}.yaml"), "--out", str(out), "--quiet"]
    if (out / "metrics.json").exists():
        cmd.append("--resume")
    print(f"{stem}: {' '.join(cmd[2:])}", flush=True)
    done = subprocess.run(cmd, cwd=REPO)
    if done.returncode != 0 or not complete(out / "metrics.json"):
        print(f"{stem}: failed (exit {done.returncode})", flush=True)
        return False
    record.mkdir(parents=True, exist_ok=True)
    for name in ("metrics.json", "recipe.yaml", "log.jsonl"):  # log.jsonl: the per-epoch numbers, a few kB
        if (out / name).exists():
            shutil.copy2(out / name, record / name)
    print(f"{stem}: complete, record in {record.relative_to(REPO)}", flush=True)
    return True


def main(argv: list[str]) -> int:
    stems = argv or sorted((p.stem for p in RECIPES.glob("*.yaml")), key=lambda s: (_rank(s), s))
    failed = [s for s in stems if not run(s)]
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
