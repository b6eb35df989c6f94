"""Speed benchmark: the project's training and scoring paths against the original design's loop.

``harness`` runs the two paths in processes that take turns (``run_speed``), ``workers``
holds the two paths, ``profile`` times one training step's parts, ``report`` prints the table.
"""

from anomalymap_helpers.tools.speed.harness import DEFAULT_OUT, run_speed

__all__ = ["DEFAULT_OUT", "run_speed"]
