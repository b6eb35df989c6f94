"""The training loop: seeded, mixed precision where it helps, checkpointed every epoch.

The data are held as one tensor on the training device and batches are taken
by indexing it with a seeded permutation, so no DataLoader collates samples
one by one. Each epoch ends with a validation loss and an atomic checkpoint,
so an interrupted run keeps its last completed epoch and can resume from it.
"""

from __future__ import annotations

import math
import os
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

from . import checkpoint, storage
from .device import Precision, resolve_device, resolve_precision, retain_freed_memory
from .errors import ParameterError, TrainingError
from .model import ConvAutoencoder, ModelConfig
from .paths import RunFiles

HEADLESS_ENV = "ANOMALYMAP_HEADLESS"


def check_positive(name: str, value: Any, kind: type = int) -> None:
    """Raise a ParameterError unless ``value`` is a positive ``kind``."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
    if kind is int:
        ok = ok and float(value).is_integer()
    if not ok or (isinstance(value, float) and not math.isfinite(value)):
        what = "a whole number above 0" if kind is int else "a number above 0"
        raise ParameterError(f"{name}={value!r}: use {what}")


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
    """

    epochs: int = 5
    batch_size: int = 256
    lr: float = 1e-3
    latent_dim: int = 64
    seed: int = 0
    device: str = "auto"
    amp: bool = True

    def __post_init__(self) -> None:
        check_positive("epochs", self.epochs)
        check_positive("batch_size", self.batch_size)
        check_positive("lr", self.lr, float)
        check_positive("latent_dim", self.latent_dim)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ParameterError(f"seed={self.seed!r}: use a whole number of 0 or more")
        if not isinstance(self.amp, bool):
            raise ParameterError(f"amp={self.amp!r}: use True or False")


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        model: The trained model, in eval mode, on the training device.
        history: One dict per epoch: ``epoch, train_loss, val_loss, seconds, images_per_s``.
        device: The device trained on.
        precision: The precision trained with.
    """

    model: ConvAutoencoder
    history: list[dict[str, float]] = field(default_factory=list)
    device: torch.device = torch.device("cpu")
    precision: Precision = Precision("fp32", "cpu")


def headless() -> bool:
    """Whether output goes to a file rather than a live front end (papermill, nbval, CI)."""
    return os.environ.get(HEADLESS_ENV, "") not in ("", "0")


def progress_bar(total: int, desc: str, *, leave: bool = True, disable: bool = False) -> Any:
    """A tqdm bar: a widget in JupyterLab, plain text that stays short when headless."""
    if headless():
        from tqdm.std import tqdm

        return tqdm(total=total, desc=desc, leave=leave, disable=disable, ascii=True, file=sys.stdout, mininterval=60)
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=leave, disable=disable)


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt while training (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
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
    model: ConvAutoencoder,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    batch: torch.Tensor,
    precision: Precision,
) -> float:
    """One optimizer step on ``batch``; return its loss. A non-finite loss takes no step."""
    with precision.autocast():
        out = model(batch)
    loss = F.mse_loss(out.float(), batch)
    value = loss.item()
    if math.isfinite(value):
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    return value


@torch.inference_mode()
def mean_loss(model: ConvAutoencoder, images: torch.Tensor, precision: Precision, batch_size: int = 512) -> float:
    """Mean squared reconstruction error over ``images`` ``(N, C, H, W)`` on the model's device."""
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=images.device)
    for i in range(0, len(images), batch_size):
        batch = images[i : i + batch_size]
        with precision.autocast():
            out = model(batch)
        total += F.mse_loss(out.float(), batch, reduction="sum").double()
    return float(total) / images[0].numel() / max(1, len(images))


def train(
    train_images: torch.Tensor,
    val_images: torch.Tensor,
    config: TrainConfig = TrainConfig(),
    *,
    files: RunFiles | None = None,
    resume: bool = False,
    progress: bool = True,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
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
    device = resolve_device(config.device)
    precision = resolve_precision(device, config.amp)
    if device.type == "cpu":
        retain_freed_memory()
    torch.manual_seed(config.seed)
    _, channels, size, _ = train_images.shape
    model = ConvAutoencoder(ModelConfig(config.latent_dim, size, channels))
    model = model.to(device, memory_format=torch.channels_last)
    optimizer = new_optimizer(model, config.lr)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.use_grad_scaler)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    start, history = 0, []
    if resume and files is not None and files.training_state.exists():
        start, history, _ = checkpoint.load_training_state(files.training_state, model, optimizer)
        print(f"resuming after epoch {start} from {files.training_state}")
    x_train, x_val = to_device(train_images, device), to_device(val_images, device)
    n, bs = len(x_train), config.batch_size
    steps = math.ceil(n / bs)
    print(f"training on {device} in {precision.name} (channels_last), {n:,} images, batch {bs}, {config.epochs} epochs")

    epoch_bar = progress_bar(config.epochs, "epochs", disable=not progress)
    epoch_bar.update(start)
    saved = start  # epochs whose checkpoint is on disk
    try:
        with _sigterm_as_interrupt():
            for epoch in range(start, config.epochs):
                t0 = time.perf_counter()
                model.train()
                gen = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
                perm = torch.randperm(n, generator=gen).to(device)
                total = 0.0
                step_bar = progress_bar(steps, f"epoch {epoch + 1}", leave=False, disable=not progress or headless())
                for step in range(steps):
                    batch = x_train[perm[step * bs : (step + 1) * bs]]
                    value = training_step(model, optimizer, scaler, batch, precision)
                    if not math.isfinite(value):
                        raise TrainingError(
                            f"the training loss became {value} at epoch {epoch + 1}, step {step + 1}: "
                            f"try a lower lr than {config.lr}"
                            + (f"; the checkpoint of epoch {saved} is kept in {files.root}" if files and saved else "")
                        )
                    total += value * len(batch)
                    step_bar.update()
                step_bar.close()
                seconds = time.perf_counter() - t0
                val_loss = mean_loss(model, x_val, precision)
                record = {
                    "epoch": epoch + 1,
                    "train_loss": total / n,
                    "val_loss": val_loss,
                    "seconds": seconds,
                    "images_per_s": n / seconds,
                }
                history.append(record)
                if files is not None:
                    save_checkpoint(files, model, optimizer, history, config, precision, device)
                    saved = epoch + 1
                if not headless():  # a text bar redraws on every postfix change: keep it short
                    epoch_bar.set_postfix(train=f"{record['train_loss']:.5f}", val=f"{val_loss:.5f}")
                epoch_bar.update()
                epoch_bar.write(
                    f"epoch {epoch + 1}/{config.epochs}  train loss {record['train_loss']:.5f}  "
                    f"val loss {val_loss:.5f}  {record['images_per_s']:,.0f} images/s"
                )
                if on_epoch is not None:
                    on_epoch(record)
    except KeyboardInterrupt:
        # Counted from what is saved, not from the loop variable: a signal can land after an
        # epoch's checkpoint is written and before the next epoch begins.
        where = (
            f"; the checkpoint of epoch {saved} is in {files.root}, pass resume=True to continue"
            if files and saved
            else ""
        )
        print(f"training interrupted after {len(history)} complete epoch(s){where}", file=sys.stderr)
        raise
    finally:
        epoch_bar.close()
    model.eval()
    return TrainResult(model, history, device, precision)


def save_checkpoint(
    files: RunFiles,
    model: ConvAutoencoder,
    optimizer: torch.optim.Optimizer,
    history: list[dict[str, float]],
    config: TrainConfig,
    precision: Precision,
    device: torch.device,
) -> None:
    """Write the training state, the model, its JSON config and the loss history (each atomically)."""
    epoch = history[-1]["epoch"]
    cfg = asdict(config)
    checkpoint.save_training_state(
        files.training_state, model, optimizer, epoch=epoch, history=history, train_config=cfg
    )
    checkpoint.save_model(files.model, model, epoch=epoch)
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
        },
    )
    keys = ["epoch", "train_loss", "val_loss", "seconds", "images_per_s"]
    storage.write_csv(files.history, keys, ([h[k] for k in keys] for h in history))
