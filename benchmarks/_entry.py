"""How every script here ends: its parsed arguments run, a user's error as one line and exit status."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence


def run(parser: argparse.ArgumentParser, func: Callable[[argparse.Namespace], int | None],
        argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, check the precision switch, run ``func``; an :class:`AnomalyMapError` is printed
    as ``error: ...`` with exit status 2 (a bad value) or 1 (anything else), as the package's CLI does."""
    from anomalymap_helpers.errors import AnomalyMapError
    from anomalymap_helpers.pipeline.training.device import cpu_precision_setting

    args = parser.parse_args(argv)
    try:
        cpu_precision_setting()
        return func(args) or 0
    except AnomalyMapError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ValueError) else 1
