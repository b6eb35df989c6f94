"""``nearest-patch``: each pixel's neighbourhood against the nearest neighbourhood of every normal training image.

The second of the two signals a folder's detector uses (the first is the restore model's
segmentation, "looks damaged"): "unlike any normal", PatchCore's idea (Roth et al., CVPR 2022)
with no downloaded features. Its memory is the normal training images' own ``patch x patch``
neighbourhoods, at the image's resolution and at coarser ones (``scales``: the image
average-pooled by 2, ...; the default (1, 2) chosen on the development photograph folders), so that a change of fine structure (a smear, a speck) and of the
layout of larger parts (a warp, a fold, a displaced piece) each find no close normal at some scale.

1. At each scale, every pixel's ``patch x patch`` neighbourhood (all colour channels, the image's
   border reflected) is a vector; the memory holds ``bank`` of the training images' vectors,
   drawn at random (seeded), as many from each image.
2. A pixel's distance at a scale is the Euclidean distance from its vector to the nearest vector of
   the memory, divided by that scale's typical distance of a normal: the mean distance of
   ``calibration`` training vectors left out of the memory to their nearest in it (so every scale
   reads in the same unit: 1 is how far a normal's neighbourhood typically lies).
3. The map is the mean over scales of the distances, each scale's upsampled (bilinear) to the image.
4. The image score is the map's largest mean over a small window, as ``segment``'s is
   (:func:`~anomalymap_helpers.pipeline.scoring.segment.segment_scores`): a thin line is not
   diluted by the rest of the image.

Everything is fitted on the normal training images; nothing is learned, so nothing is memorised
beyond what the memory holds, and the memory is what a user can inspect.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from anomalymap_helpers.errors import ParameterError

PATCH = 7  # the neighbourhood's side in pixels, at each scale
SCALES = (1, 2)  # the image itself, and average-pooled by 2: chosen by the rule of docs/photographs.md
BANK = 16384  # training neighbourhoods the memory keeps at each scale
CALIBRATION = 4096  # training neighbourhoods left out of the memory that set each scale's unit


def neighbourhoods(images: torch.Tensor, scale: int, patch: int = PATCH) -> torch.Tensor:
    """``(N, h * w, C * patch * patch)``: every pixel's neighbourhood of ``images`` ``(N, C, H, W)``
    average-pooled by ``scale`` (float32; the border reflected, so every pixel has one)."""
    x = images.float()
    if scale > 1:
        x = F.avg_pool2d(x, scale, scale)
    pad = patch // 2
    x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    return F.unfold(x, patch).transpose(1, 2)


def drawn_neighbourhoods(images: torch.Tensor, scale: int, patch: int, count: int, gen: torch.Generator,
                         batch_size: int = 64) -> torch.Tensor:
    """``(<= count, D)`` neighbourhoods of ``images`` at ``scale`` drawn at random (seeded by ``gen``), the same
    number from each image, in random order; all of them where there are no more than ``count``.

    Only the drawn ones are kept, a batch of images at a time, so a large training set's memory costs
    ``count`` vectors, not one per pixel."""
    n = len(images)
    h, w = images.shape[-2] // scale, images.shape[-1] // scale
    each = min(h * w, -(-count // n))
    picked = []
    for i in range(0, n, batch_size):
        v = neighbourhoods(images[i : i + batch_size], scale, patch)  # (b, h * w, D)
        where = torch.stack([torch.randperm(h * w, generator=gen)[:each] for _ in range(len(v))])
        picked.append(v.gather(1, where[..., None].expand(-1, -1, v.shape[-1])).flatten(0, 1))
    vectors = torch.cat(picked)
    return vectors[torch.randperm(len(vectors), generator=gen)[:count]]


def nearest_distance(queries: torch.Tensor, memory: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """``(Q,)`` the Euclidean distance from each of ``queries`` ``(Q, D)`` to its nearest row of ``memory`` ``(M, D)``.

    The memory is searched ``chunk`` rows at a time (a fixed number of steps, so the ONNX detector runs
    the same loop for any number of queries), which holds ``Q x chunk`` distances at once.

    Precision: float32 ``|q|^2 - 2 q.m + |m|^2``, clamped at 0; a distance errs by about
    ``1e-7 * |q|^2 / d`` (about 1e-3 of a typical distance here), far below a scale's unit.
    """
    best = None
    for i in range(0, len(memory), chunk):  # |m|^2 - 2 q.m in one pass (addmm), |q|^2 added to the least
        m = memory[i : i + chunk]
        d2 = torch.addmm((m * m).sum(1), queries, m.T, alpha=-2).amin(1)
        best = d2 if best is None else torch.minimum(best, d2)
    if best is None:
        return torch.zeros(len(queries))
    return (best + (queries * queries).sum(1)).clamp_min(0).sqrt()


def patch_maps(
    images: torch.Tensor, memories: list[torch.Tensor], units: list[float], scales: tuple[int, ...], patch: int = PATCH
) -> torch.Tensor:
    """``(N, 1, H, W)``: the mean over ``scales`` of each pixel's distance to the nearest of that scale's
    ``memories`` in its ``units`` (steps 2-3 of the module docstring), for images ``(N, C, H, W)``.

    The one computation of the maps: :class:`PatchMemory` calls it a few images at a time, and the ONNX
    detector (``commands/export.py``) inside its graph, with the memories as constants."""
    size = images.shape[-2:]
    out = []
    for memory, unit, s in zip(memories, units, scales, strict=True):
        h, w = size[0] // s, size[1] // s
        q = neighbourhoods(images, s, patch)  # (b, h * w, D)
        d = nearest_distance(q.flatten(0, 1), memory).reshape(-1, 1, h, w) / unit
        out.append(d if s == 1 else F.interpolate(d, size=(size[0], size[1]), mode="bilinear", align_corners=False))
    return torch.stack(out).mean(0)


class PatchMemory:
    """``nearest-patch``'s memory of normal neighbourhoods and its maps (see the module docstring).

    Args:
        train_images: ``(N, C, H, W)`` the normal training images, in [0, 1].
        patch, scales, bank, calibration: As the module's constants.
        seed: Of the random draw of the memory.

    Attributes:
        memories: One ``(bank, C * patch * patch)`` float32 memory per scale.
        units: Each scale's typical distance of a normal neighbourhood (step 2).
    """

    def __init__(
        self,
        train_images: torch.Tensor,
        *,
        patch: int = PATCH,
        scales: tuple[int, ...] = SCALES,
        bank: int = BANK,
        calibration: int = CALIBRATION,
        seed: int = 0,
    ) -> None:
        if train_images.dim() != 4 or len(train_images) == 0:
            raise ParameterError(
                f"nearest-patch needs the normal training images (N, C, H, W), not a tensor of shape {tuple(train_images.shape)}"
            )
        side = min(train_images.shape[-2:])
        usable = tuple(s for s in scales if side // s > patch)
        if not usable:
            raise ParameterError(f"nearest-patch needs images over {patch} pixels a side, not {side}")
        self.patch, self.scales, self.size = patch, usable, tuple(train_images.shape[-2:])
        gen = torch.Generator().manual_seed(seed)
        self.memories, self.units = [], []
        for s in self.scales:
            vectors = drawn_neighbourhoods(train_images, s, patch, bank + calibration, gen)
            memory = vectors[:bank].contiguous()
            held = vectors[len(memory) :]
            unit = float(nearest_distance(held, memory).mean()) if len(held) else 0.0
            self.memories.append(memory)
            self.units.append(unit if unit > 0 else 1.0)  # too few to leave some out, or all alike: distances as they are

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor, queries: int = 8192) -> torch.Tensor:
        """The maps ``(N, 1, H, W)`` of ``images`` ``(N, C, H, W)`` (steps 2-3), a few images at a time
        (about ``queries`` pixels, so a step holds ``queries x 4096`` distances)."""
        if images.dim() != 4 or tuple(images.shape[-2:]) != self.size:
            raise ParameterError(f"nearest-patch's memory is of {self.size} images, not of shape {tuple(images.shape)}")
        step = max(1, queries // (self.size[0] * self.size[1]))
        out = [patch_maps(images[i : i + step].float(), self.memories, self.units, self.scales, self.patch)
               for i in range(0, len(images), step)]
        return torch.cat(out) if out else torch.empty(0, 1, *self.size)
