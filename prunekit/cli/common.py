"""Pieces shared by the commands: input sizes, model-or-file loading, tables, JSON output."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import torch
from torch import nn

from prunekit import limits, preflight
from prunekit.errors import UserError
from prunekit.report import human, jsonable  # noqa: F401  (human re-exported for the commands)


def parse_input_size(text: str) -> tuple[int, ...]:
    """Return (C, H, W) from "3x224x224"; a malformed size is a `UserError`."""
    try:
        dims = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        dims = ()
    if len(dims) < 2 or any(d <= 0 for d in dims):
        raise UserError(f"--input-size {text!r} must look like 3x224x224 (positive integers)")
    return dims


def add_model_arguments(parser: Any) -> None:
    """Add MODEL_OR_FILE, --input-size, --num-classes and --small-input to `parser`."""
    parser.add_argument("model", metavar="MODEL_OR_FILE", help="a model name (prunekit list models) or a prunekit.save file")
    parser.add_argument("--input-size", default=None, help="C x H x W of one input, e.g. 3x224x224 (default: 3x32x32 with --small-input, else 3x224x224)")
    parser.add_argument("--num-classes", type=int, default=None, help="classifier outputs for a model built by name (default 10 for CIFAR models, else 1000)")
    parser.add_argument("--small-input", action="store_true", help="adapt the stem to 32x32 images (3x3 stride-1 first conv, no max-pool)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's); 1 is steadier on a shared machine")


def is_cifar_model(name: str) -> bool:
    """Return True for prunekit's CIFAR architectures (32x32 inputs, 10 classes by default)."""
    from prunekit.models import CIFAR_RESNET_DEPTHS, VGG_CIFAR_CFGS

    cifar = {f"resnet{d}" for d in CIFAR_RESNET_DEPTHS} | {f"vgg{d}_cifar" for d in VGG_CIFAR_CFGS}
    return name in cifar


def default_input_size(model: nn.Module) -> tuple[int, ...]:
    """Return the (C, H, W) a model was pruned at, else 32x32 for CIFAR/small-input models, else 224x224."""
    for op in getattr(model, "prunekit_ops", []):
        if "input_shape" in op:
            return tuple(op["input_shape"])
    builder = getattr(model, "prunekit_builder", None) or {}
    if builder.get("kwargs", {}).get("small_input") or is_cifar_model(builder.get("name", "")):
        return (3, 32, 32)
    return (3, 224, 224)


def load_model(args: Any) -> tuple[nn.Module, torch.Tensor]:
    """Return (model, example_inputs of batch 1) for the MODEL_OR_FILE arguments."""
    from prunekit import io, models

    if args.threads is not None:
        torch.set_num_threads(limits.check_threads(args.threads, "--threads"))
    target = args.model
    if os.path.sep in target or target.endswith((".pt", ".pth", ".th")) or os.path.exists(target):
        if not os.path.isfile(target):
            raise UserError(f"{target}: no such file")
        model = io.load(target)
    else:
        # None: the builder's own default (1000 for ImageNet models, 2 for a face detector)
        num_classes = args.num_classes if args.num_classes is not None else (10 if is_cifar_model(target) else None)
        if num_classes is not None:
            limits.check_num_classes(num_classes, "--num-classes")
        model = models.create(target, num_classes=num_classes, small_input=args.small_input)
    # a shape taken from --data names --data in its errors: the user never typed an --input-size
    where = getattr(args, "input_size_from", None) or "--input-size"
    size = (limits.parse_input_size(args.input_size, channels_expected=preflight.input_channels(model), where=where)
            if args.input_size else default_input_size(model))
    model.eval()
    x = torch.zeros(1, *size)
    if args.input_size:
        check_runs_on(model, x, f"{where} {args.input_size}", args.model)
    return model, x


def check_runs_on(model: nn.Module, x: torch.Tensor, where: str, name: str) -> Any:
    """Run `model` once on `x` (no gradients) and return its outputs; a shape the model cannot take
    (a side too small for its pooling, other channels, a missing dimension) is a one-line
    `UserError` starting with `where`."""
    try:
        with torch.no_grad():
            return model(x)
    except (RuntimeError, ValueError, IndexError) as err:
        first = " ".join(str(err).split())[:200]
        raise UserError(f"{where}: {name} cannot run on inputs of shape {'x'.join(map(str, x.shape[1:]))} ({first})") from None


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    """Print a table with rich (plain text when not a terminal)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for i, h in enumerate(header):
        table.add_column(h, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    Console(width=max(100, Console().width)).print(table)


def print_json(obj: Any) -> None:
    """Print `obj` as one JSON object on stdout."""
    json.dump(obj, sys.stdout, indent=2, sort_keys=False, default=jsonable)
    sys.stdout.write("\n")
