"""Where datasets live and where their decoded caches go.

The data root is, in order: the `root` argument (`--data-root` on the command line), the
environment variable PRUNEKIT_DATA, else a user cache directory (~/.cache/prunekit/data, or
$XDG_CACHE_HOME/prunekit/data). Decoded uint8 caches go into `<root>/prunekit-cache/` when the
root is writable, else into the user cache (~/.cache/prunekit/cache), so a read-only shared data
folder still works.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from prunekit.errors import UserError

ENV_ROOT = "PRUNEKIT_DATA"


def user_cache_home() -> Path:
    """Return prunekit's per-user cache directory (not created)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.environ.get("LOCALAPPDATA")
    return (Path(base) if base else Path.home() / ".cache") / "prunekit"


def data_root(root: str | os.PathLike | None = None) -> Path:
    """Return the data root: `root`, else $PRUNEKIT_DATA, else ~/.cache/prunekit/data."""
    if root is not None and str(root) != "":
        return Path(root).expanduser()
    env = os.environ.get(ENV_ROOT)
    if env:
        return Path(env).expanduser()
    return user_cache_home() / "data"


def cache_dir(root: Path, override: str | os.PathLike | None = None) -> Path:
    """Return (and create) the folder for decoded caches of datasets found under `root`."""
    if override is not None:
        path = Path(override).expanduser()
    elif _writable(root):
        path = root / "prunekit-cache"
    else:
        path = user_cache_home() / "cache"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create the dataset cache folder {path}: {err.strerror}") from None
    return path


def _writable(folder: Path) -> bool:
    # root passes os.access everywhere: also honour a folder marked read-only by its mode bits
    try:
        return folder.is_dir() and os.access(folder, os.W_OK) and bool(folder.stat().st_mode & 0o222)
    except OSError:
        return False


def missing(name: str, searched: Sequence[Path], *, hint: str = "", downloadable: bool = True) -> UserError:
    """Return the one-line error for a dataset found nowhere, naming every path searched."""
    where = ", ".join(str(p) for p in searched)
    how = [f"put it at one of those paths", f"or point --data-root / {ENV_ROOT} at the folder holding it"]
    if downloadable:
        how.append("or pass download=True (data.options.download: true in a recipe) where the network allows")
    extra = f" ({hint})" if hint else ""
    return UserError(f"dataset {name!r} not found; searched {where}{extra}; {', '.join(how)}")
