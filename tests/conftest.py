"""Shared fixtures: the real MNIST files and small slices of them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from anomalymap_helpers import data

ROOT = Path(__file__).resolve().parents[1]


def _mnist_dir() -> Path | None:
    for candidate in (os.environ.get(data.MNIST_ENV), ROOT.parent / "shared" / "datasets" / "mnist"):
        if candidate and (Path(candidate) / "train-images-idx3-ubyte.gz").exists():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The local folder of the four official MNIST files (CI sets $ANOMALYMAP_MNIST_DIR)."""
    found = _mnist_dir()
    if found is None:
        pytest.skip(f"no MNIST files: set ${data.MNIST_ENV} to a folder of the four official files")
    return found


@pytest.fixture(scope="session")
def mnist(mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> data.Mnist:
    return data.load_mnist(tmp_path_factory.mktemp("data"), str(mnist_dir))


@pytest.fixture(scope="session")
def small_normals(mnist: data.Mnist) -> tuple[torch.Tensor, torch.Tensor]:
    """1,000 training and 200 validation images of digits 0-8."""
    splits = data.make_splits(
        mnist.train_labels, mnist.test_labels, data.SplitConfig(max_train=1200, val_fraction=1 / 6)
    )
    return data.to_float(mnist.train_images[splits["train"]]), data.to_float(mnist.train_images[splits["val"]])
