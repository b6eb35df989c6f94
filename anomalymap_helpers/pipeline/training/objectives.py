"""Each model kind's objective: given a batch (and its generator's draws) it gives its loss.

An objective wraps its model (an ``nn.Module`` whose ``forward`` is the loss, so that
DistributedDataParallel wraps it whole and the loop knows nothing of any model kind):

- :class:`Reconstruct` (``ae``): the squared error of the reconstruction;
- :class:`ELBO` (``vae``): the negative ELBO, the squared error of a sample's reconstruction plus
  ``beta`` times the KL term;
- :class:`Restore` (``restore``): restoring synthetic damage and segmenting it
  (:mod:`~anomalymap_helpers.pipeline.training.restore_loss`).

Every loss is a sum over the batch's images of values per pixel and channel; the loop divides
by the values of the global batch (:func:`~anomalymap_helpers.pipeline.training.loop.training_step`).
A new model kind adds its module to ``model.py`` and its objective here, in :data:`OBJECTIVES`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from anomalymap_helpers.pipeline.models import Model, damage
from anomalymap_helpers.pipeline.training import distributed, restore_loss
from anomalymap_helpers.pipeline.training.config import AUTO_IMAGES, RESTORE_IMAGES, RESTORE_REPEATS
from anomalymap_helpers.pipeline.training.device import Precision

Batch = dict[str, torch.Tensor]  # "images" (the clean images) and what an objective draws for them, by row


class Objective(nn.Module):
    """How a model kind learns: :meth:`draw` what a batch needs, :meth:`forward` its summed loss.

    Attributes:
        stream: The name of the generator its draws come from (see ``loop.STREAMS``), or None.
        repeats: How many times an epoch shows each training image.
        images_seen: The most images ``epochs=0`` ("by data set") trains on (``config.schedule_for``).
        val_batch: The validation pass's batch size.
        loss_name, model_name, baseline_name: What notebook 02's check calls its validation loss, the
            model and the laziest model (``commands.train.diagnose``).
        drawn_anew: Whether its inputs are drawn anew every epoch, so that it cannot memorise them.
    """

    stream: str | None = None
    repeats = 1
    images_seen = AUTO_IMAGES
    val_batch = 512
    loss_name, model_name, baseline_name = "validation MSE", "autoencoder", "mean image"
    drawn_anew = False

    def __init__(self, model: Model, precision: Precision, beta: float = 1.0) -> None:
        super().__init__()
        self.model, self.precision, self.beta = model, precision, beta

    def draw(self, images: torch.Tensor, pool: torch.Tensor, generator: torch.Generator) -> Batch:
        """What the batch ``images`` (the whole global batch, so that any number of processes draws the
        same) is trained on; ``pool`` is the training set."""
        return {"images": images}

    def forward(self, batch: Batch) -> torch.Tensor:
        """The training loss of ``batch``, summed over its images and values, in fp32."""
        with self.precision.autocast():
            out = self.model(batch["images"])
        return F.mse_loss(out.float(), batch["images"], reduction="sum")

    def validation_set(self, train_images: torch.Tensor, val_images: torch.Tensor) -> Batch:
        """The fixed batch the validation loss is measured on."""
        return {"images": val_images}

    def validation_loss(self, batch: Batch) -> torch.Tensor:
        """The validation loss of ``batch``, summed as :meth:`forward`'s: the squared reconstruction error."""
        return Objective.forward(self, batch)

    @staticmethod
    def baseline(train_images: torch.Tensor, val_images: torch.Tensor) -> float:
        """The laziest model's validation loss per value (notebook 02's check): the mean training image's MSE."""
        return float(((val_images - train_images.mean(0, keepdim=True)) ** 2).mean())


class Reconstruct(Objective):
    """The autoencoder's: the mean squared error of its reconstruction, per pixel and channel."""


class ELBO(Objective):
    """The VAE's negative ELBO per pixel: ``(sum of squared errors + beta * KL) / values``, the
    reconstruction of a sample ``mu + exp(logvar / 2) * noise`` (a Gaussian decoder of variance 1/2,
    so ``beta = 1`` is the ELBO up to a constant). Its validation loss is the MSE of ``mu``'s."""

    stream = "noise"

    def draw(self, images: torch.Tensor, pool: torch.Tensor, generator: torch.Generator) -> Batch:
        noise = torch.randn(len(images), self.model.config.latent_dim, generator=generator)
        return {"images": images, "noise": noise.to(images.device)}

    def forward(self, batch: Batch) -> torch.Tensor:
        with self.precision.autocast():
            out = self.model.sample(batch["images"], batch["noise"])
        return F.mse_loss(out.reconstruction.float(), batch["images"], reduction="sum") + self.beta * out.kl.sum()


class Restore(Objective):
    """The restore model's: each image damaged anew (``repeats`` times an epoch), the loss of
    :mod:`~anomalymap_helpers.pipeline.training.restore_loss`; validated on a fixed damaged set."""

    stream = "damage"
    repeats = RESTORE_REPEATS  # times an epoch shows each training image, each time with new damage
    images_seen = RESTORE_IMAGES
    val_batch = 256
    loss_name, model_name = "validation loss (MSE + focal)", "restore model"
    baseline_name = "mean image and constant guess"
    drawn_anew = True  # new damage every epoch: its losses jump from epoch to epoch, and it cannot memorise

    def draw(self, images: torch.Tensor, pool: torch.Tensor, generator: torch.Generator) -> Batch:
        damaged, masks = damage.damage(images, pool, generator)
        return {"images": images, "damaged": damaged, "masks": masks}

    def forward(self, batch: Batch) -> torch.Tensor:
        with self.precision.autocast():
            out = self.model.infer(batch["damaged"])
        return restore_loss.summed(out.reconstruction, out.segmentation, batch["images"], batch["masks"])

    def validation_set(self, train_images: torch.Tensor, val_images: torch.Tensor) -> Batch:
        clean, damaged, masks = restore_loss.restore_validation(train_images, val_images)
        return {"images": clean, "damaged": damaged, "masks": masks}

    def validation_loss(self, batch: Batch) -> torch.Tensor:
        return self.forward(batch)

    @staticmethod
    def baseline(train_images: torch.Tensor, val_images: torch.Tensor) -> float:
        """The mean image as the reconstruction of every damaged validation image, plus the focal loss
        of one constant guess, the share of damaged pixels, everywhere."""
        clean, _, masks = restore_loss.restore_validation(train_images, val_images)
        p = masks.mean().clamp(1e-4, 1 - 1e-4)
        logits = torch.full_like(masks, float(torch.log(p / (1 - p))))
        mean_image = train_images.mean(0, keepdim=True).expand_as(clean)
        squared, focal = restore_loss.restore_loss(mean_image, logits, clean, masks)
        return float(squared + focal)


OBJECTIVES: dict[str, type[Objective]] = {"ae": Reconstruct, "vae": ELBO, "restore": Restore}


def objective_for(kind: str, model: Model, precision: Precision, beta: float = 1.0) -> Objective:
    """The objective of model kind ``kind`` (the ``model`` parameter) around ``model``."""
    return OBJECTIVES[kind](model, precision, beta)


def baseline_loss(kind: str, train_images: torch.Tensor, val_images: torch.Tensor) -> float:
    """The laziest model's validation loss for model kind ``kind``, which a trained one must beat."""
    return OBJECTIVES[kind].baseline(train_images, val_images)


@torch.inference_mode()
def validation_loss(objective: Objective, batch: Batch) -> float:
    """The one validation pass: ``objective``'s validation loss per value over ``batch``, in batches of
    its ``val_batch``; with several training processes each takes its share and the sums are added up."""
    objective.model.eval()
    w = distributed.world()
    mine = {k: v[w.rank :: w.size] for k, v in batch.items()}
    images = batch["images"]
    total = torch.zeros((), dtype=torch.float64, device=images.device)
    for i in range(0, len(mine["images"]), objective.val_batch):
        total += objective.validation_loss({k: v[i : i + objective.val_batch] for k, v in mine.items()}).double()
    return float(distributed.all_sum(total)) / images[0].numel() / max(1, len(images))


def mean_loss(model: Model, images: torch.Tensor, precision: Precision) -> float:
    """The mean squared reconstruction error over ``images``: the autoencoder's validation loss."""
    return validation_loss(Reconstruct(model, precision), {"images": images})
