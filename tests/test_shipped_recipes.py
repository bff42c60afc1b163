"""Every run recipe shipped in recipes/ loads and passes the pre-flight checks (fields, data,
target, model and weight files), so a documented command does not fail on its first line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from prunekit import preflight
from prunekit.recipe import load_recipe

REPO = Path(__file__).resolve().parents[1]
# every recipe that is not a study grid (study bases included: a study runs them with --set on top)
RUN_RECIPES = sorted(p for p in (REPO / "recipes").rglob("*.yaml") if "\ngrid:" not in p.read_text())


@pytest.mark.parametrize("path", RUN_RECIPES, ids=[str(p.relative_to(REPO / "recipes")) for p in RUN_RECIPES])
def test_shipped_recipe_passes_preflight(path, monkeypatch):
    data = Path(os.environ.get("PRUNEKIT_DATA") or REPO.parent / "shared" / "data")
    if not (REPO.parent / "shared" / "weights").is_dir() or not data.is_dir():
        pytest.skip("../shared (weights and data) not found")
    monkeypatch.chdir(REPO)  # recipes name ../shared/weights relative to the repository root
    recipe = load_recipe(path, overrides=[f"data.root={data}"])
    if recipe.baseline.checkpoint and not Path(recipe.baseline.checkpoint).exists():
        pytest.skip(f"{recipe.baseline.checkpoint} is made by another run")
    preflight.check_run(recipe)
