"""The nearest training normals by cosine distance between codes: ``latent-knn``'s score and the
search every kNN score shares."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def knn_distances(reference: torch.Tensor, queries: torch.Tensor, k: int = 2, chunk: int = 1024) -> torch.Tensor:
    """Mean cosine distance from each query ``(M, D)`` to its ``k`` nearest rows of ``reference`` ``(N, D)``."""
    return nearest(reference, queries, k, chunk)[0].mean(1)


def nearest(
    reference: torch.Tensor, queries: torch.Tensor, k: int = 2, chunk: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` nearest rows of ``reference`` ``(N, D)`` to each query ``(M, D)`` by cosine distance:
    ``(distances (M, k), indices (M, k))``, nearest first."""
    ref = F.normalize(reference.float(), dim=1)
    k = min(k, len(ref))
    dist, index = torch.empty(len(queries), k), torch.empty(len(queries), k, dtype=torch.long)
    # One similarity buffer, reused: fresh 100 MB blocks cost page faults on every chunk.
    buf = torch.empty(min(chunk, len(queries)), len(ref))
    for i in range(0, len(queries), chunk):
        q = F.normalize(queries[i : i + chunk].float(), dim=1)
        sim = torch.mm(q, ref.T, out=buf[: len(q)])
        top = sim.topk(k, dim=1)
        dist[i : i + len(q)], index[i : i + len(q)] = 1 - top.values, top.indices
    return dist, index
