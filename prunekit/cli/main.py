"""`prunekit` entry point: parses arguments, dispatches to a command module, maps errors to exit codes.

Each command module defines `add_parser(subparsers)` (which sets `func=run` on its parser) and
`run(args) -> int`. A `UserError` becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys

from prunekit._version import __version__
from prunekit.errors import UserError

# Command modules, in the order `prunekit --help` lists them.
COMMAND_MODULES = [
    "prunekit.cli.list_cmd",
    "prunekit.cli.analyze",
    "prunekit.cli.prune_cmd",
    "prunekit.cli.evaluate_cmd",
    "prunekit.cli.run_cmd",
    "prunekit.cli.report_cmd",
    "prunekit.cli.detect_cmd",
]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like every user mistake
        self.exit(2, f"prunekit: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """Return the full argument parser with every command registered."""
    import importlib

    parser = _Parser(prog="prunekit", description="Prune CNNs for real and measure what it buys.")
    parser.add_argument("--version", action="version", version=f"prunekit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit code (0 ok, 2 user error, 130 interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # `run --nproc N` re-runs these under torchrun
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as err:
        if os.environ.get("RANK", "0") == "0":  # under torchrun every rank raises it; rank 0 says it once
            print(f"prunekit: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("prunekit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
