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
from anomalymap_helpers.files import storage
from anomalymap_helpers.files.paths import DEFAULT_DATA_DIR, RunFiles, resolve
from anomalymap_helpers.pipeline.data import idx
from anomalymap_helpers.pipeline.data.idx import NUM_CLASSES
from anomalymap_helpers.pipeline.data.images import ImageData

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
            raise ParameterError(f"{name}={items}: unknown class(es) {unknown}; the classes are 0 to {num_classes - 1}")
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
    """How a data set's images are split.

    Attributes:
        normal_classes: Classes the model learns as normal.
        anomaly_classes: Classes that count as anomalies in the test set.
        val_fraction: Share of the normal training images held out for validation.
        seed: Seed of the validation split and of the subsets.
        max_train: Cap on normal training images (before the validation split); 0 or None for all.
        max_test: Cap on test images; 0 or None for all.
        num_classes: How many classes the data set has (10 for MNIST and Fashion-MNIST).
    """

    normal_classes: tuple[int, ...] = tuple(range(9))
    anomaly_classes: tuple[int, ...] = (9,)
    val_fraction: float = 0.1
    seed: int = 0
    max_train: int | None = None
    max_test: int | None = None
    num_classes: int = NUM_CLASSES

    def __post_init__(self) -> None:
        normal, anomaly = check_classes(self.normal_classes, self.anomaly_classes, self.num_classes)
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
        ``{"train", "val"}``: indices into the training set (normal classes
        only); ``"test"``: indices into the test set (normal and anomaly
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


def folder_split_config(class_names: tuple[str, ...], **settings: object) -> SplitConfig:
    """The split of a folder data set: ``good`` (class 0) is normal, every defect type an anomaly."""
    return SplitConfig((0,), tuple(range(1, len(class_names))), num_classes=len(class_names), **settings)


def write_splits(files: RunFiles, images: ImageData, config: SplitConfig, *, source: dict) -> dict:
    """Make the splits, write them and their manifest into the run folder.

    A folder data set's resized images (and masks) are written into the run folder
    too (``images.safetensors``), so the later notebooks read them without decoding
    the folder again.

    Args:
        files: The run folder.
        images: The data set.
        config: How to split it.
        source: Where the images came from (parameters), recorded in the manifest.

    Returns:
        The manifest (also written to ``splits.json``).
    """
    splits = make_splits(images.train_labels, images.test_labels, config)
    anomaly = torch.tensor(config.anomaly_classes)
    test_is_anomaly = torch.isin(images.test_labels[splits["test"]], anomaly)
    counts = {
        "train": len(splits["train"]),
        "val": len(splits["val"]),
        "test_normal": int((~test_is_anomaly).sum()),
        "test_anomaly": int(test_is_anomaly.sum()),
    }
    n_classes = len(images.class_names)
    per_class = {
        name: torch.bincount(labels[idx], minlength=n_classes).tolist()
        for name, labels, idx in (
            ("train", images.train_labels, splits["train"]),
            ("val", images.train_labels, splits["val"]),
            ("test", images.test_labels, splits["test"]),
        )
    }
    _, channels, height, width = images.train_images.shape
    manifest = {
        "dataset": images.name,
        "class_names": list(images.class_names),
        "image_size": height,
        "channels": channels,
        "masks": images.test_masks is not None,
        "config": asdict(config),
        "counts": counts,
        "per_class": per_class,
        "source": {**source, "sha256": images.checksums},
        "skipped": list(images.skipped),
    }
    if images.name == "folder":
        tensors = {
            "train_images": images.train_images,
            "test_images": images.test_images,
            "test_labels": images.test_labels,
        }
        if images.test_masks is not None:
            tensors["test_masks"] = images.test_masks.to(torch.uint8)
        with storage.atomic_path(files.images) as tmp:
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
        storage.write_json(files.image_names, list(images.test_names))
    with storage.atomic_path(files.splits) as tmp:
        save_file({k: v.contiguous() for k, v in splits.items()}, str(tmp))
    storage.write_json(files.manifest, manifest)
    return manifest


@dataclass(frozen=True)
class Split:
    """The images of one split, ready for the model.

    Attributes:
        images: ``(N, C, H, W)`` float32 in [0, 1].
        labels: ``(N,)`` int64 class labels.
        indices: ``(N,)`` positions in the source set (training or test images).
        is_anomaly: ``(N,)`` bool, True for images of an anomaly class.
        class_names: The name of each label.
        masks: ``(N, 1, H, W)`` bool defect masks, or None where there are none.
    """

    images: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor
    is_anomaly: torch.Tensor
    class_names: tuple[str, ...] = tuple(str(c) for c in range(NUM_CLASSES))
    masks: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def names(self, positions: Iterable[int] | None = None) -> list[str]:
        """The class name of each image (or of those at ``positions``)."""
        labels = self.labels.tolist() if positions is None else [int(self.labels[int(i)]) for i in positions]
        return [self.class_names[c] for c in labels]


def to_float(images: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W)`` (or ``(N, H, W)``) uint8 to ``(N, C, H, W)`` float32 in [0, 1]."""
    return (images.unsqueeze(1) if images.dim() == 3 else images).float().div_(255.0)


def load_images(
    files: RunFiles, manifest: dict, *, data_dir: str = DEFAULT_DATA_DIR, mnist_dir: str | None = None
) -> ImageData:
    """The data set a run's splits were made from, checked to be the same images.

    MNIST and Fashion-MNIST are read from their unpacked files under ``data_dir``
    (``mnist_dir`` may name MNIST's source folder); a folder data set from the copy
    notebook 01 wrote into the run folder.

    Raises:
        DataError: the files differ from those the splits were made from.
    """
    name = manifest.get("dataset", "mnist").lower()
    if name == "folder":
        files.require(files.images, "01_data")
        tensors = load_file(str(files.images))
        masks = tensors.get("test_masks")
        names = storage.read_json(files.image_names) if files.image_names.exists() else []
        return ImageData(
            "folder",
            tensors["train_images"],
            torch.zeros(len(tensors["train_images"]), dtype=torch.int64),
            tensors["test_images"],
            tensors["test_labels"],
            tuple(manifest["class_names"]),
            manifest["source"]["sha256"],
            masks.bool() if masks is not None else None,
            tuple(names),
        )
    spec = idx.SPECS[name]
    folder = mnist_dir if spec is idx.MNIST else manifest["source"].get(spec.parameter)
    images = idx.load(spec, data_dir, folder)
    if manifest["source"]["sha256"] != images.checksums:
        raise DataError(
            f"the {spec.name} files in {resolve(data_dir)} differ from those the splits in {files.root} were "
            "made from: run notebook 01_data again"
        )
    return images


def load_splits(
    files: RunFiles, *, data_dir: str = DEFAULT_DATA_DIR, mnist_dir: str | None = None
) -> tuple[dict[str, Split], dict]:
    """Read the splits that notebook 01 wrote.

    Returns:
        ``({"train", "val", "test"}: Split, manifest)``.

    Raises:
        MissingInputError: notebook 01 has not written the splits.
        DataError: the source files differ from the ones the splits were made from.
    """
    files.require(files.splits, "01_data")
    files.require(files.manifest, "01_data")
    manifest = storage.read_json(files.manifest)
    indices = load_file(str(files.splits))
    images = load_images(files, manifest, data_dir=data_dir, mnist_dir=mnist_dir)
    return take(images, indices, manifest["config"]["anomaly_classes"]), manifest


def take(images: ImageData, indices: dict[str, torch.Tensor], anomaly_classes: Iterable[int]) -> dict[str, Split]:
    """The images of each split chosen by :func:`make_splits`, ready for the model.

    ``"test"`` indexes the test set (and brings its masks); every other split the training set.
    """
    anomaly = torch.tensor(list(anomaly_classes))
    out = {}
    for name, i in indices.items():
        test = name == "test"
        x, labels = (images.test_images, images.test_labels) if test else (images.train_images, images.train_labels)
        masks = images.test_masks[i] if test and images.test_masks is not None else None
        out[name] = Split(to_float(x[i]), labels[i], i, torch.isin(labels[i], anomaly), images.class_names, masks)
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
    names = manifest.get("class_names")

    def named(classes: list[int]) -> str:
        return f"{classes}" if names is None or names[0] == "digit 0" else ", ".join(names[k] for k in classes)

    return (
        f"{manifest.get('dataset', 'mnist')}: normal classes {named(cfg['normal_classes'])}, "
        f"anomaly classes {named(cfg['anomaly_classes'])}\n"
        f"train {c['train']:,} | val {c['val']:,} | test normal {c['test_normal']:,} | "
        f"test anomaly {c['test_anomaly']:,}"
    )
