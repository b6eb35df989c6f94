"""Hard example folders: procedural textures that look like real materials, with real-looking defects.

The washers of :mod:`.example` are an easy case (a flat background, a bright drawn mark). Real
inspection images are textured surfaces, where an autoencoder that rebuilds the texture also
rebuilds the defect. Three materials, each made from seeded multi-octave value noise (nothing is
downloaded), every image a fresh patch of the material:

- ``wood``: grain, rings around a far-off centre bent by noise, in browns;
- ``fabric``: a plain weave, warp and weft threads of varying thickness and shade, in blue-grey;
- ``metal``: brushed steel, noise stretched along one direction, with a soft sheen.

Six kinds of defect, each with its exact mask (the pixels it changed, and only those):
``scratch`` (a thin bright line), ``crack`` (a thin dark branching line), ``stain`` (a dark
translucent blot), ``cut`` (a patch of another material cut in), ``hole`` (a missing piece,
the dark backing showing through) and ``colour`` (a discoloured region).

::

    <out>/<material>/train/good/  <out>/<material>/test/good/  <out>/<material>/test/<defect>/
    <out>/<material>/ground_truth/<defect>/<name>_mask.png
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from scipy import ndimage

from anomalymap_helpers.errors import ParameterError
from anomalymap_helpers.files import storage
from anomalymap_helpers.files.paths import resolve

MATERIALS = ("wood", "fabric", "metal")
DEFECTS = ("scratch", "crack", "stain", "cut", "hole", "colour")
DEFAULT_OUT = "data/example-textures"


def value_noise(size: int, scale: float, rng: np.random.Generator, octaves: int = 4) -> np.ndarray:
    """``(size, size)`` noise in about [0, 1]: random grids of ``size / scale`` cells, smoothly
    upsampled (cubic), summed over ``octaves`` each twice as fine and half as strong."""
    out, weight, total = np.zeros((size, size)), 1.0, 0.0
    for o in range(octaves):
        cells = max(2, int(round(size / scale * 2**o)))
        grid = rng.random((cells + 3, cells + 3))
        zoomed = ndimage.zoom(grid, (size + 3 * size / cells) / (cells + 3), order=3, mode="reflect")
        out += weight * zoomed[:size, :size]
        total += weight
        weight /= 2
    out /= total
    return (out - out.min()) / max(out.max() - out.min(), 1e-9)


def _palette(t: np.ndarray, dark: tuple[int, int, int], light: tuple[int, int, int]) -> np.ndarray:
    d, li = np.array(dark, dtype=float), np.array(light, dtype=float)
    return d + (li - d) * np.clip(t, 0, 1)[..., None]


def material(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """One patch ``(size, size, 3)`` float in [0, 255] of material ``kind``."""
    y, x = np.mgrid[0:size, 0:size].astype(float) / size
    if kind == "wood":
        cx, cy = rng.uniform(-3, -1.5), rng.uniform(-1, 2)  # the tree's centre, far off the patch
        warp = value_noise(size, size / 3, rng, 3)
        r = np.hypot(x - cx, (y - cy) * 0.35) * rng.uniform(9, 12) + 1.8 * warp
        rings = 0.5 + 0.5 * np.sin(2 * np.pi * r)
        fine = value_noise(size, 3, rng, 2)
        t = 0.65 * rings**1.5 + 0.25 * fine + 0.1 * warp
        return _palette(t, (92, 52, 24), (206, 150, 92))
    if kind == "fabric":
        period = size / rng.uniform(9, 11)
        phase_x, phase_y = rng.uniform(0, 2 * np.pi, 2)
        wobble = value_noise(size, size / 4, rng, 2) * 1.2
        u, v = x * size / period * 2 * np.pi + phase_x + wobble, y * size / period * 2 * np.pi + phase_y - wobble
        warp, weft = 0.5 + 0.5 * np.cos(u), 0.5 + 0.5 * np.cos(v)
        over = (np.sin(u / 2) * np.sin(v / 2)) > 0  # which thread is on top at each crossing
        threads = np.where(over, warp**0.6, weft**0.6)
        shade = value_noise(size, size / 6, rng, 3)
        t = 0.7 * threads + 0.2 * shade + 0.1 * value_noise(size, 2, rng, 1)
        return _palette(t, (40, 52, 78), (150, 168, 196))
    if kind == "metal":
        angle = rng.uniform(-0.15, 0.15)
        n = rng.random((size * 2, size * 2))
        streaks = ndimage.gaussian_filter(n, (0.6, size / 5))  # brushed: long along one axis
        streaks = ndimage.rotate(streaks, np.degrees(angle), reshape=False, mode="reflect")[size // 2 : size // 2 + size, size // 2 : size // 2 + size]
        streaks = (streaks - streaks.mean()) / max(streaks.std(), 1e-9)
        sheen = 0.5 + 0.35 * np.cos(2 * np.pi * (x * rng.uniform(0.3, 0.8) + rng.uniform(0, 1)))
        t = sheen + 0.09 * streaks + 0.08 * value_noise(size, size / 3, rng, 2)
        return _palette(t, (70, 74, 80), (214, 218, 224))
    raise ParameterError(f"material {kind!r}: use one of {list(MATERIALS)}")


def blob_mask(size: int, rng: np.random.Generator, radius: tuple[float, float]) -> np.ndarray:
    """A noisy-edged blob mask ``(size, size)`` bool somewhere inside the middle of the image."""
    y, x = np.mgrid[0:size, 0:size].astype(float)
    cx, cy = rng.uniform(0.3, 0.7, 2) * size
    rx, ry = rng.uniform(*radius, 2) * size
    edge = value_noise(size, size / 6, rng, 2) - 0.5
    return (((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2) < 1 + 0.8 * edge


def line_mask(size: int, rng: np.random.Generator, width: float, branches: int = 0) -> np.ndarray:
    """A thin polyline mask ``(size, size)`` bool: a random walk across the middle, and branches."""
    from PIL import Image, ImageDraw

    img = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(img)
    w = max(1, round(width * size))
    for b in range(1 + branches):
        p = rng.uniform(0.25, 0.75, 2) * size
        heading = rng.uniform(0, 2 * np.pi)
        points = [tuple(p)]
        for _ in range(rng.integers(4, 8) if b == 0 else rng.integers(2, 4)):
            heading += rng.normal(0, 0.5)
            p = np.clip(p + size * rng.uniform(0.05, 0.1) * np.array([np.cos(heading), np.sin(heading)]), 2, size - 3)
            points.append(tuple(p))
        draw.line(points, fill=255, width=w)
    return np.asarray(img) > 0


def defect(image: np.ndarray, kind: str, mat: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``image`` ``(S, S, 3)`` float with a defect of ``kind``, and its mask ``(S, S)`` bool: the pixels
    whose (uint8-rounded) value the defect changed."""
    size = image.shape[0]
    out = image.copy()
    if kind == "scratch":
        m = line_mask(size, rng, 1 / 48)
        out[m] = np.clip(out[m] * 0.4 + 0.6 * np.array([235, 232, 225]), 0, 255)
    elif kind == "crack":
        m = line_mask(size, rng, 1 / 64, branches=2)
        out[m] = out[m] * 0.3
    elif kind == "stain":
        m = blob_mask(size, rng, (0.08, 0.16))
        soft = ndimage.gaussian_filter(m.astype(float), 1.0) * m
        out = out * (1 - 0.55 * soft[..., None]) + np.array([40, 30, 10]) * 0.25 * soft[..., None]
    elif kind == "cut":
        m = blob_mask(size, rng, (0.1, 0.18))
        other = material(rng.choice([o for o in MATERIALS if o != mat]), size, rng)
        out[m] = other[m]
    elif kind == "hole":
        m = blob_mask(size, rng, (0.06, 0.12))
        out[m] = np.array([18, 18, 20]) + 10 * rng.random((int(m.sum()), 1))
    elif kind == "colour":
        m = blob_mask(size, rng, (0.1, 0.18))
        out[m] = out[m] * 0.7 + np.array([190, 120, 50]) * 0.3  # a rusty discolouration
    else:
        raise ParameterError(f"defect {kind!r}: use one of {list(DEFECTS)}")
    out = np.clip(out, 0, 255)
    changed = (np.round(out) != np.round(image)).any(-1)
    return out, changed


def make_texture_folders(
    out: str | os.PathLike[str] = DEFAULT_OUT,
    *,
    size: int = 64,
    n_train: int = 200,
    n_test_good: int = 40,
    n_defect: int = 10,
    seed: int = 0,
    materials: tuple[str, ...] = MATERIALS,
) -> Path:
    """Write one category folder per material under ``out`` (MVTec AD layout) and return ``out``.

    Raises:
        ParameterError: ``out`` exists and is not empty, a count or size is too small, or a
            material is not known.
    """
    from PIL import Image

    target = resolve(out)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ParameterError(f"{target} already exists: choose another --out, or delete it first")
    if size < 32 or min(n_train, n_test_good, n_defect) < 1:
        raise ParameterError("the texture folders need size >= 32 and at least one image of each kind")
    unknown = [m for m in materials if m not in MATERIALS]
    if unknown:
        raise ParameterError(f"materials {unknown} are not known: use some of {list(MATERIALS)}")

    def save(a: np.ndarray, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.round(a).astype(np.uint8)).save(path)

    with storage.new_folder(target) as build:
        for j, mat in enumerate(materials):
            rng = np.random.default_rng([seed, j])
            root = build / mat
            for k in range(n_train):
                save(material(mat, size, rng), root / "train" / "good" / f"{k:03d}.png")
            for k in range(n_test_good):
                save(material(mat, size, rng), root / "test" / "good" / f"{k:03d}.png")
            for kind in DEFECTS:
                for k in range(n_defect):
                    image, mask = defect(material(mat, size, rng), kind, mat, rng)
                    save(image, root / "test" / kind / f"{k:03d}.png")
                    save(mask * 255.0, root / "ground_truth" / kind / f"{k:03d}_mask.png")
    return target
