"""``python -m anomalymap_helpers``: see :mod:`anomalymap_helpers.commands.cli`."""

import sys

from anomalymap_helpers.commands.cli import main

if __name__ == "__main__":
    sys.exit(main())
