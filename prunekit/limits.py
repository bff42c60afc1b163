"""The limits prunekit enforces on what users and files ask for, in one place, and their checks.

Every number a recipe, a command-line flag or a file can set that decides how much time or memory
a run takes is bounded here, so that a typo (``epochs: 1000000000000``, ``threads: 100000``) or a
hostile file (a 1 KB model file declaring a billion classes) is refused with one line before
anything is allocated or written. The values are generous: no real experiment comes near them.
The checks are pure functions (no torch), usable from the recipe schema and the command line;
each raises `prunekit.UserError` whose text starts with `where` (a flag such as ``--threads`` or
``recipe.yaml: threads``).
"""

from __future__ import annotations

import math
import os

from prunekit.errors import UserError

#: training epochs of one stage (a 1000-epoch schedule is already far beyond any paper's)
MAX_EPOCHS = 10_000
#: CPU threads per core reported by os.cpu_count() (torch's intra-op pool; libgomp runs out of memory far above)
THREADS_PER_CPU = 4
#: timed repeats of a latency measurement
MAX_REPEATS = 100_000
#: images per batch (training, evaluation, latency)
MAX_BATCH_SIZE = 65_536
#: scoring batches a method may draw (method.data_batches, prune --data-batches)
MAX_DATA_BATCHES = 100_000
#: one side (height or width) of an input image, and its channels
MAX_INPUT_SIDE = 8_192
MAX_INPUT_CHANNELS = 64
#: classifier outputs (ImageNet-21k has 21,841)
MAX_NUM_CLASSES = 100_000
#: parameters of a model a file may ask prunekit to build (estimated on the meta device first): 2e9, 8 GB in float32
MAX_MODEL_PARAMS = 2_000_000_000
#: an integer builder argument in a model file (num_classes has its own limit), and one inside a list
MAX_BUILDER_INT = 1_000_000
MAX_BUILDER_LIST_INT = 4_096
#: channel indices and ranks in a model file's op history
MAX_CHANNELS = 1_000_000
#: bytes read from files: torch files (models, checkpoints, state dicts), recipes and study files, metrics.json
MAX_TORCH_FILE_BYTES = 16 * 2**30
MAX_RECIPE_BYTES = 1 * 2**20
MAX_METRICS_BYTES = 64 * 2**20
#: nesting depth of a recipe or metrics.json
MAX_NESTING = 64


def max_threads() -> int:
    """Return the largest thread count accepted on this machine: THREADS_PER_CPU x os.cpu_count()."""
    return THREADS_PER_CPU * max(1, os.cpu_count() or 1)


def _int(value: object, where: str, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"{where}: {value!r} is not an integer ({what})")
    return value


def check_range(value: object, where: str, *, low: int, high: int, what: str) -> int:
    """Return `value` when it is an integer in [low, high]; `UserError` (one line starting with `where`) otherwise."""
    n = _int(value, where, what)
    if n < low:
        raise UserError(f"{where}: {n} is less than {low} ({what})")
    if n > high:
        raise UserError(f"{where}: {n} is more than the {high:,} allowed ({what}; limit in prunekit.limits)")
    return n


def check_threads(n: object, where: str = "--threads") -> int:
    """Return `n` when 1 <= n <= max_threads() (4 per CPU of this machine)."""
    return check_range(n, where, low=1, high=max_threads(), what=f"CPU threads; this machine has {os.cpu_count()} CPUs")


def check_repeats(n: object, where: str = "--repeats") -> int:
    """Return `n` when 1 <= n <= MAX_REPEATS (timed repeats of a latency median)."""
    return check_range(n, where, low=1, high=MAX_REPEATS, what="timed repeats, at least 1")


def check_epochs(n: object, where: str) -> int:
    """Return `n` when 0 <= n <= MAX_EPOCHS."""
    return check_range(n, where, low=0, high=MAX_EPOCHS, what="training epochs")


def check_batch_size(n: object, where: str) -> int:
    """Return `n` when 1 <= n <= MAX_BATCH_SIZE."""
    return check_range(n, where, low=1, high=MAX_BATCH_SIZE, what="images per batch")


def check_data_batches(n: object, where: str) -> int:
    """Return `n` when 1 <= n <= MAX_DATA_BATCHES."""
    return check_range(n, where, low=1, high=MAX_DATA_BATCHES, what="scoring batches")


def check_num_classes(n: object, where: str) -> int:
    """Return `n` when 1 <= n <= MAX_NUM_CLASSES."""
    return check_range(n, where, low=1, high=MAX_NUM_CLASSES, what="classifier outputs")


def check_finite(value: object, where: str) -> float:
    """Return `value` as a float when it is a finite number (not NaN, not +-inf)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"{where}: {value!r} is not a number")
    if not math.isfinite(value):
        raise UserError(f"{where}: {value!r} is not a finite number")
    return float(value)


def positive_int_text(text: str) -> int | None:
    """Return `text` (a command-line or environment value) as an integer >= 1, or None when it is
    not one; the caller words the error, naming where the value came from."""
    try:
        value = int(text)
    except ValueError:
        return None
    return value if value >= 1 else None


def parse_input_size(text: str, *, channels_expected: int | None = None, where: str = "--input-size") -> tuple[int, ...]:
    """Return (C, H, W) (or (C, L), (C, D, H, W)) from text like "3x224x224", bounded by the limits.

    `channels_expected` (the model's input channels, when known) must equal C.
    """
    try:
        dims = tuple(int(v) for v in str(text).lower().split("x"))
    except ValueError:
        dims = ()
    if not 2 <= len(dims) <= 4 or any(d <= 0 for d in dims):
        raise UserError(f"{where} {text!r} must look like 3x224x224 (C x H x W, positive integers)")
    if dims[0] > MAX_INPUT_CHANNELS or any(d > MAX_INPUT_SIDE for d in dims[1:]):
        raise UserError(f"{where} {text!r} is larger than the limit ({MAX_INPUT_CHANNELS} channels, {MAX_INPUT_SIDE} per side)")
    if channels_expected is not None and dims[0] != channels_expected:
        raise UserError(f"{where} {text!r} has {dims[0]} channel(s) but the model takes {channels_expected} "
                        f"(e.g. {channels_expected}x{'x'.join(map(str, dims[1:]))})")
    return dims


def check_file_size(path: str | os.PathLike, limit: int, what: str) -> int:
    """Return the size of the file at `path` in bytes; `UserError` when it is over `limit`."""
    size = os.stat(path).st_size
    if size > limit:
        raise UserError(f"{os.fspath(path)}: {size:,} bytes is more than the {limit:,} allowed for {what} (limit in prunekit.limits)")
    return size
