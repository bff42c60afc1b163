"""`prunekit run RECIPE [--set k=v]... [--out DIR] [--resume] [--device cpu|cuda] [--data-root DIR]`
and `prunekit study STUDY [--set k=v]... [--out DIR] [--device cpu|cuda] [--data-root DIR]`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from prunekit.errors import UserError


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
    p.add_argument("--nproc", type=int, default=None, metavar="N",
                   help="train data-parallel in N local processes: re-runs this command under torchrun (gloo on CPU, NCCL on CUDA)")
    p.set_defaults(func=run)

    s = sub.add_parser(
        "study",
        help="run a recipe over a grid of overrides (resumable) into one table and plot",
        description="Run every combination of a study file's grid (see docs/recipes.md) into DIR/<combination>, "
        "keeping complete runs and resuming unfinished ones; every point is validated first. Writes DIR/study.json, "
        "DIR/study.md, DIR/tradeoff.png and, with a headline section, DIR/accuracy_vs_params-<panel>.png; "
        "prunekit report DIR re-renders them from the run directories.",
    )
    s.add_argument("study", metavar="STUDY", help="a study YAML file: name, recipe, set, grid")
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field in every run (after the study's own; repeatable)")
    s.add_argument("--out", default=None, metavar="DIR", help="output directory (default runs/<study name>)")
    s.add_argument("--device", choices=["cpu", "cuda"], default=None, help="override the recipes' device")
    s.add_argument("--data-root", default=None, metavar="DIR", help="data directory for every run")
    s.add_argument("--quiet", action="store_true", help="no progress output")
    s.add_argument("--executor", choices=["sequential", "ray"], default="sequential",
                   help="sequential (default) or ray: every run a Ray task, one CPU or GPU each (pip install 'prunekit[ray]')")
    s.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="with --executor ray: join this cluster (e.g. auto); default: a local Ray instance")
    s.set_defaults(func=run_study)


def run(args: Any) -> int:
    from prunekit import distributed

    if args.nproc is not None and args.nproc != 1:
        from prunekit.cli.launch import launch

        return launch(args.argv, args.nproc)  # under an outer torchrun it refuses (one launcher is enough)
    from prunekit.experiment import run_experiment
    from prunekit.recipe import load_recipe

    overrides = list(args.overrides)
    if args.data_root:
        overrides.append(f"data.root={args.data_root}")
    recipe = load_recipe(args.recipe, overrides=overrides)
    out = Path(args.out) if args.out else Path("runs") / recipe.name
    try:
        metrics = run_experiment(recipe, out_dir=out, resume=args.resume, device=args.device, progress=not args.quiet)
    finally:
        distributed.destroy()  # under torchrun: leave the process group (a no-op in one process)
    if distributed.launched() and os.environ.get("RANK") != "0":
        return 0 if metrics.get("status") == "complete" else 1  # rank 0 prints the summary
    if not args.quiet:
        print_summary(metrics)
    print(f"report: {out / 'report.md'}")
    return 0 if metrics.get("status") == "complete" else 1


def print_summary(metrics: dict[str, Any]) -> None:
    """Print the baseline-vs-final table of a complete run (the head of its report.md)."""
    from prunekit.cli.common import print_table
    from prunekit.report import human, is_top1, primary_label, primary_metric

    base, final = metrics["baseline"], metrics["final"]
    lat = f"latency (ms, {final['latency_device']}, batch {final['latency_batch_size']}, measured)"
    primary = primary_metric(metrics)
    rows = []
    for key, label, fmt in ((primary["name"], primary_label(primary), "{:.2f}" if is_top1(primary) else "{:.4g}"), ("params", "parameters", None), ("nonzero_params", "non-zero parameters", None),
                            ("macs", "MACs per image", None), ("latency_ms", lat, "{:.2f}"), ("netscore", "NetScore", "{:.2f}")):
        b, f = base.get(key), final.get(key)
        show = (lambda v: "-" if v is None else fmt.format(v)) if fmt else human
        rows.append([label, show(b), show(f)])
    print_table(f"{metrics['recipe']}: {metrics['method']} to {metrics.get('target') or '-'}", ["", "baseline", "final"], rows)
    if (final.get("sparsity") or 0) > 0.001:
        print("note: zeroed weights reduce non-zero params and MACs, not dense latency")


def run_study(args: Any) -> int:
    from prunekit.study import run_study as run_grid

    overrides = list(args.overrides) + ([f"data.root={args.data_root}"] if args.data_root else [])
    options = {"address": args.ray_address} if args.executor == "ray" else {}
    if args.ray_address and args.executor != "ray":
        raise UserError("--ray-address goes with --executor ray")
    result = run_grid(args.study, out_dir=args.out, device=args.device, overrides=overrides, progress=not args.quiet,
                      executor=args.executor, executor_options=options)
    print(result["table"], end="")
    if result.get("headline"):
        print("\n" + result["headline"], end="")
    failed = {slug: status for slug, status in result["runs"].items() if status != "complete"}
    for slug, status in failed.items():
        print(f"not complete: {slug}: {status}")
    print(f"study: {Path(result['out']) / 'study.md'}")
    return 1 if failed else 0
