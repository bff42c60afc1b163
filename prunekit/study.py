"""A study: one base recipe run over a grid of overrides, resumably, into one table and one plot.

    name: l1-vs-random
    recipe: recipes/quickstart.yaml     # the base recipe (relative to the working directory)
    set: [finetune.epochs=1]            # overrides every run shares
    grid:                               # every combination is one run
      method.name: [l1_filter, random]
      method.target: [macs=0.3, macs=0.5]
      seed: [0, 1]

`run_study` validates every combination's recipe first (a mistake in any is one line before
anything runs), then runs each into `<out>/<slug>` with resume: complete runs are kept, unfinished
ones continue, a run that fails is recorded and the others still run. It writes `<out>/study.md`
(the comparison table) and `<out>/tradeoff.png` (final top-1 against MACs per method).
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from prunekit import preflight
from prunekit.errors import UserError
from prunekit.recipe import Recipe, format_validation_error, load_recipe, read_yaml_mapping


class StudySpec(BaseModel):
    """The study file's schema."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., description="names the default output directory runs/<name>")
    recipe: str = Field(..., description="the base recipe file")
    set: list[str] = Field(default_factory=list, description="KEY=VALUE overrides every run shares")
    grid: dict[str, list[Any]] = Field(..., description="dotted field -> values; every combination is one run")

    @field_validator("grid")
    @classmethod
    def _grid(cls, value: dict[str, list[Any]]) -> dict[str, list[Any]]:
        if not value:
            raise ValueError("give at least one field and its values, e.g. {method.target: [macs=0.3, macs=0.5]}")
        empty = [k for k, v in value.items() if not v]
        if empty:
            raise ValueError(f"{empty[0]} has no values")
        return value


def _yaml_value(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text[: -len("...")].strip() if text.endswith("...") else text


def _slug(values: tuple[Any, ...]) -> str:
    text = "-".join(re.sub(r"[^A-Za-z0-9._]+", "", str(v)) or "x" for v in values)
    return text[:120]


def plan(spec_path: str | Path, *, extra: list[str] | tuple[str, ...] = ()) -> tuple[StudySpec, list[tuple[str, Recipe]]]:
    """Return the study spec and its runs as (slug, validated Recipe), in grid order; `extra` overrides go last."""
    spec_path = Path(spec_path)
    data = read_yaml_mapping(spec_path, what="study")
    try:
        spec = StudySpec.model_validate(data)
    except ValidationError as err:
        raise UserError(format_validation_error(err, source=spec_path.name, root=StudySpec)) from None
    keys = list(spec.grid)
    runs = []
    for values in itertools.product(*(spec.grid[k] for k in keys)):
        overrides = [*spec.set, *(f"{k}={_yaml_value(v)}" for k, v in zip(keys, values))]
        slug = _slug(values)
        recipe = load_recipe(spec.recipe, overrides=[*overrides, f"name={spec.name}-{slug}", *extra])
        runs.append((slug, recipe))
    slugs = [s for s, _ in runs]
    if len(set(slugs)) != len(slugs):
        raise UserError(f"{spec_path.name}: grid: two combinations give the same run name; make the values distinguishable")
    return spec, runs


def run_study(spec_path: str | Path, *, out_dir: str | Path | None = None, device: str | None = None,
              overrides: list[str] | tuple[str, ...] = (), progress: bool = True) -> dict[str, Any]:
    """Run every combination of the study at `spec_path`; return {"out", "runs": {slug: status}, "table"}.

    `overrides` are applied to every run after the study's own. Runs already complete in the
    output directory are kept; unfinished ones are resumed; a failed run does not stop the others.
    """
    from prunekit.experiment import run_experiment
    from prunekit.report import compare_table, read_metrics

    spec, runs = plan(spec_path, extra=overrides)
    out = Path(out_dir) if out_dir else Path("runs") / spec.name
    for slug, recipe in runs:  # every grid point is checked before the first one runs (prunekit.preflight)
        preflight.check_run(recipe, out_dir=out / slug)
    statuses: dict[str, str] = {}
    for i, (slug, recipe) in enumerate(runs):
        if progress:
            from rich.console import Console

            Console(highlight=False).print(f"[bold magenta]study {spec.name}: run {i + 1}/{len(runs)} {slug}[/]")
        try:
            metrics = run_experiment(recipe, out_dir=out / slug, resume=True, device=device, progress=progress)
            statuses[slug] = metrics["status"]
        except UserError:
            raise
        except Exception as err:  # recorded in that run's metrics.json; the rest of the grid still runs
            statuses[slug] = f"failed: {type(err).__name__}: {err}"
    dirs = [out / slug for slug, _ in runs if (out / slug / "metrics.json").exists()]
    table = compare_table(dirs) if dirs else ""
    from prunekit.io import atomic_write

    atomic_write(out / "study.md", f"# study `{spec.name}`\n\nbase recipe `{spec.recipe}`, grid {dict(spec.grid)}\n\n{table}")
    png = plot_tradeoff([read_metrics(d) for d in dirs])
    if png is not None:
        atomic_write(out / "tradeoff.png", png)
    return {"out": str(out), "runs": statuses, "table": table}


def plot_tradeoff(all_metrics: list[dict[str, Any]]) -> bytes | None:
    """Return a PNG of final top-1 (%) against final MACs per image, one series per method, or None."""
    points: dict[str, list[tuple[float, float]]] = {}
    baselines = []
    for m in all_metrics:
        if m.get("status") != "complete":
            continue
        points.setdefault(str(m.get("method")), []).append((m["final"]["macs"], m["final"]["top1"]))
        baselines.append((m["baseline"]["macs"], m["baseline"]["top1"]))
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from prunekit.report import png_bytes

    fig, ax = plt.subplots(figsize=(6, 4))
    for method, pts in sorted(points.items()):
        pts.sort()
        ax.plot([p[0] / 1e6 for p in pts], [p[1] for p in pts], marker="o", label=method)
    ax.scatter([b[0] / 1e6 for b in baselines], [b[1] for b in baselines], marker="*", s=90, color="black", label="baseline")
    ax.set(xlabel="MACs per image (millions)", ylabel="final top-1 (%)", title="accuracy vs MACs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return png_bytes(fig)
