"""Every file prunekit reads goes through here, and every failure becomes one line.

- `read_torch_file(path, what=...)`: a torch file read with ``torch.load(weights_only=True)`` on
  the CPU. A missing file, a directory, an empty, truncated or garbage file, a zip archive with a
  bad member or members larger than the file, a file over `limits.MAX_TORCH_FILE_BYTES`, a pickled
  Python object, or (with ``mapping=True``) anything but a dict is a `UserError` naming the file
  and what was expected. A pickled object is refused in prunekit's own sentence (torch's text
  suggests loading it unsafely); torch's warnings while reading are silenced.
- `check_model_file(obj, path)`: the structure of a prunekit model file (`prunekit.io.save`),
  checked before `prunekit.io.load` builds anything: builder name and plain-data kwargs, no
  ``kwargs.weights`` (a model file carries its own weights and never points at another file: it
  is refused), bounded sizes (the model is first built on the meta device and its parameters
  counted against `limits.MAX_MODEL_PARAMS`), well-formed op history, a str -> tensor state dict.
- `read_json_file` / `read_metrics_file`: a run's metrics.json, size-bounded, UTF-8, a JSON
  object whose known fields have the types the report and compare commands read.
- `write_error(err, path)`: the one-line `UserError` for a failed write (full disk, a directory
  in the way, no permission), used by the atomic writer; `check_output_file(path, where)` checks
  an output path before any work is done.

torch is imported only inside the functions that need it, so the writers can import this module.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import warnings
import zipfile
from collections.abc import Iterator
from typing import Any

from prunekit import limits
from prunekit.errors import UserError

# --------------------------------------------------------------------------------------------
# torch files


def _first_line(err: BaseException, n: int = 160) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip()
    line = text.splitlines()[0] if text else type(err).__name__
    return line if len(line) <= n else line[: n - 3] + "..."


def _check_path(path: str, what: str, limit: int) -> int:
    if not os.path.exists(path):
        raise UserError(f"{path}: no such file (expected {what})")
    if os.path.isdir(path):
        raise UserError(f"{path}: is a directory, not {what}")
    try:
        size = limits.check_file_size(path, limit, what)
    except OSError as err:
        raise UserError(f"{path}: cannot be read ({err.strerror}; expected {what})") from None
    if size == 0 and os.path.isfile(path):
        raise UserError(f"{path}: empty file, not {what}")
    return size


def _check_zip(path: str, size: int, what: str) -> None:
    """Refuse a torch zip archive whose members declare more bytes than the file holds, or are compressed."""
    try:
        is_zip = zipfile.is_zipfile(path)
    except OSError:
        return
    except Exception as err:  # a damaged end-of-archive record
        raise UserError(f"{path}: damaged zip archive ({_first_line(err)}; expected {what})") from None
    if not is_zip:
        return
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, UnicodeDecodeError, NotImplementedError) as err:
        raise UserError(f"{path}: damaged zip archive ({_first_line(err)}; expected {what})") from None
    for info in infos:
        # torch writes every record uncompressed: a record cannot be larger than the file itself
        if info.compress_type != zipfile.ZIP_STORED or info.file_size > size:
            raise UserError(f"{path}: damaged torch archive (member {info.filename[:60]!r} declares "
                            f"{info.file_size:,} bytes in a {size:,}-byte file; expected {what})")


def _unpickling_reason(message: str) -> str:
    """Return prunekit's own words for torch's weights_only refusal (never torch's advice to unpickle)."""
    found = re.search(r"GLOBAL ([\w.]+)", message)
    if found:
        return (f"refused: it holds the pickled Python object {found.group(1)}, which only unpickling could "
                f"restore, and prunekit never unpickles code")
    reason = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n|$)", message.strip() + "\n", re.S)
    detail = " ".join(reason.group(1).split())[:80] if reason else ""
    if detail and "weights_only" not in detail:
        return f"not a torch file that loads safely (damaged, or not torch data: {detail})"
    return "refused: it holds pickled data beyond tensors and plain containers, and prunekit never unpickles code"


def read_torch_file(path: str | os.PathLike, *, what: str = "a torch file (model, checkpoint or state dict)",
                    mapping: bool = False) -> Any:
    """Return the object stored in the torch file at `path`, read with weights_only=True onto the CPU.

    `what` says what the caller expected (it ends every error message); `mapping=True` also
    refuses anything but a dict at the top level. Any failure is a one-line `UserError`.
    """
    import pickle

    import torch

    path = os.fspath(path)
    size = _check_path(path, what, limits.MAX_TORCH_FILE_BYTES)
    _check_zip(path, size, what)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as err:
        raise UserError(f"{path}: {_unpickling_reason(str(err))} (expected {what})") from None
    except EOFError:
        raise UserError(f"{path}: truncated or empty torch file (it ends early; expected {what})") from None
    except MemoryError:
        raise UserError(f"{path}: declares more data than fits in memory (expected {what})") from None
    except Exception as err:  # a damaged file can fail anywhere in torch's reader: it is the file's fault
        detail = _first_line(err)
        detail = "damaged" if "weights_only" in detail else f"{type(err).__name__}: {detail}"
        raise UserError(f"{path}: not a readable torch file ({detail}; expected {what})") from None
    if mapping and not isinstance(obj, dict):
        raise UserError(f"{path}: holds a {type(obj).__name__}, not a dict (expected {what})")
    return obj


# --------------------------------------------------------------------------------------------
# prunekit model files


def plain_data_error(obj: Any, where: str, depth: int = 0) -> str | None:
    """Return where `obj` holds something other than finite JSON-like plain data, or None
    (`prunekit.io.save` checks what it writes with it, `check_model_file` what it reads)."""
    if depth > limits.MAX_NESTING:
        return f"{where} is nested too deeply"
    if obj is None or isinstance(obj, (bool, int, str)):
        return None
    if isinstance(obj, float):
        return None if math.isfinite(obj) else f"{where} is {obj!r}, not a finite number"
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            err = plain_data_error(v, f"{where}[{i}]", depth + 1)
            if err:
                return err
        return None
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, str):
                return f"{where} has the non-string key {k!r:.40}"
            err = plain_data_error(v, f"{where}.{k}", depth + 1)
            if err:
                return err
        return None
    return f"{where} is a {type(obj).__name__}, not plain data"


def _check_builder_kwargs(kwargs: dict[str, Any], bad: Any) -> None:
    for key, value in kwargs.items():
        if not key.isidentifier():
            raise bad(f"builder.kwargs has the key {key!r:.40}, not a keyword-argument name")
        if key == "weights":
            raise bad("builder.kwargs.weights points at another file; a prunekit model file carries its own "
                      "weights and never loads another file (refused)")
        if key == "num_classes":
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limits.MAX_NUM_CLASSES:
                raise bad(f"builder.kwargs.num_classes={value!r:.40} is not an integer in [1, {limits.MAX_NUM_CLASSES:,}]")
            continue
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > limits.MAX_BUILDER_INT:
            raise bad(f"builder.kwargs.{key}={value} is over the limit {limits.MAX_BUILDER_INT:,}")
        if isinstance(value, float) and abs(value) > limits.MAX_BUILDER_INT:
            raise bad(f"builder.kwargs.{key}={value!r} is over the limit {limits.MAX_BUILDER_INT:,}")
        if isinstance(value, (list, tuple, dict)):
            _check_nested_sizes(value, f"builder.kwargs.{key}", bad)


def _check_nested_sizes(value: Any, where: str, bad: Any) -> None:
    items = list(value.values()) if isinstance(value, dict) else list(value)
    if len(items) > 256:
        raise bad(f"{where} has {len(items)} entries (at most 256)")
    for i, item in enumerate(items):
        if isinstance(item, (int, float)) and not isinstance(item, bool) and abs(item) > limits.MAX_BUILDER_LIST_INT:
            raise bad(f"{where}[{i}]={item!r} is over the limit {limits.MAX_BUILDER_LIST_INT:,}")
        if isinstance(item, (list, tuple, dict)):
            _check_nested_sizes(item, f"{where}[{i}]", bad)


def _int_list(value: Any, *, high: int) -> bool:
    return isinstance(value, list) and len(value) <= limits.MAX_CHANNELS and all(
        isinstance(v, int) and not isinstance(v, bool) and 0 <= v < high for v in value)


def _module_bound(module: Any) -> int:
    """Return an upper bound on the channel index of any dimension of `module` (largest parameter dimension)."""
    dims = [d for t in (*module.parameters(recurse=False), *module.buffers(recurse=False)) for d in t.shape]
    for attr in ("in_channels", "out_channels", "num_features", "in_features", "out_features", "channels"):
        v = getattr(module, attr, None)
        if isinstance(v, int):
            dims.append(v)
    return max(dims, default=limits.MAX_CHANNELS)


def _check_ops(ops: list[Any], modules: dict[str, Any] | None, bad: Any, path: str) -> None:
    from prunekit import io, lowrank, structure  # noqa: F401  (importing them registers the replays)

    known = set(io.REPLAYS.names())
    for i, op in enumerate(ops):
        where = f"ops[{i}]"
        if not isinstance(op, dict) or not isinstance(op.get("op"), str):
            raise bad(f"{where} is not a dict with a string 'op'")
        err = plain_data_error(op, where)
        if err:
            raise bad(err)
        name = op["op"]
        if name not in known:
            raise UserError(f"{path}: op {i} is {name[:40]!r}, which nothing registered can replay (known: "
                            f"{', '.join(sorted(known)) or 'none'}); import the module that defines it")
        if name == "prune":
            shape = op.get("input_shape")
            if (not isinstance(shape, list) or not 2 <= len(shape) <= 4
                    or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)
                    or shape[0] > limits.MAX_INPUT_CHANNELS or any(d > limits.MAX_INPUT_SIDE for d in shape[1:])):
                raise bad(f"{where}.input_shape must be 2 to 4 positive integers within the input limits, e.g. [3, 32, 32]")
            history = op.get("history")
            if not isinstance(history, list):
                raise bad(f"{where}.history must be a list of [module name, is_out, [channel indices]]")
            for j, entry in enumerate(history):
                if (not isinstance(entry, list) or len(entry) != 3 or not isinstance(entry[0], str)
                        or not isinstance(entry[1], bool)):
                    raise bad(f"{where}.history[{j}] must be [module name, is_out, [channel indices]]")
                module = modules.get(entry[0]) if modules is not None else None
                if modules is not None and module is None:
                    raise bad(f"{where}.history[{j}] names the module {entry[0][:60]!r}, which the model does not have")
                high = _module_bound(module) if module is not None else limits.MAX_CHANNELS
                if not _int_list(entry[2], high=high):
                    raise bad(f"{where}.history[{j}]: channel indices must be a list of integers in [0, {high})")
        elif name == "lowrank":
            layers = op.get("layers")
            if not isinstance(layers, list):
                raise bad(f"{where}.layers must be a list of {{name, form, mode, rank}}")
            for j, entry in enumerate(layers):
                ok = (isinstance(entry, dict) and isinstance(entry.get("name"), str) and isinstance(entry.get("form"), str)
                      and isinstance(entry.get("mode"), str) and isinstance(entry.get("rank"), int)
                      and not isinstance(entry.get("rank"), bool) and 1 <= entry["rank"] <= limits.MAX_CHANNELS)
                if not ok:
                    raise bad(f"{where}.layers[{j}] must be {{name: str, form: str, mode: str, rank: int in [1, {limits.MAX_CHANNELS:,}]}}")
                if modules is not None and entry["name"] not in modules:
                    raise bad(f"{where}.layers[{j}] names the layer {entry['name'][:60]!r}, which the model does not have")


def estimate_params(name: str, kwargs: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """Return (parameters + buffer elements, {module name: module}) of model `name` built on the meta device.

    Nothing is allocated: the meta device records shapes only.
    """
    from prunekit import models

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = models.create_on_meta(name, **kwargs)
    count = sum(t.numel() for t in (*model.parameters(), *model.buffers()))
    return count, dict(model.named_modules())


def check_model_file(obj: Any, path: str | os.PathLike) -> None:
    """Raise a one-line `UserError` unless `obj` (read from `path`) is a well-formed prunekit model file.

    Checked before any real allocation: format, builder name (a registered model), builder kwargs
    (plain data; `num_classes` and every integer bounded by `prunekit.limits`; no `weights`),
    parameter count of the rebuilt model (built on the meta device) at most
    `limits.MAX_MODEL_PARAMS`, the op history (known op names, module names the model has, channel
    indices within the module's size), and the state dict (str -> tensor).
    """
    import torch

    from prunekit import models

    path = os.fspath(path)

    def bad(message: str) -> UserError:
        return UserError(f"{path}: damaged or hostile prunekit model file: {message}")

    if not isinstance(obj, dict):
        raise UserError(f"{path}: holds a {type(obj).__name__}, not a prunekit model file (expected a dict written by prunekit.io.save)")
    builder, ops, state = obj.get("builder"), obj.get("ops", []), obj.get("state_dict")
    if not isinstance(builder, dict) or not isinstance(builder.get("name"), str):
        raise bad("builder must be {name: str, kwargs: {...}}")
    name = builder["name"]
    if name not in models.list_models():
        raise bad(f"builder.name {name[:60]!r} is not a known model")
    kwargs = builder.get("kwargs", {})
    if not isinstance(kwargs, dict):
        raise bad(f"builder.kwargs is a {type(kwargs).__name__}, not a mapping of keyword arguments")
    err = plain_data_error(kwargs, "builder.kwargs")
    if err:
        raise bad(err)
    _check_builder_kwargs(kwargs, bad)
    if not isinstance(ops, list):
        raise bad(f"ops is a {type(ops).__name__}, not a list")
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise bad("state_dict must be a mapping of str -> tensor")
    _check_ops(ops, None, bad, path)  # shapes of the entries first: cheap, and the meta build needs sane kwargs only
    try:
        count, modules = estimate_params(name, kwargs)
    except UserError as err:
        raise bad(f"builder: {err}") from None
    except Exception as err:  # a kwarg the builder rejects (wrong type, value it cannot build)
        raise bad(f"builder.kwargs do not build {name} ({type(err).__name__}: {_first_line(err)})") from None
    if count > limits.MAX_MODEL_PARAMS:
        raise bad(f"the builder arguments ask for a {name} of {count:,} parameters, over the limit "
                  f"{limits.MAX_MODEL_PARAMS:,} (prunekit.limits.MAX_MODEL_PARAMS)")
    _check_ops(ops, modules, bad, path)


@contextlib.contextmanager
def damaged(path: str | os.PathLike, part: str) -> Iterator[None]:
    """Turn any exception but a `UserError` raised while rebuilding `part` of the file at `path` into a `UserError`."""
    try:
        yield
    except UserError:
        raise
    except Exception as err:
        raise UserError(f"{os.fspath(path)}: damaged prunekit model file: {part} cannot be replayed "
                        f"({type(err).__name__}: {_first_line(err)})") from None


# --------------------------------------------------------------------------------------------
# JSON files (metrics.json)


def read_json_file(path: str | os.PathLike, *, what: str, limit: int = limits.MAX_METRICS_BYTES) -> Any:
    """Return the parsed JSON at `path` (UTF-8, at most `limit` bytes); one-line `UserError` otherwise."""
    path = os.fspath(path)
    _check_path(path, what, limit)
    try:
        with open(path, "rb") as fh:
            raw = fh.read(limit + 1)
    except OSError as err:
        raise UserError(f"{path}: cannot be read ({err.strerror}; expected {what})") from None
    if not raw.strip():
        raise UserError(f"{path}: empty file, not {what}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text (byte {raw[err.start]:#04x} at offset {err.start}), not {what}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not valid JSON (line {err.lineno}, column {err.colno}: {err.msg}; expected {what})") from None
    except RecursionError:
        raise UserError(f"{path}: nested too deeply (expected {what})") from None


_NUMBER = (int, float)
_STATUSES = ("running", "complete", "failed")
#: metrics.json field -> the types the readers accept (None always allowed, except where noted)
_TOP_TYPES: dict[str, tuple[type, ...]] = {
    "stage": (str,), "error": (str,), "recipe": (str,), "recipe_file": (str,), "method": (str,),
    "method_kind": (str,), "target": (str,), "dataset": (str,), "model": (str,), "device": (str,),
    "seed": (int,), "threads": (int,), "baseline": (dict,), "final": (dict,), "achieved": (dict,),
    "stages": (list,), "layers": (list,), "wall_time_s": (dict,), "method_info": (dict,),
    "report": (dict,), "completed_stages": (list,),
}
_MEASURE_STR = ("latency_device", "latency_runtime")


def check_metrics(obj: Any, path: str | os.PathLike) -> dict[str, Any]:
    """Return `obj` when it has the shape of a run's metrics.json; one-line `UserError` naming the field otherwise."""
    path = os.fspath(path)

    def bad(field: str, expected: str, value: Any) -> UserError:
        return UserError(f"{path}: {field}: expected {expected}, got {type(value).__name__} {str(value)[:40]!r} (not a metrics.json written by prunekit run)")

    if not isinstance(obj, dict):
        raise UserError(f"{path}: holds a JSON {type(obj).__name__}, not an object (not a metrics.json written by prunekit run)")
    if obj.get("status") not in _STATUSES:
        raise bad("status", " or ".join(_STATUSES), obj.get("status"))
    for key, types in _TOP_TYPES.items():
        value = obj.get(key)
        if value is not None and (not isinstance(value, types) or (types == (int,) and isinstance(value, bool))):
            raise bad(key, " or ".join(t.__name__ for t in types), value)
    for section in ("baseline", "final"):
        for k, v in (obj.get(section) or {}).items():
            expected = (str,) if k in _MEASURE_STR else _NUMBER
            if v is not None and not isinstance(v, expected):
                raise bad(f"{section}.{k}", "text" if k in _MEASURE_STR else "a number", v)
        sparsity = (obj.get(section) or {}).get("sparsity", 0)
        if not isinstance(sparsity, _NUMBER):
            raise bad(f"{section}.sparsity", "a number", sparsity)
    for k, v in (obj.get("achieved") or {}).items():
        if v is not None and not isinstance(v, _NUMBER):
            raise bad(f"achieved.{k}", "a number", v)
    if not isinstance((obj.get("achieved") or {}).get("sparsity", 0), _NUMBER):
        raise bad("achieved.sparsity", "a number", obj["achieved"]["sparsity"])
    for k, v in (obj.get("wall_time_s") or {}).items():
        if not isinstance(v, _NUMBER):
            raise bad(f"wall_time_s.{k}", "a number", v)
    for i, st in enumerate(obj.get("stages") or []):
        if not isinstance(st, dict):
            raise bad(f"stages[{i}]", "an object", st)
        for k, v in st.items():
            if k not in ("method", "kind", "target") and v is not None and not isinstance(v, _NUMBER):
                raise bad(f"stages[{i}].{k}", "a number", v)
    for i, row in enumerate(obj.get("layers") or []):
        if not isinstance(row, dict) or not isinstance(row.get("name"), str):
            raise bad(f"layers[{i}]", "an object with a name", row)
        for k, v in row.items():
            if k not in ("name", "kind") and v is not None and not isinstance(v, _NUMBER):
                raise bad(f"layers[{i}].{k}", "a number", v)
    for i, stage in enumerate(obj.get("completed_stages") or []):
        if not isinstance(stage, str):
            raise bad(f"completed_stages[{i}]", "text", stage)
    return obj


def read_metrics_file(path: str | os.PathLike) -> dict[str, Any]:
    """Return the checked content of the metrics.json at `path` (see `check_metrics`)."""
    return check_metrics(read_json_file(path, what="a run's metrics.json"), path)


# --------------------------------------------------------------------------------------------
# writes

_WRITE_REASONS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EISDIR: "it is a directory",
    errno.ENOTDIR: "a part of the path is a file, not a directory",
    errno.EEXIST: "a part of the path is a file, not a directory",
    errno.ENAMETOOLONG: "the file name is too long",
    errno.EFBIG: "file too large",
}


def _os_error(err: BaseException) -> OSError | None:
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno is not None:
            return err
        err = err.__cause__ or err.__context__
    return None


def write_error(err: BaseException, path: str | os.PathLike) -> UserError | None:
    """Return the one-line `UserError` for the failed write of `path` (full disk, permissions, a file
    or directory in the way), or None when `err` is not such a failure (a bug keeps its traceback).

    torch.save wraps the writer's OSError in a RuntimeError; the chain is searched for it.
    """
    found = _os_error(err)
    if found is None:
        return None
    reason = _WRITE_REASONS.get(found.errno, found.strerror or f"errno {found.errno}")
    if found.errno in (errno.ENOSPC, errno.EDQUOT):
        return UserError(f"{reason} writing {os.fspath(path)}: nothing was written; free some space and run again")
    return UserError(f"cannot write {os.fspath(path)}: {reason}")


def check_output_file(path: str | os.PathLike, where: str = "--out") -> str:
    """Return `path` when a file can be written there: not a directory, its parent a directory (or creatable)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise UserError(f"{where} {path}: is a directory; give a file name, e.g. {os.path.join(path, 'model.pt')}")
    parent = os.path.dirname(os.path.abspath(path))
    probe = parent
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise UserError(f"{where} {path}: lies under {probe}, which is a file, not a directory")
    return path


def check_output_dir(path: str | os.PathLike, where: str = "--out") -> str:
    """Return `path` when a directory can be there: it is one, or it and its missing parents can be created."""
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{where} {path}: exists and is not a directory")
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise UserError(f"{where} {path}: lies under {probe}, which is a file, not a directory")
    return path
