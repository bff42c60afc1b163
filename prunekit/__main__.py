"""`python -m prunekit ...` (and `torchrun --nproc-per-node N -m prunekit run RECIPE`): the command line."""

import sys

from prunekit.cli.main import main

if __name__ == "__main__":  # not when a spawned child re-imports the parent's main module
    sys.exit(main())
