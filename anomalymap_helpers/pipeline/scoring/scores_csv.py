"""``reconstruction_errors.csv``: every split's image scores, as notebook 03 writes them."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from anomalymap_helpers.errors import ParameterError
from anomalymap_helpers.files import storage


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
