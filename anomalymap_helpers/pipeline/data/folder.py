"""A user's own images in the MVTec AD layout: one category folder, read and checked.

::

    <image_dir>/
        train/good/*.png                 normal training images
        test/good/*.png                  normal test images
        test/<defect type>/*.png         anomalous test images, one folder per defect type
        ground_truth/<defect type>/<name>_mask.png   optional: non-zero pixels = defect

Images of any size, grayscale or colour, in the formats Pillow reads, are resized to
``image_size`` (bilinear); masks are resized nearest-neighbour so they stay binary.
Masks pair with images by name, never by sort order. Files that are not images
(``.DS_Store``, ``Thumbs.db``, ``.ipynb_checkpoints/``, notes) are skipped and counted.

Every check runs before any image is used, and each failure names the file or folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from anomalymap_helpers.errors import DataError
from anomalymap_helpers.pipeline.data.images import ImageData
from anomalymap_helpers.files.paths import resolve, shown

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# The most pixels an image file may have (100 million: 10,000 x 10,000, beyond any camera's 8-bit frame a
# model is trained on here); a larger one, or a decompression bomb (a small file that claims 20,000 x 20,000),
# is refused before it is decoded. $ANOMALYMAP_MAX_PIXELS sets another limit.
MAX_PIXELS = 100_000_000
MAX_PIXELS_ENV = "ANOMALYMAP_MAX_PIXELS"
NORMAL = "good"
MASK_SUFFIX = "_mask"
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")


@dataclass(frozen=True)
class Layout:
    """The files of a category folder, checked but not yet read.

    Attributes:
        root: The category folder.
        train: The normal training images.
        test: ``(path, defect type)`` of each test image; the type of a normal one is ``"good"``.
        masks: The mask of each defect image, by image path (empty without ``ground_truth/``).
        defect_types: The defect types, sorted: class ``k`` is ``defect_types[k - 1]``.
        skipped: Files that are not images, relative to ``root``.
    """

    root: Path
    train: tuple[Path, ...]
    test: tuple[tuple[Path, str], ...]
    masks: dict[Path, Path]
    defect_types: tuple[str, ...]
    skipped: tuple[str, ...]

    @property
    def class_names(self) -> tuple[str, ...]:
        """``("good", <defect types>...)``: class 0 is normal."""
        return (NORMAL, *self.defect_types)


def is_stray(path: Path) -> bool:
    """Whether ``path`` is what a system or an editor leaves beside images (a hidden name,
    ``Thumbs.db``, ``desktop.ini``): skipped, never read as an image."""
    return path.name.startswith(".") or path.name.lower() in ("thumbs.db", "desktop.ini")


def _images(folder: Path, root: Path, skipped: list[str]) -> list[Path]:
    """The image files directly in ``folder``, sorted by name; anything else goes to ``skipped``."""
    out = []
    for path in sorted(folder.iterdir()):
        if path.is_file() and not is_stray(path) and path.suffix.lower() in IMAGE_SUFFIXES:
            out.append(path)
        else:
            skipped.append(str(path.relative_to(root)) + ("/" if path.is_dir() else ""))
    return out


def _subfolders(folder: Path, root: Path, skipped: list[str]) -> list[Path]:
    out = []
    for path in sorted(folder.iterdir()):
        if path.is_dir() and not is_stray(path):
            out.append(path)
        else:
            skipped.append(str(path.relative_to(root)) + ("/" if path.is_dir() else ""))
    return out


def scan(image_dir: str | os.PathLike[str]) -> Layout:
    """Find and pair the files of a category folder, without reading any image.

    Raises:
        DataError: the layout is wrong: no ``train/good`` or no images in it, no
            ``test/good`` or no defect type, a defect image without its mask, or a
            mask without its image.
    """
    root = resolve(image_dir)  # relative to the project, as in JupyterLab (cwd notebooks/) so under papermill
    layout_hint = "expected the MVTec AD layout: train/good/, test/good/, test/<defect type>/, optional ground_truth/"
    if not root.is_dir():
        raise DataError(
            f"image_dir={str(image_dir)!r} is not a folder: point it at one category folder ({layout_hint})"
        )
    skipped: list[str] = []
    train_dir = root / "train" / NORMAL
    if not train_dir.is_dir():
        raise DataError(f"{root} has no train/good/ folder of normal training images ({layout_hint})")
    train = _images(train_dir, root, skipped)
    if not train:
        raise DataError(
            f"{train_dir} holds no images ({', '.join(IMAGE_SUFFIXES)}): put the normal training images there"
        )
    test_dir = root / "test"
    if not (test_dir / NORMAL).is_dir():
        raise DataError(f"{root} has no test/good/ folder of normal test images ({layout_hint})")
    test: list[tuple[Path, str]] = []
    types = []
    for sub in _subfolders(test_dir, root, skipped):
        images = _images(sub, root, skipped)
        if not images:
            skipped.append(str(sub.relative_to(root)) + "/")
            continue
        test += [(p, sub.name) for p in images]
        if sub.name != NORMAL:
            types.append(sub.name)
    if not any(kind == NORMAL for _, kind in test):
        raise DataError(f"{test_dir / NORMAL} holds no images: put normal test images there")
    if not types:
        raise DataError(f"{test_dir} has no defect folder: put anomalous test images in test/<defect type>/")
    masks = _pair_masks(root, test, types, skipped)
    return Layout(root, tuple(train), tuple(test), masks, tuple(types), tuple(skipped))


def _pair_masks(root: Path, test: list[tuple[Path, str]], types: list[str], skipped: list[str]) -> dict[Path, Path]:
    """Each defect image's mask ``ground_truth/<type>/<stem>_mask.<ext>``, paired by name."""
    truth = root / "ground_truth"
    if not truth.is_dir():
        return {}
    masks: dict[Path, Path] = {}
    for kind in types:
        folder = truth / kind
        images = {p.stem: p for p, k in test if k == kind}
        found = {}
        if folder.is_dir():
            for m in _images(folder, root, skipped):
                stem = m.stem[: -len(MASK_SUFFIX)] if m.stem.endswith(MASK_SUFFIX) else m.stem
                if stem not in images:
                    raise DataError(
                        f"mask {m} pairs with no image in test/{kind}/: a mask is named after its image "
                        f"(test/{kind}/{stem}.png -> ground_truth/{kind}/{stem}{MASK_SUFFIX}.png); "
                        "rename or remove it"
                    )
                found[stem] = m
        for stem, image in images.items():
            if stem not in found:
                raise DataError(
                    f"defect image {image} has no mask: expected ground_truth/{kind}/{stem}{MASK_SUFFIX}.png "
                    f"in {root} (with ground_truth/ present, every defect image needs its mask)"
                )
            masks[image] = found[stem]
    return masks


def max_pixels() -> int:
    """The pixel limit of an image file: :data:`MAX_PIXELS`, or ``$ANOMALYMAP_MAX_PIXELS``."""
    value = os.environ.get(MAX_PIXELS_ENV, "")
    if not value:
        return MAX_PIXELS
    if not value.isdigit() or int(value) < 1:
        raise DataError(f"${MAX_PIXELS_ENV}={value!r}: give a whole number of pixels, e.g. {MAX_PIXELS}")
    return int(value)


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Turn what decoding ``path`` raises (a file that is empty, not an image, truncated anywhere, unreadable)
    into a DataError that names the file. Pillow's own bomb check is off inside: the project's limit is
    checked from the header (:func:`check_pixels`) before anything is decoded."""
    import struct
    import zlib

    from PIL import Image, UnidentifiedImageError

    before = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = None
        yield
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError,
            struct.error, zlib.error, MemoryError) as exc:
        raise DataError(f"cannot read image {shown(path)}: {exc or type(exc).__name__}. Replace or remove the file"
                        ) from None
    finally:
        Image.MAX_IMAGE_PIXELS = before


def check_pixels(path: Path, size: tuple[int, int]) -> None:
    """Refuse an image of ``size`` (width, height) with more pixels than :func:`max_pixels`, before decoding."""
    limit = max_pixels()
    if size[0] * size[1] > limit:
        raise DataError(f"cannot read image {shown(path)}: it is {size[0]:,} x {size[1]:,} pixels, above the limit of "
                        f"{limit:,}. Remove it or scale it down, or set ${MAX_PIXELS_ENV} above its size")


def open_image(path: Path):  # noqa: ANN202 - a PIL image
    """The image file at ``path`` as a PIL image, decoded now, so that an unreadable, truncated or too large
    file raises a DataError that names it here rather than later. Its size is checked against the pixel
    limit (:func:`max_pixels`) from its header, before any decoding."""
    from PIL import Image

    with _reading(path):
        image = Image.open(path)
        check_pixels(path, image.size)
        image.load()  # decode now: a truncated file fails here, not later
    return image


def own_size(image_dir: str | os.PathLike[str] | Layout, largest: int) -> int | None:
    """The side every image of the category folder has, where they all are square of one side of at most
    ``largest``; else None. Read from the files' headers: nothing is decoded.

    Args:
        image_dir: The category folder, or its :class:`Layout` where already scanned.
        largest: The largest side kept.

    Raises:
        DataError: a layout error (see :func:`scan`), or a file that is not an image.
    """
    from PIL import Image

    layout = image_dir if isinstance(image_dir, Layout) else scan(image_dir)
    sizes = set()
    for path in [*layout.train, *(p for p, _ in layout.test)]:
        with _reading(path), Image.open(path) as image:
            sizes.add(image.size)
        if len(sizes) > 1:
            return None
    (w, h), = sizes
    return w if w == h and w <= largest else None


def _channels(paths: list[Path]) -> int:
    """1 if every image is grayscale, else 3 (from the files' headers)."""
    from PIL import Image

    for path in paths:
        with _reading(path), Image.open(path) as image:
            check_pixels(path, image.size)
            if image.mode not in GRAY_MODES:
                return 3
    return 1


def to_pixels(image, size: int, channels: int, digest) -> np.ndarray:  # noqa: ANN001
    """A PIL ``image`` as the folder data set reads it: 8 bits (16-bit and float grayscale scaled by
    the format's range), ``channels`` 1 (grayscale) or 3 (RGB), resized bilinearly to ``size`` x
    ``size``; ``(channels, size, size)`` uint8. Its bytes are fed to ``digest`` (a hashlib object,
    or anything with ``update``)."""
    from PIL import Image

    if image.mode.startswith("I") or image.mode == "F":
        # 16-bit (or float) grayscale to 8 bits by the format's range, the same for every
        # image: 0-65535 where values exceed 255, 0-1 for floats up to 1, else as they are.
        a = np.asarray(image, dtype=np.float64)
        top = a.max(initial=0.0)
        scale = 255 / 65535 if top > 255 else 255.0 if image.mode == "F" and top <= 1 else 1.0
        image = Image.fromarray((a * scale).clip(0, 255).round().astype(np.uint8))
    image = image.convert("L" if channels == 1 else "RGB").resize((size, size), Image.BILINEAR)
    a = np.asarray(image, dtype=np.uint8)
    digest.update(a.tobytes())
    return a[None] if channels == 1 else a.transpose(2, 0, 1)


def load_folder(image_dir: str | os.PathLike[str], image_size: int | Callable[[Layout], int]) -> ImageData:
    """Read, check and resize every image (and mask) of a category folder.

    Args:
        image_dir: The category folder (MVTec AD layout, see the module docstring).
        image_size: The side of the square the images are resized to, or a function of the folder's
            :class:`Layout` that gives it (:func:`~anomalymap_helpers.pipeline.data.sources.folder_size`'s
            rule reads the headers of the files scanned here, so the folder is scanned once).

    Returns:
        The data set: class 0 is ``good``, class ``k`` the ``k``-th defect type by name;
        the training labels are all 0.

    Raises:
        DataError: a layout error (see :func:`scan`), an unreadable or truncated image,
            or a mask of another size than its image.
    """
    from PIL import Image

    layout = scan(image_dir)
    image_size = image_size(layout) if callable(image_size) else image_size
    test_paths = [p for p, _ in layout.test]
    channels = _channels([*layout.train, *test_paths])
    digest = hashlib.sha256()
    train = np.stack([to_pixels(open_image(p), image_size, channels, digest) for p in layout.train])
    test, masks = [], []
    for path, _ in layout.test:
        image = open_image(path)
        test.append(to_pixels(image, image_size, channels, digest))
        mask_path = layout.masks.get(path)
        if mask_path is None:
            masks.append(np.zeros((1, image_size, image_size), dtype=bool))
            continue
        mask = open_image(mask_path)
        if mask.size != image.size:
            raise DataError(
                f"mask {mask_path} is {mask.size[0]}x{mask.size[1]} pixels but its image {path} is "
                f"{image.size[0]}x{image.size[1]}: a mask must have its image's size"
            )
        # Non-zero in any colour channel is a defect; alpha and palettes do not count as colour.
        plain = mask.mode in ("1", "L", "I", "I;16", "I;16B", "I;16L", "F", "RGB")
        pixels = np.asarray(mask if plain else mask.convert("RGB"))
        defect = pixels.any(-1) if pixels.ndim == 3 else pixels > 0
        binary = Image.fromarray(defect.astype(np.uint8) * 255)
        masks.append(np.asarray(binary.resize((image_size, image_size), Image.NEAREST))[None] > 0)
    names = layout.class_names
    test_labels = [names.index(kind) for _, kind in layout.test]
    return ImageData(
        name="folder",
        train_images=torch.from_numpy(train),
        train_labels=torch.zeros(len(train), dtype=torch.int64),
        test_images=torch.from_numpy(np.stack(test)),
        test_labels=torch.tensor(test_labels, dtype=torch.int64),
        test_masks=torch.from_numpy(np.stack(masks)) if layout.masks else None,
        test_names=tuple(p.relative_to(layout.root).as_posix() for p in test_paths),
        class_names=names,
        checksums={"images": digest.hexdigest()},
        skipped=layout.skipped,
    )
