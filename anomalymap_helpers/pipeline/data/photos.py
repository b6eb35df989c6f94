"""Photograph folders: real photographic surfaces, cut as a camera would, with defects the training never draws.

The procedural textures of :mod:`.textures` carry the same families of damage that the restore
model trains on (:mod:`~anomalymap_helpers.pipeline.models.damage`), so they measure the painter.
These folders are cut from real photographs that Debian's GIMP packages ship (``apt install
gimp-data gimp-data-extras``: ``.pat`` files under ``/usr/share/gimp/2.0/patterns``, or
``$ANOMALYMAP_GIMP_PATTERNS``), and most of their defects are structural: the surface's own
structure bent, folded, smeared or moved, which no amount of paint imitates.

Surfaces (:data:`SURFACES`): four tileable photographs (``stone``: a wall of slate stones,
``bark``, ``grain``: planed wood, ``slate``: grey slate, in grey), each crop taken anywhere on the
tiled surface, and ``leaves-photo``: one photograph of leaves cut in two, the training crops from
its left part and the test crops from its right (the few-images case: nothing in the test set was
ever in a training image). Each crop is jittered as real captures are: a turn of up to 4 degrees
(tiled surfaces), a scale of 0.9-1.1, a change of exposure and contrast of a few percent, and
sensor noise (sigma 2 grey levels).

Defect kinds (:data:`DEFECTS`), each with its mask, the region the defect changed (outside it the
crop is as it was, bit for bit):

- ``scratch``: a thin bright line; ``stain``: a dark translucent blot; ``contamination``: a few
  dark or light specks (painted: the training's damage draws their like);
- ``foreign``: a piece of another photograph, brought to this crop's brightness and contrast;
- ``displaced``: a piece of the surface's own structure, turned and taken from elsewhere;
- ``warp``: the surface swirled or dented in a disc, nothing added;
- ``fold``: a crease across the part: the surface pushed out of a line and shaded on one side, in a band;
- ``smear``: a region blurred along one direction.

:data:`DRAWN_BY_DAMAGE` says for each whether the training's damage draws anything like it.

Reserved for independent checks, never used here: :data:`RESERVED` (GIMP's walnut, burlap,
cracked, leather, drymud, granite2, pebbles and greyweave); :func:`read_pattern` refuses them.

::

    <out>/<surface>/train/good/  <out>/<surface>/test/good/  <out>/<surface>/test/<defect>/
    <out>/<surface>/ground_truth/<defect>/<name>_mask.png
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from anomalymap_helpers.errors import DataError, ParameterError
from anomalymap_helpers.files import storage
from anomalymap_helpers.files.paths import resolve
from anomalymap_helpers.pipeline.data.textures import blob_mask, line_mask

PATTERNS_ENV = "ANOMALYMAP_GIMP_PATTERNS"
PATTERNS_DIR = "/usr/share/gimp/2.0/patterns"
RESERVED = frozenset({"walnut", "burlap", "cracked", "leather", "drymud", "granite2", "pebbles", "greyweave"})
DEFAULT_OUT = "data/example-photos"
WINDOW = 64  # source pixels a crop covers (before its scale jitter), whatever the output size
NOISE = 2.0  # sensor noise, grey levels
VISIBLE = 4.0  # a defect changes its region by this many grey levels on average, or is drawn again


@dataclass(frozen=True)
class Surface:
    """A development surface: a GIMP pattern, cut tiled (anywhere, turned) or as one photograph split in two."""

    pattern: str
    tiled: bool = True
    grey: bool = False


SURFACES = {
    "stone": Surface("Stone/stone33"),
    "bark": Surface("Wood/bark"),
    "grain": Surface("Wood/wood1"),
    "slate": Surface("Stone/slate", grey=True),
    "leaves-photo": Surface("leaves6", tiled=False),
}
FOREIGN = ("Stone/rock", "Wood/corkboard", "cashew", "Stone/marble1", "dirt")  # the pieces ``foreign`` cuts in
DEFECTS = ("scratch", "stain", "contamination", "foreign", "displaced", "warp", "fold", "smear")
DRAWN_BY_DAMAGE = {
    "scratch": "yes: a stroke, shaded",
    "stain": "yes: a blob, shaded",
    "contamination": "yes: small blobs, shaded or noise-filled",
    "foreign": "partly: damage pastes the same surface (another training image) or smooth noise, never another material",
    "displaced": "close: damage's patch fill is the same place of another training image, turned",
    "warp": "no: damage never moves pixels",
    "fold": "no",
    "smear": "no: damage never blurs",
}


def patterns_dir() -> Path:
    """Where the GIMP patterns are read from (``$ANOMALYMAP_GIMP_PATTERNS``, else Debian's place)."""
    return Path(os.environ.get(PATTERNS_ENV) or PATTERNS_DIR)


def read_pattern(name: str, root: Path | None = None) -> np.ndarray:
    """The GIMP pattern ``name`` (e.g. ``"Stone/slate"``) as ``(H, W, 3)`` float64 in [0, 255].

    A ``.pat`` file is a big-endian header of five 32-bit words (header size, version 1, width,
    height, bytes per pixel), the magic ``GPAT``, the pattern's name, then the pixels row by row
    (1 byte grey, 2 grey + alpha, 3 RGB, 4 RGBA; the alpha is dropped).

    Raises:
        ParameterError: ``name`` is one of :data:`RESERVED`.
        DataError: the file is missing (with how to install it) or is not a GIMP pattern.
    """
    if Path(name).name.lower() in RESERVED:
        raise ParameterError(f"the GIMP pattern {name!r} is reserved for independent checks: use another")
    path = (root or patterns_dir()) / f"{name}.pat"
    if not path.is_file():
        raise DataError(
            f"{path} not found: install Debian's GIMP patterns (apt install gimp-data gimp-data-extras), "
            f"or point ${PATTERNS_ENV} at a folder of .pat files"
        )
    raw = path.read_bytes()
    if len(raw) < 24 or raw[20:24] != b"GPAT":
        raise DataError(f"{path} is not a GIMP pattern (no GPAT magic at byte 20)")
    header, version, width, height, depth = struct.unpack(">5I", raw[:20])
    if version != 1 or depth not in (1, 2, 3, 4) or len(raw) < header + width * height * depth:
        raise DataError(f"{path}: a GIMP pattern of version {version}, {depth} bytes a pixel, or cut short")
    a = np.frombuffer(raw, np.uint8, width * height * depth, header).reshape(height, width, depth)
    a = a[..., :1] if depth <= 2 else a[..., :3]
    return np.repeat(a, 3, axis=2).astype(np.float64) if a.shape[2] == 1 else a.astype(np.float64)


def _sample(source: np.ndarray, ys: np.ndarray, xs: np.ndarray, tiled: bool) -> np.ndarray:
    """``source`` at the (fractional) points ``(ys, xs)`` ``(S, S)``, bilinear, wrapped round where ``tiled``."""
    mode = "grid-wrap" if tiled else "nearest"
    return np.stack([ndimage.map_coordinates(source[..., c], [ys, xs], order=1, mode=mode) for c in range(3)], -1)


@dataclass
class Crop:
    """Where one crop lies on its source: output pixel ``(i, j)`` reads ``centre + A @ (j, i) offsets``."""

    source: np.ndarray
    tiled: bool
    size: int
    centre: np.ndarray  # (y, x) in source pixels
    matrix: np.ndarray  # 2x2, output pixels -> source pixels (turn and scale)
    gain: float
    offset: float

    def points(self, dy: np.ndarray | float = 0.0, dx: np.ndarray | float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """The source points of every output pixel, moved by ``(dy, dx)`` output pixels first."""
        i, j = np.mgrid[0 : self.size, 0 : self.size].astype(np.float64)
        v, u = i + 0.5 - self.size / 2 + dy, j + 0.5 - self.size / 2 + dx
        return self.centre[0] + self.matrix[0, 0] * v + self.matrix[0, 1] * u, self.centre[1] + self.matrix[1, 0] * v + self.matrix[1, 1] * u

    def render(self, dy: np.ndarray | float = 0.0, dx: np.ndarray | float = 0.0) -> np.ndarray:
        """The crop ``(S, S, 3)`` float (before noise), with its sampling points moved by ``(dy, dx)``."""
        ys, xs = self.points(dy, dx)
        mean = self.source.mean()
        return (_sample(self.source, ys, xs, self.tiled) - mean) * self.gain + mean + self.offset


def crop(source: np.ndarray, size: int, rng: np.random.Generator, tiled: bool, columns: tuple[float, float]) -> Crop:
    """A jittered crop of ``source`` rendered at ``size`` pixels, its centre's x within ``columns`` (a share
    of the width; the whole window inside that part of the photograph where not ``tiled``)."""
    h, w = source.shape[:2]
    scale = rng.uniform(0.9, 1.1) * WINDOW / size
    angle = np.deg2rad(rng.uniform(-4, 4)) if tiled else 0.0
    c, s = np.cos(angle), np.sin(angle)
    matrix = scale * np.array([[c, -s], [s, c]])
    half = WINDOW * 1.1 / 2 + 1  # the farthest point a crop reads, and a pixel more
    if tiled:
        centre = np.array([rng.uniform(0, h), rng.uniform(columns[0] * w, columns[1] * w)])
    else:
        x0, x1 = columns[0] * w + half, columns[1] * w - half
        if x1 < x0 or h < 2 * half:
            raise ParameterError(f"the photograph ({w}x{h}) is too small to split into {WINDOW}-pixel crops")
        centre = np.array([rng.uniform(half, h - half), rng.uniform(x0, x1)])
    return Crop(source, tiled, size, centre, matrix, rng.uniform(0.92, 1.08), rng.uniform(-8, 8))


def _disc(size: int, rng: np.random.Generator, radius: tuple[float, float]) -> tuple[np.ndarray, np.ndarray, float]:
    """A disc in the middle of the image: ``(dy, dx)`` offsets of every pixel from its centre, and its radius."""
    cy, cx = rng.uniform(0.3, 0.7, 2) * size
    i, j = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    return i - cy, j - cx, rng.uniform(*radius) * size


def defect(c: Crop, kind: str, rng: np.random.Generator, foreign: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The crop with a defect of ``kind``, ``(S, S, 3)`` float, and its region ``(S, S)`` bool."""
    size, clean = c.size, c.render()
    out = clean.copy()
    if kind == "scratch":
        m = line_mask(size, rng, 1 / 48)
        out[m] = out[m] * 0.4 + 0.6 * np.array([235, 232, 225])
    elif kind == "stain":
        m = blob_mask(size, rng, (0.08, 0.16))
        soft = ndimage.gaussian_filter(m.astype(float), 1.0) * m
        out = out * (1 - 0.5 * soft[..., None]) + np.array([40, 30, 10]) * 0.2 * soft[..., None]
    elif kind == "contamination":
        m = np.zeros((size, size), bool)
        i, j = np.mgrid[0:size, 0:size] + 0.5
        for _ in range(rng.integers(3, 8)):
            cy, cx = rng.uniform(0.2, 0.8, 2) * size
            m |= (i - cy) ** 2 + (j - cx) ** 2 < (rng.uniform(0.8, 1.8) * size / 64) ** 2
        out[m] = out[m] * 0.3 if rng.random() < 0.5 else out[m] * 0.4 + 0.6 * 230
    elif kind == "foreign":
        m = blob_mask(size, rng, (0.1, 0.18))
        other = foreign[rng.integers(len(foreign))]
        piece = crop(other, size, rng, True, (0, 1)).render()
        piece = (piece - piece[m].mean(0)) / (piece[m].std(0) + 1e-6) * out[m].std(0) + out[m].mean(0)
        out[m] = piece[m]
    elif kind == "displaced":  # each point of the blob reads a point turned about its centre, and moved
        m = blob_mask(size, rng, (0.08, 0.14))
        i, j = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
        cy, cx = np.argwhere(m).mean(0) + 0.5
        t, turn = rng.uniform(0, 2 * np.pi), rng.uniform(np.pi / 3, 5 * np.pi / 3)
        reach = rng.uniform(10, 20) * size / 64
        y, x = i - cy, j - cx
        ty = cy + y * np.cos(turn) - x * np.sin(turn) + reach * np.sin(t)
        tx = cx + y * np.sin(turn) + x * np.cos(turn) + reach * np.cos(t)
        out[m] = c.render(ty - i, tx - j)[m]
    elif kind == "warp":
        dy, dx, r = _disc(size, rng, (0.14, 0.22))
        d = np.hypot(dy, dx)
        fall = np.clip(1 - d / r, 0, None) ** 2
        if rng.random() < 0.5:  # a swirl
            phi = rng.choice([-1, 1]) * rng.uniform(1.0, 1.6) * fall
            ny, nx = dy * np.cos(phi) - dx * np.sin(phi), dy * np.sin(phi) + dx * np.cos(phi)
        else:  # a dent: the middle pinched or bulged
            k = 1 - rng.choice([-1, 1]) * rng.uniform(0.35, 0.5) * fall
            ny, nx = dy * k, dx * k
        my, mx = ny - dy, nx - dx
        m = d < r  # the disc: the only pixels whose sampling points moved
        out = c.render(my, mx)
    elif kind == "fold":
        t = rng.uniform(0, np.pi)
        normal = np.array([np.cos(t), np.sin(t)])
        i, j = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
        p = rng.uniform(0.35, 0.65, 2) * size
        s = (i - p[0]) * normal[0] + (j - p[1]) * normal[1]  # signed distance from the crease
        w = rng.uniform(2.0, 3.5) * size / 64
        envelope = np.clip(1 - (s / (3 * w)) ** 2, 0, None) ** 2  # nothing moves or darkens beyond 3 w
        bump = (s / w) * np.exp(0.5 - 0.5 * (s / w) ** 2) * envelope  # +-1 at s = +-w
        push = rng.uniform(2.5, 4.0) * size / 64 * bump  # the surface on each side pushed out of the crease
        shade = 1 + rng.choice([-1, 1]) * 0.2 * bump
        out = c.render(push * normal[0], push * normal[1]) * shade[..., None]
        m = np.abs(s) < 3 * w
    elif kind == "smear":
        m = blob_mask(size, rng, (0.12, 0.2))
        t, length = rng.uniform(0, np.pi), rng.uniform(6, 10) * size / 64
        steps = np.linspace(-length / 2, length / 2, 9)
        blurred = np.mean([c.render(a * np.sin(t), a * np.cos(t)) for a in steps], axis=0)
        soft = np.clip(ndimage.gaussian_filter(m.astype(float), 1.0) * 1.5, 0, 1) * m
        out = clean * (1 - soft[..., None]) + blurred * soft[..., None]
    else:
        raise ParameterError(f"defect {kind!r}: use one of {list(DEFECTS)}")
    return out, m


def _visible(kind: str, c: Crop, rng: np.random.Generator, foreign: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """A defect of ``kind`` that changes its region by at least :data:`VISIBLE` grey levels on average (else drawn again)."""
    clean = c.render()
    for _ in range(20):
        out, m = defect(c, kind, rng, foreign)
        if m.sum() >= 4 and np.abs(out - clean)[m].mean() >= VISIBLE:
            return out, m
    raise DataError(f"a {kind} defect stayed invisible on this surface in 20 draws")


def make_photo_folders(
    out: str | os.PathLike[str] = DEFAULT_OUT,
    *,
    size: int = 64,
    n_train: int = 200,
    n_test_good: int = 40,
    n_defect: int = 10,
    seed: int = 0,
    surfaces: tuple[str, ...] = tuple(SURFACES),
    defects: tuple[str, ...] = DEFECTS,
) -> Path:
    """Write one category folder per surface under ``out`` (MVTec AD layout) and return ``out``.

    Every surface's images come from their own seeded generator (``[seed, surface's index]``), so a
    folder is the same whichever others are written beside it.

    Raises:
        ParameterError: ``out`` exists and is not empty, a count or size is too small, or a surface
            or defect kind is not known.
        DataError: the GIMP patterns are not installed.
    """
    from PIL import Image

    target = resolve(out)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ParameterError(f"{target} already exists: choose another --out, or delete it first")
    if size < 32 or min(n_train, n_test_good, n_defect) < 1:
        raise ParameterError("the photograph folders need size >= 32 and at least one image of each kind")
    for names, known, what in ((surfaces, SURFACES, "surfaces"), (defects, DEFECTS, "defect kinds")):
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ParameterError(f"{what} {unknown} are not known: use some of {list(known)}")
    sources = {name: read_pattern(SURFACES[name].pattern) for name in surfaces}  # missing files named before any work
    foreign = [read_pattern(name) for name in FOREIGN]

    def save(a: np.ndarray, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(np.round(a), 0, 255).astype(np.uint8)).save(path)

    def finish(a: np.ndarray, rng: np.random.Generator, grey: bool) -> np.ndarray:
        a = a.mean(-1, keepdims=True).repeat(3, -1) if grey else a
        return a + rng.normal(0, NOISE, a.shape[:2] + (1,) if grey else a.shape)

    with storage.new_folder(target) as build:
        for name in surfaces:
            surface, source = SURFACES[name], sources[name]
            rng = np.random.default_rng([seed, list(SURFACES).index(name)])
            train_part, test_part = ((0, 1), (0, 1)) if surface.tiled else ((0, 0.55), (0.55, 1))
            root = build / name
            for k in range(n_train):
                image = crop(source, size, rng, surface.tiled, train_part).render()
                save(finish(image, rng, surface.grey), root / "train" / "good" / f"{k:03d}.png")
            for k in range(n_test_good):
                image = crop(source, size, rng, surface.tiled, test_part).render()
                save(finish(image, rng, surface.grey), root / "test" / "good" / f"{k:03d}.png")
            for kind in defects:
                for k in range(n_defect):
                    image, mask = _visible(kind, crop(source, size, rng, surface.tiled, test_part), rng, foreign)
                    save(finish(image, rng, surface.grey), root / "test" / kind / f"{k:03d}.png")
                    save(mask * 255.0, root / "ground_truth" / kind / f"{k:03d}_mask.png")
    return target
