"""Augmentations that keep a normal image normal: more training images for a small folder.

A photo of a surface is still normal when flipped, turned by a quarter, shifted a little or lit
a little brighter or darker; a digit is not (a flipped 2 is no 2, a turned 6 is a 9), so the rule
(:func:`for_dataset`) turns them on for folders and off for MNIST and Fashion-MNIST. Each training
batch gets its own draw from a seeded generator, so a run (and its resume) repeats exactly.

- ``flip``: left-right and top-bottom, each with probability 1/2;
- ``rot90``: a turn by 0, 90, 180 or 270 degrees (square images);
- ``shift``: a translation by up to 1/16 of the side each way, the edge mirrored in;
- ``brightness``: every pixel times one factor in [0.9, 1.1], then clipped to [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from anomalymap_helpers.errors import ParameterError

AUGMENTATIONS = ("flip", "rot90", "shift", "brightness")
SHIFT = 1 / 16  # the largest shift, as a share of the side
BRIGHTNESS = 0.1  # the largest change of brightness, as a share


def check(names: Sequence[str]) -> tuple[str, ...]:
    """``names`` as a tuple in :data:`AUGMENTATIONS`' order, each known and once."""
    if isinstance(names, str):
        names = [n for n in names.replace(" ", "").split(",") if n]
    unknown = [n for n in names if n not in AUGMENTATIONS]
    if unknown:
        raise ParameterError(f"augment: {unknown} are not known; use any of {list(AUGMENTATIONS)}, 'auto' or 'off'")
    return tuple(n for n in AUGMENTATIONS if n in names)


def for_dataset(augment: str, dataset: str) -> tuple[str, ...]:
    """The augmentations of the ``augment`` parameter: ``"auto"`` is all four for folders and none
    for MNIST and Fashion-MNIST, ``"off"`` none, else a comma-separated list (``"flip,shift"``)."""
    if augment == "auto":
        return AUGMENTATIONS if dataset == "folder" else ()
    return () if augment in ("off", "none") else check(augment)


def draw(names: Sequence[str], n: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """The random choices for ``n`` images of side ``size``: ``(n, 6)`` float, per image
    (flip left-right, flip top-bottom, quarter turns, shift x, shift y, brightness factor).
    Every column is drawn whatever ``names`` holds, so each augmentation's draws stay the same
    when another is turned on or off."""
    coin = torch.rand(n, 2, generator=generator) < 0.5
    turns = torch.randint(0, 4, (n, 1), generator=generator)
    most = max(1, round(size * SHIFT))
    shifts = torch.randint(-most, most + 1, (n, 2), generator=generator)
    factor = 1 + BRIGHTNESS * (2 * torch.rand(n, 1, generator=generator) - 1)
    out = torch.cat([coin.float(), turns.float(), shifts.float(), factor], 1)
    keep = {"flip": [0, 1], "rot90": [2], "shift": [3, 4], "brightness": [5]}
    neutral = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 1.0])
    for name, columns in keep.items():
        if name not in names:
            out[:, columns] = neutral[columns]
    return out


def apply(images: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
    """``images`` ``(N, C, H, W)`` in [0, 1] augmented by :func:`draw`'s ``(N, 6)`` choices; a new tensor."""
    out = images.clone()
    d = draws.to("cpu")
    for i in range(len(out)):
        x = out[i]
        if d[i, 0]:
            x = x.flip(-1)
        if d[i, 1]:
            x = x.flip(-2)
        if d[i, 2]:
            x = torch.rot90(x, int(d[i, 2]), dims=(-2, -1))
        dx, dy = int(d[i, 3]), int(d[i, 4])
        if dx or dy:  # mirror the edge in, then crop the shifted window
            p = max(abs(dx), abs(dy))
            padded = F.pad(x[None], (p, p, p, p), mode="reflect")[0]
            h, w = x.shape[-2:]
            x = padded[..., p - dy : p - dy + h, p - dx : p - dx + w]
        out[i] = x
    factor = d[:, 5].to(out.device, out.dtype).view(-1, 1, 1, 1)
    return (out * factor).clamp_(0, 1) if bool((d[:, 5] != 1).any()) else out
