"""Reconstructions, per-pixel anomaly maps and per-image anomaly scores.

The anomaly map of an image ``x`` with reconstruction ``x̂`` is the absolute
error ``|x - x̂|`` per pixel; the default per-image score is the mean squared
error ``mean((x - x̂)²)`` over its pixels.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from . import storage
from .device import Precision, resolve_precision
from .model import ConvAutoencoder


@torch.inference_mode()
def reconstruct(
    model: ConvAutoencoder,
    images: torch.Tensor,
    *,
    batch_size: int = 512,
    precision: Precision | None = None,
) -> torch.Tensor:
    """Reconstruct ``images`` ``(N, C, H, W)`` in [0, 1] in large inference batches.

    Runs on the model's device, with bf16/fp16 autocast where the device
    supports it (pass ``precision`` to choose), and returns float32 on the CPU.
    """
    device = next(model.parameters()).device
    precision = precision or resolve_precision(device, True, warn=False)
    model.eval()
    out = torch.empty(images.shape, dtype=torch.float32)
    for i in range(0, len(images), batch_size):
        batch = images[i : i + batch_size].to(device).contiguous(memory_format=torch.channels_last)
        with precision.autocast():
            recon = model(batch)
        out[i : i + batch_size] = recon.float().cpu()
    return out


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
    """

    images: torch.Tensor
    reconstructions: torch.Tensor
    maps: torch.Tensor
    scores: torch.Tensor


def score(model: ConvAutoencoder, images: torch.Tensor, *, batch_size: int = 512) -> Scored:
    """Reconstruct and score ``images`` ``(N, C, H, W)``."""
    recon = reconstruct(model, images, batch_size=batch_size)
    return Scored(images, recon, anomaly_maps(images, recon), mse_scores(images, recon))


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
