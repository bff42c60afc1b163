"""A study's file: its schema (`StudySpec`, `HeadlineSpec`), its grid axes, and `plan`, which
expands the grid into points and validates every point's recipe before anything is written.

See `prunekit.study` for the study file format; `prunekit.study` re-exports every name here.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from prunekit.errors import UserError
from prunekit.recipe import Recipe, format_validation_error, load_recipe, read_yaml_mapping


class HeadlineSpec(BaseModel):
    """Which axis holds the arms compared, which one the plot panels, and each arm's dense point."""

    model_config = ConfigDict(extra="forbid")

    arms: str = Field(..., description="the grid axis whose values are compared (one curve per value)")
    panels: str | None = Field(None, description="one plot (and headline) per value of this axis")
    dense: dict[str, str] = Field(..., description="axis -> label of the point that is each arm's dense model")
    within: float = Field(1.0, ge=0, description="top-1 points below the arm's dense model that still count")


class StudySpec(BaseModel):
    """The study file's schema."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., description="names the default output directory runs/<name>")
    recipe: str = Field(..., description="the base recipe file")
    set: list[str] = Field(default_factory=list, description="KEY=VALUE overrides every run shares")
    grid: dict[str, list[Any] | dict[str, list[str] | dict[str, Any]]] = Field(
        ..., description="dotted field -> values, or axis name -> {label: overrides}; every combination is one run")
    headline: HeadlineSpec | None = None

    @field_validator("grid")
    @classmethod
    def _grid(cls, value: dict[str, Any]) -> dict[str, Any]:
        if not value:
            raise ValueError("give at least one field and its values, e.g. {method.target: [macs=0.3, macs=0.5]}")
        empty = [k for k, v in value.items() if not v]
        if empty:
            raise ValueError(f"{empty[0]} has no values")
        return value


def _yaml_value(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text[: -len("...")].strip() if text.endswith("...") else text


def _slug_part(value: Any) -> str:
    return re.sub(r"[^A-Za-z0-9._]+", "", str(value)) or "x"


def axes(spec: StudySpec) -> dict[str, list[tuple[str, list[str]]]]:
    """Return {axis: [(label, overrides), ...]} for every grid axis, in file order."""
    out: dict[str, list[tuple[str, list[str]]]] = {}
    for key, values in spec.grid.items():
        if isinstance(values, dict):  # a named axis: label -> overrides (KEY=VALUE strings or a mapping)
            out[key] = [(str(label), list(o) if isinstance(o, list) else [f"{f}={_yaml_value(v)}" for f, v in o.items()])
                        for label, o in values.items()]
        else:
            out[key] = [(str(v), [f"{key}={_yaml_value(v)}"]) for v in values]
    return out


def _check_headline(spec: StudySpec, grid: dict[str, list[tuple[str, list[str]]]], source: str) -> None:
    h = spec.headline
    if h is None:
        return
    for field, axis in (("headline.arms", h.arms), ("headline.panels", h.panels), *((f"headline.dense.{a}", a) for a in h.dense)):
        if axis is not None and axis not in grid:
            raise UserError(f"{source}: {field}: {axis!r} is not a grid axis (axes: {', '.join(grid)})")
    for axis, label in h.dense.items():
        if label not in [lab for lab, _ in grid[axis]]:
            raise UserError(f"{source}: headline.dense.{axis}: {label!r} is not one of its values ({', '.join(lab for lab, _ in grid[axis])})")
    if h.arms in h.dense or (h.panels is not None and h.panels in h.dense):
        raise UserError(f"{source}: headline.dense: name the axes other than arms and panels")


def validate_point(recipe: Recipe, *, device: str | None = None) -> None:
    """Raise the `UserError` that `run_experiment(recipe)` would raise before writing anything.

    Names of the method, dataset and model, method options, the dataset's own options, weight and
    checkpoint files, the device and composite-method stage epochs.
    """
    from prunekit import data
    from prunekit.experiment.context import RunContext  # the experiment's own checks, without a run directory

    RunContext(recipe, device=device, progress=False)
    spec = data.dataset_spec(recipe.data.name)
    allowed = {*spec.options, *data.COMMON_OPTIONS, *data.LOADER_OPTIONS}
    unknown = sorted(set(recipe.data.options) - allowed)
    if unknown:
        raise recipe.field_error("data.options", f"dataset {recipe.data.name!r} has no option(s) {', '.join(unknown)} (its options: {', '.join(sorted(allowed))})")


def plan(spec_path: str | Path, *, extra: list[str] | tuple[str, ...] = (), device: str | None = None,
         check: bool = True) -> tuple[StudySpec, list[dict[str, Any]]]:
    """Return the study spec and its points in grid order, every point's recipe validated.

    A point is {"index", "slug", "labels": {axis: label}, "recipe": Recipe}. `extra` overrides
    go last. With `check`, `validate_point` runs on every point (names, options, files).
    """
    spec_path = Path(spec_path)
    data = read_yaml_mapping(spec_path, what="study")
    try:
        spec = StudySpec.model_validate(data)
    except ValidationError as err:
        raise UserError(format_validation_error(err, source=spec_path.name, root=StudySpec)) from None
    grid = axes(spec)
    _check_headline(spec, grid, spec_path.name)
    points = []
    combos = list(itertools.product(*grid.values()))
    for i, combo in enumerate(combos):
        labels = {axis: label for axis, (label, _) in zip(grid, combo)}
        slug = "-".join(_slug_part(label) for label in labels.values())[:120]
        overrides = [*spec.set, *(o for _, values in combo for o in values)]
        where = f"{spec_path.name}: grid point {i + 1}/{len(combos)} ({', '.join(f'{a}={v}' for a, v in labels.items())})"
        try:
            recipe = load_recipe(spec.recipe, overrides=[*overrides, f"name={spec.name}-{slug}", *extra])
            if check:
                validate_point(recipe, device=device)
        except UserError as err:
            raise UserError(f"{where}: {err}") from None
        points.append({"index": i, "slug": slug, "labels": labels, "recipe": recipe})
    slugs = [p["slug"] for p in points]
    if len(set(slugs)) != len(slugs):
        raise UserError(f"{spec_path.name}: grid: two combinations give the same run name; make the values distinguishable")
    return spec, points
