"""Shared fixtures: the real MNIST files and small slices of them.

Under ``CI=true`` a missing prerequisite fails the run (:func:`require`); elsewhere the
tests that need it skip, with the reason shown.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from anomalymap_helpers.pipeline import data
from anomalymap_helpers.pipeline.data import idx as _idx  # noqa: F401  (data.idx below)
from anomalymap_helpers.pipeline.training.device import PRECISION_ENV

ROOT = Path(__file__).resolve().parents[1]


def require(what: str) -> None:
    """A prerequisite is missing: fail under ``CI=true``, skip elsewhere."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI=true and {what}", pytrace=False)
    pytest.skip(what)


# The precision a test compares in. fp32 against an fp32 (or float64) reference: 1e-4 relative
# holds for the reordered sums of fused or channels_last kernels. bf16: its unit roundoff is
# 2^-8 (8 significant bits; torch.finfo(torch.bfloat16).eps / 2); every layer of the network
# rounds its output and its weights to it, so a result a few layers deep is off by a few such
# steps (measured up to 0.7 steps on a distance between feature maps, up to 2 on a latent):
# 4 steps relative, and 4 steps of the result's own scale absolute, for values that are
# differences of larger ones. A real bug (a padded cell counted, a missing normalisation)
# moves a value by tens of percent and fails both.
BF16_STEP = 2.0**-8
TOLERANCE = {"fp32": (1e-4, 1e-5), "bf16": (4 * BF16_STEP, 4 * BF16_STEP)}


@pytest.fixture(params=["fp32", "bf16"])
def precision(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test once in fp32 and once in bf16 autocast, on any CPU (bf16 emulated where it is not
    native), through the package's own switch ($ANOMALYMAP_CPU_PRECISION)."""
    monkeypatch.setenv(PRECISION_ENV, request.param)
    return request.param


def assert_close(actual: object, expected: object, precision: str, scale: float = 1.0, what: str = "") -> None:
    """``actual`` within the tolerance of ``precision`` (:data:`TOLERANCE`) of ``expected``; the
    absolute part is relative to ``scale``, the size of the values the result is a difference of."""
    import numpy as np

    rtol, atol = TOLERANCE[precision]
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=rtol, atol=atol * scale, err_msg=what)


def _mnist_dir() -> Path | None:
    for candidate in (os.environ.get(data.MNIST_ENV), data.idx.EMBEDDED_DIR):
        if candidate and all((Path(candidate) / name).exists() for name, _, _ in data.MNIST_FILES):
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The folder of the four official MNIST files: $ANOMALYMAP_MNIST_DIR, else the embedded data/mnist/."""
    found = _mnist_dir()
    if found is None:
        require(
            f"the MNIST files are missing: {data.idx.EMBEDDED_DIR} (shipped with the repository) lacks them "
            f"and ${data.MNIST_ENV} is unset; restore data/mnist/ with `git checkout data/mnist`"
        )
    return found


@pytest.fixture(scope="session")
def mnist(mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> data.ImageData:
    return data.load_mnist(tmp_path_factory.mktemp("data"), str(mnist_dir))


@pytest.fixture(scope="session")
def small_normals(mnist: data.ImageData) -> tuple[torch.Tensor, torch.Tensor]:
    """1,000 training and 200 validation images of digits 0-8."""
    splits = data.make_splits(
        mnist.train_labels, mnist.test_labels, data.SplitConfig(max_train=1200, val_fraction=1 / 6)
    )
    return data.to_float(mnist.train_images[splits["train"]]), data.to_float(mnist.train_images[splits["val"]])


# The smoke run: 3,600 training images in batches of 32 (112 steps, enough for 02's check that it beats the
# mean image), 500 test images. 15 s a series on CPU C against 25 s with 9,000 and 1,000 (batches of 64).
SMALL = {"max_train": 4000, "max_test": 500, "epochs": 1, "batch_size": 32, "tsne_samples": 150, "n_heatmaps": 4}


@pytest.fixture(scope="session")
def small_series(mnist_dir: Path, data_dir: Path) -> dict[str, object]:
    """The smoke run's parameters (a slice of MNIST, 1 epoch), with the test's data folders."""
    return {**SMALL, "mnist_dir": str(mnist_dir), "data_dir": str(data_dir)}


NAMES = ["01_data.ipynb", "02_training.ipynb", "03_evaluation.ipynb", "04_explorer.ipynb", "05_latent.ipynb"]


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("series-data")


def run_series(out: Path, params: dict[str, object], *options: str) -> Path:
    """Run the five notebooks through the runner into ``out``; the runner's output goes to ``runner.log``."""
    args = [sys.executable, "-m", "anomalymap_helpers", "run", "--results", str(out), *options]
    for name, value in params.items():
        args += ["-p", name, str(value)]
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=900)
    (out / "runner.log").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in NAMES:
        assert f"{name} done in" in proc.stdout
    return out


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path, data_dir: Path) -> Path:
    """A run folder made by the five notebooks through the runner, with small parameters."""
    return run_series(tmp_path_factory.mktemp("run"), {**SMALL, "mnist_dir": mnist_dir, "data_dir": data_dir})


# The autoencoder's folder path; the restore model, the folders' default, is tests/test_restore.py's. 25 epochs
# (3,600 images seen, as the smoke run's) rather than by data set (139: 20,000 images, 37 s a series against 14 s
# on CPU C, and nbval runs it again); tests/test_restore.py checks what "by data set" gives this folder.
FOLDER_SMALL = {"dataset": "folder", "image_size": 32, "model": "ae", "epochs": 25, "n_heatmaps": 4, "tsne_samples": 20}


@pytest.fixture(scope="session")
def folder_run_dir(tmp_path_factory: pytest.TempPathFactory, example_folder: Path, data_dir: Path) -> Path:
    """The five notebooks on the example folder (32x32 colour images with defect masks)."""
    params = {**FOLDER_SMALL, "image_dir": example_folder, "data_dir": data_dir}
    return run_series(tmp_path_factory.mktemp("folder-run"), params)


@pytest.fixture(scope="session")
def restore_run_dir(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """The five notebooks with the folders' default model (restore) on a small texture folder (32x32, 6 epochs)."""
    from anomalymap_helpers.pipeline.data.textures import make_texture_folders

    root = make_texture_folders(tmp_path_factory.mktemp("tex") / "t", size=32, n_train=60, n_test_good=8,
                                n_defect=2, materials=("wood",))
    params = {"dataset": "folder", "image_dir": root / "wood", "image_size": 32, "model": "auto", "epochs": 6,
              "n_heatmaps": 2, "tsne_samples": 20, "data_dir": data_dir}
    return run_series(tmp_path_factory.mktemp("restore-run"), params)


@pytest.fixture(scope="session")
def fashion_run_dir(tmp_path_factory: pytest.TempPathFactory, fashion_dir: Path, data_dir: Path) -> Path:
    """The five notebooks on a slice of Fashion-MNIST: T-shirts normal, trousers and bags anomalous."""
    params = {
        **SMALL, "dataset": "fashion-mnist", "fashion_dir": fashion_dir, "data_dir": data_dir,
        "normal_classes": "[0]", "anomaly_classes": "[1, 8]", "max_train": 2000, "max_test": 600,
    }
    return run_series(tmp_path_factory.mktemp("fashion-run"), params)


@pytest.fixture(scope="session")
def fashion_dir() -> Path:
    """The folder of the four Fashion-MNIST files: $ANOMALYMAP_FASHION_DIR, else Debian's dataset-fashion-mnist."""
    spec = data.FASHION_MNIST
    found = data.idx.source_dir(spec)
    if found is None or not (found / spec.files[0][0]).exists():
        require(
            f"the Fashion-MNIST files are missing: install Debian's dataset-fashion-mnist ({spec.local}) "
            f"or set ${spec.env}"
        )
    return found


@pytest.fixture(scope="session")
def example_folder(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> Path:
    """A small example category folder (MVTec AD layout) at 32x32, made from MNIST: 160 training images."""
    from anomalymap_helpers.pipeline.data.example import make_example_folder

    out = tmp_path_factory.mktemp("example") / "washers"
    return make_example_folder(
        out, size=32, n_train=160, n_test_good=10, n_defect=6, data_dir=str(tmp_path_factory.mktemp("d")),
        mnist_dir=str(mnist_dir),
    )
