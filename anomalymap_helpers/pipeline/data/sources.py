"""One entry point for every data source: the ``dataset`` parameter's three values."""

from __future__ import annotations

import os

from anomalymap_helpers.errors import ParameterError
from anomalymap_helpers.pipeline.data import folder, idx
from anomalymap_helpers.pipeline.data.images import ImageData
from anomalymap_helpers.files.paths import DEFAULT_DATA_DIR

DATASETS = ("mnist", "fashion-mnist", "folder")
IDX_SIZE = 28
FOLDER_SIZE = 128


def image_size_for(dataset: str, image_size: int = 0) -> int:
    """The side the images are used at: ``image_size``, or where it is 0, 28 (MNIST, Fashion) or 128 (folders;
    :func:`folder_size` then gives the images' own side where they share one of at most 128).

    Raises:
        ParameterError: an IDX data set at another size than 28, or a size the model
            cannot take (not a multiple of 4, or under 16).
    """
    if dataset not in DATASETS:
        raise ParameterError(f"dataset={dataset!r}: use one of {list(DATASETS)}")
    if dataset != "folder":
        if image_size not in (0, IDX_SIZE):
            raise ParameterError(
                f"image_size={image_size}: {dataset} images are {IDX_SIZE}x{IDX_SIZE}; leave image_size at 0 "
                f"(or {IDX_SIZE})"
            )
        return IDX_SIZE
    from anomalymap_helpers.pipeline.models import check_image_size

    return check_image_size(image_size or FOLDER_SIZE)


def folder_size(image_dir: str | os.PathLike[str] | folder.Layout, image_size: int = 0) -> int:
    """The side a category folder's images are used at: ``image_size``; where it is 0, the images' own
    side where they all share one of at most 128 that the model takes (a 64x64 folder stays 64x64: no
    pixels made up), else 128. ``image_dir`` may be the folder's :class:`~.folder.Layout`, already scanned.

    Raises:
        ParameterError: a size the model cannot take.
        DataError: a layout error or a file that is not an image (from the headers; nothing is decoded).
    """
    from anomalymap_helpers.pipeline.models import check_image_size

    if image_size:
        return check_image_size(image_size)
    own = folder.own_size(image_dir, FOLDER_SIZE)
    try:
        return check_image_size(own) if own else FOLDER_SIZE
    except ParameterError:  # a side the model cannot halve down (e.g. 100): the folders' default
        return FOLDER_SIZE


def check_dataset(dataset: str, image_dir: str | None = None, image_size: int = 0) -> int:
    """Check the data set's parameters together; return the image side (see :func:`image_size_for`).

    Raises:
        ParameterError: an unknown data set, a bad size, or a folder data set without ``image_dir``.
    """
    size = image_size_for(dataset, image_size)
    if dataset == "folder" and not image_dir:
        raise ParameterError(
            'dataset="folder" needs image_dir: the category folder (train/good/, test/...); '
            "`python -m anomalymap_helpers example-folder` makes one to try"
        )
    return size


def load_dataset(
    dataset: str = "mnist",
    *,
    data_dir: str | os.PathLike[str] = DEFAULT_DATA_DIR,
    mnist_dir: str | None = None,
    fashion_dir: str | None = None,
    image_dir: str | None = None,
    image_size: int = 0,
) -> ImageData:
    """Load a data set by the notebooks' parameters.

    Args:
        dataset: ``"mnist"``, ``"fashion-mnist"`` or ``"folder"``.
        data_dir: Where MNIST and Fashion-MNIST are unpacked.
        mnist_dir: A local folder of MNIST's files (see :mod:`.idx`).
        fashion_dir: A local folder of Fashion-MNIST's files (see :mod:`.idx`).
        image_dir: The category folder of a ``"folder"`` data set (see :mod:`.folder`).
        image_size: The side the images are resized to; 0 for the data set's default.

    Raises:
        ParameterError: an unknown data set, a folder data set without ``image_dir``, or a bad size.
        DataError: the files are missing, corrupt, or not in the expected layout.
    """
    check_dataset(dataset, image_dir, image_size)  # bad values refused before any file is read
    if dataset == "folder":
        return folder.load_folder(image_dir, lambda layout: folder_size(layout, image_size))  # one scan
    spec = idx.SPECS[dataset]
    return idx.load(spec, data_dir, mnist_dir if spec is idx.MNIST else fashion_dir)
