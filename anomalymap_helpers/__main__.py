"""``python -m anomalymap_helpers``: see :mod:`anomalymap_helpers.commands.cli`."""

import sys

from anomalymap_helpers.commands.cli import main

if __name__ == "__main__":
    code = main()
    from anomalymap_helpers.pipeline.training.distributed import exit_worker

    exit_worker(code)  # a torchrun worker leaves without the interpreter's teardown (see its docstring)
    sys.exit(code)
