"""What training does around its epochs: resume, keep the best weights, checkpoint, stop early.

:class:`Checkpoints` is the loop's one companion: it starts a run afresh or from
``files.training_state`` (refusing other settings or other images, :func:`check_resume`), keeps
the weights of the lowest validation loss, writes the four files of each epoch's checkpoint
atomically and held against SIGTERM, says when to stop (:func:`stop_reason`), and on an interrupt
names the checkpoint to resume from.
"""

from __future__ import annotations

import copy
import hashlib
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any

import torch

from anomalymap_helpers.errors import ParameterError
from anomalymap_helpers.files import storage
from anomalymap_helpers.files.paths import RunFiles
from anomalymap_helpers.pipeline.models import Model
from anomalymap_helpers.pipeline.training import checkpoint
from anomalymap_helpers.pipeline.training.config import TrainConfig
from anomalymap_helpers.pipeline.training.device import Precision


def best_epoch(history: list[dict[str, float]]) -> int:
    """The (first) epoch of the lowest validation loss in ``history``; 0 for none."""
    return min(history, key=lambda h: (h["val_loss"], h["epoch"]))["epoch"] if history else 0


def stop_reason(history: list[dict[str, float]], epochs: float, patience: int) -> str | None:
    """``"patience"`` once ``patience`` epochs have passed without a lower validation loss,
    ``"epochs"`` once all ``epochs`` ran, else None (go on)."""
    done = history[-1]["epoch"] if history else 0
    if patience and history and done - best_epoch(history) >= patience:
        return "patience"
    return "epochs" if done >= epochs else None


class _Interrupts:
    """SIGTERM as KeyboardInterrupt while training, held back while a checkpoint is written.

    A checkpoint is four files (training state, model, model.json, history); a signal
    that lands between two of them is raised once the last is written, so the files on
    disk always belong to one epoch and the message can name it.
    """

    def __init__(self) -> None:
        self.holding, self.pending = False, None

    def handler(self, signum: int, frame: object) -> None:
        if self.holding:
            self.pending = signum
            return
        raise KeyboardInterrupt(f"signal {signum}")

    @contextmanager
    def held(self) -> Iterator[None]:
        self.holding = True
        try:
            yield
        finally:
            self.holding = False
        if self.pending is not None:
            signum, self.pending = self.pending, None
            raise KeyboardInterrupt(f"signal {signum}")

    @contextmanager
    def installed(self) -> Iterator[None]:
        """Install the handler for SIGTERM (main thread only: signals go there)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = signal.signal(signal.SIGTERM, self.handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, previous)


# Settings that must match a checkpoint to resume from it (epochs may grow; the device may change).
RESUME_KEYS = ("batch_size", "lr", "latent_dim", "seed", "amp", "lr_schedule", "model", "beta", "augment")


def fingerprint(images: torch.Tensor) -> str:
    """SHA-256 of a tensor's values: which images a checkpoint was trained on."""
    return hashlib.sha256(images.detach().cpu().contiguous().numpy().data).hexdigest()


def check_resume(files: RunFiles, config: TrainConfig, data_sha256: str | None = None) -> bool:
    """Whether ``files`` holds a training state that ``config`` can resume; refuse a mix of settings.

    More epochs than were done is allowed (and recorded); anything else that differs is refused.
    ``epochs`` or ``batch_size`` 0 ("by data set", not resolved yet: the runner's check before
    notebook 01 has made the split) stand for the checkpoint's own values.

    Args:
        files: The run folder.
        config: The settings asked for now, with ``model`` and ``augment`` resolved.
        data_sha256: The training images' :func:`fingerprint`, if known.

    Returns:
        False when there is no training state to resume (training starts afresh).

    Raises:
        ParameterError: a setting, the number of epochs or the training images differ;
            the message names each difference.
    """
    if not files.training_state.exists():
        return False
    meta = checkpoint.read_metadata(files.training_state, "training state")
    saved, done = meta.get("train_config", {}), int(meta.get("epoch", 0))
    asked = asdict(config)
    for key in ("epochs", "batch_size"):
        if asked[key] == 0:
            asked[key] = saved.get(key) or 1
    old = {"lr_schedule": "constant", "model": "ae", "beta": 1.0, "augment": []}  # checkpoints from before these settings
    asked["augment"] = list(config.augment)  # as JSON keeps it
    problems = [
        f"{k}: checkpoint {saved.get(k, old.get(k))!r}, now {asked[k]!r}"
        for k in RESUME_KEYS
        if saved.get(k, old.get(k)) != asked[k]
    ]
    if config.lr_schedule != "constant" and saved.get("epochs") not in (None, asked["epochs"]):
        problems.append(
            f"epochs: the {config.lr_schedule} learning-rate schedule was planned over {saved.get('epochs')} epochs, "
            f"now {asked['epochs']} asked (give epochs={saved.get('epochs')})"
        )
    elif asked["epochs"] < done:
        problems.append(f"epochs: the checkpoint has {done} done, now {asked['epochs']} asked (give epochs >= {done})")
    if data_sha256 and saved.get("train_images_sha256") not in (None, data_sha256):
        problems.append("the training images differ from the checkpoint's (notebook 01 made other splits)")
    if problems:
        raise ParameterError(
            f"resume=True cannot continue {files.training_state} with other settings: " + "; ".join(problems)
            + ". Use the checkpoint's settings, or resume=False to train afresh (the old model is then replaced)"
        )
    return True


class Checkpoints:
    """The run's epochs as they are kept: the history, the best weights, the files on disk.

    Args:
        model: The model being trained (its weights are replaced by the checkpoint's on resume).
        optimizer: Its optimizer (likewise).
        config: The resolved settings.
        files: The run folder; None keeps nothing on disk.
        resume: Continue from ``files.training_state`` where it exists.
        train_images: The training images, fingerprinted into the checkpoint.
        main: Whether this process writes (rank 0) and speaks.
    """

    def __init__(self, model: Model, optimizer: torch.optim.Optimizer, config: TrainConfig, files: RunFiles | None,
                 resume: bool, train_images: torch.Tensor, main: bool = True) -> None:
        self.model, self.optimizer, self.config, self.files, self.main = model, optimizer, config, files, main
        self.best = copy.deepcopy(model)  # the weights of the lowest validation loss so far
        self.sha256 = fingerprint(train_images)
        self.start, self.history = 0, []
        if resume and files is not None and check_resume(files, config, self.sha256):
            self.start, self.history, _ = checkpoint.load_training_state(files.training_state, model, optimizer, self.best)
            if main:
                print(f"resuming after epoch {self.start} from {files.training_state} "
                      f"(best so far: epoch {best_epoch(self.history)})")
        self.saved = self.start  # epochs whose checkpoint is on disk
        self.stopped = stop_reason(self.history, config.epochs, config.patience)
        self._interrupts = _Interrupts()

    @contextmanager
    def guarded(self) -> Iterator[None]:
        """Run the epochs: the run folder's writer lock held (:mod:`~anomalymap_helpers.files.lock`), SIGTERM
        as Ctrl-C, and on either, say where the last checkpoint is."""
        from contextlib import nullcontext

        from anomalymap_helpers.files.lock import writing

        try:
            with writing(self.files.root, "training") if self.files is not None and self.main else nullcontext(), \
                    self._interrupts.installed():
                yield
        except KeyboardInterrupt:
            # Counted from what is saved, not from the loop's epoch: a signal can land after an
            # epoch's checkpoint is written and before the next epoch begins.
            where = (f"; the checkpoint of epoch {self.saved} is in {self.files.root}, pass resume=True to continue"
                     if self.files and self.saved else "")
            if self.main:
                print(f"training interrupted after {len(self.history)} complete epoch(s){where}", file=sys.stderr)
            raise

    def kept_note(self) -> str:
        """Where a failed run's last checkpoint is, for its error message ("" if none)."""
        return f"; the checkpoint of epoch {self.saved} is kept in {self.files.root}" if self.files and self.saved else ""

    def epoch_done(self, record: dict[str, float], precision: Precision, device: torch.device) -> str | None:
        """Add an epoch's ``record``, keep its weights if best, write the checkpoint; why to stop, or None."""
        self.history.append(record)
        epoch = int(record["epoch"])
        if best_epoch(self.history) == epoch:
            self.best.load_state_dict(self.model.state_dict())
        self.stopped = stop_reason(self.history, self.config.epochs, self.config.patience)
        if self.files is not None and self.main:  # only rank 0 writes the run's files
            extra = {"train_images_sha256": self.sha256, "resumed_after_epoch": self.start or None}
            with self._interrupts.held():
                save_checkpoint(self.files, self.model, self.optimizer, self.history, self.config, precision, device,
                                extra, self.best, self.stopped)
                self.saved = epoch
        return self.stopped

    def finish(self) -> int:
        """Put the best epoch's weights in the model (said where they are not the last's); return that epoch."""
        b = best_epoch(self.history)
        if self.history and b != self.history[-1]["epoch"]:
            self.model.load_state_dict(self.best.state_dict())  # the lowest validation loss, not the last epoch
            if self.main:
                print(f"kept the weights of epoch {b} (validation loss {self.history[b - 1]['val_loss']:.5f}, the lowest; "
                      f"the last epoch's was {self.history[-1]['val_loss']:.5f})")
        return b


def save_checkpoint(
    files: RunFiles,
    model: Model,
    optimizer: torch.optim.Optimizer,
    history: list[dict[str, float]],
    config: TrainConfig,
    precision: Precision,
    device: torch.device,
    extra: dict[str, Any] | None = None,
    best: Model | None = None,
    stopped: str | None = None,
) -> None:
    """Write the training state, the model, its JSON config and the loss history (each atomically).

    The training state holds the last epoch's weights (to resume) and ``best``'s; the model file
    holds ``best``'s, the weights of the lowest validation loss (the last epoch's where ``best``
    is None). ``extra`` (e.g. the training images' fingerprint) is recorded beside the config.
    """
    epoch, b = history[-1]["epoch"], best_epoch(history)
    best = model if best is None else best
    cfg = {**asdict(config), **{k: v for k, v in (extra or {}).items() if v is not None}}
    checkpoint.save_training_state(
        files.training_state, model, optimizer, epoch=epoch, history=history, train_config=cfg, best=best
    )
    checkpoint.save_model(files.model, best, epoch=b)
    storage.write_json(
        files.model_config,
        {
            "model": asdict(model.config),
            "train": cfg,
            "device": str(device),
            "precision": precision.name,
            "epochs_completed": epoch,
            "final_train_loss": history[-1]["train_loss"],
            "final_val_loss": history[-1]["val_loss"],
            "best_epoch": b,
            "best_val_loss": history[b - 1]["val_loss"],
            "stopped": {None: "interrupted or still training", "epochs": f"all {config.epochs} epochs ran",
                        "patience": f"no lower validation loss in {config.patience} epochs after epoch {b}"}[stopped],
        },
    )
    keys = ["epoch", "train_loss", "val_loss", "seconds", "images_per_s"]
    storage.write_csv(files.history, [*keys, "best"], ([*(h[k] for k in keys), int(h["epoch"] == b)] for h in history))
