"""`prunekit list models|methods|datasets|tasks`."""

from __future__ import annotations

from typing import Any


def add_parser(sub: Any) -> None:
    p = sub.add_parser("list", help="list registered models, methods, datasets or tasks")
    p.add_argument("what", choices=["models", "methods", "datasets", "tasks"])
    p.set_defaults(func=run)


def run(args: Any) -> int:
    if args.what == "models":
        from prunekit import models

        print("\n".join(models.list_models()))
    elif args.what == "methods":
        from prunekit.methods import METHODS

        for name in METHODS.names():
            cls = METHODS.get(name)
            print(f"{name:<14} {cls.kind:<13} {', '.join(cls.units):<22} {cls.description}")
    elif args.what == "tasks":
        from prunekit.tasks import TASKS

        for name in TASKS.names():
            cls = TASKS.get(name)
            primary = f"{cls.primary.name} ({cls.primary.unit}, {'higher' if cls.primary.higher_is_better else 'lower'} is better)"
            print(f"{name:<16} {primary:<30} {cls.description}")
    else:
        from prunekit import data

        print("\n".join(data.list_datasets()))
    return 0
