"""``python -m anomalymap_helpers``: see :mod:`anomalymap_helpers.tools.cli`."""

import sys

from anomalymap_helpers.tools.cli import main

if __name__ == "__main__":
    sys.exit(main())
