"""`prunekit report DIR` (re-render a run's report) and `prunekit compare DIR...` (one table over runs)."""

from __future__ import annotations

from typing import Any


def add_parser(sub: Any) -> None:
    p = sub.add_parser("report", help="re-render report.md and the plots of a finished run directory, or a study's study.md and plots")
    p.add_argument("run_dir", metavar="DIR", help="a run directory written by prunekit run, or a study directory written by prunekit study")
    p.set_defaults(func=run_report)

    c = sub.add_parser("compare", help="print one markdown table comparing several run directories")
    c.add_argument("run_dirs", metavar="DIR", nargs="+", help="run directories written by prunekit run")
    c.add_argument("--out", default=None, metavar="FILE", help="also write the table to FILE (markdown)")
    c.set_defaults(func=run_compare)


def run_report(args: Any) -> int:
    from pathlib import Path

    from prunekit.report import render_report
    from prunekit.study import STUDY_FILE, render_study

    if (Path(args.run_dir) / STUDY_FILE).is_file():  # a study directory: table, headline and plots from its runs
        path = render_study(args.run_dir)["path"]
        print(path.read_text(encoding="utf-8"))
        print(f"study: {path}")
        return 0
    path = render_report(args.run_dir)
    print(path.read_text(encoding="utf-8"))
    print(f"report: {path}")
    return 0


def run_compare(args: Any) -> int:
    from prunekit.report import compare_table

    if args.out:
        from prunekit.safe_load import check_output_file

        check_output_file(args.out, "--out")
    table = compare_table(args.run_dirs)
    print(table, end="")
    if args.out:
        from prunekit.atomic import atomic_write

        atomic_write(args.out, table)
        print(f"written: {args.out}")
    return 0
