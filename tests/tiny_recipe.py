"""The tiny synthetic recipe the end-to-end tests share, and its variations as named changes.

8x8 synthetic images, 4 classes, 64 training images in 2 batches, ResNet-20: every stage takes a
second or so on one CPU thread. A test module states how its recipe differs from `BASE`
(`tiny_recipe(name="case", data__batch_size=16)`) rather than copying the whole dict; tests/ is
on sys.path under pytest, so modules import it as `from tiny_recipe import tiny_recipe`.
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

# validated and quick: no baseline training, no fine-tune, L1 filters to half the MACs
BASE = {
    "name": "tiny",
    "device": "cpu",
    "threads": 1,
    "data": {
        "name": "synthetic",
        "batch_size": 32,
        "eval_batch_size": 64,
        "options": {"num_classes": 4, "image_size": 8, "train_size": 64, "test_size": 32},
    },
    "model": {"name": "resnet20"},
    "baseline": {"train": {"epochs": 0}},
    "method": {"name": "l1_filter", "target": "macs=0.5", "data_batches": 1},
    "finetune": {"epochs": 0},
    "eval": {"latency_repeats": 1},
    "report": {"plots": False},
}
# changes for a recipe that trains: one baseline epoch and one fine-tune epoch
TRAINED = {"baseline": {"train": {"epochs": 1, "lr": 0.05}}, "finetune": {"epochs": 1, "lr": 0.01}}
# a change's value that removes the field
DROP = object()


def tiny_recipe(base: dict | None = None, /, **changes) -> dict:
    """Return a deep copy of `base` (default `BASE`) with `changes` applied in order.

    A change `section=value` replaces the whole section; `section__field=value` (any depth,
    `method__train__lr=0.1`) sets one field, creating missing levels; the value `DROP` removes it.
    """
    data = copy.deepcopy(BASE if base is None else base)
    for key, value in changes.items():
        node = data
        *parents, last = key.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        if value is DROP:
            node.pop(last, None)
        else:
            node[last] = copy.deepcopy(value)
    return data


def under(section: str, **fields) -> dict:
    """Return `fields` as changes to that section: under("method", lr=0.1) == {"method__lr": 0.1}."""
    return {f"{section}__{key}": value for key, value in fields.items()}


def write_recipe(path: Path, base: dict | None = None, /, **changes) -> Path:
    """Write `tiny_recipe(base, **changes)` to `path` as YAML (keys sorted); return `path`."""
    path.write_text(yaml.safe_dump(tiny_recipe(base, **changes)))
    return path
