"""The IDX data sets, MNIST and Fashion-MNIST: where their files come from, their checksums, and reading them.

Both ship as four files in the IDX format (28x28 grayscale images, labels 0-9). Where
the four files of a data set are taken from, first found first:

1. a local folder: ``mnist_dir`` / ``$ANOMALYMAP_MNIST_DIR`` for MNIST,
   ``fashion_dir`` / ``$ANOMALYMAP_FASHION_DIR`` for Fashion-MNIST;
2. the copy on this machine: MNIST's in ``data/mnist/`` (shipped with the project),
   Fashion-MNIST's where Debian's ``dataset-fashion-mnist`` puts it
   (``/usr/share/datasets/fashion-mnist``);
3. a download by torchvision, where neither exists.

The files are unpacked once into ``<data_dir>/<MNIST|FashionMNIST>/raw/``
(torchvision's layout) and checked against their published checksums every time
they are read.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from anomalymap_helpers.errors import DataError
from anomalymap_helpers.pipeline.data.images import ImageData
from anomalymap_helpers.files import storage
from anomalymap_helpers.files.paths import DEFAULT_DATA_DIR, resolve

NUM_CLASSES = 10
_REPO_DATA = Path(__file__).resolve().parents[3] / "data"


@dataclass(frozen=True)
class IdxSpec:
    """One IDX data set: its four files and where to find them.

    Attributes:
        name: The ``dataset`` parameter's value, e.g. ``"fashion-mnist"``.
        folder: torchvision's folder name under ``data_dir`` (``MNIST``, ``FashionMNIST``).
        files: ``(.gz name, published MD5 of the .gz, SHA-256 of the unpacked file)`` x 4:
            train images, train labels, test images, test labels.
        parameter: The notebook parameter naming a local folder of the files.
        env: The environment variable doing the same.
        local: The copy on this machine that is used when neither is set.
        class_names: The ten classes' names, by label.
        torchvision: The torchvision dataset class that downloads it.
    """

    name: str
    folder: str
    files: tuple[tuple[str, str, str], ...]
    parameter: str
    env: str
    local: Path
    class_names: tuple[str, ...]
    torchvision: str

    def raw_files(self, root: Path) -> list[Path]:
        """The four unpacked files under ``root`` (a data folder)."""
        return [root / self.folder / "raw" / name[:-3] for name, _, _ in self.files]


MNIST = IdxSpec(
    name="mnist",
    folder="MNIST",
    files=(
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
    ),
    parameter="mnist_dir",
    env="ANOMALYMAP_MNIST_DIR",
    local=_REPO_DATA / "mnist",
    class_names=tuple(f"digit {i}" for i in range(10)),
    torchvision="MNIST",
)

# The MD5s are the ones Zalando publishes for its .gz files; Debian's package holds
# recompressed .gz files, which are accepted when their content has the SHA-256 below.
FASHION_MNIST = IdxSpec(
    name="fashion-mnist",
    folder="FashionMNIST",
    files=(
        (
            "train-images-idx3-ubyte.gz",
            "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        ),
        (
            "train-labels-idx1-ubyte.gz",
            "25c81989df183df01b3e8a0aad5dffbe",
            "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        ),
        (
            "t10k-images-idx3-ubyte.gz",
            "bef4ecab320f06d8554ea6380940ec79",
            "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        ),
        (
            "t10k-labels-idx1-ubyte.gz",
            "bb300cfdad3c16e7a12a480ee83cd310",
            "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        ),
    ),
    parameter="fashion_dir",
    env="ANOMALYMAP_FASHION_DIR",
    local=Path("/usr/share/datasets/fashion-mnist"),
    class_names=(
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
    torchvision="FashionMNIST",
)

SPECS = {spec.name: spec for spec in (MNIST, FASHION_MNIST)}
# Kept for the MNIST-only callers.
MNIST_ENV = MNIST.env
MNIST_FILES = MNIST.files
EMBEDDED_DIR = MNIST.local


def _digest(path: Path, algorithm: str, *, unpack: bool = False) -> str:
    h = hashlib.new(algorithm)
    with (gzip.open if unpack else open)(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _how_to_fix(spec: IdxSpec) -> str:
    if spec is MNIST:
        return "or leave mnist_dir unset to use the copy in data/mnist/"
    return f"or install Debian's dataset-fashion-mnist (files in {spec.local})"


def check_source_dir(spec: IdxSpec, folder: str | os.PathLike[str]) -> dict[str, Path]:
    """Check a local folder of a data set's four files.

    Each file may be the ``.gz`` (checked against its published MD5, else, for a
    recompressed copy, its content against the SHA-256) or the unpacked file
    (checked against its SHA-256).

    Returns:
        The path of each file, by its ``.gz`` name.

    Raises:
        DataError: the folder or a file is missing, or a checksum does not match.
    """
    where = Path(folder).expanduser()
    if not where.is_dir():
        raise DataError(
            f"{spec.parameter}={str(folder)!r} is not a folder: point it (or ${spec.env}) at a folder "
            f"holding the four {spec.name} files, {_how_to_fix(spec)}"
        )
    found: dict[str, Path] = {}
    for gz_name, md5, sha256 in spec.files:
        gz, raw = where / gz_name, where / gz_name[:-3]
        if gz.is_file():
            path, algorithm, expected = gz, "md5", md5
        elif raw.is_file():
            path, algorithm, expected = raw, "sha256", sha256
        else:
            raise DataError(
                f"{gz_name} (or {raw.name}) is missing from {where}: copy the four official {spec.name} "
                f"files there, {_how_to_fix(spec)}"
            )
        actual = _digest(path, algorithm)
        if actual != expected and algorithm == "md5":
            try:
                if _digest(path, "sha256", unpack=True) == sha256:
                    actual = expected  # a recompressed copy of the same content
            except (OSError, EOFError, gzip.BadGzipFile):
                pass
        if actual != expected:
            raise DataError(
                f"{path} is corrupt or truncated: its {algorithm.upper()} is {actual}, expected "
                f"{expected} ({path.stat().st_size:,} bytes). Copy that file again from the official "
                f"{spec.name} distribution, {_how_to_fix(spec)}"
            )
        found[gz_name] = path
    return found


def check_mnist_dir(mnist_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """:func:`check_source_dir` for MNIST."""
    return check_source_dir(MNIST, mnist_dir)


def source_dir(spec: IdxSpec, folder: str | os.PathLike[str] | None = None) -> Path | None:
    """The folder the files are taken from: ``folder``, the environment variable, the local copy, or None."""
    chosen = folder or os.environ.get(spec.env)
    if chosen:
        return Path(chosen).expanduser()
    return spec.local if (spec.local / spec.files[0][0]).is_file() else None


def prepare(spec: IdxSpec, data_dir: str | os.PathLike[str] = DEFAULT_DATA_DIR, folder: str | None = None) -> Path:
    """Make sure the four files sit unpacked in ``<data_dir>/<spec.folder>/raw`` and return ``data_dir``.

    Args:
        spec: The data set.
        data_dir: The folder of the unpacked files (resolved against the project root).
        folder: A local folder of the official files; None or "" takes the environment
            variable, else the local copy, else a torchvision download.

    Raises:
        DataError: a source file is missing or corrupt, or the download failed.
    """
    root = resolve(data_dir)
    targets = spec.raw_files(root)
    source = source_dir(spec, folder)
    if source is not None:
        checked = None
        for (gz_name, _, _), target in zip(spec.files, targets, strict=True):
            if target.is_file():  # load checks its SHA-256 on every read
                continue
            checked = checked or check_source_dir(spec, source)
            with storage.atomic_path(target) as tmp:
                path = checked[gz_name]
                opener = gzip.open if path.suffix == ".gz" else open
                with opener(path, "rb") as src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
        return root
    if all(p.exists() for p in targets):
        return root
    import torchvision

    try:
        for train in (True, False):
            getattr(torchvision.datasets, spec.torchvision)(str(root), train=train, download=True)
    except (RuntimeError, OSError) as exc:
        raise DataError(
            f"could not get {spec.name} into {targets[0].parent} ({exc}). Without internet, copy the four "
            f"official files into a folder and pass {spec.parameter}=<folder> (or set ${spec.env})"
        ) from None
    return root


def prepare_mnist(data_dir: str | os.PathLike[str] = DEFAULT_DATA_DIR, mnist_dir: str | None = None) -> Path:
    """:func:`prepare` for MNIST."""
    return prepare(MNIST, data_dir, mnist_dir)


def _read_idx(data: bytes) -> torch.Tensor:
    """An IDX array of unsigned bytes (big-endian header, then the data)."""
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return torch.frombuffer(bytearray(data[4 + 4 * ndim :]), dtype=torch.uint8).view(*dims)


def load(spec: IdxSpec, data_dir: str | os.PathLike[str] = DEFAULT_DATA_DIR, folder: str | None = None) -> ImageData:
    """Load an IDX data set (see :func:`prepare` for where it comes from).

    The four raw files are checked against their published SHA-256 before they are read.
    """
    root = prepare(spec, data_dir, folder)
    arrays, checksums = [], {}
    for path, (_, _, expected) in zip(spec.raw_files(root), spec.files, strict=True):
        data = path.read_bytes()
        checksums[path.name] = actual = hashlib.sha256(data).hexdigest()
        if actual != expected:
            raise DataError(
                f"{path} is corrupt: its SHA-256 is {actual}, expected {expected}. Delete {path.parent} and run again"
            )
        arrays.append(_read_idx(data))
    train_x, train_y, test_x, test_y = arrays
    return ImageData(
        spec.name, train_x.unsqueeze(1), train_y.long(), test_x.unsqueeze(1), test_y.long(), spec.class_names, checksums
    )


def load_mnist(data_dir: str | os.PathLike[str] = DEFAULT_DATA_DIR, mnist_dir: str | None = None) -> ImageData:
    """:func:`load` for MNIST."""
    return load(MNIST, data_dir, mnist_dir)
