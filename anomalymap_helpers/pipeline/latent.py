"""Step 05: the encoder's latent vectors (:func:`encode`, the inference loop of ``scoring``) and a seeded t-SNE."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from anomalymap_helpers.errors import ParameterError
from anomalymap_helpers.files import storage
from anomalymap_helpers.pipeline.scoring import encode

__all__ = ["encode", "tsne", "write_embeddings"]


# 250 iterations of early exaggeration and 500 more, openTSNE's default; scikit-learn's 1,000
# cost a third more time for a KL divergence under 1 % lower on the default run's latents.
TSNE_ITERATIONS = 750


def tsne(latents: torch.Tensor | np.ndarray, *, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """A 2-D t-SNE embedding ``(N, 2)`` of ``latents`` ``(N, D)`` (scikit-learn, PCA init, seeded)."""
    from sklearn.manifold import TSNE

    x = np.asarray(latents, dtype=np.float32)
    if len(x) < 3:
        raise ParameterError(f"t-SNE needs at least 3 points, got {len(x)}: raise tsne_samples")
    perplexity = min(float(perplexity), (len(x) - 1) / 3)  # scikit-learn requires perplexity < n_samples
    model = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed, learning_rate="auto",
                 max_iter=TSNE_ITERATIONS)
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
