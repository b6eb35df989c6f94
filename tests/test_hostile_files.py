"""Files a user can have that are not the images they look like, and names that are not UTF-8: every
reader names the file and goes on (predict) or stops before any work (the folder data set), and a name
of any bytes is written and read back as the operating system gives it."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomalymap_helpers.errors import DataError
from anomalymap_helpers.files import storage
from anomalymap_helpers.pipeline.data import folder
from anomalymap_helpers.runs.opened import Run
from benchmarks.hostile_files import bomb_bytes, png_bytes

ODD = os.fsdecode(b"caf\xe9-\xff.png")  # Latin-1 bytes, as an old archive or a network share names files


def _hostile_folder(root: Path) -> dict[str, str]:
    """A folder of two good images (one with a name that is not UTF-8) and every bad kind; what each bad one is."""
    root.mkdir(parents=True)
    good = png_bytes()
    (root / "good.png").write_bytes(good)
    (root / ODD).write_bytes(png_bytes(seed=1))
    bad = {
        "bomb.png": bomb_bytes(),
        "empty.png": b"",
        "noise.png": np.random.default_rng(2).integers(0, 256, 4000, dtype=np.uint8).tobytes(),
        "text.jpg": b"not an image at all\n",
    }
    for offset in (8, 30, 60, len(good) // 2, len(good) - 40):  # inside the header, the data, near its end
        bad[f"cut{offset}.png"] = good[:offset]
    for name, data in bad.items():
        (root / name).write_bytes(data)
    (root / "folder.png").mkdir()  # a directory with an image's suffix
    os.mkfifo(root / "pipe.png")  # opening it would block: never opened
    (root / "loop.png").symlink_to(root / "loop.png")  # a symlink loop
    return {name: "skipped" for name in bad}


def test_predict_names_every_bad_file_scores_the_rest_and_keeps_odd_names(folder_run_dir: Path, tmp_path: Path) -> None:
    expected = _hostile_folder(tmp_path / "in")
    p = Run.open(folder_run_dir).predict(tmp_path / "in")
    assert sorted(Path(n).name for n in p.names) == sorted(["good.png", ODD])  # both good ones scored
    why = {Path(path).name: reason for path, reason in p.skipped}
    assert set(why) == set(expected)  # every bad file named; the directory, the FIFO and the loop never read
    assert "20,000 x 20,000" in why["bomb.png"] and folder.MAX_PIXELS_ENV in why["bomb.png"]
    assert all(reason.startswith("cannot read image ") and "Replace or remove" in reason
               for name, reason in why.items() if name != "bomb.png")

    from anomalymap_helpers.commands.cli import main

    out = tmp_path / "out"
    assert main(["predict", "--results", str(folder_run_dir), str(tmp_path / "in"), "--out", str(out)]) == 3
    with open(out / "predictions.csv", newline="", encoding="utf-8", errors="surrogateescape") as fh:
        written = {Path(r["path"]).name for r in csv.DictReader(fh)}
    assert written == {"good.png", ODD}  # the name read back as the operating system gives it
    assert (out / "skipped.csv").is_file()


def _category(root: Path, odd: bytes = b"") -> Path:
    """A small MVTec AD folder: 3 training images, a normal and a defective test image with its mask."""
    for sub in ("train/good", "test/good", "test/crack", "ground_truth/crack"):
        (root / sub).mkdir(parents=True)
    for k in range(3):
        (root / "train/good" / f"{k}.png").write_bytes(png_bytes(seed=k))
    (root / "test/good/0.png").write_bytes(png_bytes(seed=5))
    stem = os.fsdecode(b"crack-" + odd)
    (root / "test/crack" / f"{stem}.png").write_bytes(png_bytes(seed=6))
    mask = np.zeros((32, 32), np.uint8)
    mask[8:16, 8:16] = 255
    Image.fromarray(mask).save(root / "ground_truth/crack" / f"{stem}_mask.png")
    return root


def test_the_folder_data_set_refuses_a_bomb_before_any_work_and_the_limit_can_be_moved(tmp_path: Path, monkeypatch) -> None:
    root = _category(tmp_path / "cat")
    (root / "train/good/huge.png").write_bytes(bomb_bytes())
    with pytest.raises(DataError, match=r"huge\.png: it is 20,000 x 20,000 pixels, above the limit of 100,000,000"):
        folder.load_folder(root, 32)
    (root / "train/good/huge.png").unlink()
    monkeypatch.setenv(folder.MAX_PIXELS_ENV, "1000")  # 32 x 32 = 1,024 pixels: now too many
    with pytest.raises(DataError, match=r"0\.png: it is 32 x 32 pixels, above the limit of 1,000"):
        folder.load_folder(root, 32)
    monkeypatch.setenv(folder.MAX_PIXELS_ENV, "lots")
    with pytest.raises(DataError, match=r"ANOMALYMAP_MAX_PIXELS='lots': give a whole number"):
        folder.load_folder(root, 32)


def test_names_that_are_not_utf8_are_read_matched_to_their_masks_and_written_back(tmp_path: Path) -> None:
    root = _category(tmp_path / "cat", odd=b"\xe9t\xe9")
    images = folder.load_folder(root, 32)
    stem = os.fsdecode(b"crack-\xe9t\xe9")
    assert f"{stem}.png" in [Path(n).name for n in images.test_names]
    assert images.test_masks is not None and int(images.test_masks.sum()) > 0  # the mask was paired by its name
    record = {"names": [f"{stem}.png"]}
    storage.write_json(tmp_path / "names.json", record)
    assert storage.read_json(tmp_path / "names.json") == record  # JSON escapes the odd bytes, losslessly
    storage.write_csv(tmp_path / "names.csv", ["path"], [[f"{stem}.png"]])
    with open(tmp_path / "names.csv", newline="", encoding="utf-8", errors="surrogateescape") as fh:
        assert list(csv.reader(fh))[1] == [f"{stem}.png"]
    assert (tmp_path / "names.csv").read_bytes().splitlines()[1] == b"crack-\xe9t\xe9.png"  # the bytes as given


# Property-based (hypothesis, derandomized so that every run tries the same files): whatever bytes a file holds,
# a reader gives an image or a DataError naming it, never another error.

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


def _jpeg(seed: int = 0) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(out, format="JPEG")
    return out.getvalue()


VALID = {".png": png_bytes(24), ".jpg": _jpeg(), ".bmp": None, ".tif": None}
for _suffix, _format in ((".bmp", "BMP"), (".tif", "TIFF")):
    _buffer = io.BytesIO()
    Image.fromarray(np.zeros((24, 24, 3), np.uint8)).save(_buffer, format=_format)
    VALID[_suffix] = _buffer.getvalue()


def _read_or_refuse(path: Path) -> None:
    """``open_image`` on ``path``: an image of the file's claimed size, or a DataError that names the file."""
    try:
        image = folder.open_image(path)
    except DataError as exc:
        assert path.name in str(exc) and ("Replace or remove the file" in str(exc) or "above the limit" in str(exc))
    else:
        assert image.size[0] * image.size[1] <= folder.max_pixels()


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(suffix=st.sampled_from(sorted(VALID)), cut=st.floats(0, 1), flips=st.lists(st.tuples(st.floats(0, 1),
       st.integers(0, 255)), max_size=4))
def test_any_cut_or_corruption_of_an_image_is_read_or_named(tmp_path: Path, suffix: str, cut: float, flips: list) -> None:
    """A valid PNG, JPEG, BMP or TIFF cut at any offset and with up to four bytes changed anywhere."""
    data = bytearray(VALID[suffix][: round(cut * len(VALID[suffix]))])
    for where, value in flips:
        if data:
            data[min(int(where * len(data)), len(data) - 1)] = value
    path = tmp_path / f"x{suffix}"
    path.write_bytes(bytes(data))
    _read_or_refuse(path)


@settings(max_examples=100, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(head=st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM", b"II*\x00", b"GIF89a"]),
       body=st.binary(max_size=300), suffix=st.sampled_from([".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"]))
def test_random_bytes_behind_any_image_suffix_are_named(tmp_path: Path, head: bytes, body: bytes, suffix: str) -> None:
    """Random bytes, some behind a format's magic, so that the decoder gets past identifying the file."""
    path = tmp_path / f"y{suffix}"
    path.write_bytes(head + body)
    _read_or_refuse(path)


def test_the_hostile_files_table_says_what_each_reader_did(capsys: pytest.CaptureFixture[str]) -> None:
    """benchmarks/hostile_files.py, the table in docs/testing.md: no reader crashes, each says what it did."""
    from benchmarks.hostile_files import main as table

    assert table([]) == 0
    rows = {r.split(" | ")[0].lstrip("| "): r.split(" | ")[1:] for r in capsys.readouterr().out.splitlines()[2:]}
    assert rows["a good PNG"] == ["read (2 training images)", "scored", "scored |"]
    bomb = rows["a decompression bomb (20,000 x 20,000 claimed, 57 bytes)"]
    assert bomb[0].startswith("refused before any training") and "above the limit" in bomb[1]
    assert rows["a FIFO named x.png (opening it would block)"][:2] == [
        "skipped, listed as not an image: <file>", "never opened (not a regular image file)"]
    assert all("Traceback" not in " ".join(r) for r in rows.values()) and len(rows) == 12
