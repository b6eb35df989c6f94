"""``two-signal``: the restore model's "looks damaged" and ``nearest-patch``'s "unlike any normal", together.

The two maps answer different questions: the restore model's segmentation finds what looks like the
damage it learned (stains, specks, scratches), ``nearest-patch``
(:mod:`~anomalymap_helpers.pipeline.scoring.patch_memory`) what no normal training neighbourhood is
near (a foreign piece, a displaced one, a fold). They come in different units, so neither may drown the
other: each map is first calibrated on the **validation normals**' pixels, ``(map - q50) / (q99 - q50)``
(0 is a typical normal pixel, 1 a normal pixel's 99th percentile), then the two are averaged. The image
score is that map's largest small-window mean, as ``segment``'s
(:func:`~anomalymap_helpers.pipeline.scoring.segment.segment_scores`), so a thin line is not diluted.

The calibration and the averaging were fixed before anything was measured (docs/photographs.md, "The
rule"); nothing here is fitted on a test image.
"""

from __future__ import annotations

import numpy as np
import torch

QUANTILES = (0.5, 0.99)  # a typical normal pixel, and a normal pixel's 99th percentile


def calibration(val_maps: torch.Tensor) -> tuple[float, float]:
    """``(q50, q99 - q50)`` of the pixels of ``val_maps`` ``(M, 1, H, W)``, the validation normals' maps
    (float64 quantiles, linear interpolation; the spread at least 1e-12)."""
    low, high = np.quantile(val_maps.detach().double().flatten().numpy(), QUANTILES)
    return float(low), max(float(high - low), 1e-12)


def calibrated(maps: torch.Tensor, cal: tuple[float, float]) -> torch.Tensor:
    """``maps`` in units of the validation normals' pixels: ``(maps - q50) / (q99 - q50)``."""
    return (maps - cal[0]) / cal[1]


def two_signal_maps(segmentation: torch.Tensor, patch: torch.Tensor, cal: dict[str, tuple[float, float]]) -> torch.Tensor:
    """``(N, 1, H, W)``: the mean of the restore model's ``segmentation`` and ``nearest-patch``'s ``patch``
    maps, each :func:`calibrated` by its entry of ``cal`` (``"segment"``, ``"nearest-patch"``)."""
    return (calibrated(segmentation, cal["segment"]) + calibrated(patch, cal["nearest-patch"])) / 2
