"""`prunekit evaluate MODEL_OR_FILE --data NAME [--data-option K=V] [--task NAME] [--split test] [--weights FILE] [--json]`:
the task's metrics, params and MACs of a saved or named model on a dataset split, without a recipe."""

from __future__ import annotations

import os
from typing import Any

from prunekit.cli.common import check_runs_on, human, is_cifar_model, print_json, print_table
from prunekit import limits
from prunekit.errors import UserError


def add_parser(sub: Any) -> None:
    p = sub.add_parser("evaluate", help="the task's metrics, params and MACs of a model on a dataset split")
    p.add_argument("model", metavar="MODEL_OR_FILE", help="a model name (prunekit list models) or a prunekit.save file")
    p.add_argument("--data", required=True, metavar="NAME", help="dataset (prunekit list datasets)")
    p.add_argument("--data-root", default=None, metavar="DIR", help="data directory (default $PRUNEKIT_DATA, then the cache directory)")
    p.add_argument("--data-option", action="append", default=[], metavar="KEY=VALUE",
                   help="a dataset option, value parsed as YAML (repeatable), e.g. num_classes=4 for synthetic")
    p.add_argument("--task", default=None, metavar="NAME",
                   help="task (prunekit list tasks) or module:Class from your own code (default: the dataset's, "
                        "detection for widerface, else classification)")
    p.add_argument("--split", choices=["test", "train"], default="test", help="which split to evaluate on (default test)")
    p.add_argument("--weights", default=None, metavar="FILE", help="weights for a model built by name (a local checkpoint)")
    p.add_argument("--num-classes", type=int, default=None, help="outputs of a model built by name (default: the dataset's classes)")
    p.add_argument("--small-input", action="store_true", help="adapt a torchvision stem to 32x32 images")
    p.add_argument("--batch-size", type=int, default=256, help="images per evaluation batch (default 256)")
    p.add_argument("--max-batches", type=int, default=None, metavar="N", help="evaluate on the first N batches only")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where to evaluate (default cpu)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(func=run)


def _is_file(target: str) -> bool:
    return os.path.sep in target or target.endswith((".pt", ".pth", ".th")) or os.path.exists(target)


def check_fits_data(model: Any, bundle: Any, task: Any, args: Any) -> None:
    """Raise a one-line `UserError` when `model` cannot take the dataset's images, or (classification)
    has fewer outputs than the dataset has classes."""
    import torch

    x = bundle.example_inputs(1).to(args.device)
    out = check_runs_on(model, x, f"--data {args.data}", args.model)
    classes = bundle.num_classes
    if task.name == "classification" and classes and isinstance(out, torch.Tensor) and out.ndim == 2 and out.shape[1] < classes:
        raise UserError(f"{args.model} has {out.shape[1]} outputs but --data {args.data} has {classes} classes "
                        f"(a model for this dataset needs at least {classes}; --num-classes sets it for a model built by name)")


def run(args: Any) -> int:
    import torch

    from prunekit import data, io, metrics, models, tasks

    limits.check_batch_size(args.batch_size, "--batch-size")
    if args.max_batches is not None and args.max_batches < 1:
        raise UserError(f"--max-batches {args.max_batches} must be >= 1")
    if args.threads is not None:
        limits.check_threads(args.threads, "--threads")
    if args.num_classes is not None:
        limits.check_num_classes(args.num_classes, "--num-classes")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available")
    task = tasks.create(args.task or data.default_task(args.data))
    from_file = _is_file(args.model)
    if from_file and args.weights:
        raise UserError(f"--weights is for a model built by name; {args.model} is a saved model with its own weights")
    if from_file and not os.path.isfile(args.model):
        raise UserError(f"{args.model}: no such file")
    if not from_file and args.model not in models.list_models():
        models.MODELS.get(args.model)  # raises the unknown-model error with suggestions
    if args.threads:
        torch.set_num_threads(args.threads)
    # decode one image per class of the split not evaluated
    other = "train" if args.split == "test" else "test"
    from prunekit.cli.prune_cmd import parse_options

    options = parse_options(args.data_option)
    bundle = data.load(args.data, root=args.data_root, batch_size=args.batch_size, eval_batch_size=args.batch_size,
                       subset={other: 1}, augment=False, device=args.device, progress=not args.json, **options)
    if from_file:
        model = io.load(args.model)
    else:
        num_classes = args.num_classes or bundle.num_classes or (10 if is_cifar_model(args.model) else 1000)
        model = models.create(args.model, num_classes=num_classes, small_input=args.small_input, weights=args.weights)
    model = model.to(args.device).eval()
    check_fits_data(model, bundle, task, args)
    loader = bundle.test if args.split == "test" else bundle.train
    result = task.evaluate(model, loader, device=args.device, amp=True, max_batches=args.max_batches)
    x = bundle.example_inputs(1)
    measured = metrics.measure(model, x).to_dict()
    p = task.primary
    primary = result.get(p.name)
    a = p.percent(primary) if isinstance(primary, (int, float)) else None
    netscore = metrics.netscore(a, measured["params"], measured["macs"]) if a is not None else None
    if args.json:
        print_json({
            "model": args.model, "dataset": args.data, "split": args.split, "task": task.name,
            "primary": {"name": p.name, "unit": p.unit, "higher_is_better": p.higher_is_better},
            "metrics": result, **{k: measured[k] for k in ("params", "nonzero_params", "macs", "nonzero_macs")},
            "netscore": netscore,
        })
        return 0
    rows = []
    for key, value in result.items():
        label = f"{'top-1' if key == 'top1' else 'top-5' if key == 'top5' else key}"
        if key == p.name:
            label += f" ({p.unit}, primary)"
        shown = f"{value:.2f}" if key in ("top1", "top5") else (f"{value:.4g}" if isinstance(value, float) else str(value))
        rows.append([label, shown])
    rows += [["parameters", human(measured["params"])], ["non-zero parameters", human(measured["nonzero_params"])],
             ["MACs per image", human(measured["macs"])], ["non-zero MACs per image", human(measured["nonzero_macs"])]]
    if netscore is not None:
        rows.append(["NetScore", f"{netscore:.2f}"])
    print_table(f"{args.model} on {args.data} ({args.split}), task {task.name}", ["", "value"], rows)
    return 0
