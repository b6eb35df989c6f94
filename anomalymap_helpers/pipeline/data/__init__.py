"""Step 01, the data: where the images come from and how they are split.

- ``idx``: MNIST and Fashion-MNIST (their files, checksums and reading);
- ``folder``: a user's own images in the MVTec AD layout, with defect masks;
- ``example``: a small MVTec-layout folder made from MNIST, to try the folder path;
- ``textures`` and ``photos``: harder example folders, procedural textures and real photographs
  (GIMP's patterns) with structural defects the training never draws;
- ``splits``: normal and anomaly classes, the seeded splits and their manifest.

The names a notebook needs are importable from here: ``data.load_dataset``,
``data.SplitConfig``, ``data.write_splits``, ``data.load_splits``...
"""

from anomalymap_helpers.pipeline.data.idx import (
    FASHION_MNIST,
    MNIST,
    MNIST_ENV,
    MNIST_FILES,
    NUM_CLASSES,
    SPECS,
    check_mnist_dir,
    check_source_dir,
    load_mnist,
    prepare_mnist,
)
from anomalymap_helpers.pipeline.data.images import ImageData
from anomalymap_helpers.pipeline.data.sources import DATASETS, image_size_for, load_dataset
from anomalymap_helpers.pipeline.data.splits import (
    Split,
    SplitConfig,
    check_classes,
    describe,
    folder_split_config,
    load_images,
    load_splits,
    make_splits,
    sample_indices,
    take,
    to_float,
    write_splits,
)

__all__ = [
    "DATASETS",
    "FASHION_MNIST",
    "MNIST",
    "MNIST_ENV",
    "MNIST_FILES",
    "NUM_CLASSES",
    "SPECS",
    "ImageData",
    "Split",
    "SplitConfig",
    "check_classes",
    "check_mnist_dir",
    "check_source_dir",
    "describe",
    "folder_split_config",
    "image_size_for",
    "load_dataset",
    "load_images",
    "load_mnist",
    "load_splits",
    "make_splits",
    "prepare_mnist",
    "sample_indices",
    "take",
    "to_float",
    "write_splits",
]
