"""What each image reader does with each file a user can have that is not the image it looks like.

Makes, in a temporary folder, one of each hostile kind beside a good PNG (a decompression bomb, an
empty file, random bytes and text behind an image suffix, a PNG cut in its header, its data and near
its end, a directory, a FIFO and a symlink loop named ``*.png``, a name that is not UTF-8), then hands
each to the three readers: the folder data set (``load_folder``, the file in ``train/good``),
``predict`` (the files it finds in a folder, each decoded) and the explorer's upload (the file's
bytes, as a browser sends them: regular files only). Prints a markdown table of what each got.

    python benchmarks/hostile_files.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python benchmarks/NAME.py`: the repository's root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import io
import os
import struct
import tempfile
import zlib


def png_bytes(size: int = 32, seed: int = 0) -> bytes:
    """A PNG of ``size`` x ``size`` seeded random RGB pixels."""
    import numpy as np
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(out, "PNG")
    return out.getvalue()


def bomb_bytes(side: int = 20_000) -> bytes:
    """A PNG of 57 bytes whose header claims ``side`` x ``side`` grey pixels (and no data)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)) + chunk(b"IEND", b"")


def kinds() -> dict[str, object]:
    """Each hostile kind: its file's bytes, or a maker ``(path) -> None`` for what is not a regular file."""
    import numpy as np

    good = png_bytes()
    return {
        "a good PNG": good,
        "a name that is not UTF-8 (Latin-1 bytes)": ("odd", good),
        "a decompression bomb (20,000 x 20,000 claimed, 57 bytes)": bomb_bytes(),
        "an empty file": b"",
        "random bytes behind .png": np.random.default_rng(2).integers(0, 256, 4000, dtype=np.uint8).tobytes(),
        "text behind .jpg": ("jpg", b"not an image at all\n"),
        "a PNG cut inside its header (30 bytes)": good[:30],
        "a PNG cut inside its data (half)": good[: len(good) // 2],
        "a PNG cut 40 bytes before its end": good[:-40],
        "a directory named x.png": lambda p: p.mkdir(),
        "a FIFO named x.png (opening it would block)": lambda p: os.mkfifo(p),
        "a symlink loop named x.png": lambda p: p.symlink_to(p),
    }


def _place(folder: Path, what: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    name, data = ("x.png", what)
    if isinstance(what, tuple):
        name, data = {"odd": os.fsdecode(b"caf\xe9-\xff.png"), "jpg": "x.jpg"}[what[0]], what[1]
    path = folder / name
    if callable(data):
        data(path)
    else:
        path.write_bytes(data)
    return path


def _short(text: str, path: Path, n: int = 110) -> str:
    for shown in (str(path), str(path.relative_to(path.parents[2]))):
        text = text.replace(shown, "<file>")
    text = " ".join(text.split()).replace("|", "/")
    return text if len(text) <= n else text[: n - 1] + "…"


def readers(what: object, tmp: Path) -> tuple[str, str, str]:
    """What the folder data set, predict and the upload each do with ``what`` (its path said as ``<file>``)."""
    from anomalymap_helpers.errors import AnomalyMapError
    from anomalymap_helpers.pipeline.data.folder import load_folder
    from anomalymap_helpers.runs.predictions import find_images, read_image

    root = tmp / "folder"
    _place(root / "train" / "good", png_bytes(seed=5)).rename(root / "train" / "good" / "a.png")
    path = _place(root / "train" / "good", what)
    _place(root / "test" / "good", png_bytes(seed=6))
    _place(root / "test" / "scratch", png_bytes(seed=7))
    try:
        data = load_folder(root, 16)
        folder = (f"skipped, listed as not an image: {', '.join(data.skipped)}" if data.skipped
                  else f"read ({len(data.train_images)} training images)")
        folder = _short(folder, path)
    except AnomalyMapError as exc:
        folder = f"refused before any training: {_short(str(exc), path)}"
    found, ignored = find_images([root / "train" / "good"])
    if path not in found:
        predict = "never opened (not a regular image file)" if path.name not in " ".join(ignored) else "ignored"
    else:
        try:
            read_image(path, 16, 3)
            predict = "scored"
        except AnomalyMapError as exc:
            predict = f"skipped, named in skipped.csv, exit 3: {_short(str(exc), path)}"
    if isinstance(what, (bytes, tuple)):
        upload_path = _place(tmp / "upload", what)
        try:
            read_image(upload_path, 16, 3)
            upload = "scored"
        except AnomalyMapError:
            upload = "cannot score <name>: the same reason"
    else:
        upload = "n/a (a browser sends a regular file's bytes)"
    return folder, predict, upload


def _main(args: argparse.Namespace) -> int:
    rows = []
    for label, what in kinds().items():
        with tempfile.TemporaryDirectory() as tmp:
            rows.append((label, *readers(what, Path(tmp))))
    print("| file | folder data set | predict | explorer upload |\n|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit status."""
    from benchmarks._entry import run

    parser = argparse.ArgumentParser(prog="python benchmarks/hostile_files.py", description=__doc__.splitlines()[0])
    return run(parser, _main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
