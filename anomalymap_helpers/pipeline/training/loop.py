"""The training loop: seeded, mixed precision where it helps, checkpointed every epoch.

The data are held as one tensor on the training device and batches are taken by indexing it
with a seeded permutation, so no DataLoader collates samples one by one. The loop knows no model
kind: each kind's objective (:mod:`~anomalymap_helpers.pipeline.training.objectives`) draws what a
batch needs and gives its loss. Each epoch ends with the one validation pass and an atomic
checkpoint (:mod:`~anomalymap_helpers.pipeline.training.resume`), so an interrupted run
keeps its last completed epoch and can resume from it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from anomalymap_helpers.errors import ParameterError, TrainingError
from anomalymap_helpers.files.paths import RunFiles
from anomalymap_helpers.pipeline.models import MODELS, Model, ModelConfig, augment, build_model
from anomalymap_helpers.pipeline.training import distributed
from anomalymap_helpers.pipeline.training.config import TrainConfig, learning_rate
from anomalymap_helpers.pipeline.training.device import (
    Precision,
    resolve_device,
    resolve_precision,
    retain_freed_memory,
)
from anomalymap_helpers.pipeline.training.log import TrainingLog
from anomalymap_helpers.pipeline.training.objectives import Batch, Objective, objective_for, validation_loss
from anomalymap_helpers.pipeline.training.resume import Checkpoints

# Each epoch's random draws come from their own seeded streams, so resuming after an epoch repeats them,
# and a model kind's draws do not move another's: seed * 1,000,003 + epoch + the stream's offset.
STREAMS = {"order": 0, "noise": 500_009, "augment": 700_001, "damage": 900_007}


def generator(seed: int, epoch: int, stream: str) -> torch.Generator:
    """The generator of ``stream``'s draws in ``epoch`` (0-based) of a run of ``seed``."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch + STREAMS[stream])


def to_device(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Move ``(N, C, H, W)`` images to ``device`` in the channels_last layout."""
    return images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)


def new_optimizer(model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    """Adam over ``model``'s parameters, fused: one kernel updates them all."""
    return torch.optim.Adam(model.parameters(), lr=lr, fused=True)


def training_step(objective: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                  batch: Batch, global_batch: int | None = None, counts: bool = True) -> float:
    """One optimizer step on ``batch``; return its loss per value. A non-finite loss takes no step.

    ``objective`` (an :class:`~anomalymap_helpers.pipeline.training.objectives.Objective`, or it
    wrapped in DistributedDataParallel) gives the loss summed over the batch's images and values.
    The one place the loss is scaled for several processes: ``batch`` is this process's share of a
    global batch of ``global_batch`` images, so the sum is divided by the global batch's values and
    multiplied by the number of processes, and DDP's average of the gradients is the gradient of the
    mean over the whole global batch (shares of unequal size included); the value returned is the
    global batch's mean loss. ``counts=False`` marks a stand-in share (a final batch smaller than the
    number of processes leaves some without an image): it takes part in the gradient exchange with
    a weight of 0.
    """
    images = batch["images"]
    size = distributed.world().size
    elements = (global_batch or len(images)) * images[0].numel()
    total = objective(batch) * (1.0 if counts else 0.0)
    value = (distributed.all_sum(total.detach()).item() if size > 1 else total.item()) / elements
    if math.isfinite(value):
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(total * (size / elements)).backward()
        scaler.step(optimizer)
        scaler.update()
    return value


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

    model: Model
    history: list[dict[str, float]] = field(default_factory=list)
    device: torch.device = torch.device("cpu")
    precision: Precision = Precision("fp32", "cpu")
    best_epoch: int = 0
    stopped: str = "epochs"


def _batches(objective: Objective, x_train: torch.Tensor, config: TrainConfig, epoch: int
             ) -> Iterator[tuple[int, bool, Batch]]:
    """An epoch's steps: ``(global batch size, whether this process has a share, its share)``.

    Each global batch is augmented and drawn for (by its objective) whole and in order, and then
    shared out, so any number of processes draws the same.
    """
    w, n_train, bs = distributed.world(), len(x_train), config.batch_size
    gen = generator(config.seed, epoch, "order")
    perm = torch.cat([torch.randperm(n_train, generator=gen) for _ in range(objective.repeats)]).to(x_train.device)
    augment_gen = generator(config.seed, epoch, "augment")
    draw_gen = generator(config.seed, epoch, objective.stream) if objective.stream else None
    for step in range(math.ceil(len(perm) / bs)):
        chosen = perm[step * bs : (step + 1) * bs]
        whole = x_train[chosen]
        if config.augment:
            whole = augment.apply(whole, augment.draw(config.augment, len(chosen), whole.shape[-1], augment_gen))
        batch = objective.draw(whole, x_train, draw_gen)
        if w.size == 1:
            yield len(chosen), True, batch
            continue
        mine = torch.arange(len(chosen))[w.rank :: w.size]
        has_share = len(mine) > 0
        pick = (mine if has_share else torch.arange(1)).to(x_train.device)  # a stand-in share weighs 0
        yield len(chosen), has_share, {k: v[pick] for k, v in batch.items()}


def _prepare(config: TrainConfig, train_images: torch.Tensor, val_images: torch.Tensor
             ) -> tuple[torch.device, Precision, Model, Objective, torch.nn.Module]:
    """The device (one GPU per process), the precision, the seeded model on the device, its objective, and
    what the loop steps on: the objective, wrapped in DistributedDataParallel with several processes."""
    for name, images in (("train_images", train_images), ("val_images", val_images)):
        if images.ndim != 4 or len(images) == 0 or not images.is_floating_point():
            raise ParameterError(f"{name} must be a non-empty float tensor (N, C, H, W); got {tuple(images.shape)}")
    w = distributed.world()
    device = resolve_device(config.device)
    if w.size > 1 and device.type == "cuda":
        device = torch.device("cuda", w.local_rank)
    precision = resolve_precision(device, config.amp, warn=False)  # said in the first line printed
    if device.type == "cpu":
        retain_freed_memory()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(config.seed)
    _, channels, size, _ = train_images.shape
    model = build_model(ModelConfig(config.latent_dim, size, channels, MODELS[config.model]))
    model = model.to(device, memory_format=torch.channels_last)
    objective = objective_for(config.model, model, precision, config.beta)
    net: torch.nn.Module = objective
    if w.size > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(objective, device_ids=[device] if device.type == "cuda" else None)
    return device, precision, model, objective, net


def train(
    train_images: torch.Tensor,
    val_images: torch.Tensor,
    config: TrainConfig | None = None,
    *,
    files: RunFiles | None = None,
    resume: bool = False,
    progress: bool = True,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    on_step: Callable[[int, Model], None] | None = None,
) -> TrainResult:
    """Train a model of ``config.model``'s kind on normal images.

    Args:
        train_images: ``(N, C, H, W)`` float32 in [0, 1], normal images only.
        val_images: ``(M, C, H, W)`` float32, held-out normal images.
        config: The training settings (default: :class:`TrainConfig`'s); its "by data set" values are resolved for ``train_images``
            (:meth:`TrainConfig.resolved`, as for MNIST where it says ``"auto"``).
        files: The run folder; if given, a checkpoint is written after every epoch.
        resume: Continue from ``files.training_state`` if it exists.
        progress: Show progress bars.
        on_epoch: Called with each epoch's record (``epoch``, ``train_loss``, ``val_loss``,
            ``seconds``, ``images_per_s``) once it is saved, before the next epoch starts.
        on_step: Called after every optimizer step with the number of images trained on so far
            (this run's) and the model (e.g. to measure a learning curve); the model is put back
            in training mode afterwards.

    Raises:
        ParameterError: bad settings or images.
        TrainingError: the loss became NaN or infinite (the last good checkpoint stays).
        KeyboardInterrupt: on Ctrl-C or SIGTERM, after saying where the last checkpoint is.
    """
    config, w = (config or TrainConfig()).resolved(len(train_images)), distributed.world()
    device, precision, model, objective, net = _prepare(config, train_images, val_images)
    optimizer = new_optimizer(model, config.lr)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.use_grad_scaler)
    kept = Checkpoints(model, optimizer, config, files, resume, train_images, w.main)
    x_train = to_device(train_images, device)
    val_set = {k: to_device(v, device) for k, v in objective.validation_set(train_images, val_images).items()}
    n = len(x_train) * objective.repeats  # images an epoch
    steps = math.ceil(n / config.batch_size)
    log = TrainingLog(config, w, n, kept.start, progress)
    log.opening(device, precision, len(x_train), objective.repeats)
    try:
        with kept.guarded():
            for epoch in range(kept.start, config.epochs if kept.stopped is None else kept.start):
                t0, total = time.perf_counter(), 0.0
                model.train()
                log.epoch_start(epoch, steps)
                for step, (size, counts, batch) in enumerate(_batches(objective, x_train, config, epoch)):
                    if config.lr_schedule != "constant":
                        for group in optimizer.param_groups:
                            group["lr"] = learning_rate(config, epoch * steps + step, config.epochs * steps)
                    value = training_step(net, optimizer, scaler, batch, size, counts)
                    if not math.isfinite(value):
                        raise TrainingError(f"the training loss became {value} at epoch {epoch + 1}, step {step + 1}: "
                                            f"try a lower lr than {config.lr}{kept.kept_note()}")
                    total += value * size
                    if on_step is not None:
                        on_step((epoch - kept.start) * n + min(n, (step + 1) * config.batch_size), model)
                        model.train()
                    log.step(epoch, step, steps, size, total / min(n, (step + 1) * config.batch_size))
                seconds = time.perf_counter() - t0
                record = {"epoch": epoch + 1, "train_loss": total / n, "val_loss": validation_loss(objective, val_set),
                          "seconds": seconds, "images_per_s": n / seconds}
                if w.size > 1:
                    record["processes"] = w.size
                stopped = kept.epoch_done(record, precision, device)
                log.epoch_end(record)
                if on_epoch is not None:
                    on_epoch(record)
                if stopped == "patience":
                    log.stopped_early(kept.history)
                    break
    finally:
        log.close()
    b = kept.finish()
    model.eval()
    return TrainResult(model, kept.history, device, precision, b, kept.stopped or "epochs")
