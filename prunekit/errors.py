"""Errors that are the user's to fix.

A `UserError` is printed by the command line as one line on stderr, with exit code 2 and no
traceback. Raise it for bad input (unknown names, bad files, out-of-range values); let genuine
bugs raise anything else so they keep their traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(ValueError):
    """A mistake in the user's input, reported as one line (exit code 2 on the command line)."""


def unknown_name(kind: str, name: str, known: Iterable[str]) -> UserError:
    """Return a `UserError` for an unknown `name` of `kind`, naming the closest known names."""
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    listing = ", ".join(known) if len(known) <= 25 else ", ".join(known[:25]) + f", ... ({len(known)} in all)"
    return UserError(f"unknown {kind} {name!r}{hint} (known: {listing})")
