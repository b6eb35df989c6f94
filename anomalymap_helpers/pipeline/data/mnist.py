"""The MNIST files: where they come from, their checksums, and reading them.

Where the four official files are taken from, first found first:

1. ``mnist_dir`` (a notebook parameter), or else ``$ANOMALYMAP_MNIST_DIR``: a local folder;
2. the copy shipped with the project in ``data/mnist/`` (the embedded default);
3. a download by torchvision, where neither exists (the package used outside its checkout).

The files are unpacked once into ``<data_dir>/MNIST/raw/`` (torchvision's layout) and
checked against their published SHA-256 every time they are read.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from anomalymap_helpers.errors import DataError
from anomalymap_helpers.runs import storage
from anomalymap_helpers.runs.paths import DEFAULT_DATA_DIR, resolve

MNIST_ENV = "ANOMALYMAP_MNIST_DIR"
NUM_CLASSES = 10
EMBEDDED_DIR = Path(__file__).resolve().parents[3] / "data" / "mnist"

# (.gz name, MD5 of the .gz as torchvision checks it, SHA-256 of the uncompressed file)
MNIST_FILES: tuple[tuple[str, str, str], ...] = (
    (
        "train-images-idx3-ubyte.gz",
        "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    ),
    (
        "train-labels-idx1-ubyte.gz",
        "d53e105ee54ea40749a09fcbcd1e9432",
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    ),
    (
        "t10k-images-idx3-ubyte.gz",
        "9fb629c4189551a2d022fa330f9573f3",
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    ),
    (
        "t10k-labels-idx1-ubyte.gz",
        "ec29112dd5afa0611ce80d1b7f02629c",
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    ),
)


def _digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_mnist_dir(mnist_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Check a local folder of the four official MNIST files.

    Each file may be the ``.gz`` (checked against torchvision's MD5) or the
    uncompressed file (checked against its SHA-256).

    Returns:
        The path of each file, by its ``.gz`` name.

    Raises:
        DataError: the folder or a file is missing, or a checksum does not match.
    """
    folder = Path(mnist_dir).expanduser()
    if not folder.is_dir():
        raise DataError(
            f"mnist_dir={str(mnist_dir)!r} is not a folder: point it (or ${MNIST_ENV}) at a folder "
            "holding the four MNIST files, or leave it unset to use the copy in data/mnist/"
        )
    found: dict[str, Path] = {}
    for gz_name, md5, sha256 in MNIST_FILES:
        gz, raw = folder / gz_name, folder / gz_name[:-3]
        if gz.is_file():
            path, algorithm, expected = gz, "md5", md5
        elif raw.is_file():
            path, algorithm, expected = raw, "sha256", sha256
        else:
            raise DataError(
                f"{gz_name} (or {raw.name}) is missing from {folder}: copy the four official MNIST "
                "files there, or leave mnist_dir unset to use the copy in data/mnist/"
            )
        actual = _digest(path, algorithm)
        if actual != expected:
            raise DataError(
                f"{path} is corrupt or truncated: its {algorithm.upper()} is {actual}, expected "
                f"{expected} ({path.stat().st_size:,} bytes). Copy that file again from the official "
                "MNIST distribution, or leave mnist_dir unset to use the copy in data/mnist/"
            )
        found[gz_name] = path
    return found


def source_dir(mnist_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """The folder MNIST is taken from: ``mnist_dir``, ``$ANOMALYMAP_MNIST_DIR``, the embedded copy, or None."""
    chosen = mnist_dir or os.environ.get(MNIST_ENV)
    if chosen:
        return Path(chosen).expanduser()
    return EMBEDDED_DIR if (EMBEDDED_DIR / MNIST_FILES[0][0]).is_file() else None


def _raw_files(root: Path) -> list[Path]:
    return [root / "MNIST" / "raw" / name[:-3] for name, _, _ in MNIST_FILES]


def prepare_mnist(data_dir: str | os.PathLike[str] = DEFAULT_DATA_DIR, mnist_dir: str | None = None) -> Path:
    """Make sure the four files sit unpacked in ``<data_dir>/MNIST/raw`` and return ``data_dir``.

    Args:
        data_dir: The folder of the unpacked files (resolved against the project root).
        mnist_dir: A local folder of the official files; None or "" takes
            ``$ANOMALYMAP_MNIST_DIR``, else the embedded ``data/mnist/``, else a
            torchvision download.

    Raises:
        DataError: a source file is missing or corrupt, or the download failed.
    """
    root = resolve(data_dir)
    raw = root / "MNIST" / "raw"
    source = source_dir(mnist_dir)
    if source is not None:
        checked = None
        for (gz_name, _, _), target in zip(MNIST_FILES, _raw_files(root), strict=True):
            if target.is_file():  # load_mnist checks its SHA-256 on every read
                continue
            checked = checked or check_mnist_dir(source)
            with storage.atomic_path(target) as tmp:
                path = checked[gz_name]
                opener = gzip.open if path.suffix == ".gz" else open
                with opener(path, "rb") as src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
        return root
    if all(p.exists() for p in _raw_files(root)):
        return root
    import torchvision

    try:
        for train in (True, False):
            torchvision.datasets.MNIST(str(root), train=train, download=True)
    except (RuntimeError, OSError) as exc:
        raise DataError(
            f"could not get MNIST into {raw} ({exc}). Without internet, copy the four official "
            f"files into a folder and pass mnist_dir=<folder> (or set ${MNIST_ENV})"
        ) from None
    return root


def _read_idx(data: bytes) -> torch.Tensor:
    """An IDX array of unsigned bytes (the MNIST format: big-endian header, then the data)."""
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return torch.frombuffer(bytearray(data[4 + 4 * ndim :]), dtype=torch.uint8).view(*dims)


@dataclass(frozen=True)
class Mnist:
    """All of MNIST as ``uint8`` tensors.

    Attributes:
        train_images: ``(60000, 28, 28)`` uint8.
        train_labels: ``(60000,)`` int64.
        test_images: ``(10000, 28, 28)`` uint8.
        test_labels: ``(10000,)`` int64.
        checksums: SHA-256 of each raw file the tensors were read from.
    """

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    checksums: dict[str, str] = field(default_factory=dict)


def load_mnist(data_dir: str | os.PathLike[str] = DEFAULT_DATA_DIR, mnist_dir: str | None = None) -> Mnist:
    """Load MNIST (see :func:`prepare_mnist` for where it comes from).

    The four raw files are checked against their published SHA-256 before they are read.
    """
    root = prepare_mnist(data_dir, mnist_dir)
    arrays, checksums = [], {}
    for path, (_, _, expected) in zip(_raw_files(root), MNIST_FILES, strict=True):
        data = path.read_bytes()
        checksums[path.name] = actual = hashlib.sha256(data).hexdigest()
        if actual != expected:
            raise DataError(
                f"{path} is corrupt: its SHA-256 is {actual}, expected {expected}. Delete {path.parent} and run again"
            )
        arrays.append(_read_idx(data))
    train_x, train_y, test_x, test_y = arrays
    return Mnist(train_x, train_y.long(), test_x, test_y.long(), checksums)
