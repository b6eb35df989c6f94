"""Class splits, the validation hold-out and the local MNIST folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from anomalymap_helpers.errors import DataError, ParameterError
from anomalymap_helpers.pipeline import data


@pytest.mark.parametrize(
    ("normal", "anomaly", "message"),
    [
        ([0, 1, 10], [9], r"unknown class\(es\) \[10\]"),
        ([0, 1, 2], [2, 9], r"class\(es\) \[2\] are in both"),
        ([], [9], "normal_classes is empty"),
        ([0, 1], [], "anomaly_classes is empty"),
        (["a"], [9], "give a list of class numbers"),
    ],
)
def test_bad_class_splits_are_named(normal: list, anomaly: list, message: str) -> None:
    with pytest.raises(ParameterError, match=message):
        data.SplitConfig(tuple(normal), tuple(anomaly))


def test_split_config_normalises_classes_and_caps() -> None:
    cfg = data.SplitConfig((3, 1, 1), (9,), max_train=0)
    assert cfg.normal_classes == (1, 3) and cfg.max_train is None
    with pytest.raises(ParameterError, match="max_test"):
        data.SplitConfig(max_test=1)


def test_splits_are_seeded_disjoint_and_free_of_anomalies(mnist: data.ImageData) -> None:
    cfg = data.SplitConfig(normal_classes=tuple(range(9)), anomaly_classes=(9,), seed=3)
    a = data.make_splits(mnist.train_labels, mnist.test_labels, cfg)
    b = data.make_splits(mnist.train_labels, mnist.test_labels, cfg)
    c = data.make_splits(mnist.train_labels, mnist.test_labels, data.SplitConfig(seed=4))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["val"], c["val"])
    assert not set(a["train"].tolist()) & set(a["val"].tolist())
    assert (mnist.train_labels[a["train"]] != 9).all() and (mnist.train_labels[a["val"]] != 9).all()
    normal_train = int((mnist.train_labels != 9).sum())  # 60,000 - 5,949 nines
    assert normal_train == 54_051
    assert len(a["val"]) == round(normal_train * 0.1)
    assert len(a["train"]) + len(a["val"]) == normal_train
    assert len(a["test"]) == 10_000
    assert int((mnist.test_labels[a["test"]] == 9).sum()) == 1009


def test_test_set_keeps_only_chosen_classes(mnist: data.ImageData) -> None:
    cfg = data.SplitConfig(normal_classes=(1,), anomaly_classes=(7,), max_test=500)
    s = data.make_splits(mnist.train_labels, mnist.test_labels, cfg)
    assert set(mnist.test_labels[s["test"]].tolist()) <= {1, 7}
    assert len(s["test"]) == 500
    assert set(mnist.train_labels[s["train"]].tolist()) == {1}


def test_local_folder_checksums(mnist_dir: Path) -> None:
    found = data.check_mnist_dir(mnist_dir)
    assert sorted(found) == sorted(name for name, _, _ in data.MNIST_FILES)


def test_truncated_local_file_names_file_and_checksum(mnist_dir: Path, tmp_path: Path) -> None:
    for name, _, _ in data.MNIST_FILES:
        shutil.copyfile(mnist_dir / name, tmp_path / name)
    bad = tmp_path / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:1000])
    with pytest.raises(DataError) as info:
        data.load_mnist(tmp_path / "data", str(tmp_path))
    text = str(info.value)
    assert "t10k-labels-idx1-ubyte.gz" in text and "ec29112dd5afa0611ce80d1b7f02629c" in text
    assert "Copy that file again" in text


def test_missing_local_file_is_named(mnist_dir: Path, tmp_path: Path) -> None:
    shutil.copyfile(mnist_dir / "train-images-idx3-ubyte.gz", tmp_path / "train-images-idx3-ubyte.gz")
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz"):
        data.check_mnist_dir(tmp_path)


def test_mnist_matches_published_statistics(mnist: data.ImageData) -> None:
    assert torch.bincount(mnist.train_labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert data.to_float(mnist.train_images).mean().item() == pytest.approx(0.1307, abs=1e-4)


def test_reader_matches_torchvision(mnist_dir: Path, tmp_path: Path) -> None:
    import torchvision

    ours = data.load_mnist(tmp_path, str(mnist_dir))
    for train, images, labels in (
        (True, ours.train_images, ours.train_labels),
        (False, ours.test_images, ours.test_labels),
    ):
        theirs = torchvision.datasets.MNIST(str(tmp_path), train=train, download=False)
        assert torch.equal(images[:, 0], theirs.data) and torch.equal(labels, theirs.targets)


def test_fashion_mnist_from_debians_package_matches_torchvision(fashion_dir: Path, tmp_path: Path) -> None:
    """Debian's recompressed .gz files pass the check on their content; the reader agrees with
    torchvision's, and the classes are the published ten of 6,000 training images each."""
    import torchvision

    found = data.check_source_dir(data.FASHION_MNIST, fashion_dir)
    assert sorted(found) == sorted(name for name, _, _ in data.FASHION_MNIST.files)
    ours = data.load_dataset("fashion-mnist", data_dir=tmp_path, fashion_dir=str(fashion_dir))
    assert ours.class_names[0] == "T-shirt/top" and ours.class_names[9] == "Ankle boot"
    assert torch.bincount(ours.train_labels).tolist() == [6000] * 10
    for train, images, labels in ((True, ours.train_images, ours.train_labels), (False, ours.test_images, ours.test_labels)):
        theirs = torchvision.datasets.FashionMNIST(str(tmp_path), train=train, download=False)
        assert torch.equal(images[:, 0], theirs.data) and torch.equal(labels, theirs.targets)


def test_corrupt_fashion_file_is_named(fashion_dir: Path, tmp_path: Path) -> None:
    for name, _, _ in data.FASHION_MNIST.files:
        shutil.copyfile(fashion_dir / name, tmp_path / name)
    bad = tmp_path / "train-labels-idx1-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte.gz is corrupt or truncated.*25c81989df183df01b3e8a0aad5dffbe"):
        data.check_source_dir(data.FASHION_MNIST, tmp_path)


def test_idx_data_sets_stay_at_28_pixels() -> None:
    assert data.image_size_for("fashion-mnist", 0) == 28 and data.image_size_for("folder", 0) == 128
    with pytest.raises(ParameterError, match="fashion-mnist images are 28x28; leave image_size at 0"):
        data.image_size_for("fashion-mnist", 64)


def test_a_folder_is_used_at_its_own_size_where_its_images_share_one(tmp_path: Path) -> None:
    """image_size 0: a folder of 48x48 images stays 48x48; mixed, non-square, too large or a side the model
    cannot take gives 128; a size asked for is used as it is."""
    from PIL import Image

    from anomalymap_helpers.pipeline.data.sources import folder_size

    def folder(name: str, *sizes: tuple[int, int]) -> Path:
        root = tmp_path / name
        for part, size in zip(("train/good", "test/good", "test/dent"), [*sizes, sizes[-1], sizes[-1]], strict=False):
            (root / part).mkdir(parents=True)
            Image.new("RGB", size, (90, 90, 90)).save(root / part / "a.png")
        return root

    assert folder_size(folder("same", (48, 48))) == 48
    assert data.load_dataset("folder", image_dir=str(tmp_path / "same")).train_images.shape[-1] == 48
    assert folder_size(folder("mixed", (48, 48), (64, 64))) == 128
    assert folder_size(folder("wide", (64, 48))) == 128
    assert folder_size(folder("large", (256, 256))) == 128
    assert folder_size(folder("odd", (100, 100))) == 128  # the model halves 100 only twice: not a size it takes
    assert folder_size(tmp_path / "same", 64) == 64
