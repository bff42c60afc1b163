"""The recipe: a YAML file that says what one experiment runs, validated by a pydantic schema.

Precedence: schema defaults -> the file -> ``--set a.b=value`` overrides (values parsed as YAML
scalars, so ``--set finetune.epochs=3`` is an int and ``--set method.ignore=[fc]`` a list).
Every mistake is ONE line naming the file, the dotted field path and what is allowed::

    quickstart.yaml: method.target: target 'macs=2' is outside (0, 1): it is the fraction removed

Relative paths in a recipe (``data.root``, ``model.weights``, ``baseline.checkpoint``) resolve
against the current working directory, the way command-line paths do; the resolved recipe
(``Recipe.resolved_yaml()``, saved as ``recipe.yaml`` in the run directory) holds absolute paths.
Names of tasks, methods, datasets and models are checked against their registries by the experiment
(this module must not import torch), with the same one-line format.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from prunekit.errors import UserError
from prunekit.recipe_checks import check_recipe
from prunekit.recipe_file import read_yaml_file
from prunekit.targets import Target


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TrainSettings(_Section):
    """Training settings of one stage; the fields mirror `prunekit.train.TrainConfig` (seed is the recipe's)."""

    epochs: int = Field(0, ge=0, description="epochs to train; 0 skips the stage's training")
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.1, gt=0, description="peak learning rate")
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(5e-4, ge=0)
    no_decay_bn_bias: bool = Field(False, description="exclude BatchNorm parameters and biases from weight decay")
    schedule: Literal["cosine", "onecycle", "multistep", "constant"] = "cosine"
    milestones: list[float] = Field(
        default_factory=lambda: [0.5, 0.75], description="fractions of the run where multistep multiplies lr by gamma"
    )
    gamma: float = Field(0.1, gt=0)
    warmup_epochs: float = Field(0.0, ge=0, description="linear warm-up to lr (fractions of an epoch allowed)")
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    amp: bool = Field(True, description="bf16 autocast on CUDA (ignored on CPU)")
    channels_last: bool | None = Field(None, description="channels_last memory format; default: on CUDA only")
    compile: bool = Field(False, description="torch.compile the model")
    max_steps_per_epoch: int | None = Field(None, ge=1, description="cap on optimizer steps per epoch (quick runs)")
    grad_clip: float | None = Field(None, gt=0, description="clip the gradient norm to this value")
    eval_every: int = Field(1, ge=0, description="evaluate every N epochs (always after the last; 0: only the last)")
    eval_max_batches: int | None = Field(None, ge=1, description="cap on batches per evaluation; default eval.max_batches")

    @field_validator("milestones")
    @classmethod
    def _milestones(cls, value: list[float]) -> list[float]:
        if any(not 0 < m < 1 for m in value):
            raise ValueError(f"milestones are fractions of the run, each in (0, 1), e.g. [0.5, 0.75]; got {value}")
        return value


class TaskSection(_Section):
    """What the model is trained and judged on (`prunekit.tasks.create`); `task: NAME` is short for `{name: NAME}`."""

    name: str | None = Field(None, description="a registered task (prunekit list tasks) or module:Class from your own code; "
                             "default: the dataset's (detection for widerface, else classification)")
    options: dict[str, Any] = Field(default_factory=dict, description="the task's own options")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value or (":" in value and not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", value)):
            raise ValueError(f"{value!r} is neither a task name nor module:Class (e.g. mypkg.tasks:Regression)")
        return value


class DataSection(_Section):
    """Which dataset and how to batch it (`prunekit.data.load`)."""

    name: str = "cifar10"
    root: str | None = Field(None, description="data directory; default --data-root, then $PRUNEKIT_DATA, then a cache dir")
    subset: int | dict[str, int] | None = Field(
        None, description="first N images per class of every split (an int), or per split ({train: N, test: M})"
    )
    val_fraction: float = Field(0.0, ge=0, lt=1, description="fraction of train held out as validation")
    batch_size: int = Field(128, ge=1)
    eval_batch_size: int = Field(512, ge=1)
    augment: bool = True
    num_workers: int | None = Field(None, ge=0)
    options: dict[str, Any] = Field(default_factory=dict, description="dataset-specific options")

    @field_validator("subset")
    @classmethod
    def _subset(cls, value: int | dict[str, int] | None) -> int | dict[str, int] | None:
        counts = value.values() if isinstance(value, dict) else [] if value is None else [value]
        if any(n < 1 for n in counts):
            raise ValueError(f"images per class must be >= 1, got {value}")
        return value


class ModelSection(_Section):
    """Which architecture to build (`prunekit.models.create`)."""

    name: str = "resnet20"
    num_classes: int | None = Field(None, ge=1, description="default: the dataset's number of classes")
    small_input: bool = Field(False, description="32x32 stem for torchvision models")
    weights: str | None = Field(None, description="pretrained weights: a local checkpoint path, or imagenet (torchvision's, from the hub cache)")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="extra keyword arguments of the builder")


class BaselineSection(_Section):
    """Where the unpruned model comes from: a checkpoint, training, or the model's weights as they are."""

    checkpoint: str | None = Field(None, description="a prunekit.save file or a state-dict file")
    train: TrainSettings = Field(default_factory=TrainSettings)


class MethodSection(_Section):
    """The pruning method (`prunekit.methods.create`) and the training it runs with."""

    name: str = "l1_filter"
    target: str | None = Field(None, description="UNIT=FRACTION removed, e.g. macs=0.5")
    options: dict[str, Any] = Field(default_factory=dict)
    ignore: list[str] = Field(default_factory=list, description="module names (globs) the method leaves alone")
    round_to: int | Literal["auto"] | None = Field(
        None, description="keep channel counts multiples of N; auto = measured on the device; null = the method's default"
    )

    @field_validator("round_to")
    @classmethod
    def _round_to(cls, value: int | str | None) -> int | str | None:
        if isinstance(value, int) and value < 1:
            raise ValueError(f"round_to must be a positive integer, auto or null; got {value}")
        return value
    from_scratch: bool = Field(False, description="re-initialise the weights before at_init (SNIP, SFP from scratch)")
    train: TrainSettings = Field(default_factory=TrainSettings, description="training with the method's hooks; epochs 0 = one-shot")
    stage_epochs: list[int] | None = Field(
        None, description="composite methods: method.train epochs per stage (e.g. [160, 0]); default method.train.epochs for each"
    )
    data_batches: int = Field(8, ge=1, description="training batches at_init / finalize may use for scoring")

    @field_validator("stage_epochs")
    @classmethod
    def _stage_epochs(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and any(e < 0 for e in value):
            raise ValueError(f"epochs per stage must be >= 0, got {value}")
        return value

    @field_validator("options")
    @classmethod
    def _options(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in ("target", "ignore", "round_to"):  # arguments of the method itself: they would be given twice
            if key in value:
                raise ValueError(f"{key} is a field of method (method.{key}), not a method option")
        return value

    @field_validator("target")
    @classmethod
    def _target(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return str(Target.parse(value))
        except UserError as err:
            raise ValueError(str(err)) from None


class EvalSection(_Section):
    """How the baseline and final models are evaluated and timed."""

    latency_device: Literal["auto", "cpu", "cuda"] = Field("cpu", description="auto = the run's device")
    latency_batch_size: int = Field(1, ge=1)
    latency_runtime: Literal["eager", "onnxruntime", "compile"] = Field("eager", description="where latency is measured (onnxruntime: the onnx extra, CPU)")
    latency_repeats: int = Field(50, ge=1, description="timed repeats; the median is reported")
    max_batches: int | None = Field(None, ge=1, description="evaluate on the first N test batches only")


class ReportSection(_Section):
    """What the report contains."""

    plots: bool = True


class Recipe(_Section):
    """One experiment: baseline -> method -> fine-tune -> evaluate, measure, report."""

    name: str = Field("run", description="default: the recipe file's stem; names the default run directory")
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(None, ge=1, description="CPU threads for torch (training and latency); default torch's own")
    data: DataSection = Field(default_factory=DataSection)
    model: ModelSection = Field(default_factory=ModelSection)
    task: TaskSection = Field(default_factory=TaskSection)
    baseline: BaselineSection = Field(default_factory=BaselineSection)
    method: MethodSection = Field(default_factory=MethodSection)
    finetune: TrainSettings = Field(default_factory=TrainSettings)
    eval: EvalSection = Field(default_factory=EvalSection)
    report: ReportSection = Field(default_factory=ReportSection)

    _source: str = PrivateAttr("recipe")

    @model_validator(mode="after")
    def _task_from_dataset(self) -> "Recipe":
        # no task named: the dataset's own (widerface is judged as detection), written into the
        # resolved recipe so a run directory says what it was judged on
        if self.task.name is None:
            from prunekit import data

            self.task.name = data.default_task(self.data.name)
        return self

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value):
            raise ValueError(f"{value!r} is not a plain name (letters, digits, '.', '_', '-')")
        return value

    @property
    def source(self) -> str:
        """Return the file name the recipe came from, for error messages."""
        return self._source

    def field_error(self, path: str, message: str) -> UserError:
        """Return a one-line `UserError` about the field at dotted `path` of this recipe."""
        return UserError(f"{self._source}: {path}: {message}")

    def to_dict(self) -> dict[str, Any]:
        """Return the recipe as plain data (every field, defaults included)."""
        return self.model_dump(mode="json")

    def resolved_yaml(self) -> str:
        """Return the full recipe (defaults filled in, overrides applied, absolute paths) as YAML."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False)


# ---------------------------------------------------------------------------------------------
def parse_override(text: str) -> tuple[list[str], Any]:
    """Return (dotted key split into parts, value parsed as a YAML scalar) for ``"a.b=value"``."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise UserError(f"--set {text!r}: expected KEY=VALUE with a dotted key, e.g. finetune.epochs=3")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise UserError(f"--set {text!r}: value is not valid YAML ({_first_line(err)})") from None
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of `data` with every ``a.b=value`` override set (missing sections are created)."""
    import copy

    out = copy.deepcopy(data)
    for text in overrides:
        parts, value = parse_override(text)
        node = out
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                raise UserError(f"--set {text!r}: {where} is a value, not a section")
            node = child
        node[parts[-1]] = value
    return out


def read_yaml_mapping(path: str | os.PathLike[str], *, what: str = "recipe") -> dict[str, Any]:
    """Return the top-level mapping of the YAML file at `path`; `UserError` otherwise (empty, binary, duplicate keys, ...)."""
    return read_yaml_file(path, what=what)


def load_recipe(path: str | os.PathLike[str], *, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Return the validated `Recipe` of the YAML file at `path` with `overrides` applied.

    Raises `UserError` (one line: file, dotted field path, what is allowed) on any mistake.
    """
    data = read_yaml_mapping(path)
    data.setdefault("name", Path(path).stem)
    return recipe_from_dict(data, overrides=overrides, source=Path(path).name)


def recipe_from_dict(
    data: dict[str, Any], *, overrides: list[str] | tuple[str, ...] = (), source: str = "recipe"
) -> Recipe:
    """Return the validated `Recipe` for plain `data` (as read from YAML) with `overrides` applied."""
    set_keys = {".".join(parse_override(o)[0]) for o in overrides}
    merged = apply_overrides(data, list(overrides))
    try:
        recipe = Recipe.model_validate(merged)
    except ValidationError as err:
        raise UserError(format_validation_error(err, source=source, set_keys=set_keys)) from None
    recipe._source = source
    _resolve_paths(recipe)
    check_recipe(recipe)  # limits, finite numbers, nesterov (prunekit.recipe_checks)
    return recipe


def _resolve_paths(recipe: Recipe) -> None:
    # Relative to the working directory, as paths typed on a command line are.
    def resolve(value: str | None) -> str | None:
        return None if value is None else str(Path(os.path.expanduser(value)).resolve())

    recipe.data.root = resolve(recipe.data.root)
    weights = recipe.model.weights
    recipe.model.weights = weights if weights == "imagenet" or (weights or "").startswith("imagenet:") else resolve(weights)
    recipe.baseline.checkpoint = resolve(recipe.baseline.checkpoint)


# error formatting ----------------------------------------------------------------------------
def _first_line(err: Exception) -> str:
    return " ".join(str(err).split())


def _model_at(loc: tuple[Any, ...], root: type[BaseModel]) -> type[BaseModel] | None:
    """Return the schema class that owns the field at `loc` (its parent section) below `root`."""
    cls: type[BaseModel] = root
    for part in loc[:-1]:
        field = cls.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        cls = annotation
    return cls


# pydantic names the branch of a union in the location ("round_to.int"); users know the field only
_UNION_TAG = re.compile(r"^(int|float|str|bool|none|function-[a-z]+|[a-z]+\[.*\])$")


def format_validation_error(
    err: ValidationError, *, source: str, set_keys: set[str] = frozenset(), root: type[BaseModel] = Recipe
) -> str:
    """Return ONE line for a pydantic error of schema `root`: "SOURCE: dotted.path: what is wrong (allowed ...)"."""
    # A misspelt key shows up twice, as unknown and as a required field missing: name the typo.
    errors = sorted(err.errors(include_url=False), key=lambda e: e["type"] != "extra_forbidden")
    paths = [tuple(p for p in e["loc"] if not (isinstance(p, str) and _UNION_TAG.match(p))) for e in errors]
    loc = paths[0]
    same = [e for e, p in zip(errors, paths) if p == loc]  # one per union branch
    path = ".".join(str(p) for p in loc) or "(top level)"
    first = same[0]
    if first["type"] == "extra_forbidden":
        owner = _model_at(loc, root)
        allowed = ", ".join(owner.model_fields) if owner else "?"
        message = f"unknown field {str(loc[-1])!r} (allowed: {allowed})"
    else:
        messages = []
        for e in same:
            text = e["msg"][len("Value error, ") :] if e["msg"].startswith("Value error, ") else e["msg"]
            if text not in messages:
                messages.append(text)
        message = " or ".join(messages)
        if first["type"] not in ("missing", "value_error"):  # our own messages already show the value
            message += f" (got {first.get('input')!r})"
    if path in set_keys:
        message += " [from --set]"
    others = list(dict.fromkeys(".".join(str(x) for x in p) or "(top level)" for p in paths if p != loc))
    # name where the others are, so a user fixing one field knows what comes next
    shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
    more = f" (+{len(others)} more error{'s' if len(others) > 1 else ''}, at {shown})" if others else ""
    return f"{source}: {path}: {message}{more}"
