"""Reconstructions, per-pixel anomaly maps and per-image anomaly scores.

The anomaly map of an image ``x`` with reconstruction ``x̂`` is the absolute
error ``|x - x̂|`` per pixel. Per-image scores (higher = more anomalous):

- ``mse``: the mean squared error ``mean((x - x̂)²)`` (the original design);
- ``topk``: the mean of the ``k`` largest squared pixel errors, so a small
  wrong stroke is not averaged away by a well-rebuilt background;
- ``ssim``: ``1 - SSIM(x, x̂)``, a structural rather than pixel-wise error;
- ``latent-knn``: the cosine distance from the image's latent vector to its
  ``k`` nearest *training normals'* latents;
- ``ensemble``: ``latent-knn`` (what the image is) and ``ssim`` (how its
  structure is rebuilt), each standardised by the mean and spread of its
  scores on the validation normals, then averaged.

Everything a score is fitted on (the kNN reference set, the standardisation)
comes from the normal training and validation images, never the test labels.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from anomalymap_helpers.errors import ParameterError
from anomalymap_helpers.pipeline.device import Precision, inference_precision, retain_freed_memory
from anomalymap_helpers.pipeline.model import ConvAutoencoder
from anomalymap_helpers.runs import storage


@torch.inference_mode()
def infer(
    model: ConvAutoencoder,
    images: torch.Tensor,
    *,
    batch_size: int = 512,
    precision: Precision | None = None,
    decode: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """The one inference loop: latents, and reconstructions unless ``decode`` is False.

    Runs ``images`` ``(N, C, H, W)`` in [0, 1] through the model in batches on the
    model's device, with :func:`~anomalymap_helpers.pipeline.device.inference_precision`
    unless ``precision`` is given, and returns float32 tensors on the CPU.

    Returns:
        ``(reconstructions (N, C, H, W) or None, latents (N, latent_dim))``.
    """
    device = next(model.parameters()).device
    precision = precision or inference_precision(device)
    if device.type == "cpu":
        retain_freed_memory()
    model.eval()
    out = torch.empty(images.shape, dtype=torch.float32) if decode else None
    latents = torch.empty(len(images), model.config.latent_dim, dtype=torch.float32)
    for i in range(0, len(images), batch_size):
        batch = images[i : i + batch_size].to(device).contiguous(memory_format=torch.channels_last)
        with precision.autocast():
            z = model.encode(batch)
            if out is not None:
                out[i : i + batch_size] = model.decode(z).float().cpu()
        latents[i : i + batch_size] = z.float().cpu()
    return out, latents


def reconstruct(
    model: ConvAutoencoder, images: torch.Tensor, *, batch_size: int = 512, precision: Precision | None = None
) -> torch.Tensor:
    """Reconstructions ``(N, C, H, W)`` float32 of ``images`` (see :func:`infer`)."""
    return infer(model, images, batch_size=batch_size, precision=precision)[0]


def encode(
    model: ConvAutoencoder, images: torch.Tensor, *, batch_size: int = 512, precision: Precision | None = None
) -> torch.Tensor:
    """Latents ``(N, latent_dim)`` float32 of ``images``, without decoding (see :func:`infer`)."""
    return infer(model, images, batch_size=batch_size, precision=precision, decode=False)[1]


def anomaly_maps(images: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
    """Per-pixel absolute error ``|x - x̂|``, shape ``(N, C, H, W)``."""
    return (images - reconstructions).abs()


def mse_scores(images: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
    """Per-image mean squared error ``mean((x - x̂)²)`` over C, H, W; shape ``(N,)``."""
    return (images - reconstructions).pow(2).flatten(1).mean(1)


@dataclass(frozen=True)
class Scored:
    """Images with their reconstructions, maps and scores.

    Attributes:
        images: ``(N, C, H, W)`` float32 in [0, 1].
        reconstructions: ``(N, C, H, W)`` float32 in [0, 1].
        maps: ``(N, C, H, W)`` absolute error.
        scores: ``(N,)`` per-image MSE.
        latents: ``(N, latent_dim)`` encoder outputs.
    """

    images: torch.Tensor
    reconstructions: torch.Tensor
    maps: torch.Tensor
    scores: torch.Tensor
    latents: torch.Tensor


def score(model: ConvAutoencoder, images: torch.Tensor, *, batch_size: int = 512) -> Scored:
    """Reconstruct and score ``images`` ``(N, C, H, W)``."""
    recon, latents = infer(model, images, batch_size=batch_size)
    return Scored(images, recon, anomaly_maps(images, recon), mse_scores(images, recon), latents)


METHODS = ("mse", "topk", "ssim", "latent-knn", "ensemble")
DEFAULT_METHOD = "latent-knn"
ENSEMBLE = ("latent-knn", "ssim")


def check_method(method: str) -> str:
    """Return ``method`` if it is known, else say which are."""
    if method not in METHODS:
        raise ParameterError(f"score_method={method!r}: use one of {list(METHODS)}")
    return method


def topk_scores(maps: torch.Tensor, k: int = 10) -> torch.Tensor:
    """Mean of the ``k`` largest squared pixel errors per image; ``maps`` is ``|x - x̂|`` ``(N, C, H, W)``."""
    return maps.flatten(1).square().topk(min(k, maps[0].numel()), dim=1).values.mean(1)


def ssim_scores(
    images: torch.Tensor, reconstructions: torch.Tensor, window: int = 7, sigma: float = 1.5
) -> torch.Tensor:
    """``1 - mean SSIM`` per image, with a Gaussian window (Wang et al. 2004, constants for range 1)."""
    coords = torch.arange(window, dtype=torch.float32) - (window - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = (g / g.sum()).outer(g / g.sum()).view(1, 1, window, window)
    c1, c2 = 0.01**2, 0.03**2
    x, y = images.float(), reconstructions.float()
    channels = x.shape[1]
    kernel = g.expand(channels, 1, window, window)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, kernel, groups=channels)

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    ssim = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return 1 - ssim.flatten(1).mean(1)


def knn_distances(reference: torch.Tensor, queries: torch.Tensor, k: int = 2, chunk: int = 1024) -> torch.Tensor:
    """Mean cosine distance from each query ``(M, D)`` to its ``k`` nearest rows of ``reference`` ``(N, D)``."""
    ref = F.normalize(reference.float(), dim=1)
    k = min(k, len(ref))
    out = torch.empty(len(queries))
    # One similarity buffer, reused: fresh 100 MB blocks cost page faults on every chunk.
    buf = torch.empty(min(chunk, len(queries)), len(ref))
    for i in range(0, len(queries), chunk):
        q = F.normalize(queries[i : i + chunk].float(), dim=1)
        sim = torch.mm(q, ref.T, out=buf[: len(q)])
        out[i : i + len(q)] = 1 - sim.topk(k, dim=1).values.mean(1)
    return out


class Scorer:
    """Every score method, fitted on normal images only.

    Args:
        model: The trained autoencoder.
        train_images: ``(N, C, H, W)`` normal training images: the kNN reference set.
        val: Validation normals, ``(M, C, H, W)`` images or what :func:`score` made of
            them: the standardisation of the ensemble.
        k: Neighbours of ``latent-knn``.
        topk: Pixels of ``topk``.

    Attributes:
        val_scores: Every method's ``(M,)`` scores of the validation normals (for a
            threshold), computed once here.
    """

    def __init__(
        self,
        model: ConvAutoencoder,
        train_images: torch.Tensor,
        val: torch.Tensor | Scored,
        *,
        k: int = 2,
        topk: int = 10,
    ) -> None:
        self.model, self.k, self.topk = model, k, topk
        self.reference = encode(model, train_images)
        base = self._base(val if isinstance(val, Scored) else score(model, val))
        self.stats = {m: (float(base[m].mean()), float(base[m].std()) or 1.0) for m in ENSEMBLE}
        self.val_scores = self._with_ensemble(base)

    def _base(self, scored: Scored) -> dict[str, torch.Tensor]:
        return {
            "mse": scored.scores,
            "topk": topk_scores(scored.maps, self.topk),
            "ssim": ssim_scores(scored.images, scored.reconstructions),
            "latent-knn": knn_distances(self.reference, scored.latents, self.k),
        }

    def _with_ensemble(self, base: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        ensemble = torch.stack([(base[m] - mu) / sd for m, (mu, sd) in self.stats.items()]).mean(0)
        return {**base, "ensemble": ensemble}

    def all_scores(self, scored: Scored) -> dict[str, torch.Tensor]:
        """Every method's ``(N,)`` scores for images already reconstructed by :func:`score`."""
        return self._with_ensemble(self._base(scored))


def write_scores(
    path: str | os.PathLike[str], parts: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
) -> Path:
    """Write ``reconstruction_errors.csv``: columns ``split,index,label,score``.

    Args:
        path: The CSV file.
        parts: By split name, ``(indices, labels, scores)``, each ``(N,)``.
    """
    rows = (
        (name, int(i), int(label), float(s))
        for name, (indices, labels, scores) in parts.items()
        for i, label, s in zip(indices.tolist(), labels.tolist(), scores.tolist(), strict=True)
    )
    return storage.write_csv(path, ["split", "index", "label", "score"], rows)


def read_scores(path: str | os.PathLike[str], split: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
    """``(indices, scores)`` of one split from ``reconstruction_errors.csv``."""
    import csv

    with open(path, newline="") as fh:
        rows = [(int(r["index"]), float(r["score"])) for r in csv.DictReader(fh) if r["split"] == split]
    if not rows:
        raise ParameterError(f"{path} has no rows of split {split!r}: run notebook 03_evaluation again")
    indices, scores = zip(*rows, strict=True)
    return torch.tensor(indices), torch.tensor(scores, dtype=torch.float64)
