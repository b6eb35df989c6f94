"""Reconstructions, per-pixel anomaly maps and per-image anomaly scores.

The anomaly map of an image ``x`` with reconstruction ``x̂`` is the absolute
error ``|x - x̂|`` per pixel, averaged over the colour channels and, where
``map_blur`` asks for it, smoothed by a Gaussian (as the MVTec AD literature does:
a defect is a region, not a single pixel). Per-image scores (higher = more anomalous):

- ``mse``: the mean squared error ``mean((x - x̂)²)`` (the original design);
- ``topk``: the mean of the ``k`` largest squared values of the map, so a small
  wrong stroke is not averaged away by a well-rebuilt background; it is read off
  the map, so the map always shows where it comes from;
- ``ssim``: ``1 - SSIM(x, x̂)``, a structural rather than pixel-wise error;
- ``latent-knn``: the cosine distance from the image's latent vector to its
  ``k`` nearest *training normals'* latents;
- ``patch-knn`` (the default on MNIST and Fashion-MNIST): the largest cell of a map
  of its own, on the encoder's feature grid: how far each cell's features are from
  those at the same cell of the best-matching of the image's nearest training
  normals (:class:`PatchKnn`);
- ``ensemble``: ``latent-knn`` (what the image is) and ``ssim`` (how its
  structure is rebuilt), each standardised by the mean and spread of its
  scores on the validation normals, then averaged;
- ``elbo`` (``model="vae"`` only): the negative evidence lower bound per pixel,
  ``(sum of squared errors + KL(q(z|x) || N(0, I))) / pixels``, with the
  reconstruction of the mean code (one deterministic pass, no sampling) and the
  KL weight 1 whatever ``beta`` trained with: the bound on ``-log p(x)`` (up to a
  constant) that the VAE's likelihood view scores by;
- ``segment`` (``model="restore"`` only): the restore model's own segmentation of damage, a
  probability per pixel (the map), scored by its largest small-window mean;
- ``nearest-patch`` (folders only): each pixel's neighbourhood against the nearest of a memory of
  the normal training images' neighbourhoods, at two scales (the map), scored by its largest
  small-window mean: "unlike any normal", PatchCore's idea with no downloaded features;
- ``two-signal`` (folders and ``model="restore"`` only): ``segment``'s and ``nearest-patch``'s maps,
  each calibrated on the validation normals' pixels, averaged: "looks damaged" and "unlike any normal".

Everything a score is fitted on (the kNN reference set, the standardisation)
comes from the normal training and validation images, never the test labels.
``score_method="auto"`` and ``map_blur=-1`` are fixed rules by the kind of data
(:func:`default_method`, :func:`blur_sigma`), not choices made on test results.

The package holds one idea a file: ``inference`` (the inference loop and :func:`score`), ``maps``
(the per-pixel map and its blur), ``pixel`` (the scores read off the reconstruction), ``knn``
(the nearest-normal search and ``latent-knn``), ``latent_maps`` (``latent-knn``'s map),
``patch_knn`` (the default score and its map), ``patch_memory`` (``nearest-patch``: each pixel's
neighbourhood against a memory of normal ones), ``two_signal`` (its calibrated mean with the restore
model's segmentation), ``segment`` (the restore model's score), ``scorer`` (the registry of methods
and the :class:`Scorer`) and ``scores_csv`` (the score file). A new score is a new file and one entry in
:data:`~anomalymap_helpers.pipeline.scoring.scorer.REGISTRY`.
"""

from __future__ import annotations

from anomalymap_helpers.pipeline.scoring.inference import Scored, encode, infer, reconstruct, score
from anomalymap_helpers.pipeline.scoring.knn import knn_distances, nearest
from anomalymap_helpers.pipeline.scoring.latent_maps import LatentKnnMaps
from anomalymap_helpers.pipeline.scoring.maps import anomaly_maps, blur_sigma, gaussian_blur
from anomalymap_helpers.pipeline.scoring.patch_knn import (
    PATCH_NEIGHBOURS,
    PATCH_SMOOTH,
    PatchKnn,
    lowest_peak,
    smooth_cells,
    unit_cells,
)
from anomalymap_helpers.pipeline.scoring.patch_memory import PatchMemory
from anomalymap_helpers.pipeline.scoring.pixel import elbo_scores, mse_scores, ssim_scores, topk_scores
from anomalymap_helpers.pipeline.scoring.scorer import (
    DEFAULT_METHOD,
    ENSEMBLE,
    METHODS,
    NEEDS_MEMORY,
    REGISTRY,
    RESTORE_METHODS,
    VAE_METHODS,
    Method,
    Scorer,
    check_method,
    default_method,
    ensemble_scores,
    pixel_maps,
)
from anomalymap_helpers.pipeline.scoring.scores_csv import read_scores, write_scores
from anomalymap_helpers.pipeline.scoring.segment import SegmentMaps, segment_scores
from anomalymap_helpers.pipeline.training.device import inference_precision

__all__ = [
    "DEFAULT_METHOD", "ENSEMBLE", "METHODS", "NEEDS_MEMORY", "PATCH_NEIGHBOURS", "PATCH_SMOOTH", "REGISTRY", "RESTORE_METHODS",
    "VAE_METHODS", "LatentKnnMaps", "Method", "PatchKnn", "PatchMemory", "SegmentMaps", "Scored", "Scorer", "anomaly_maps", "blur_sigma", "check_method",
    "default_method", "elbo_scores", "ensemble_scores", "encode", "gaussian_blur", "infer", "inference_precision", "knn_distances",
    "lowest_peak", "mse_scores", "nearest", "pixel_maps", "read_scores", "reconstruct", "score", "smooth_cells", "ssim_scores",
    "segment_scores", "topk_scores", "unit_cells", "write_scores",
]
