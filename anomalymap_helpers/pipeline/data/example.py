"""A small category folder in the MVTec AD layout, made from MNIST, to try the folder path.

The "product" is a handwritten zero drawn in orange on a dark background, scaled up to
``size`` pixels: a washer, say. Defective ones carry a light **scratch** (a line
across the part) or a cyan **blob** (a filled ellipse on the part); each mask is
exactly the pixels drawn. Nothing is downloaded: the zeros come from the MNIST copy
the project ships.

::

    <out>/train/good/      normal training images (PNG, every tenth one JPEG)
    <out>/test/good/       normal test images
    <out>/test/scratch/    <out>/test/blob/
    <out>/ground_truth/scratch/<name>_mask.png   <out>/ground_truth/blob/<name>_mask.png
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from anomalymap_helpers.errors import ParameterError
from anomalymap_helpers.files import storage
from anomalymap_helpers.pipeline.data import idx
from anomalymap_helpers.files.paths import DEFAULT_DATA_DIR, resolve

DEFAULT_OUT = "data/example-folder"
DEFECTS = ("scratch", "blob")
BACKGROUND, PART = np.array([38, 48, 66]), np.array([232, 150, 48])
SCRATCH, BLOB = (236, 236, 228), (70, 205, 222)


def _part(digit: np.ndarray, size: int):  # noqa: ANN202 - a PIL image
    """An MNIST digit ``(28, 28)`` uint8 as a coloured ``size`` x ``size`` RGB image."""
    from PIL import Image

    a = np.asarray(Image.fromarray(digit).resize((size, size), Image.BILINEAR), dtype=np.float64)[..., None] / 255
    return Image.fromarray((BACKGROUND * (1 - a) + PART * a).round().astype(np.uint8))


def _defect(image, kind: str, rng: np.random.Generator):  # noqa: ANN001, ANN202
    """Draw a defect of ``kind`` on ``image`` (in place); return its mask (mode "L", 0 or 255)."""
    from PIL import Image, ImageDraw

    size = image.size[0]
    mask = Image.new("L", image.size, 0)
    lo, hi = size * 0.25, size * 0.75
    if kind == "scratch":
        (x0, y0), (x1, y1) = rng.uniform(lo, hi, 2), rng.uniform(lo, hi, 2)
        while np.hypot(x1 - x0, y1 - y0) < size * 0.25:
            x1, y1 = rng.uniform(lo, hi, 2)
        width = max(1, round(size / 32))
        for target, fill in ((image, SCRATCH), (mask, 255)):
            ImageDraw.Draw(target).line([(x0, y0), (x1, y1)], fill=fill, width=width)
    else:
        cx, cy = rng.uniform(lo, hi, 2)
        rx, ry = rng.uniform(size * 0.05, size * 0.11, 2)
        box = [cx - rx, cy - ry, cx + rx, cy + ry]
        for target, fill in ((image, BLOB), (mask, 255)):
            ImageDraw.Draw(target).ellipse(box, fill=fill)
    return mask


def make_example_folder(
    out: str | os.PathLike[str] = DEFAULT_OUT,
    *,
    size: int = 64,
    n_train: int = 300,
    n_test_good: int = 60,
    n_defect: int = 30,
    seed: int = 0,
    data_dir: str = DEFAULT_DATA_DIR,
    mnist_dir: str | None = None,
) -> Path:
    """Write the example category folder to ``out`` and return it.

    Args:
        out: A folder that does not exist yet (or is empty); resolved against the project root.
        size: The images' side in pixels.
        n_train: Normal training images.
        n_test_good: Normal test images.
        n_defect: Test images of each defect type.
        seed: Which zeros, and where the defects go.
        data_dir, mnist_dir: Where MNIST is read from (see :mod:`.idx`).

    Raises:
        ParameterError: ``out`` exists and is not empty, or a count or size is too small.
    """
    target = resolve(out)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ParameterError(f"{target} already exists: choose another --out, or delete it first")
    if size < 16 or min(n_train, n_test_good, n_defect) < 1:
        raise ParameterError("the example needs size >= 16 and at least one image of each kind")
    mnist = idx.load_mnist(data_dir, mnist_dir)
    rng = np.random.default_rng(seed)
    train_zeros = np.flatnonzero(mnist.train_labels.numpy() == 0)
    test_zeros = np.flatnonzero(mnist.test_labels.numpy() == 0)
    train_pick = rng.choice(train_zeros, n_train, replace=False)
    test_pick = rng.choice(test_zeros, n_test_good + n_defect * len(DEFECTS), replace=False)
    with storage.new_folder(target) as build:
        for k, i in enumerate(train_pick):
            image = _part(mnist.train_images[i, 0].numpy(), size)
            _save(image, build / "train" / "good" / f"{k:03d}.{'jpg' if k % 10 == 9 else 'png'}")
        for k, i in enumerate(test_pick[:n_test_good]):
            _save(_part(mnist.test_images[i, 0].numpy(), size), build / "test" / "good" / f"{k:03d}.png")
        for d, kind in enumerate(DEFECTS):
            start = n_test_good + d * n_defect
            for k, i in enumerate(test_pick[start : start + n_defect]):
                image = _part(mnist.test_images[i, 0].numpy(), size)
                mask = _defect(image, kind, rng)
                _save(image, build / "test" / kind / f"{k:03d}.png")
                _save(mask, build / "ground_truth" / kind / f"{k:03d}_mask.png")
    return target


def _save(image, path: Path) -> None:  # noqa: ANN001
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, quality=95) if path.suffix == ".jpg" else image.save(path)
