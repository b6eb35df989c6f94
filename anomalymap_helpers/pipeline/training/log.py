"""What training says as it goes: its opening line, progress bars or plain lines, one line an epoch."""

from __future__ import annotations

import math
import time

import torch

from anomalymap_helpers.pipeline.progress import Clock, headless, progress_bar
from anomalymap_helpers.pipeline.training.config import TrainConfig
from anomalymap_helpers.pipeline.training.device import Precision, precision_note
from anomalymap_helpers.pipeline.training.distributed import World
from anomalymap_helpers.pipeline.training.resume import best_epoch


class TrainingLog:
    """Training's output: bars in a live front end, a plain line every 15 s when headless
    (:mod:`~anomalymap_helpers.pipeline.progress`); only the main process speaks."""

    def __init__(self, config: TrainConfig, world: World, images_per_epoch: int, start: int, progress: bool) -> None:
        self.config, self.world, self.n = config, world, images_per_epoch
        self.show = progress and world.main
        self.plain = headless()  # a log, not a live front end: plain lines instead of bars
        self.epoch_bar = progress_bar(config.epochs, "epochs", disable=not self.show or self.plain)
        self.epoch_bar.update(start)
        self.clock = Clock(images_per_epoch * (config.epochs - start), every=15.0 if self.show and self.plain else math.inf)
        self.step_bar = None

    def opening(self, device: torch.device, precision: Precision, n_train: int, repeats: int) -> None:
        """The first line: where, in what precision, on how many images, for how long."""
        c, w, bs = self.config, self.world, self.config.batch_size
        where = str(device)
        if w.size > 1:
            backend = "nccl" if device.type == "cuda" else "gloo"
            where = (f"{w.size} processes ({backend}, DistributedDataParallel, {math.ceil(min(bs, self.n) / w.size)} "
                     f"images each per step) on {device.type}")
        if w.main:
            stop = f", stopping after {c.patience} without a better validation loss" if c.patience else ""
            aug = f", augmented ({', '.join(c.augment)})" if c.augment else ""
            each_epoch = f" damaged anew {repeats} times an epoch" if repeats > 1 else ""
            print(f"training on {where} in {precision.name}{precision_note(precision, c.amp)}, channels_last, "
                  f"{n_train:,} images{aug}{each_epoch}, batch {bs}, at most {c.epochs} epochs{stop}")

    def epoch_start(self, epoch: int, steps: int) -> None:
        self.step_bar = progress_bar(steps, f"epoch {epoch + 1}", leave=False, disable=not self.show or self.plain)

    def step(self, epoch: int, step: int, steps: int, images: int, loss: float) -> None:
        """After a step of ``images`` images; ``loss`` is the epoch's mean so far."""
        self.step_bar.update()
        if self.clock.tick(images):
            print(f"epoch {epoch + 1}/{self.config.epochs}  step {step + 1}/{steps}  loss {loss:.5f}  "
                  f"{self.clock.rate():,.0f} images/s  {self.clock.left()}", flush=True)

    def epoch_end(self, record: dict[str, float]) -> None:
        self.step_bar.close()
        epoch, w = int(record["epoch"]), self.world
        self.epoch_bar.set_postfix(train=f"{record['train_loss']:.5f}", val=f"{record['val_loss']:.5f}")
        self.epoch_bar.update()
        left = f"  {self.clock.left()}" if epoch < self.config.epochs else ""
        each = f" ({record['images_per_s'] / w.size:,.0f} per process)" if w.size > 1 else ""
        if w.main:
            self.epoch_bar.write(
                f"epoch {epoch}/{self.config.epochs}  train loss {record['train_loss']:.5f}  "
                f"val loss {record['val_loss']:.5f}  {record['images_per_s']:,.0f} images/s{each}{left}"
            )
        self.clock.last = time.perf_counter()  # the next progress line comes a full interval after this one

    def stopped_early(self, history: list[dict[str, float]]) -> None:
        if self.world.main:
            b = best_epoch(history)
            print(f"stopped early after epoch {history[-1]['epoch']}: no lower validation loss in "
                  f"{self.config.patience} epochs since epoch {b} ({history[b - 1]['val_loss']:.5f})")

    def close(self) -> None:
        self.epoch_bar.close()
