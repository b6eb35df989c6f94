"""The encoder's latent vectors and a seeded t-SNE of them."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from . import storage
from .device import resolve_precision
from .errors import ParameterError
from .model import ConvAutoencoder


@torch.inference_mode()
def encode(model: ConvAutoencoder, images: torch.Tensor, *, batch_size: int = 512) -> torch.Tensor:
    """Latents ``(N, latent_dim)`` float32 on the CPU of images ``(N, C, H, W)``.

    Runs with the device's autocast (bf16 on CPUs that support it), as scoring does.
    """
    device = next(model.parameters()).device
    precision = resolve_precision(device, True, warn=False)
    model.eval()
    parts = []
    for i in range(0, len(images), batch_size):
        with precision.autocast():
            z = model.encode(images[i : i + batch_size].to(device).contiguous(memory_format=torch.channels_last))
        parts.append(z.float().cpu())
    return torch.cat(parts) if parts else torch.empty(0, model.config.latent_dim)


def tsne(latents: torch.Tensor | np.ndarray, *, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """A 2-D t-SNE embedding ``(N, 2)`` of ``latents`` ``(N, D)`` (scikit-learn, PCA init, seeded)."""
    from sklearn.manifold import TSNE

    x = np.asarray(latents, dtype=np.float32)
    if len(x) < 3:
        raise ParameterError(f"t-SNE needs at least 3 points, got {len(x)}: raise tsne_samples")
    perplexity = min(float(perplexity), (len(x) - 1) / 3)  # scikit-learn requires perplexity < n_samples
    model = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed, learning_rate="auto")
    return model.fit_transform(x)


def write_embeddings(
    path: str | os.PathLike[str],
    split: str,
    indices: torch.Tensor,
    labels: torch.Tensor,
    is_anomaly: torch.Tensor,
    embedding: np.ndarray,
) -> Path:
    """Write ``latent_embeddings.csv``: ``split,index,label,is_anomaly,tsne_x,tsne_y``, one row per point."""
    rows = (
        (split, i, label, int(a), float(x), float(y))
        for i, label, a, (x, y) in zip(indices.tolist(), labels.tolist(), is_anomaly.tolist(), embedding, strict=True)
    )
    return storage.write_csv(path, ["split", "index", "label", "is_anomaly", "tsne_x", "tsne_y"], rows)
