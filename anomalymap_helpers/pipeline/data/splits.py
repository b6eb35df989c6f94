"""Normal and anomaly classes, the seeded splits, their manifest, and sampling.

The model sees only *normal* training images. A seeded share of them is held
out as the validation set: it, never the test set, is what thresholds and any
other choice are fitted on. The test set holds the normal and the anomalous
classes of the test images.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import torch
from safetensors.torch import load_file, save_file

from anomalymap_helpers.errors import DataError, ParameterError
from anomalymap_helpers.runs import storage
from anomalymap_helpers.runs.paths import DEFAULT_DATA_DIR, RunFiles, resolve
from anomalymap_helpers.pipeline.data.mnist import NUM_CLASSES, Mnist, load_mnist

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
