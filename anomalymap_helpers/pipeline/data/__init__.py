"""Step 01, the data: where the images come from (``mnist``) and how they are split (``splits``).

The names a notebook needs are importable from here: ``data.load_mnist``,
``data.SplitConfig``, ``data.write_splits``, ``data.load_splits``...
"""

from anomalymap_helpers.pipeline.data.mnist import MNIST_ENV, MNIST_FILES, NUM_CLASSES, Mnist, check_mnist_dir, load_mnist, prepare_mnist
from .splits import (
    Split,
    SplitConfig,
    check_classes,
    describe,
    load_splits,
    make_splits,
    sample_indices,
    take,
    to_float,
    write_splits,
)

__all__ = [
    "MNIST_ENV",
    "MNIST_FILES",
    "NUM_CLASSES",
    "Mnist",
    "Split",
    "SplitConfig",
    "check_classes",
    "check_mnist_dir",
    "describe",
    "load_mnist",
    "load_splits",
    "make_splits",
    "prepare_mnist",
    "sample_indices",
    "take",
    "to_float",
    "write_splits",
]
