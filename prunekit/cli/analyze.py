"""`prunekit analyze MODEL_OR_FILE`: params, MACs, prunable groups, CPU latency at batch 1 on a runtime."""

from __future__ import annotations

from typing import Any

from prunekit import limits
from prunekit.cli.common import add_model_arguments, human, load_model, print_json, print_table


def add_parser(sub: Any) -> None:
    p = sub.add_parser("analyze", help="params, MACs, prunable channel groups and CPU latency of a model")
    add_model_arguments(p)
    p.add_argument("--repeats", type=int, default=10, help="timed forward passes for the latency median (default 10)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--latency", action="store_true", help="also time every layer (forward hooks, eager CPU, batch 1, median of --repeats)")
    p.add_argument("--runtime", default="eager", choices=["eager", "onnxruntime", "compile"],
                   help="where the model's latency is measured (default eager; onnxruntime needs the onnx extra)")
    p.set_defaults(func=run)


def run(args: Any) -> int:
    from prunekit import bench, structure
    from prunekit.metrics import measure

    limits.check_repeats(args.repeats, "--repeats")
    model, x = load_model(args)
    m = measure(model, x)
    groups = structure.channel_groups(model, x)
    runtime = getattr(args, "runtime", "eager") or "eager"
    lat = bench.latency(model, x, device="cpu", batch_size=1, repeats=max(1, args.repeats), runtime=runtime)
    result = {
        **m.to_dict(),
        "prunable_groups": len(groups),
        "prunable_channels": sum(g.size for g in groups),
        "input_size": list(x.shape[1:]),
        "latency_ms": lat,
        "latency_device": "cpu",
        "latency_runtime": runtime,
        "latency_batch_size": 1,
    }
    layer_rows: list[Any] = []
    if getattr(args, "latency", False):
        from prunekit.allocation import profile_layers

        layer_rows, total = profile_layers(model, x, device="cpu", repeats=max(1, args.repeats))
        result["layer_latency_total_ms"] = total
        result["layer_latency_runtime"] = "eager"  # forward hooks see PyTorch modules only
        result["layer_latency"] = [{"name": r.name, "kind": r.kind, "ms": r.ms, "share": r.share} for r in layer_rows]
    if args.json:
        print_json(result)
        return 0
    rows = [
        ["parameters", human(m.params)],
        ["non-zero parameters", human(m.nonzero_params)],
        ["MACs per image", human(m.macs)],
        ["non-zero MACs per image", human(m.nonzero_macs)],
        ["size (dense, bytes)", human(m.size_bytes)],
        ["prunable channel groups", str(len(groups))],
        ["prunable channels", str(result["prunable_channels"])],
        [f"CPU latency, {runtime}, batch 1 (measured, median)", f"{lat:.2f} ms"],
    ]
    print_table(f"{args.model} at {'x'.join(map(str, x.shape[1:]))}", ["", "value"], rows)
    if layer_rows:
        outside = result["layer_latency_total_ms"] - sum(r.ms for r in layer_rows)
        table = [[r.name, r.kind, f"{r.ms:.3f}", f"{100 * r.share:.1f}%"] for r in layer_rows]
        table.append(["(outside modules: adds, reshapes)", "", f"{outside:.3f}", ""])
        print_table(
            f"time per layer, CPU, eager, batch 1, measured with forward hooks (median of {max(1, args.repeats)} passes; "
            f"forward {result['layer_latency_total_ms']:.2f} ms)",
            ["layer", "type", "ms", "share"], table,
        )
    return 0
