"""What every data source gives: a whole data set as ``uint8`` tensors, with its class names."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class ImageData:
    """A whole data set as ``uint8`` tensors, with its class names.

    Attributes:
        name: ``"mnist"``, ``"fashion-mnist"`` or ``"folder"``.
        train_images: ``(N, C, H, W)`` uint8.
        train_labels: ``(N,)`` int64.
        test_images: ``(M, C, H, W)`` uint8.
        test_labels: ``(M,)`` int64.
        class_names: Each label's name.
        checksums: SHA-256 of what the tensors were read from.
        test_masks: ``(M, 1, H, W)`` bool defect masks (all False for normal images),
            or None where the data set has none.
        test_names: ``(M,)`` file names of the test images, where they have names.
        skipped: Files in the source that were not images (folder data sets).
    """

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    class_names: tuple[str, ...]
    checksums: dict[str, str] = field(default_factory=dict)
    test_masks: torch.Tensor | None = None
    test_names: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()
