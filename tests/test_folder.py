"""Folder data sets (MVTec AD layout): reading, resizing, pairing masks, and every bad-folder message."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from anomalymap_helpers.errors import DataError
from anomalymap_helpers.pipeline.data import folder


@pytest.fixture()
def category(example_folder: Path, tmp_path: Path) -> Path:
    """A private copy of the example folder that a test may break."""
    return Path(shutil.copytree(example_folder, tmp_path / "category"))


def test_example_folder_reads_with_classes_masks_and_sizes(example_folder: Path) -> None:
    images = folder.load_folder(example_folder, 32)
    assert images.class_names == ("good", "blob", "scratch")
    assert images.train_images.shape == (160, 3, 32, 32) and images.train_images.dtype == torch.uint8
    assert images.test_images.shape == (22, 3, 32, 32)
    assert torch.bincount(images.test_labels).tolist() == [10, 6, 6]
    masks = images.test_masks
    assert masks.shape == (22, 1, 32, 32) and masks.dtype == torch.bool
    assert not masks[images.test_labels == 0].any()
    assert all(masks[i].any() for i in np.flatnonzero(images.test_labels.numpy() > 0))


def test_masks_pair_by_name_and_resize_nearest(category: Path) -> None:
    """Each image gets the mask named after it, whatever the order of the files, and the
    resized mask is the nearest-neighbour resize of that file (binary, no grey edge)."""
    for k, path in enumerate(sorted((category / "test" / "blob").iterdir())):
        path.rename(path.with_name(f"{['z', 'a', 'm', 'b', 'y', 'c'][k]}{path.name}"))
    for k, path in enumerate(sorted((category / "ground_truth" / "blob").iterdir())):
        path.rename(path.with_name(f"{['z', 'a', 'm', 'b', 'y', 'c'][k]}{path.name}"))
    # one image as JPEG, its mask still PNG
    jpg = category / "test" / "blob" / "a001.png"
    Image.open(jpg).save(jpg.with_suffix(".jpg"), quality=95)
    jpg.unlink()
    images = folder.load_folder(category, 16)
    for i, name in enumerate(images.test_names):
        if "/blob/" not in name:
            continue
        stem = Path(name).stem
        mask = Image.open(category / "ground_truth" / "blob" / f"{stem}_mask.png")
        expected = np.asarray(mask.resize((16, 16), Image.NEAREST)) > 0
        assert np.array_equal(images.test_masks[i, 0].numpy(), expected), name
    assert "test/blob/a001.jpg" in images.test_names


def test_stray_files_are_skipped_and_counted(category: Path) -> None:
    (category / "train" / "good" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (category / "train" / "good" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (category / "test" / "good" / "notes.txt").write_text("shot on Monday")
    checkpoints = category / "test" / "scratch" / ".ipynb_checkpoints"
    checkpoints.mkdir()
    shutil.copy(category / "test" / "scratch" / "000.png", checkpoints / "000-checkpoint.png")
    images = folder.load_folder(category, 32)
    assert len(images.train_images) == 160 and len(images.test_images) == 22
    assert sorted(images.skipped) == sorted(
        ["train/good/.DS_Store", "train/good/Thumbs.db", "test/good/notes.txt", "test/scratch/.ipynb_checkpoints/"]
    )


def test_grayscale_folder_gives_one_channel_and_a_mix_gives_three(category: Path) -> None:
    for path in category.glob("t*/*/*.*"):
        Image.open(path).convert("L").save(path)
    assert folder.load_folder(category, 32).train_images.shape[1] == 1
    first = category / "train" / "good" / "000.png"
    Image.open(first).convert("RGB").save(first)
    assert folder.load_folder(category, 32).train_images.shape[1] == 3


def _message(category: Path) -> str:
    with pytest.raises(DataError) as info:
        folder.load_folder(category, 32)
    return str(info.value)


def test_no_train_good_is_named(category: Path) -> None:
    shutil.rmtree(category / "train" / "good")
    assert "has no train/good/ folder" in _message(category)


def test_train_good_without_images_is_named(category: Path) -> None:
    for path in (category / "train" / "good").iterdir():
        path.unlink()
    (category / "train" / "good" / ".DS_Store").write_bytes(b"x")
    message = _message(category)
    assert f"{category / 'train' / 'good'} holds no images" in message


def test_truncated_image_is_named(category: Path) -> None:
    bad = category / "test" / "good" / "003.png"
    bad.write_bytes(bad.read_bytes()[:200])
    message = _message(category)
    assert message.startswith(f"cannot read image {bad}") and "Replace or remove the file" in message


def test_not_an_image_with_an_image_name_is_named(category: Path) -> None:
    bad = category / "train" / "good" / "007.png"
    bad.write_text("not a picture")
    assert _message(category).startswith(f"cannot read image {bad}")


def test_defect_image_without_its_mask_is_named(category: Path) -> None:
    (category / "ground_truth" / "scratch" / "002_mask.png").unlink()
    message = _message(category)
    assert f"defect image {category / 'test' / 'scratch' / '002.png'} has no mask" in message
    assert "ground_truth/scratch/002_mask.png" in message


def test_mask_without_its_image_is_named(category: Path) -> None:
    (category / "ground_truth" / "blob" / "003_mask.png").rename(category / "ground_truth" / "blob" / "103_mask.png")
    message = _message(category)
    assert f"mask {category / 'ground_truth' / 'blob' / '103_mask.png'} pairs with no image in test/blob/" in message


def test_mask_of_another_size_is_named(category: Path) -> None:
    mask = category / "ground_truth" / "blob" / "001_mask.png"
    Image.open(mask).resize((20, 20)).save(mask)
    message = _message(category)
    assert f"mask {mask} is 20x20 pixels but its image {category / 'test' / 'blob' / '001.png'} is 32x32" in message


def test_no_defect_folder_is_named(category: Path) -> None:
    for kind in ("blob", "scratch"):
        shutil.rmtree(category / "test" / kind)
    shutil.rmtree(category / "ground_truth")
    assert "has no defect folder" in _message(category)


def test_not_a_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="is not a folder: point it at one category folder"):
        folder.load_folder(tmp_path / "nowhere", 32)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"dataset": "folder"}, 'dataset="folder" needs image_dir'),
        ({"dataset": "folder", "image_dir": "{example}", "normal_classes": "[1]"}, "takes its classes from the folders"),
        ({"dataset": "folder", "image_dir": "{example}", "image_size": "100"}, "multiple of 16, e.g. 96 or 112"),
        ({"dataset": "fashion-mnist", "image_size": "64"}, "fashion-mnist images are 28x28"),
        ({"dataset": "folder", "image_dir": "{broken}"}, "has no mask"),
    ],
)
def test_runner_refuses_bad_folder_settings_before_any_work(
    params: dict[str, str], message: str, category: Path, example_folder: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from anomalymap_helpers.commands.cli import main

    (category / "ground_truth" / "blob" / "000_mask.png").unlink()
    args = ["run", "--results", str(tmp_path / "run")]
    for name, value in params.items():
        args += ["-p", name, value.format(example=example_folder, broken=category)]
    assert main(args) in (1, 2)
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_masks_in_other_modes_mark_their_non_zero_pixels(category: Path) -> None:
    """A mask may be 1-bit, RGB (a dark colour counts), or carry an alpha channel (which does not)."""
    path = category / "ground_truth" / "blob" / "000_mask.png"
    truth = np.asarray(Image.open(path)) > 0
    expected = np.asarray(Image.fromarray(truth).resize((32, 32), Image.NEAREST))
    variants = {
        "1": Image.fromarray(truth),
        "RGB": Image.fromarray(np.stack([np.zeros_like(truth), np.zeros_like(truth), truth], -1).astype(np.uint8)),
        "LA": Image.fromarray(np.stack([truth * 255, np.full_like(truth, 255)], -1).astype(np.uint8), "LA"),
    }
    for mode, image in variants.items():
        image.save(path)
        images = folder.load_folder(category, 32)
        i = images.test_names.index("test/blob/000.png")
        assert np.array_equal(images.test_masks[i, 0].numpy(), expected), mode


def test_16_bit_images_keep_their_brightness(category: Path) -> None:
    """A 16-bit grayscale PNG is scaled by the format's range (65535 -> 255), not by its own
    maximum, so a dim image stays dim."""
    for path in category.glob("t*/*/*.*"):
        Image.open(path).convert("L").save(path)
    path = category / "train" / "good" / "000.png"
    eight = np.asarray(Image.open(path), dtype=np.uint16)
    dim = eight // 2
    Image.fromarray((dim * 257).astype(np.uint16)).save(path)  # 16-bit, half as bright
    assert Image.open(path).mode.startswith("I")
    images = folder.load_folder(category, 32)
    expected = np.asarray(Image.fromarray(dim.astype(np.uint8)).resize((32, 32), Image.BILINEAR))
    assert np.abs(images.train_images[0, 0].numpy().astype(int) - expected).max() <= 1
