"""The one inference loop: reconstructions, latent codes and (for a VAE) the KL term, and
:func:`score`, which adds the maps and the MSE."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from anomalymap_helpers.pipeline.models import Model
from anomalymap_helpers.pipeline.scoring.maps import anomaly_maps
from anomalymap_helpers.pipeline.scoring.pixel import mse_scores
from anomalymap_helpers.pipeline.training.device import Precision, inference_precision, retain_freed_memory


@torch.inference_mode()
def infer(
    model: Model,
    images: torch.Tensor,
    *,
    batch_size: int = 512,
    precision: Precision | None = None,
    decode: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """The one inference loop: latents, and reconstructions unless ``decode`` is False.

    Runs ``images`` ``(N, C, H, W)`` in [0, 1] through the model in batches on the
    model's device, with :func:`~anomalymap_helpers.pipeline.training.device.inference_precision`
    unless ``precision`` is given, and returns float32 tensors on the CPU.

    Returns:
        ``(reconstructions (N, C, H, W) or None, latents (N, latent_dim))``; a VAE's latents
        are the means of q(z|x).
    """
    out, latents, _, _ = _infer(model, images, batch_size=batch_size, precision=precision, decode=decode)
    return out, latents


@torch.inference_mode()
def _infer(
    model: Model,
    images: torch.Tensor,
    *,
    batch_size: int = 512,
    precision: Precision | None = None,
    decode: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """:func:`infer`, plus each image's KL divergence ``(N,)`` where ``model`` is a VAE, and the
    segmentation maps ``(N, 1, H, W)`` where it is the restore model (else None)."""
    device = next(model.parameters()).device
    precision = precision or inference_precision(device)
    if device.type == "cpu":
        retain_freed_memory()
    model.eval()
    out = torch.empty(images.shape, dtype=torch.float32) if decode else None
    latents = torch.empty(len(images), model.config.latent_dim, dtype=torch.float32)
    kl = seg = None  # made at the first batch that has them (a VAE's KL terms, the restore model's maps)
    for i in range(0, len(images), batch_size):
        batch = images[i : i + batch_size].to(device).contiguous(memory_format=torch.channels_last)
        with precision.autocast():
            got = model.infer(batch, decode=decode)
        if got.logvar is not None:
            kl = torch.empty(len(images), dtype=torch.float32) if kl is None else kl
            kl[i : i + batch_size] = got.kl.cpu()
        if out is not None:
            out[i : i + batch_size] = got.reconstruction.float().cpu()
        if got.segmentation is not None:
            # the probability of damage at each pixel, given the image and its reconstruction
            seg = torch.empty(len(images), 1, *images.shape[-2:], dtype=torch.float32) if seg is None else seg
            seg[i : i + batch_size] = torch.sigmoid(got.segmentation.float()).cpu()
        latents[i : i + batch_size] = got.latents.float().cpu()
    return out, latents, kl, seg


def reconstruct(
    model: Model, images: torch.Tensor, *, batch_size: int = 512, precision: Precision | None = None
) -> torch.Tensor:
    """Reconstructions ``(N, C, H, W)`` float32 of ``images`` (see :func:`infer`)."""
    return infer(model, images, batch_size=batch_size, precision=precision)[0]


def encode(
    model: Model, images: torch.Tensor, *, batch_size: int = 512, precision: Precision | None = None
) -> torch.Tensor:
    """Latents ``(N, latent_dim)`` float32 of ``images``, without decoding (see :func:`infer`)."""
    return infer(model, images, batch_size=batch_size, precision=precision, decode=False)[1]


@dataclass(frozen=True)
class Scored:
    """Images with their reconstructions, maps and scores.

    Attributes:
        images: ``(N, C, H, W)`` float32 in [0, 1].
        reconstructions: ``(N, C, H, W)`` float32 in [0, 1].
        maps: ``(N, 1, H, W)`` anomaly maps (see :func:`anomaly_maps`).
        scores: ``(N,)`` per-image MSE.
        latents: ``(N, latent_dim)`` encoder outputs.
        kl: ``(N,)`` KL divergence of q(z|x) from the prior, for a VAE; else None.
        segmentation: ``(N, 1, H, W)`` the restore model's probability of damage per pixel
            (the ``segment`` score's map); else None.
    """

    images: torch.Tensor
    reconstructions: torch.Tensor
    maps: torch.Tensor
    scores: torch.Tensor
    latents: torch.Tensor
    kl: torch.Tensor | None = None
    segmentation: torch.Tensor | None = None


def score(
    model: Model,
    images: torch.Tensor,
    *,
    batch_size: int = 512,
    blur: float = 0.0,
    precision: Precision | None = None,
) -> Scored:
    """Reconstruct and score ``images`` ``(N, C, H, W)``; ``blur`` is the maps' Gaussian sigma in pixels.

    ``precision`` as in :func:`infer` (default: mixed where the device has it natively).
    """
    recon, latents, kl, seg = _infer(model, images, batch_size=batch_size, precision=precision)
    return Scored(images, recon, anomaly_maps(images, recon, blur), mse_scores(images, recon), latents, kl, seg)
