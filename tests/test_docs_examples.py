"""The complete examples of docs/adding-a-method.md and docs/adding-a-task.md run as written."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path



REPO = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"```(python|yaml|bash)\n(.*?)```", re.S)



def blocks(doc: str) -> list[tuple[str, str]]:
    return BLOCK.findall((REPO / "docs" / doc).read_text(encoding="utf-8"))


def run_python(cwd: Path, args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(cwd), str(REPO)]), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


def test_adding_a_method_example_runs(tmp_path):
    found = blocks("adding-a-method.md")
    python = [code for kind, code in found if kind == "python"]
    assert len(python) == 3 and python[0].startswith("# mymethods.py")
    (tmp_path / "mymethods.py").write_text(python[0])
    script = python[1]
    script += "\nimport mymethods  # noqa\n" + python[2]
    (tmp_path / "example.py").write_text(script)
    done = run_python(tmp_path, ["example.py"])
    assert (tmp_path / "runs" / "taylor" / "report.md").exists()
    rows = (tmp_path / "runs" / "taylor" / "log.jsonl").read_text()
    assert "taylor_example: masked" in rows  # context.log reached the run's log
    assert done.stdout.strip()


def test_adding_a_task_example_runs(tmp_path):
    found = blocks("adding-a-task.md")
    python = [code for kind, code in found if kind == "python"]
    yaml_blocks = [code for kind, code in found if kind == "yaml"]
    bash = [code for kind, code in found if kind == "bash"]
    assert python[0].startswith("# mytasks.py") and yaml_blocks[0].startswith("# brightness.yaml")
    (tmp_path / "mytasks.py").write_text(python[0])
    (tmp_path / "brightness.yaml").write_text(yaml_blocks[0])
    for line in bash[0].splitlines():
        command = shlex.split(line.split("#", 1)[0])
        assert command[0] == "prunekit"
        run_python(tmp_path, ["-m", "prunekit.cli.main", *command[1:]])
    metrics = (tmp_path / "runs" / "brightness" / "metrics.json").read_text()
    assert '"primary": {\n      "name": "mse"' in metrics or '"name": "mse"' in metrics
    assert "| mse (mse, primary) |" in (tmp_path / "runs" / "brightness" / "report.md").read_text()
