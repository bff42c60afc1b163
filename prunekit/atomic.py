"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Every writer puts the bytes into a temporary file in the target's directory, named
``.<name>.<pid>.<random>.tmp``, flushes it to disk, then moves it over the target with
`os.replace`. A process killed mid-write leaves only such a temporary file behind;
`clean_temp_files` removes them and `is_temp_file` recognises them (a run directory that holds
nothing else counts as empty). This module depends on nothing else in prunekit, so anything may
use it without an import cycle (serialization of models lives in `prunekit.io`).
"""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

_TEMP = re.compile(r"^\..+\.\d+\.[0-9a-f]{8}\.tmp$")


def temp_path(path: str | os.PathLike) -> str:
    """Return a fresh temporary name next to `path` (in the same directory, so os.replace is atomic)."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    return os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def is_temp_file(path: str | os.PathLike) -> bool:
    """Return True when `path`'s name is one of this module's temporary files."""
    return bool(_TEMP.match(os.path.basename(os.fspath(path))))


def clean_temp_files(directory: str | os.PathLike, *, recursive: bool = False) -> list[Path]:
    """Remove the temporary files an interrupted write left in `directory`; return those removed."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = directory.rglob(".*.tmp") if recursive else directory.glob(".*.tmp")
    removed = []
    for path in found:
        if path.is_file() and is_temp_file(path):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _write_error(err: BaseException, path: str) -> Exception | None:
    # a full disk, a read-only folder...: one line naming the file (prunekit.safe_load.write_error);
    # imported here, not at the top: atomic writes stand on their own (no import cycle)
    if not isinstance(err, Exception):
        return None
    from prunekit.safe_load import write_error

    return write_error(err, path)


def _atomic(path: str | os.PathLike, write: Callable[[Any], Any]) -> str:
    path = os.fspath(path)
    tmp = temp_path(path)
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        # os.open with 0o666 honours the umask, as a plain open() would (mkstemp would leave 0600).
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as err:
        raise (_write_error(err, path) or err) from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        translated = _write_error(err, path)
        if translated is not None:
            raise translated from None
        raise
    return path


def atomic_write(path: str | os.PathLike, data: bytes | str) -> str:
    """Write `data` (str as UTF-8) to `path` atomically; return the path written.

    Missing parent directories are created.
    """
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    return _atomic(path, lambda f: f.write(payload))


def atomic_write_text(path: str | os.PathLike, text: str) -> str:
    """Write `text` as UTF-8 to `path` atomically; return the path written."""
    return atomic_write(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, *, default: Callable[[Any], Any] | None = None,
                      indent: int | None = 2) -> str:
    """Write `obj` as standard JSON (no NaN/Infinity) to `path` atomically; return the path written."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, default=default, allow_nan=False))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> str:
    """`torch.save(obj)` to `path` atomically (as `atomic_write`); return the path written."""
    import torch  # only writers of torch files pay for the import

    return _atomic(path, lambda f: torch.save(obj, f))
