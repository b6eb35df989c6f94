"""How to train: :class:`TrainConfig`, the one resolution of its "by data set" values, the schedule."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from anomalymap_helpers.errors import ParameterError
from anomalymap_helpers.pipeline.models import augment, check_model, resolve_model


def check_positive(name: str, value: Any, kind: type = int) -> None:
    """Raise a ParameterError unless ``value`` is a positive ``kind``."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
    if kind is int:
        ok = ok and float(value).is_integer()
    if not ok or (isinstance(value, float) and not math.isfinite(value)):
        what = "a whole number above 0" if kind is int else "a number above 0"
        raise ParameterError(f"{name}={value!r}: use {what}")


def _check_count(name: str, value: Any) -> None:
    """A whole number of 0 ("by data set") or more."""
    if value != 0:
        check_positive(name, value)


AUTO_IMAGES = 20_000  # images seen at most, where epochs=0 on a small training set (early stopping may end it sooner)
AUTO_BATCH = 64  # the largest batch of batch_size=0
AUTO_EPOCHS = 2  # the fewest epochs of epochs=0
RESTORE_IMAGES = 40_000  # images seen at most by the restore model, where epochs=0 (it learns from damage drawn anew)
RESTORE_REPEATS = 5  # times the restore model sees each training image an epoch, each time with new damage


def schedule_for(n_train: int, epochs: int = 0, batch_size: int = 0, model: str = "ae") -> tuple[int, int]:
    """Resolve ``epochs=0`` and ``batch_size=0`` ("by data set") for ``n_train`` training images.

    ``batch_size=0``: the power of two nearest below ``n_train / 16``, between 16 and
    ``AUTO_BATCH`` (64 from 1,024 images up), so an epoch takes at least about 16 steps.
    ``epochs=0``: ``AUTO_EPOCHS`` (2 on MNIST and Fashion-MNIST), or more on a small set,
    until the model has seen ``AUTO_IMAGES`` images (e.g. 75 epochs of a 270-image folder);
    ``RESTORE_IMAGES`` for ``model="restore"``, whose epoch shows each image ``RESTORE_REPEATS``
    times with new damage (45 epochs of a 180-image folder), so that its noisy validation loss is
    measured, and ``patience`` counted, every 900 images rather than every 180.
    Values other than 0 are kept.

    On MNIST 2 epochs of 64 reach a lower validation MSE than the original 5 epochs of 256
    in less than half the time (``python benchmarks/schedule_curve.py``, chosen on
    the validation MSE and the time; docs/benchmarks.md). On small folders, with early stopping,
    20,000 images at most reached a lower validation MSE than 10,000 (lower where 10,000 had
    cut training short, the same elsewhere) for a third more time, and batches of 32 a higher
    one (``python benchmarks/small_schedule.py`` on development folders; docs/benchmarks.md).
    """
    if batch_size == 0:
        batch_size = min(AUTO_BATCH, max(16, 2 ** int(math.log2(max(n_train // 16, 1)))))
    if epochs == 0:  # the model kind's objective says how many images it sees at most, and how often each an epoch
        from anomalymap_helpers.pipeline.training.objectives import OBJECTIVES

        objective = OBJECTIVES[model]
        epochs = max(AUTO_EPOCHS, math.ceil(objective.images_seen / max(objective.repeats * n_train, 1)))
    return epochs, batch_size


LR_SCHEDULES = ("constant", "cosine")
WARMUP = 0.05  # share of the steps spent warming up, in the cosine schedule


@dataclass(frozen=True)
class TrainConfig:
    """How to train; its defaults are notebook 02's parameters' (``anomalymap_helpers.parameters``).

    Three values may stand for "by data set" until :meth:`resolved` sets them for a training set:
    ``epochs=0`` and ``batch_size=0`` (:func:`schedule_for`), ``model="auto"``
    (:func:`~anomalymap_helpers.pipeline.models.resolve_model`) and an ``augment`` word
    (``"auto"``, ``"off"`` or ``"flip,shift"``: :func:`~anomalymap_helpers.pipeline.models.augment.for_dataset`).
    :func:`~anomalymap_helpers.pipeline.training.train` resolves them for its training images.

    Attributes:
        epochs: Passes over the normal training images (0: by data set).
        batch_size: Images per optimizer step (0: by data set).
        lr: Adam learning rate.
        latent_dim: Size of the autoencoder's bottleneck.
        seed: Seed of the initial weights and of the shuffling.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        amp: Mixed precision where the device supports it (see ``device.py``).
        lr_schedule: ``"constant"`` (``lr`` throughout) or ``"cosine"`` (a linear
            warm-up over the first ``WARMUP`` of the steps to ``lr``, then a cosine
            decay to 0 at the last step; see :func:`learning_rate`).
        model: ``"ae"``, ``"vae"``, ``"restore"`` or ``"auto"`` (by data set): the model kind, whose
            objective is its training loss (:mod:`~anomalymap_helpers.pipeline.training.objectives`).
        beta: The VAE's weight of the KL term; unused by the others.
        patience: Stop once the validation loss has not improved for this many epochs (0: run
            all ``epochs``). Either way the weights of the epoch with the lowest validation
            loss are the ones returned and saved as the model.
        augment: The augmentations applied to each training batch (see
            :mod:`~anomalymap_helpers.pipeline.models.augment`); () or ``"off"`` for none.
    """

    epochs: int = 0
    batch_size: int = 0
    lr: float = 1e-3
    latent_dim: int = 64
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    lr_schedule: str = "constant"
    model: str = "auto"
    beta: float = 1.0
    patience: int = 10
    augment: tuple[str, ...] | str = "off"

    def __post_init__(self) -> None:
        _check_count("epochs", self.epochs)
        _check_count("batch_size", self.batch_size)
        check_positive("lr", self.lr, float)
        check_positive("latent_dim", self.latent_dim)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ParameterError(f"seed={self.seed!r}: use a whole number of 0 or more")
        if not isinstance(self.amp, bool):
            raise ParameterError(f"amp={self.amp!r}: use True or False")
        if self.model != "auto":
            check_model(self.model)
        check_positive("beta", self.beta, float)
        if self.lr_schedule not in LR_SCHEDULES:
            raise ParameterError(f"lr_schedule={self.lr_schedule!r}: use one of {list(LR_SCHEDULES)}")
        if not isinstance(self.patience, int) or isinstance(self.patience, bool) or self.patience < 0:
            raise ParameterError(f"patience={self.patience!r}: use a whole number of 0 (no early stop) or more")
        if isinstance(self.augment, str):
            augment.for_dataset(self.augment, "folder")  # refuses a word it does not know
        else:
            object.__setattr__(self, "augment", augment.check(self.augment))

    @classmethod
    def from_parameters(cls, values: Mapping[str, Any]) -> TrainConfig:
        """The config of notebook 02's parameters ``values`` (those it has; the rest are the defaults)."""
        return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})

    def resolved(self, n_train: int | None, dataset: str = "mnist") -> TrainConfig:
        """This config with its "by data set" values set for ``n_train`` images of ``dataset``: the one
        place they are resolved (notebook 02, :func:`~anomalymap_helpers.pipeline.training.train`, the
        runner's resume check and the parameters' validation). With ``n_train`` None (the split is not
        made yet) ``epochs`` and ``batch_size`` stay as they are."""
        model = resolve_model(self.model, dataset)
        aug = augment.for_dataset(self.augment, dataset) if isinstance(self.augment, str) else self.augment
        epochs, batch_size = (self.epochs, self.batch_size) if n_train is None else schedule_for(
            n_train, self.epochs, self.batch_size, model)
        return replace(self, epochs=epochs, batch_size=batch_size, model=model, augment=aug)


def learning_rate(config: TrainConfig, step: int, total: int) -> float:
    """The learning rate of optimizer step ``step`` (0-based) of ``total``, by ``config.lr_schedule``."""
    if config.lr_schedule == "constant":
        return config.lr
    warm = max(1, round(WARMUP * total))
    if step < warm:
        return config.lr * (step + 1) / warm
    return config.lr * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))
