"""``segment``: the restore model's own score, read off its segmentation of the damage it learned.

The restore model (:class:`~anomalymap_helpers.pipeline.models.RestoreNet`) gives each pixel a
probability of being damaged: that is the map, at the image's full resolution. The image score
is the largest value of the map averaged over a small square window (``window`` pixels a side,
about a twelfth of the image: 5 at 64x64, 11 at 128x128), as DRAEM scores an image, so one hot
pixel does not flag an image but a small region does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from anomalymap_helpers.errors import ParameterError
from anomalymap_helpers.pipeline.models import Model
from anomalymap_helpers.pipeline.scoring.inference import score


def window_for(size: int) -> int:
    """The odd side of the averaging window of :func:`segment_scores` for images of side ``size``."""
    return max(3, size // 12) | 1


def segment_scores(maps: torch.Tensor) -> torch.Tensor:
    """``(N,)`` scores of segmentation maps ``(N, 1, H, W)``: the largest window mean of each."""
    k = window_for(maps.shape[-1])
    return F.avg_pool2d(maps.float(), k, stride=1, padding=k // 2, count_include_pad=False).flatten(1).amax(1)


class SegmentMaps:
    """The ``segment`` score's own map: the restore model's segmentation, ``(B, 1, H, W)`` per call.

    Built as every score's own map is (``model, train_images, reference``); only the model is used.
    """

    def __init__(self, model: Model, train_images: torch.Tensor | None = None,
                 reference: torch.Tensor | None = None) -> None:
        if "segmentation" not in model.outputs:
            raise ParameterError("the segment score needs the restore model: train with -p model restore in 02")
        self.model = model

    def __call__(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        maps = score(self.model, images, batch_size=batch_size).segmentation
        if maps is None:
            raise ParameterError("the segment score needs the restore model: train with -p model restore in 02")
        return maps
