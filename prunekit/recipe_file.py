"""Reading recipe and study YAML files, and YAML values typed on the command line: one line per mistake.

`read_recipe_text(path)` returns the top-level mapping of a recipe file and refuses, each with
one line naming the file: a missing file or a directory; a file over `limits.MAX_RECIPE_BYTES`;
binary data (NUL bytes); UTF-16/UTF-32 or other non-UTF-8 text (a UTF-8 byte-order mark is
fine); an empty file or one holding only comments (``/dev/null`` included: an empty recipe would
run every default for minutes; a recipe names at least its method); YAML syntax errors (with
line and column); a key given twice in one mapping (YAML would silently keep the last; the
error names the key and both lines); nesting deeper than `limits.MAX_NESTING`; and a top level
that is not a mapping. `parse_yaml_value(raw, where)` parses one ``--option``/``--set`` value.

No torch here: the recipe layer must not import it.
"""

from __future__ import annotations

import codecs
import os
from pathlib import Path
from typing import Any

import yaml

from prunekit import limits
from prunekit.errors import UserError

EMPTY_RECIPE = ("empty recipe; a recipe needs at least its method, e.g. "
                "method: {name: l1_filter, target: macs=0.5} (see recipes/quickstart.yaml)")


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key repeated in one mapping (naming it and both lines)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: SafeLoader reports it itself below
                    continue
                line = key_node.start_mark.line + 1
                if first is not None:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (first at line {first}, again at line {line})", key_node.start_mark)
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _yaml_error(err: yaml.YAMLError) -> str:
    """Return one line for a YAML error: "line L, column C: problem"."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    problem = getattr(err, "problem", None) or str(err)
    context = getattr(err, "context", None)
    text = " ".join((problem + (f" ({context})" if context and context not in problem else "")).split())
    return f"line {mark.line + 1}, column {mark.column + 1}: {text}" if mark is not None else text


def _depth(obj: Any, limit: int) -> int:
    stack = [(obj, 0)]
    deepest = 0
    seen = 0
    while stack:
        node, d = stack.pop()
        deepest = max(deepest, d)
        seen += 1
        if d > limit or seen > 1_000_000:
            return d
        if isinstance(node, dict):
            stack.extend((v, d + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, d + 1) for v in node)
    return deepest


def decode_text(raw: bytes, label: str, what: str) -> str:
    """Return `raw` as text when it is UTF-8 (an optional BOM dropped); one-line `UserError` otherwise."""
    if raw.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        raise UserError(f"{label}: is UTF-32 text; save the {what} as UTF-8")
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise UserError(f"{label}: is UTF-16 text; save the {what} as UTF-8")
    if b"\x00" in raw:
        hint = "UTF-16 text without a byte-order mark?" if raw[1:2] == b"\x00" or raw[:1] == b"\x00" else "binary data"
        raise UserError(f"{label}: not a text file (NUL bytes: {hint}); a {what} is UTF-8 YAML text")
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8):]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{label}: not UTF-8 text (byte {raw[err.start]:#04x} at offset {err.start}); save the {what} as UTF-8") from None


def parse_yaml_text(text: str, label: str, what: str = "recipe") -> Any:
    """Return the YAML document in `text` (duplicate keys refused); one-line `UserError` naming `label` otherwise."""
    try:
        data = yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as err:
        raise UserError(f"{label}: not valid YAML: {_yaml_error(err)}") from None
    except RecursionError:
        raise UserError(f"{label}: nested too deeply (at most {limits.MAX_NESTING} levels)") from None
    if _depth(data, limits.MAX_NESTING) > limits.MAX_NESTING:
        raise UserError(f"{label}: nested too deeply (at most {limits.MAX_NESTING} levels)")
    return data


def read_yaml_file(path: str | os.PathLike[str], *, what: str = "recipe") -> dict[str, Any]:
    """Return the top-level mapping of the YAML file at `path` (`what` names it in errors: recipe, study).

    An empty document is a `UserError` (see the module docstring for every refusal).
    """
    path = Path(path)
    label = path.name or str(path)
    if not path.exists():
        raise UserError(f"{what} {str(path)!r} not found")
    if path.is_dir():
        raise UserError(f"{what} {str(path)!r} is a directory, not a YAML file")
    try:
        with open(path, "rb") as fh:
            raw = fh.read(limits.MAX_RECIPE_BYTES + 1)
    except OSError as err:
        raise UserError(f"{what} {str(path)!r} cannot be read: {err.strerror}") from None
    if len(raw) > limits.MAX_RECIPE_BYTES:
        raise UserError(f"{label}: larger than the {limits.MAX_RECIPE_BYTES:,} bytes allowed for a {what} file")
    text = decode_text(raw, label, what)
    data = parse_yaml_text(text, label, what)
    if data is None:
        raise UserError(f"{label}: {EMPTY_RECIPE}" if what == "recipe" else f"{label}: empty {what} file")
    if not isinstance(data, dict):
        raise UserError(f"{label}: the top level must be a mapping of sections, not a {type(data).__name__}")
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise UserError(f"{label}: top-level key {bad[0]!r} is not a name")
    if not data and what == "recipe":
        raise UserError(f"{label}: {EMPTY_RECIPE}")
    return data


def read_recipe_text(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Return the top-level mapping of the recipe file at `path`; one-line `UserError` for every mistake."""
    return read_yaml_file(path, what="recipe")


def parse_yaml_value(raw: str, where: str) -> Any:
    """Return `raw` (the VALUE of a ``--option``/``--set`` KEY=VALUE) parsed as YAML; `UserError` starting with `where`."""
    if not raw.strip():
        return None
    try:
        return yaml.load(raw, Loader=UniqueKeyLoader)  # noqa: S506
    except yaml.YAMLError as err:
        raise UserError(f"{where}: value is not valid YAML ({_yaml_error(err)}); quote it or write e.g. [a, b]") from None
    except RecursionError:
        raise UserError(f"{where}: value is nested too deeply") from None
