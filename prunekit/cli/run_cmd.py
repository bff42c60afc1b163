"""`prunekit run RECIPE [--set k=v]... [--out DIR] [--resume] [--device cpu|cuda] [--data-root DIR]`."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "run",
        help="run a recipe: baseline, prune, fine-tune, evaluate, measure, report",
        description="Run the experiment a recipe describes into a run directory (recipe.yaml, log.jsonl, "
        "metrics.json, report.md, plots, model.pt). Relative paths in the recipe resolve against the working directory.",
    )
    p.add_argument("recipe", metavar="RECIPE", help="a recipe YAML file (see docs/recipes.md)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field, e.g. --set finetune.epochs=3 (value parsed as YAML; repeatable)")
    p.add_argument("--out", default=None, metavar="DIR", help="run directory (default runs/<recipe name>)")
    p.add_argument("--resume", action="store_true", help="continue an unfinished run in --out, skipping completed stages")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="override the recipe's device")
    p.add_argument("--data-root", default=None, metavar="DIR", help="data directory (same as --set data.root=DIR; default $PRUNEKIT_DATA)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=run)


def run(args: Any) -> int:
    from prunekit.experiment import run_experiment
    from prunekit.recipe import load_recipe

    overrides = list(args.overrides)
    if args.data_root:
        overrides.append(f"data.root={args.data_root}")
    recipe = load_recipe(args.recipe, overrides=overrides)
    out = Path(args.out) if args.out else Path("runs") / recipe.name
    metrics = run_experiment(recipe, out_dir=out, resume=args.resume, device=args.device, progress=not args.quiet)
    print(f"report: {out / 'report.md'}")
    return 0 if metrics.get("status") == "complete" else 1
