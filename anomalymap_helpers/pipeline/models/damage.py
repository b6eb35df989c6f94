"""Synthetic damage: what the defect-learning model (``model="restore"``) is told a defect is.

No defect is ever seen in training, so the restore model is shown made-up ones: each training
image gets, with probability ``1 - CLEAN``, one to three damaged regions, and the model learns
to give back the undamaged image and to say which pixels were damaged (DRAEM's idea,
Zavrtanik et al., ICCV 2021; nothing here is downloaded: the damage is made from the training
images themselves and from noise). A region has a **shape**:

- ``noise``: a blob cut from smooth random noise above a threshold (DRAEM's Perlin regions);
- ``stroke``: a thin polyline of 1-3 pixels (a scratch or a crack);
- ``blob``: a ragged ellipse (a stain, a hole, a chip);

and a **fill**:

- ``patch``: the same place of another training image, turned, flipped and colour- and
  contrast-jittered (foreign material, a misplaced structure);
- ``texture``: smooth random noise in a random colour;
- ``shade``: the image itself blended towards a random colour, translucent (a stain, a burn, a
  discolouration, a bright or dark mark).

Every choice comes from one seeded ``torch.Generator``, so a run and its resume repeat exactly.
The mask is exact: a pixel is in it if and only if the damage changed it (changes below
``MIN_CHANGE`` on every channel are undone, so a faint, invisible "defect" is never taught).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SHAPES = ("noise", "stroke", "blob")
FILLS = ("patch", "texture", "shade")
CLEAN = 0.3  # share of training images left undamaged (the model must also learn to say "nothing")
MIN_CHANGE = 0.04  # a damaged pixel differs by more than this on at least one channel
MAX_REGIONS = 3


def _noise(size: int, gen: torch.Generator, cells: int) -> torch.Tensor:
    """``(size, size)`` smooth noise in [0, 1]: a random ``cells`` x ``cells`` grid, bicubic upsampled."""
    grid = torch.rand(1, 1, cells + 1, cells + 1, generator=gen)
    up = F.interpolate(grid, size=(size, size), mode="bicubic", align_corners=True)[0, 0]
    return (up - up.min()) / (up.max() - up.min()).clamp_min(1e-6)


def _shape(kind: str, size: int, gen: torch.Generator) -> torch.Tensor:
    """A bool ``(size, size)`` region of ``kind``."""
    r = lambda lo, hi: lo + (hi - lo) * float(torch.rand((), generator=gen))  # noqa: E731
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    if kind == "noise":
        n = _noise(size, gen, int(torch.randint(2, 7, (), generator=gen)))
        region = n > r(0.7, 0.9)
        if region.float().mean() > 0.3:  # at most about a third of the image
            region = n > torch.quantile(n.flatten(), 0.7)
        return region
    if kind == "stroke":
        width = r(0.5, 1.6)
        points = torch.rand(int(torch.randint(2, 5, (), generator=gen)), 2, generator=gen) * size
        start = points[0]
        dist = torch.full((size, size), math.inf)
        for end in points[1:]:  # distance to each segment of the polyline
            d = end - start
            t = (((xx - start[0]) * d[0] + (yy - start[1]) * d[1]) / d.square().sum().clamp_min(1e-6)).clamp(0, 1)
            dist = torch.minimum(dist, torch.hypot(xx - start[0] - t * d[0], yy - start[1] - t * d[1]))
            start = end
        return dist <= width
    if kind == "blob":
        cy, cx = r(0.1, 0.9) * size, r(0.1, 0.9) * size
        a, b, angle = r(0.04, 0.18) * size, r(0.04, 0.18) * size, r(0, math.pi)
        u = (xx - cx) * math.cos(angle) + (yy - cy) * math.sin(angle)
        v = -(xx - cx) * math.sin(angle) + (yy - cy) * math.cos(angle)
        ragged = 1 + 0.35 * (_noise(size, gen, 6) - 0.5)
        return (u / a).square() + (v / b).square() <= ragged
    raise ValueError(f"shape {kind!r}: use one of {SHAPES}")


def _fill(kind: str, image: torch.Tensor, sources: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """What a region of ``image`` ``(C, S, S)`` is replaced with, ``(C, S, S)`` in [0, 1]."""
    c, s = image.shape[0], image.shape[-1]
    r = lambda lo, hi: lo + (hi - lo) * float(torch.rand((), generator=gen))  # noqa: E731
    if kind == "patch":
        other = sources[int(torch.randint(len(sources), (), generator=gen))].to(image.device, image.dtype)
        other = torch.rot90(other, int(torch.randint(4, (), generator=gen)), dims=(-2, -1))
        if float(torch.rand((), generator=gen)) < 0.5:
            other = other.flip(-1)
        shift = torch.randint(s, (2,), generator=gen)
        other = torch.roll(other, (int(shift[0]), int(shift[1])), dims=(-2, -1))
        mean = other.mean((-2, -1), keepdim=True)
        jitter = (torch.rand(c, 1, 1, generator=gen) - 0.5).to(image) * 0.4
        return ((other - mean) * r(0.5, 2.0) + mean * r(0.6, 1.4) + jitter).clamp(0, 1)
    if kind == "texture":
        colour = torch.rand(c, 1, 1, generator=gen).to(image)
        n = _noise(s, gen, int(torch.randint(4, 17, (), generator=gen))).to(image)
        return (colour + (n - 0.5) * r(0.1, 0.6)).clamp(0, 1)
    if kind == "shade":
        colour = torch.rand(c, 1, 1, generator=gen).to(image)
        if float(torch.rand((), generator=gen)) < 0.5:  # towards black or white: a dark or bright mark
            colour = torch.full((c, 1, 1), float(torch.rand((), generator=gen) < 0.5)).to(image)
        a = r(0.3, 0.9)
        return image * (1 - a) + colour * a
    raise ValueError(f"fill {kind!r}: use one of {FILLS}")


def damage(
    images: torch.Tensor, sources: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Damage ``images`` ``(N, C, H, W)`` in [0, 1]; return ``(damaged, masks)``.

    ``sources`` ``(M, C, H, W)`` are the images a ``patch`` fill is cut from (the training images).
    ``masks`` ``(N, 1, H, W)`` float is 1 exactly where ``damaged`` differs from ``images``; about
    ``CLEAN`` of the images are returned unchanged with an empty mask. Square images only.
    """
    n, c, h, w = images.shape
    if h != w:
        raise ValueError(f"damage needs square images, got {h}x{w}")
    out = images.clone()
    masks = torch.zeros(n, 1, h, w, dtype=images.dtype, device=images.device)
    for i in range(n):
        if float(torch.rand((), generator=generator)) < CLEAN:
            continue
        x = images[i]
        y = x.clone()
        for _ in range(int(torch.randint(1, MAX_REGIONS + 1, (), generator=generator))):
            shape = SHAPES[int(torch.randint(len(SHAPES), (), generator=generator))]
            fill = FILLS[int(torch.randint(len(FILLS), (), generator=generator))]
            region = _shape(shape, h, generator).to(images.device)
            y = torch.where(region, _fill(fill, y, sources, generator), y)
        changed = (y - x).abs().amax(0) > MIN_CHANGE
        out[i] = torch.where(changed, y, x)
        masks[i, 0] = changed.to(images.dtype)
    return out, masks
