"""`prunekit list models|methods|datasets`."""

from __future__ import annotations

from typing import Any


def add_parser(sub: Any) -> None:
    p = sub.add_parser("list", help="list registered models, methods or datasets")
    p.add_argument("what", choices=["models", "methods", "datasets"])
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
    else:
        from prunekit import data

        print("\n".join(data.list_datasets()))
    return 0
