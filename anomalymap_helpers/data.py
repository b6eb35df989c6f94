"""MNIST through torchvision, split into normal training, validation and test sets.

The model sees only *normal* training images. A seeded share of them is held
out as the validation set: it, never the test set, is what thresholds and any
other choice are fitted on. The test set holds the normal and the anomalous
classes of the MNIST test images.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from . import storage
from .errors import DataError, ParameterError
from .paths import DEFAULT_DATA_DIR, RunFiles, resolve

MNIST_ENV = "ANOMALYMAP_MNIST_DIR"
NUM_CLASSES = 10

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


# --------------------------------------------------------------------------- classes


def check_classes(
    normal_classes: Iterable[int], anomaly_classes: Iterable[int], num_classes: int = NUM_CLASSES
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Check a split of classes and return it as two sorted tuples.

    Raises:
        ParameterError: a set is empty, a class is unknown, or a class is in both.
    """
    sets = {}
    for name, values in (("normal_classes", normal_classes), ("anomaly_classes", anomaly_classes)):
        if isinstance(values, (int, str)):
            values = [values]
        try:
            items = [int(v) for v in values]
        except (TypeError, ValueError):
            raise ParameterError(f"{name}={values!r}: give a list of class numbers, e.g. [0, 1, 2]") from None
        if not items:
            raise ParameterError(f"{name} is empty: give at least one class from 0 to {num_classes - 1}")
        unknown = sorted({c for c in items if not 0 <= c < num_classes})
        if unknown:
            raise ParameterError(
                f"{name}={items}: unknown class(es) {unknown}; MNIST classes are 0 to {num_classes - 1}"
            )
        sets[name] = tuple(sorted(set(items)))
    both = sorted(set(sets["normal_classes"]) & set(sets["anomaly_classes"]))
    if both:
        raise ParameterError(
            f"class(es) {both} are in both normal_classes={list(sets['normal_classes'])} and "
            f"anomaly_classes={list(sets['anomaly_classes'])}: each class is one or the other"
        )
    return sets["normal_classes"], sets["anomaly_classes"]


@dataclass(frozen=True)
class SplitConfig:
    """How the MNIST images are split.

    Attributes:
        normal_classes: Classes the model learns as normal.
        anomaly_classes: Classes that count as anomalies in the test set.
        val_fraction: Share of the normal training images held out for validation.
        seed: Seed of the validation split and of the subsets.
        max_train: Cap on normal training images (before the validation split); 0 or None for all.
        max_test: Cap on test images; 0 or None for all.
    """

    normal_classes: tuple[int, ...] = tuple(range(9))
    anomaly_classes: tuple[int, ...] = (9,)
    val_fraction: float = 0.1
    seed: int = 0
    max_train: int | None = None
    max_test: int | None = None

    def __post_init__(self) -> None:
        normal, anomaly = check_classes(self.normal_classes, self.anomaly_classes)
        object.__setattr__(self, "normal_classes", normal)
        object.__setattr__(self, "anomaly_classes", anomaly)
        if not 0.0 < float(self.val_fraction) < 1.0:
            raise ParameterError(f"val_fraction={self.val_fraction!r}: use a share between 0 and 1, e.g. 0.1")
        for name in ("max_train", "max_test"):
            value = getattr(self, name)
            if value in (0, None):
                object.__setattr__(self, name, None)
            elif isinstance(value, bool) or not isinstance(value, int) or value < 2:
                raise ParameterError(f"{name}={value!r}: use a whole number of at least 2, or 0 for all images")


# --------------------------------------------------------------------------- files


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
            "holding the four MNIST files, or leave it unset to download them"
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
                "files there, or leave mnist_dir unset to download them"
            )
        actual = _digest(path, algorithm)
        if actual != expected:
            raise DataError(
                f"{path} is corrupt or truncated: its {algorithm.upper()} is {actual}, expected "
                f"{expected} ({path.stat().st_size:,} bytes). Copy that file again from the official "
                "MNIST distribution, or leave mnist_dir unset to download it"
            )
        found[gz_name] = path
    return found


def _raw_files(root: Path) -> list[Path]:
    return [root / "MNIST" / "raw" / name[:-3] for name, _, _ in MNIST_FILES]


def prepare_mnist(data_dir: str | os.PathLike[str] = DEFAULT_DATA_DIR, mnist_dir: str | None = None) -> Path:
    """Make sure MNIST sits in ``<data_dir>/MNIST/raw`` and return ``data_dir``.

    Args:
        data_dir: torchvision's root folder (resolved against the project root).
        mnist_dir: A local folder of the official files. None or "" reads
            ``$ANOMALYMAP_MNIST_DIR``; if that is unset too, torchvision
            downloads the files.
    """
    root = resolve(data_dir)
    mnist_dir = mnist_dir or os.environ.get(MNIST_ENV) or None
    raw = root / "MNIST" / "raw"
    if mnist_dir:
        for gz_name, source in check_mnist_dir(mnist_dir).items():
            target = raw / source.name
            if not target.exists() or target.stat().st_size != source.stat().st_size:
                with storage.atomic_path(target) as tmp:
                    shutil.copyfile(source, tmp)
            if source.suffix != ".gz":  # torchvision wants the .gz name too when it downloads
                (raw / gz_name).unlink(missing_ok=True)
    if all(p.exists() for p in _raw_files(root)):
        return root  # already extracted: no need to import torchvision (about a second)
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


# --------------------------------------------------------------------------- splits


def make_splits(train_labels: torch.Tensor, test_labels: torch.Tensor, config: SplitConfig) -> dict[str, torch.Tensor]:
    """Choose the images of each split.

    Returns:
        ``{"train", "val"}``: indices into the MNIST training set (normal classes
        only); ``"test"``: indices into the MNIST test set (normal and anomaly
        classes). Each is a sorted int64 tensor.
    """
    gen = torch.Generator().manual_seed(config.seed)
    normal = torch.tensor(config.normal_classes)
    pool = torch.nonzero(torch.isin(train_labels, normal)).flatten()
    pool = pool[torch.randperm(len(pool), generator=gen)]
    if config.max_train is not None:
        pool = pool[: config.max_train]
    n_val = max(1, round(len(pool) * config.val_fraction))
    if n_val >= len(pool):
        raise ParameterError(f"only {len(pool)} normal training images: too few to hold out a validation set")
    val, train = pool[:n_val], pool[n_val:]
    keep = torch.tensor(config.normal_classes + config.anomaly_classes)
    test = torch.nonzero(torch.isin(test_labels, keep)).flatten()
    if config.max_test is not None and config.max_test < len(test):
        test = test[torch.randperm(len(test), generator=gen)[: config.max_test]]
    return {"train": train.sort().values, "val": val.sort().values, "test": test.sort().values}


def write_splits(files: RunFiles, mnist: Mnist, config: SplitConfig, *, data_dir: str, mnist_dir: str | None) -> dict:
    """Make the splits, write them and their manifest into the run folder.

    Returns:
        The manifest (also written to ``splits.json``).
    """
    splits = make_splits(mnist.train_labels, mnist.test_labels, config)
    anomaly = torch.tensor(config.anomaly_classes)
    test_is_anomaly = torch.isin(mnist.test_labels[splits["test"]], anomaly)
    counts = {
        "train": len(splits["train"]),
        "val": len(splits["val"]),
        "test_normal": int((~test_is_anomaly).sum()),
        "test_anomaly": int(test_is_anomaly.sum()),
    }
    per_class = {
        name: torch.bincount(labels[idx], minlength=NUM_CLASSES).tolist()
        for name, labels, idx in (
            ("train", mnist.train_labels, splits["train"]),
            ("val", mnist.train_labels, splits["val"]),
            ("test", mnist.test_labels, splits["test"]),
        )
    }
    manifest = {
        "dataset": "MNIST",
        "config": asdict(config),
        "counts": counts,
        "per_class": per_class,
        "source": {"data_dir": data_dir, "mnist_dir": mnist_dir, "sha256": mnist.checksums},
    }
    with storage.atomic_path(files.splits) as tmp:
        save_file({k: v.contiguous() for k, v in splits.items()}, str(tmp))
    storage.write_json(files.manifest, manifest)
    return manifest


@dataclass(frozen=True)
class Split:
    """The images of one split, ready for the model.

    Attributes:
        images: ``(N, 1, 28, 28)`` float32 in [0, 1].
        labels: ``(N,)`` int64 digit labels.
        indices: ``(N,)`` positions in the MNIST source set.
        is_anomaly: ``(N,)`` bool, True for images of an anomaly class.
    """

    images: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor
    is_anomaly: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """``(N, H, W)`` uint8 to ``(N, 1, H, W)`` float32 in [0, 1]."""
    return images.unsqueeze(1).float().div_(255.0)


def load_splits(
    files: RunFiles, *, data_dir: str = DEFAULT_DATA_DIR, mnist_dir: str | None = None
) -> tuple[dict[str, Split], dict]:
    """Read the splits that notebook 01 wrote.

    Returns:
        ``({"train", "val", "test"}: Split, manifest)``.

    Raises:
        MissingInputError: notebook 01 has not written the splits.
        DataError: the MNIST files differ from the ones the splits were made from.
    """
    files.require(files.splits, "01_data")
    files.require(files.manifest, "01_data")
    manifest = storage.read_json(files.manifest)
    idx = load_file(str(files.splits))
    mnist = load_mnist(data_dir, mnist_dir)
    if manifest["source"]["sha256"] != mnist.checksums:
        raise DataError(
            f"the MNIST files in {resolve(data_dir)} differ from those the splits in {files.root} were "
            "made from: run notebook 01_data again"
        )
    return take(mnist, idx, manifest["config"]["anomaly_classes"]), manifest


def take(mnist: Mnist, indices: dict[str, torch.Tensor], anomaly_classes: Iterable[int]) -> dict[str, Split]:
    """The images of each split chosen by :func:`make_splits`, ready for the model.

    ``"test"`` indexes the MNIST test set; every other split the training set.
    """
    anomaly = torch.tensor(list(anomaly_classes))
    out = {}
    for name, i in indices.items():
        images, labels = (
            (mnist.test_images, mnist.test_labels) if name == "test" else (mnist.train_images, mnist.train_labels)
        )
        out[name] = Split(to_float(images[i]), labels[i], i, torch.isin(labels[i], anomaly))
    return out


def sample_indices(mask: torch.Tensor, cap: int | None, seed: int) -> torch.Tensor:
    """Sorted positions of up to ``cap`` True entries of ``mask``, chosen with ``seed``."""
    where = torch.nonzero(mask).flatten()
    if cap is not None and cap < len(where):
        gen = torch.Generator().manual_seed(seed)
        where = where[torch.randperm(len(where), generator=gen)[:cap]].sort().values
    return where


def describe(manifest: dict) -> str:
    """A short text of a split manifest's counts."""
    c = manifest["counts"]
    cfg = manifest["config"]
    return (
        f"normal classes {cfg['normal_classes']}, anomaly classes {cfg['anomaly_classes']}\n"
        f"train {c['train']:,} | val {c['val']:,} | test normal {c['test_normal']:,} | "
        f"test anomaly {c['test_anomaly']:,}"
    )
