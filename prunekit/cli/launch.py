"""`prunekit run RECIPE --nproc N`: re-launch the same command under torchrun on this machine.

    launch(["run", "recipe.yaml", "--nproc", "2", "--device", "cpu"], nproc=2)
    # == python -m torch.distributed.run --standalone --nproc-per-node 2 -m prunekit run recipe.yaml --device cpu

torchrun starts N copies of `prunekit` with RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR /
MASTER_PORT set (a free local port, `--standalone`); each joins the group through
`prunekit.distributed.init_from_env`. The `--nproc` option is removed from the children's
arguments, so they run the command once each instead of launching again.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence

from prunekit.errors import UserError


def strip_nproc(argv: Sequence[str]) -> list[str]:
    """Return `argv` without `--nproc N` / `--nproc=N`."""
    out: list[str] = []
    skip = False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg == "--nproc":
            if i + 1 >= len(argv):
                raise UserError("--nproc needs a number of processes")
            skip = True
            continue
        if arg.startswith("--nproc="):
            continue
        out.append(arg)
    return out


def torchrun_command(target: Sequence[str], nproc: int) -> list[str]:
    """Return the torchrun command line that runs `target` (["-m", module, ...] or [script, ...]) in `nproc` local processes."""
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise UserError(f"--nproc {nproc!r}: give a number of processes >= 1")
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), *target]


def launch(argv: Sequence[str], nproc: int, *, env: dict[str, str] | None = None) -> int:
    """Run `prunekit *argv` (minus `--nproc`) in `nproc` processes under torchrun; return its exit code.

    Inside an existing torchrun (RANK set) it refuses: one launcher is enough. torchrun's exit
    code is 0 when every rank succeeded, else non-zero (it prints which rank failed and why).
    """
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        raise UserError("--nproc under torchrun: this process is already one of "
                        f"{os.environ['WORLD_SIZE']}; drop --nproc or the outer torchrun")
    cmd = torchrun_command(["-m", "prunekit", *strip_nproc(argv)], nproc)
    return subprocess.call(cmd, env=dict(os.environ if env is None else env))
