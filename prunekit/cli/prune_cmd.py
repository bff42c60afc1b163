"""`prunekit prune MODEL_OR_FILE --method M --target UNIT=FRACTION --out FILE`."""

from __future__ import annotations

import os
from typing import Any


from prunekit.cli.common import add_model_arguments, human, load_model, print_json, print_table
from prunekit import limits, safe_load
from prunekit.errors import UserError
from prunekit.recipe_file import parse_yaml_value


def add_parser(sub: Any) -> None:
    p = sub.add_parser("prune", help="prune a model for real and save it")
    add_model_arguments(p)
    p.add_argument("--method", required=True, help="a method name (prunekit list methods)")
    p.add_argument("--target", required=True, help="UNIT=FRACTION removed: channels, params, macs, sparsity, latency")
    p.add_argument("--ignore", action="append", default=[], metavar="GLOB", help="module-name glob to leave untouched (repeatable)")
    p.add_argument("--round-to", default=None, help="keep channel counts multiples of N")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="method option, value parsed as YAML (repeatable)")
    p.add_argument("--repeats", type=int, default=10, help="timed forward passes for each latency median (default 10)")
    p.add_argument("--runtime", default="eager", choices=["eager", "onnxruntime", "compile"],
                   help="where latencies are measured, and where round_to=auto and latency= targets measure (default eager; onnxruntime needs the onnx extra)")
    p.add_argument("--out", required=True, help="where to write the pruned model (prunekit.save format)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--data", default=None, metavar="NAME", help="dataset whose training batches score channels/weights, for methods that need data (snip, ...)")
    p.add_argument("--data-root", default=None, metavar="DIR", help="data directory (default $PRUNEKIT_DATA, then the cache directory)")
    p.add_argument("--data-batches", type=int, default=8, metavar="N", help="training batches the method may use (default 8)")
    p.add_argument("--batch-size", type=int, default=64, help="images per batch for --data (default 64)")
    p.set_defaults(func=run)


def load_batches(args: Any) -> tuple[Any, tuple[int, ...]] | tuple[None, None]:
    """Return (the first --data-batches training batches as a list, the dataset's C x H x W), or (None, None) without --data."""
    if not args.data:
        return None, None
    import itertools

    from prunekit import data

    limits.check_data_batches(args.data_batches, "--data-batches")
    limits.check_batch_size(args.batch_size, "--batch-size")
    # Only the test split's first image per class is decoded: scoring needs training batches.
    bundle = data.load(args.data, root=args.data_root, batch_size=args.batch_size, subset={"test": 1}, augment=False)
    return list(itertools.islice(iter(bundle.train), args.data_batches)), tuple(bundle.input_shape)


def parse_options(items: list[str]) -> dict[str, Any]:
    """Return {key: value} from KEY=VALUE strings, values parsed as YAML scalars."""
    options = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError(f"--option {item!r} is not KEY=VALUE")
        options[key.strip()] = parse_yaml_value(raw, f"--option {item!r}")
    return options


#: prunekit.prune's own arguments: an --option of that name would collide with them (the flag to use, or None)
PRUNE_ARGUMENTS = {"method": "--method", "target": "--target", "ignore": "--ignore", "round_to": "--round-to",
                   "runtime": "--runtime", "data": "--data", "model": None, "example_inputs": "--input-size", "log": None}


def check_method_options(options: dict[str, Any]) -> dict[str, Any]:
    """Return `options` when none is one of prunekit.prune's own arguments (`UserError` naming the flag to use);
    a `task` must be a task name (a string)."""
    for key in options:
        if key in PRUNE_ARGUMENTS:
            flag = PRUNE_ARGUMENTS[key]
            use = f"use {flag}" if flag else "it is not a method option"
            raise UserError(f"--option {key}=...: {key} is an argument of prune itself, not a method option ({use})")
    if "task" in options and not isinstance(options["task"], str):
        raise UserError(f"--option task={options['task']!r}: a task is a name (prunekit list tasks) or module:Class")
    return options


def parse_round_to(text: str | None) -> int | str | None:
    """Return the --round-to value: None, "auto" or a positive integer."""
    if text is None or text == "auto":
        return text
    value = limits.positive_int_text(text)
    if value is None:
        raise UserError(f"--round-to {text!r} must be a positive integer or auto")
    return value


def run(args: Any) -> int:
    import prunekit
    from prunekit import bench, io, methods, structure
    from prunekit.targets import Target

    out_dir = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(out_dir):
        raise UserError(f"--out {args.out}: directory {out_dir} does not exist")
    safe_load.check_output_file(args.out, "--out")
    limits.check_repeats(args.repeats, "--repeats")
    # What can be checked before the slow part (loading, timing) is; prunekit.prune builds the
    # method once and validates its options.
    options = check_method_options(parse_options(args.option))
    round_to = parse_round_to(args.round_to)
    options.setdefault("runtime", args.runtime)
    method_class = methods.METHODS.get(args.method)
    target = Target.parse(args.target)
    if target.unit not in method_class.units:
        raise UserError(f"method {args.method!r} takes a target in {', '.join(method_class.units)}, not {target.unit!r}")
    method_options = {k: v for k, v in options.items() if k != "task"}
    methods.create(args.method, target=target, round_to=round_to, **method_options)  # its options, before loading anything
    if method_class.needs_data and not args.data:
        raise UserError(f"method {args.method!r} scores with data: pass --data NAME (e.g. --data cifar10; prunekit list datasets)")
    batches, shape = load_batches(args)
    if shape is not None and not args.input_size:
        args.input_size = "x".join(str(d) for d in shape)
        args.input_size_from = f"--data {args.data} (its images are)"
    model, x = load_model(args)
    structure.resolve_ignore(model, args.ignore)
    lat_before = bench.latency(model, x, batch_size=1, repeats=max(1, args.repeats), runtime=args.runtime)
    result = prunekit.prune(
        model, method=args.method, target=target, example_inputs=x, ignore=args.ignore, round_to=round_to,
        data=batches, **options,
    )
    lat_after = bench.latency(result.model, x, batch_size=1, repeats=max(1, args.repeats), runtime=args.runtime)
    io.save(result.model, args.out)
    where = {"latency_device": "cpu", "latency_runtime": args.runtime, "latency_batch_size": 1}
    before = {**result.before.to_dict(), "latency_ms": lat_before, **where}
    after = {**result.after.to_dict(), "latency_ms": lat_after, **where}
    if args.json:
        print_json({
            "before": before, "after": after, "achieved": result.achieved, "target": str(result.target),
            "info": result.info, "out": args.out,
        })
        return 0
    rows = []
    for key, label in [("params", "parameters"), ("nonzero_params", "non-zero parameters"), ("macs", "MACs per image"), ("nonzero_macs", "non-zero MACs per image"), ("latency_ms", f"CPU latency, {args.runtime}, batch 1 (ms, measured)")]:
        b, a = before[key], after[key]
        fmt = (lambda v: f"{v:.2f}") if key == "latency_ms" else human
        rows.append([label, fmt(b), fmt(a), f"{a / b:.3f}x" if b else "-"])
    print_table(f"{args.model}: {args.method} to {result.target}", ["", "before", "after", "after/before"], rows)
    achieved = ", ".join(f"{k}={v:.3f}" for k, v in result.achieved.items())
    print(f"achieved (fraction removed): {achieved}")
    for line in _info_lines(result.info):
        print(line)
    if result.after.sparsity > 0:
        print("note: zeroed weights reduce non-zero params and MACs, not dense latency")
    print(f"saved {args.out}")
    return 0


def _info_lines(info: dict) -> list[str]:
    # The two decisions a structured method measured on this machine, said where a user looks.
    lines = []
    round_to = info.get("round_to")
    if isinstance(round_to, dict):
        value = round_to.get("value")
        why = f" ({round_to['reason']})" if round_to.get("reason") else ""
        lines.append(f"round_to: {value if value else 'none'}{why}")
    lat = info.get("latency")
    if isinstance(lat, dict) and "before_ms" in lat:
        timed = len(lat.get("attempts", []))
        lines.append(
            f"latency search: {lat['before_ms']:.2f} -> {lat['after_ms']:.2f} ms ({lat['device']}, {lat['runtime'] + ', ' if lat.get('runtime') else ''}batch "
            f"{lat['batch_size']}), {lat['achieved']:.3f} removed for a target of {lat['target']:.3f}, "
            f"{timed} pruned candidate{'' if timed == 1 else 's'} timed"
        )
        if lat.get("warning"):
            lines.append(f"warning: {lat['warning']}")
    return lines

