"""Checks of a recipe against the model, the data and the files it names, before a run writes anything.

`check_run(recipe, out_dir=...)` is called by the experiment before it creates the run directory;
each mistake is ONE line in the recipe's format (``file: dotted.path: what is wrong``):

- `--out`: exists and is not a directory, or lies under a file;
- names: an unknown method or model, method options or a target the method refuses;
- `data`: an unknown dataset, an unknown split in ``data.subset`` (``{trian: 5}``), an unknown
  dataset option, a data root given (``data.root``, ``--data-root``, ``$PRUNEKIT_DATA``) that is
  not a directory;
- `method.target`: missing for a method that needs one;
- `model`: unknown builder kwargs or values it cannot build, a model over
  `limits.MAX_MODEL_PARAMS` parameters (the model is built on the meta device: nothing is
  allocated), an ``ignore`` glob that matches no module;
- `model.weights`: not a readable torch file, not a state dict, or weights of another
  architecture (keys and shapes compared with the model built on the meta device);
- `baseline.checkpoint`: not a prunekit model file (checked by `safe_load.check_model_file`) and
  not a state dict that fits the model.

`input_channels(model)` returns the channels a model's first layer takes (for ``--input-size``).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

from prunekit import limits, safe_load
from prunekit.errors import UserError

#: classes of the registered datasets whose size the recipe may leave implicit (model.num_classes: null)
KNOWN_CLASSES = {"cifar10": 10, "cifar100": 100, "svhn": 10, "mnist": 10, "fashion_mnist": 10, "imagenet": 1000,
                 "caltech101": 101}
#: datasets that read no files under the data root
NO_ROOT = ("synthetic",)
#: methods that cannot run without a target (used when a method class does not say `requires_target`)
TARGET_REQUIRED = ("l1_filter", "l2_filter", "random", "magnitude", "snip", "snip_channel", "grasp", "synflow", "slimming")


def _field(recipe: Any, path: str, err: UserError | str) -> UserError:
    return recipe.field_error(path, str(err))


def input_channels(model: Any) -> int | None:
    """Return the input channels of the first convolution of `model`, or None when it has none."""
    from torch import nn

    for module in model.modules():
        if isinstance(module, nn.modules.conv._ConvNd):
            return int(module.in_channels)
    return None


def num_classes_of(recipe: Any) -> int | None:
    """Return the classifier size the run will build: model.num_classes, else the dataset's when known."""
    if recipe.model.num_classes:
        return recipe.model.num_classes
    if recipe.data.name == "synthetic":
        from prunekit.data.synthetic import DEFAULTS

        return int(recipe.data.options.get("num_classes", DEFAULTS["num_classes"]))
    return KNOWN_CLASSES.get(recipe.data.name)


def check_data(recipe: Any) -> None:
    """Raise a one-line `UserError` for an unknown dataset, split in data.subset, option, or a missing data root."""
    from prunekit import data
    from prunekit.data.bundle import COMMON_OPTIONS, LOADER_OPTIONS

    d = recipe.data
    try:
        spec = data.dataset_spec(d.name)
    except UserError as err:
        raise _field(recipe, "data.name", err) from None
    if isinstance(d.subset, dict):
        unknown = [k for k in d.subset if k not in spec.splits]
        if unknown:
            raise _field(recipe, f"data.subset.{unknown[0]}", f"dataset {d.name!r} has no split {unknown[0]!r} (its splits: {', '.join(spec.splits)})")
    unknown = sorted(set(d.options) - set(spec.options) - set(COMMON_OPTIONS) - set(LOADER_OPTIONS))
    if unknown:
        allowed = [*spec.options, *COMMON_OPTIONS, *LOADER_OPTIONS]
        raise _field(recipe, f"data.options.{unknown[0]}", f"dataset {d.name!r} has no option {unknown[0]!r} (its options: {', '.join(allowed)})")
    if d.name in NO_ROOT or d.name.startswith("imagefolder:") or d.options.get("download"):
        return
    root = data.data_root(d.root)
    if not root.is_dir():
        given = "data.root" if d.root else (f"${data.paths.ENV_ROOT}" if os.environ.get(data.paths.ENV_ROOT) else "the default data root")
        raise _field(recipe, "data.root", f"data directory {root} (from {given}) does not exist; point data.root, --data-root or ${data.paths.ENV_ROOT} at the folder holding the dataset")


def check_target(recipe: Any) -> None:
    """Raise a one-line `UserError` when the recipe's method needs a target and has none."""
    from prunekit.methods import METHODS

    m = recipe.method
    if m.target is not None or m.name not in METHODS.names():
        return
    cls = METHODS.get(m.name)
    needs = getattr(cls, "requires_target", m.name in TARGET_REQUIRED)
    if needs:
        units = ", ".join(getattr(cls, "units", ()) or ())
        raise _field(recipe, "method.target", f"method {m.name!r} needs a target (UNIT=FRACTION removed, units: {units}), e.g. {(getattr(cls, 'units', None) or ('macs',))[0]}=0.5")


def meta_model(recipe: Any, num_classes: int) -> Any:
    """Return the recipe's model built on the meta device (no memory allocated, random init skipped)."""
    from prunekit import models

    m = recipe.model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return models.create_on_meta(m.name, num_classes=num_classes, small_input=m.small_input, **m.kwargs)


def _fit(model: Any, path: str) -> None:
    from prunekit import models

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # copying into meta tensors is a no-op torch warns about
        models.load_weights(model, path)


def check_model(recipe: Any) -> None:
    """Raise a one-line `UserError` for model kwargs, size, ignore globs, weights and checkpoint that cannot work."""
    from prunekit import io, models, structure

    m = recipe.model
    if m.name not in models.list_models():
        return  # the experiment's name check says it with the list of models
    classes = num_classes_of(recipe)
    try:
        model = meta_model(recipe, classes or 10)
    except UserError as err:
        raise _field(recipe, "model.kwargs" if m.kwargs else "model", err) from None
    except Exception as err:  # a kwarg value the builder cannot use
        raise _field(recipe, "model.kwargs", f"model {m.name!r} cannot be built with {m.kwargs} ({type(err).__name__}: {safe_load._first_line(err)})") from None
    count = sum(t.numel() for t in (*model.parameters(), *model.buffers()))
    if count > limits.MAX_MODEL_PARAMS:
        raise _field(recipe, "model", f"{m.name} with these arguments has {count:,} parameters, over the limit {limits.MAX_MODEL_PARAMS:,}")
    if recipe.method.ignore:
        try:
            structure.resolve_ignore(model, recipe.method.ignore)
        except UserError as err:
            raise _field(recipe, "method.ignore", err) from None
    if models.is_imagenet(m.weights):
        from prunekit.models import imagenet

        try:  # an architecture without such weights, or (offline) a file neither cached nor downloadable
            if not imagenet.weights_file(m.name, m.weights).is_file():
                imagenet.imagenet_state_dict(m.name, m.weights, progress=False)
        except UserError as err:
            raise _field(recipe, "model.weights", err) from None
    elif m.weights is not None:
        if not Path(m.weights).is_file():
            raise _field(recipe, "model.weights", f"no such file {m.weights} (relative paths resolve against the working directory)")
        try:
            obj = safe_load.read_torch_file(m.weights, what="pretrained weights (a state dict)")
            if isinstance(obj, dict) and obj.get("format") == io.FORMAT:
                raise UserError(f"{m.weights}: is a prunekit model file; give it as baseline.checkpoint, not model.weights")
            if classes is not None:
                _fit(model, m.weights)
            else:
                models.weights.extract_state_dict(obj, path=m.weights)
        except UserError as err:
            raise _field(recipe, "model.weights", err) from None
    ckpt = recipe.baseline.checkpoint
    if ckpt is not None:
        if not Path(ckpt).is_file():
            raise _field(recipe, "baseline.checkpoint", f"no such file {ckpt} (relative paths resolve against the working directory)")
        try:
            obj = safe_load.read_torch_file(ckpt, what="a prunekit model file or a state dict")
            if isinstance(obj, dict) and obj.get("format") == io.FORMAT:
                safe_load.check_model_file(obj, ckpt)
            elif classes is not None:
                _fit(model, ckpt)
            else:
                models.weights.extract_state_dict(obj, path=ckpt)
        except UserError as err:
            raise _field(recipe, "baseline.checkpoint", err) from None


def check_names(recipe: Any) -> None:
    """Raise a one-line `UserError` for an unknown method or model, or method settings it refuses."""
    from prunekit import methods, models
    from prunekit.errors import unknown_name

    m = recipe.method
    try:
        methods.create(m.name, target=m.target, ignore=m.ignore, round_to=m.round_to, **m.options)
    except UserError as err:
        raise _field(recipe, "method.name" if m.name not in methods.list_methods() else "method", err) from None
    if recipe.model.name not in models.list_models():
        raise _field(recipe, "model.name", unknown_name("model", recipe.model.name, models.list_models()))


def check_run(recipe: Any, *, out_dir: str | os.PathLike | None = None) -> None:
    """Run every check of this module (output directory, names, data, target, model and files); one-line `UserError`."""
    if out_dir is not None:
        safe_load.check_output_dir(out_dir, "--out")
    check_names(recipe)
    check_data(recipe)
    check_target(recipe)
    check_model(recipe)
