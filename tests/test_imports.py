"""Every prunekit module imports on its own, first, in a fresh interpreter: no import cycles."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import prunekit

REPO = Path(__file__).resolve().parents[1]

# One interpreter (torch loaded once); before each module every prunekit module is dropped from
# sys.modules, so each is imported first, on its own, as in a fresh interpreter.
_SCRIPT = r"""
import importlib, sys, traceback
import torch, torch_pruning  # the heavy third-party imports, shared
failed = []
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m == "prunekit" or m.startswith("prunekit.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception:
        failed.append(name + ": " + traceback.format_exc().strip().splitlines()[-1])
print("\n".join(failed))
sys.exit(1 if failed else 0)
"""


def all_modules() -> list[str]:
    names = ["prunekit"]
    for info in pkgutil.walk_packages(prunekit.__path__, prefix="prunekit."):
        names.append(info.name)
    return sorted(names)


def test_every_module_imports_first_on_its_own():
    modules = all_modules()
    assert "prunekit.atomic" in modules and "prunekit.experiment" in modules
    done = subprocess.run([sys.executable, "-c", _SCRIPT, *modules], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]


def test_io_structure_models_have_no_cycle():
    # the cycle this test was written for: io -> models -> structure -> io (a module-bottom import)
    for path in ("structure.py", "lowrank/__init__.py", "lowrank/model.py"):
        text = (REPO / "prunekit" / path).read_text()
        assert "from prunekit import io" not in text and "import prunekit.io" not in text
    src = (REPO / "prunekit" / "atomic.py").read_text()
    top = [line for line in src.splitlines() if line.startswith(("from prunekit", "import prunekit"))]
    assert not top  # atomic writes depend on nothing in prunekit at import time
