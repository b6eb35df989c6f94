"""The training loop: seeded, mixed precision where it helps, checkpointed every epoch.

The data are held as one tensor on the training device and batches are taken
by indexing it with a seeded permutation, so no DataLoader collates samples
one by one. Each epoch ends with a validation loss and an atomic checkpoint,
so an interrupted run keeps its last completed epoch and can resume from it.
"""

from __future__ import annotations

import copy
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from anomalymap_helpers.errors import ParameterError, TrainingError
from anomalymap_helpers.files import storage
from anomalymap_helpers.files.paths import RunFiles
from anomalymap_helpers.pipeline import augment, checkpoint, damage, distributed
from anomalymap_helpers.pipeline.device import (
    Precision,
    precision_note,
    resolve_device,
    resolve_precision,
    retain_freed_memory,
)
from anomalymap_helpers.pipeline.model import (
    MODELS,
    ConvAutoencoder,
    ModelConfig,
    build_model,
    check_model,
    kl_divergence,
)
from anomalymap_helpers.pipeline.progress import Clock, headless, progress_bar


def check_positive(name: str, value: Any, kind: type = int) -> None:
    """Raise a ParameterError unless ``value`` is a positive ``kind``."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
    if kind is int:
        ok = ok and float(value).is_integer()
    if not ok or (isinstance(value, float) and not math.isfinite(value)):
        what = "a whole number above 0" if kind is int else "a number above 0"
        raise ParameterError(f"{name}={value!r}: use {what}")


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
    if epochs == 0:
        seen, per_epoch = (RESTORE_IMAGES, RESTORE_REPEATS * n_train) if model == "restore" else (AUTO_IMAGES, n_train)
        epochs = max(AUTO_EPOCHS, math.ceil(seen / max(per_epoch, 1)))
    return epochs, batch_size


@dataclass(frozen=True)
class TrainConfig:
    """How to train.

    Attributes:
        epochs: Passes over the normal training images.
        batch_size: Images per optimizer step.
        lr: Adam learning rate.
        latent_dim: Size of the autoencoder's bottleneck.
        seed: Seed of the initial weights and of the shuffling.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        amp: Mixed precision where the device supports it (see ``device.py``).
        lr_schedule: ``"constant"`` (``lr`` throughout) or ``"cosine"`` (a linear
            warm-up over the first ``WARMUP`` of the steps to ``lr``, then a cosine
            decay to 0 at the last step; see :func:`learning_rate`).
        model: ``"ae"`` (:class:`~anomalymap_helpers.pipeline.model.ConvAutoencoder`) or
            ``"vae"`` (:class:`~anomalymap_helpers.pipeline.model.ConvVAE`).
        beta: The VAE's weight of the KL term (see :func:`training_step`); unused by ``"ae"``.
        patience: Stop once the validation loss has not improved for this many epochs (0: run
            all ``epochs``). Either way the weights of the epoch with the lowest validation
            loss are the ones returned and saved as the model.
        augment: The augmentations applied to each training batch (see
            :mod:`~anomalymap_helpers.pipeline.augment`); () for none.
    """

    epochs: int = 5
    batch_size: int = 256
    lr: float = 1e-3
    latent_dim: int = 64
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    lr_schedule: str = "constant"
    model: str = "ae"
    beta: float = 1.0
    patience: int = 0
    augment: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_positive("epochs", self.epochs)
        check_positive("batch_size", self.batch_size)
        check_positive("lr", self.lr, float)
        check_positive("latent_dim", self.latent_dim)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ParameterError(f"seed={self.seed!r}: use a whole number of 0 or more")
        if not isinstance(self.amp, bool):
            raise ParameterError(f"amp={self.amp!r}: use True or False")
        check_model(self.model)
        check_positive("beta", self.beta, float)
        if self.lr_schedule not in LR_SCHEDULES:
            raise ParameterError(f"lr_schedule={self.lr_schedule!r}: use one of {list(LR_SCHEDULES)}")
        if not isinstance(self.patience, int) or isinstance(self.patience, bool) or self.patience < 0:
            raise ParameterError(f"patience={self.patience!r}: use a whole number of 0 (no early stop) or more")
        object.__setattr__(self, "augment", augment.check(self.augment))


LR_SCHEDULES = ("constant", "cosine")
WARMUP = 0.05  # share of the steps spent warming up, in the cosine schedule


def learning_rate(config: TrainConfig, step: int, total: int) -> float:
    """The learning rate of optimizer step ``step`` (0-based) of ``total``, by ``config.lr_schedule``."""
    if config.lr_schedule == "constant":
        return config.lr
    warm = max(1, round(WARMUP * total))
    if step < warm:
        return config.lr * (step + 1) / warm
    return config.lr * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        model: The trained model, in eval mode, on the training device.
        history: One dict per epoch: ``epoch, train_loss, val_loss, seconds, images_per_s``.
        device: The device trained on.
        precision: The precision trained with.
        best_epoch: The epoch of the lowest validation loss, whose weights ``model`` holds.
        stopped: Why training ended: ``"epochs"`` (all of them ran) or ``"patience"`` (the
            validation loss had not improved for ``patience`` epochs).
    """

    model: ConvAutoencoder
    history: list[dict[str, float]] = field(default_factory=list)
    device: torch.device = torch.device("cpu")
    precision: Precision = Precision("fp32", "cpu")
    best_epoch: int = 0
    stopped: str = "epochs"


def best_epoch(history: list[dict[str, float]]) -> int:
    """The (first) epoch of the lowest validation loss in ``history``; 0 for none."""
    return min(history, key=lambda h: (h["val_loss"], h["epoch"]))["epoch"] if history else 0


@dataclass(frozen=True)
class Diagnosis:
    """What notebook 02's check says of a training history (:func:`diagnose`).

    Attributes:
        ok: Whether the model beats the mean image on the validation normals at its best epoch.
        case: ``"learned"``, ``"memorised"`` (the validation loss rose after its lowest while the
            training loss fell), ``"still learning"`` (both still falling at the last epoch) or
            ``"not learning"`` (neither: no better than the mean image, nothing to wait for).
        message: What to tell the user, with what helps.
    """

    ok: bool
    case: str
    message: str


RISE = 0.02  # a validation loss this much above its lowest counts as rising


def diagnose(history: list[dict[str, float]], baseline: float, n_train: int | None = None,
             model: str = "ae") -> Diagnosis:
    """Compare the best epoch's validation loss with ``baseline`` (the mean image's MSE on the
    validation normals) and say why training ended where it did."""
    if not history:
        return Diagnosis(False, "not learning", "no epoch was trained: give epochs >= 1")
    b = best_epoch(history)
    best, last = history[b - 1], history[-1]
    ok = best["val_loss"] < baseline
    loss, mine, lazy = (("validation loss (MSE + focal)", "restore model", "mean image and constant guess")
                        if model == "restore" else ("validation MSE", "autoencoder", "mean image"))
    head = f"{loss} at the best epoch ({b} of {last['epoch']}): {mine} {best['val_loss']:.5f} vs {lazy} {baseline:.5f}"
    images = f"its {n_train:,} training images" if n_train else "its training images"
    # The restore model sees new damage every epoch, so its losses jump from epoch to epoch and it cannot
    # memorise its inputs as an autoencoder does: the memorising case is judged for the others only.
    rising = last["val_loss"] > best["val_loss"] * (1 + RISE) and last["train_loss"] < best["train_loss"]
    if b < last["epoch"] and rising and model != "restore":
        case = "memorised"
        why = (f"the model memorised {images}: the validation loss was lowest at epoch {b} and rose to "
               f"{last['val_loss']:.5f} by epoch {last['epoch']} while the training loss fell from "
               f"{best['train_loss']:.5f} to {last['train_loss']:.5f}, so training longer makes it worse; the weights "
               f"of epoch {b} are kept. What helps: more normal images, augmentation (augment='auto' on folders), "
               "a smaller latent_dim")
    elif len(history) == 1:
        case = "still learning"
        why = "one epoch is too few to tell whether it is still learning: train longer (a larger epochs)"
    elif b == last["epoch"] and last["train_loss"] < history[-2]["train_loss"]:
        case = "still learning"
        why = (f"both losses were still falling at the last epoch ({last['epoch']}): the model has not finished "
               "learning; train longer (a larger epochs)")
    elif ok:
        case, why = "learned", f"it beats the {lazy}"
    else:
        case = "not learning"
        why = ("neither loss is falling, and the model does no better than the mean image: try another lr "
               "(lower if the loss jumps, higher if it creeps), or check that the training images are normal ones; "
               "on a textured surface, which an autoencoder often rebuilds no better than its mean, use "
               "model='restore' (the folders' default), which learns what a defect looks like instead")
    if ok and case == "learned":
        return Diagnosis(True, case, f"{head}: {why}")
    prefix = "" if ok else f"The {mine} does no better than the {lazy}. "
    return Diagnosis(ok, case, f"{head}. {prefix}{why[0].upper()}{why[1:]}")


def stop_reason(history: list[dict[str, float]], epochs: int, patience: int) -> str | None:
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


def to_device(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Move ``(N, C, H, W)`` images to ``device`` in the channels_last layout."""
    return images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)


def new_optimizer(model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    """Adam over ``model``'s parameters, fused: one kernel updates them all."""
    return torch.optim.Adam(model.parameters(), lr=lr, fused=True)


def training_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    batch: torch.Tensor,
    precision: Precision,
    global_batch: int | None = None,
    counts: bool = True,
    noise: torch.Tensor | None = None,
    beta: float = 1.0,
    damaged: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> float:
    """One optimizer step on ``batch``; return its loss. A non-finite loss takes no step.

    The loss is the mean squared error per pixel. For a VAE (``noise`` given: standard
    normal draws, one row per image) it is the negative ELBO per pixel with the KL term
    weighted by ``beta``: ``(sum of squared errors + beta * KL) / pixels``, averaged over the
    images (a Gaussian decoder of variance 1/2, so ``beta = 1`` is the ELBO up to a constant).

    Under DistributedDataParallel ``batch`` is this process's share of a global batch of
    ``global_batch`` images: the loss is scaled so that DDP's average of the gradients over
    the processes is the gradient of the mean over the whole global batch (shares of
    unequal size included), and the value returned is the global batch's mean loss.
    ``counts=False`` marks a stand-in share (a final batch smaller than the number of
    processes leaves some without an image): it takes part in the gradient exchange
    with a weight of 0.

    For the restore model ``damaged`` is ``(damaged images, masks)`` made from ``batch`` by
    :func:`~anomalymap_helpers.pipeline.damage.damage`: the loss is the MSE of its reconstruction
    of the damaged images against ``batch`` plus the focal loss of its segmentation against the
    masks (:func:`restore_loss`).
    """
    if damaged is not None:
        with precision.autocast():
            recon, logits = model(damaged[0], True)
        squared, focal = restore_loss(recon, logits, batch, damaged[1], reduction="sum")
        squared = squared + batch.shape[1] * focal  # per pixel and channel, as the MSE
        return _step(optimizer, scaler, squared, len(batch), batch[0].numel(), global_batch, counts)
    with precision.autocast():
        out = model(batch) if noise is None else model(batch, noise)
    kl = None
    if noise is not None:
        out, mu, logvar = out
        kl = kl_divergence(mu, logvar).sum()
    if distributed.world().size == 1:
        loss = F.mse_loss(out.float(), batch)
        if kl is not None:
            loss = loss + beta * kl / batch.numel()
        return _optimizer_step(optimizer, scaler, loss, loss.item())
    squared = F.mse_loss(out.float(), batch, reduction="sum")
    if kl is not None:
        squared = squared + beta * kl
    return _step(optimizer, scaler, squared, len(batch), batch[0].numel(), global_batch, counts)


def _optimizer_step(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, loss: torch.Tensor,
                    value: float) -> float:
    """Step on ``loss`` unless its ``value`` is NaN or infinite; return ``value``."""
    if math.isfinite(value):
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    return value


def _step(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, total: torch.Tensor, n: int,
          numel: int, global_batch: int | None, counts: bool) -> float:
    """A step on the summed loss ``total`` of ``n`` images of ``numel`` values each (see :func:`training_step`):
    the one place the loss is scaled for several processes, so that DDP's average of their gradients is
    the gradient of the mean over the global batch, and a stand-in share (``counts=False``) weighs 0."""
    size = distributed.world().size
    elements = (global_batch or n) * numel
    total = total * (1.0 if counts else 0.0)
    loss = total * (size / elements)
    value = (distributed.all_sum(total.detach()).item() if size > 1 else total.item()) / elements
    return _optimizer_step(optimizer, scaler, loss, value)


FOCAL_GAMMA = 2.0  # the segmentation loss's focus on hard pixels (DRAEM's focal loss)


def restore_loss(recon: torch.Tensor, logits: torch.Tensor, clean: torch.Tensor, masks: torch.Tensor,
                 reduction: str = "mean") -> tuple[torch.Tensor, torch.Tensor]:
    """The restore model's two losses: squared error of ``recon`` against ``clean`` and the focal loss
    (Lin et al. 2017, gamma ``FOCAL_GAMMA``, no class weight) of ``logits`` against ``masks``, in fp32."""
    from torchvision.ops import sigmoid_focal_loss

    squared = F.mse_loss(recon.float(), clean, reduction=reduction)
    focal = sigmoid_focal_loss(logits.float(), masks.float(), alpha=-1, gamma=FOCAL_GAMMA, reduction=reduction)
    return squared, focal


# Validation of the restore model: the validation normals, each damaged this many times by one fixed draw.
RESTORE_VAL_COPIES = 4
RESTORE_VAL_SEED = 20_211_011


def restore_validation(train_images: torch.Tensor, val_images: torch.Tensor, copies: int = RESTORE_VAL_COPIES
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(clean, damaged, masks)``: the fixed damaged validation set of the restore model (the same for
    every seed and epoch, so its losses compare), damaged with patches of ``train_images``."""
    clean = val_images.repeat(copies, 1, 1, 1)
    damaged, masks = damage.damage(clean, train_images, torch.Generator().manual_seed(RESTORE_VAL_SEED))
    return clean, damaged, masks


@torch.inference_mode()
def restore_val_loss(model: torch.nn.Module, clean: torch.Tensor, damaged: torch.Tensor, masks: torch.Tensor,
                     precision: Precision, batch_size: int = 256) -> float:
    """The restore model's validation loss: MSE plus focal loss per pixel over the fixed damaged set."""
    model.eval()
    w = distributed.world()
    total = torch.zeros((), dtype=torch.float64, device=clean.device)
    idx = torch.arange(len(clean))[w.rank :: w.size]
    for i in range(0, len(idx), batch_size):
        j = idx[i : i + batch_size].to(clean.device)
        with precision.autocast():
            recon, logits = model(damaged[j], True)
        squared, focal = restore_loss(recon, logits, clean[j], masks[j], reduction="sum")
        total += (squared + clean.shape[1] * focal).double()
    return float(distributed.all_sum(total)) / clean[0].numel() / max(1, len(clean))


def baseline_loss(model: str, train_images: torch.Tensor, val_images: torch.Tensor) -> float:
    """The laziest model's validation loss, which a trained one must beat (notebook 02's check).

    For ``"ae"`` and ``"vae"``: the MSE of the mean training image on ``val_images``. For
    ``"restore"``: the mean image as the reconstruction of every damaged validation image, plus the
    focal loss of one constant guess, the share of damaged pixels, everywhere.
    """
    mean_image = train_images.mean(0, keepdim=True)
    if model != "restore":
        return float(((val_images - mean_image) ** 2).mean())
    clean, _, masks = restore_validation(train_images, val_images)
    p = masks.mean().clamp(1e-4, 1 - 1e-4)
    logits = torch.full_like(masks, float(torch.log(p / (1 - p))))
    squared, focal = restore_loss(mean_image.expand_as(clean), logits, clean, masks)
    return float(squared + focal)


@torch.inference_mode()
def mean_loss(model: ConvAutoencoder, images: torch.Tensor, precision: Precision, batch_size: int = 512) -> float:
    """Mean squared reconstruction error over ``images`` ``(N, C, H, W)`` on the model's device.

    With several training processes each scores its share and the sums are added up.
    """
    model.eval()
    w = distributed.world()
    mine = images[w.rank :: w.size]
    total = torch.zeros((), dtype=torch.float64, device=images.device)
    for i in range(0, len(mine), batch_size):
        batch = mine[i : i + batch_size]
        with precision.autocast():
            out = model(batch)
        total += F.mse_loss(out.float(), batch, reduction="sum").double()
    return float(distributed.all_sum(total)) / images[0].numel() / max(1, len(images))


# Settings that must match a checkpoint to resume from it (epochs may grow; the device may change).
RESUME_KEYS = ("batch_size", "lr", "latent_dim", "seed", "amp", "lr_schedule", "model", "beta", "augment")


def fingerprint(images: torch.Tensor) -> str:
    """SHA-256 of a tensor's values: which images a checkpoint was trained on."""
    import hashlib

    return hashlib.sha256(images.detach().cpu().contiguous().numpy().data).hexdigest()


def check_resume(files: RunFiles, config: TrainConfig, data_sha256: str | None = None) -> bool:
    """Whether ``files`` holds a training state that ``config`` can resume; refuse a mix of settings.

    More epochs than were done is allowed (and recorded); anything else that differs is refused.

    Args:
        files: The run folder.
        config: The settings asked for now.
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
    old = {"lr_schedule": "constant", "model": "ae", "beta": 1.0, "augment": []}  # checkpoints from before these settings
    asked["augment"] = list(config.augment)  # as JSON keeps it
    problems = [
        f"{k}: checkpoint {saved.get(k, old.get(k))!r}, now {asked[k]!r}"
        for k in RESUME_KEYS
        if saved.get(k, old.get(k)) != asked[k]
    ]
    if config.lr_schedule != "constant" and saved.get("epochs") not in (None, config.epochs):
        problems.append(
            f"epochs: the {config.lr_schedule} learning-rate schedule was planned over {saved.get('epochs')} epochs, "
            f"now {config.epochs} asked (give epochs={saved.get('epochs')})"
        )
    elif config.epochs < done:
        problems.append(f"epochs: the checkpoint has {done} done, now {config.epochs} asked (give epochs >= {done})")
    if data_sha256 and saved.get("train_images_sha256") not in (None, data_sha256):
        problems.append("the training images differ from the checkpoint's (notebook 01 made other splits)")
    if problems:
        raise ParameterError(
            f"resume=True cannot continue {files.training_state} with other settings: " + "; ".join(problems)
            + ". Use the checkpoint's settings, or resume=False to train afresh (the old model is then replaced)"
        )
    return True



def train(
    train_images: torch.Tensor,
    val_images: torch.Tensor,
    config: TrainConfig = TrainConfig(),
    *,
    files: RunFiles | None = None,
    resume: bool = False,
    progress: bool = True,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    on_step: Callable[[int, ConvAutoencoder], None] | None = None,
) -> TrainResult:
    """Train a :class:`ConvAutoencoder` on normal images.

    Args:
        train_images: ``(N, 1, H, W)`` float32 in [0, 1], normal images only.
        val_images: ``(M, 1, H, W)`` float32, held-out normal images.
        config: The training settings.
        files: The run folder; if given, a checkpoint is written after every epoch.
        resume: Continue from ``files.training_state`` if it exists.
        progress: Show progress bars.
        on_epoch: Called with each epoch's record (``epoch``, ``train_loss``,
            ``val_loss``, ``seconds``, ``images_per_s``) once it is saved,
            before the next epoch starts.
        on_step: Called after every optimizer step with the number of images trained on
            so far (this run's) and the model (e.g. to measure a learning curve); the
            model is put back in training mode afterwards.

    Returns:
        The trained model and its per-epoch history.

    Raises:
        ParameterError: bad settings or images.
        TrainingError: the loss became NaN or infinite (the last good checkpoint stays).
        KeyboardInterrupt: on Ctrl-C or SIGTERM, after saying where the last checkpoint is.
    """
    for name, images in (("train_images", train_images), ("val_images", val_images)):
        if images.ndim != 4 or len(images) == 0 or not images.is_floating_point():
            raise ParameterError(f"{name} must be a non-empty float tensor (N, C, H, W); got {tuple(images.shape)}")
    w = distributed.world()
    device = resolve_device(config.device)
    if w.size > 1 and device.type == "cuda":
        device = torch.device("cuda", w.local_rank)  # one GPU per process
    precision = resolve_precision(device, config.amp, warn=False)  # said in the first line printed
    if device.type == "cpu":
        retain_freed_memory()
    torch.manual_seed(config.seed)
    _, channels, size, _ = train_images.shape
    model = build_model(ModelConfig(config.latent_dim, size, channels, MODELS[config.model]))
    model = model.to(device, memory_format=torch.channels_last)
    net: torch.nn.Module = model
    if w.size > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    optimizer = new_optimizer(model, config.lr)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.use_grad_scaler)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    start, history = 0, []
    best = copy.deepcopy(model)  # the weights of the lowest validation loss so far
    data_sha256 = fingerprint(train_images)
    if resume and files is not None and check_resume(files, config, data_sha256):
        start, history, _ = checkpoint.load_training_state(files.training_state, model, optimizer, best)
        if w.main:
            print(f"resuming after epoch {start} from {files.training_state} (best so far: epoch {best_epoch(history)})")
    x_train, x_val = to_device(train_images, device), to_device(val_images, device)
    restoring = config.model == "restore"
    if restoring:  # the fixed damaged validation set
        restore_val = tuple(to_device(t, device) for t in restore_validation(train_images, val_images))
    # An epoch of the restore model shows each image RESTORE_REPEATS times, each with new damage.
    repeats = RESTORE_REPEATS if restoring else 1
    n_train, bs = len(x_train), config.batch_size
    n = n_train * repeats  # images an epoch
    steps = math.ceil(n / bs)
    why = precision_note(precision, config.amp)
    where = str(device)
    if w.size > 1:
        backend = "nccl" if device.type == "cuda" else "gloo"
        where = f"{w.size} processes ({backend}, DistributedDataParallel, {math.ceil(min(bs, n) / w.size)} images each per step) on {device.type}"
    if w.main:
        stop = f", stopping after {config.patience} without a better validation loss" if config.patience else ""
        aug = f", augmented ({', '.join(config.augment)})" if config.augment else ""
        each_epoch = f" damaged anew {repeats} times an epoch" if restoring else ""
        print(f"training on {where} in {precision.name}{why}, channels_last, {n_train:,} images{aug}{each_epoch}, batch {bs}, "
              f"at most {config.epochs} epochs{stop}")
    writes = files is not None and w.main  # only rank 0 writes the run's files
    progress = progress and w.main

    plain = headless()  # a log, not a live front end: plain lines instead of bars
    epoch_bar = progress_bar(config.epochs, "epochs", disable=not progress or plain)
    epoch_bar.update(start)
    saved = start  # epochs whose checkpoint is on disk
    clock = Clock(n * (config.epochs - start), every=15.0 if progress and plain else math.inf)
    stopped = stop_reason(history, config.epochs, config.patience)
    try:
        interrupts = _Interrupts()
        with interrupts.installed():
            for epoch in range(start, config.epochs if stopped is None else start):
                t0 = time.perf_counter()
                model.train()
                gen = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
                perm = torch.cat([torch.randperm(n_train, generator=gen) for _ in range(repeats)]).to(device)
                # The VAE's draws, from their own seeded stream: resuming after an epoch repeats them.
                noise_gen = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch + 500_009)
                augment_gen = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch + 700_001)
                damage_gen = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch + 900_007)
                total = 0.0
                step_bar = progress_bar(steps, f"epoch {epoch + 1}", leave=False, disable=not progress or plain)
                for step in range(steps):
                    if config.lr_schedule != "constant":
                        for group in optimizer.param_groups:
                            group["lr"] = learning_rate(config, epoch * steps + step, config.epochs * steps)
                    chosen = perm[step * bs : (step + 1) * bs]
                    share = chosen[w.rank :: w.size]  # this process's share of the global batch
                    batch = x_train[share if len(share) else chosen[:1]]
                    draws = None
                    if config.augment:  # drawn for the global batch, as the VAE's noise
                        draws = augment.draw(config.augment, len(chosen), batch.shape[-1], augment_gen)
                    damaged = None
                    if restoring:  # augmented and damaged as the global batch, in order, so any nproc draws the same
                        whole = x_train[chosen] if draws is None else augment.apply(x_train[chosen], draws)
                        bad, masks = damage.damage(whole, x_train, damage_gen)
                        pick = (torch.arange(len(chosen))[w.rank :: w.size] if len(share) else torch.arange(1)).to(device)
                        batch, damaged = whole[pick], (bad[pick], masks[pick])
                    elif draws is not None:
                        batch = augment.apply(batch, draws[w.rank :: w.size] if len(share) else draws[:1])
                    noise = None
                    if config.model == "vae":  # drawn for the global batch, so any nproc draws the same
                        draws = torch.randn(len(chosen), config.latent_dim, generator=noise_gen)
                        noise = draws[w.rank :: w.size] if len(share) else draws[:1]
                        noise = noise.to(device)
                    value = training_step(
                        net, optimizer, scaler, batch, precision, len(chosen), len(share) > 0, noise, config.beta,
                        damaged,
                    )
                    if not math.isfinite(value):
                        raise TrainingError(
                            f"the training loss became {value} at epoch {epoch + 1}, step {step + 1}: "
                            f"try a lower lr than {config.lr}"
                            + (f"; the checkpoint of epoch {saved} is kept in {files.root}" if files and saved else "")
                        )
                    total += value * len(chosen)
                    if on_step is not None:
                        on_step((epoch - start) * n + min(n, (step + 1) * bs), model)
                        model.train()
                    step_bar.update()
                    if clock.tick(len(chosen)):
                        print(
                            f"epoch {epoch + 1}/{config.epochs}  step {step + 1}/{steps}  "
                            f"loss {total / min(n, (step + 1) * bs):.5f}  {clock.rate():,.0f} images/s  {clock.left()}",
                            flush=True,
                        )
                step_bar.close()
                seconds = time.perf_counter() - t0
                val_loss = restore_val_loss(model, *restore_val, precision) if restoring else mean_loss(
                    model, x_val, precision)
                record = {
                    "epoch": epoch + 1,
                    "train_loss": total / n,
                    "val_loss": val_loss,
                    "seconds": seconds,
                    "images_per_s": n / seconds,
                }
                history.append(record)
                if w.size > 1:
                    record["processes"] = w.size
                if best_epoch(history) == epoch + 1:
                    best.load_state_dict(model.state_dict())
                stopped = stop_reason(history, config.epochs, config.patience)
                if writes:
                    assert files is not None
                    extra = {"train_images_sha256": data_sha256, "resumed_after_epoch": start or None}
                    with interrupts.held():
                        save_checkpoint(files, model, optimizer, history, config, precision, device, extra, best, stopped)
                        saved = epoch + 1
                epoch_bar.set_postfix(train=f"{record['train_loss']:.5f}", val=f"{val_loss:.5f}")
                epoch_bar.update()
                left = f"  {clock.left()}" if epoch + 1 < config.epochs else ""
                each = f" ({record['images_per_s'] / w.size:,.0f} per process)" if w.size > 1 else ""
                if w.main:
                    epoch_bar.write(
                        f"epoch {epoch + 1}/{config.epochs}  train loss {record['train_loss']:.5f}  "
                        f"val loss {val_loss:.5f}  {record['images_per_s']:,.0f} images/s{each}{left}"
                    )
                clock.last = time.perf_counter()  # the next progress line comes a full interval after this one
                if on_epoch is not None:
                    on_epoch(record)
                if stopped == "patience":
                    if w.main:
                        b = best_epoch(history)
                        print(f"stopped early after epoch {epoch + 1}: no lower validation loss in {config.patience} "
                              f"epochs since epoch {b} ({history[b - 1]['val_loss']:.5f})")
                    break
    except KeyboardInterrupt:
        # Counted from what is saved, not from the loop variable: a signal can land after an
        # epoch's checkpoint is written and before the next epoch begins.
        where = (
            f"; the checkpoint of epoch {saved} is in {files.root}, pass resume=True to continue"
            if files and saved
            else ""
        )
        if w.main:
            print(f"training interrupted after {len(history)} complete epoch(s){where}", file=sys.stderr)
        raise
    finally:
        epoch_bar.close()
    b = best_epoch(history)
    if history and b != history[-1]["epoch"]:
        model.load_state_dict(best.state_dict())  # the lowest validation loss, not the last epoch
        if w.main:
            print(f"kept the weights of epoch {b} (validation loss {history[b - 1]['val_loss']:.5f}, the lowest; "
                  f"the last epoch's was {history[-1]['val_loss']:.5f})")
    model.eval()
    return TrainResult(model, history, device, precision, b, stopped or "epochs")


def save_checkpoint(
    files: RunFiles,
    model: ConvAutoencoder,
    optimizer: torch.optim.Optimizer,
    history: list[dict[str, float]],
    config: TrainConfig,
    precision: Precision,
    device: torch.device,
    extra: dict[str, Any] | None = None,
    best: ConvAutoencoder | None = None,
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
