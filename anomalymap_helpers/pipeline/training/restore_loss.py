"""The restore model's loss (as DRAEM's ``loss.py``): restoring the damage, and finding it.

For a normal image ``x``, its damaged copy ``x~`` and the mask ``m`` of the damaged pixels
(:func:`~anomalymap_helpers.pipeline.models.damage.damage`), the model gives a reconstruction ``r(x~)`` and a
logit per pixel ``s(x~)``; with ``C`` channels and ``P`` pixels its loss per value is

    L = ( sum (r(x~) - x)^2  +  C * sum FL(s(x~), m) ) / (C * P),
    FL(s, m) = -(1 - p_t)^gamma * log p_t,   p_t = sigmoid(s) where m = 1, else 1 - sigmoid(s),

the squared error of restoring the damage plus the focal loss (Lin et al. 2017, ``gamma`` =
:data:`FOCAL_GAMMA`) of saying where it was, each per pixel and channel, as the autoencoder's MSE.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from anomalymap_helpers.pipeline.models import damage

FOCAL_GAMMA = 2.0  # the segmentation loss's focus on hard pixels (DRAEM's focal loss)


def restore_loss(recon: torch.Tensor, logits: torch.Tensor, clean: torch.Tensor, masks: torch.Tensor,
                 reduction: str = "mean") -> tuple[torch.Tensor, torch.Tensor]:
    """The restore model's two losses: squared error of ``recon`` against ``clean`` and the focal loss
    (gamma ``FOCAL_GAMMA``, no class weight) of ``logits`` against ``masks``, in fp32."""
    from torchvision.ops import sigmoid_focal_loss

    squared = F.mse_loss(recon.float(), clean, reduction=reduction)
    focal = sigmoid_focal_loss(logits.float(), masks.float(), alpha=-1, gamma=FOCAL_GAMMA, reduction=reduction)
    return squared, focal


def summed(recon: torch.Tensor, logits: torch.Tensor, clean: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """``L`` of the module docstring summed over the images and values (divide by ``C * P`` per image)."""
    squared, focal = restore_loss(recon, logits, clean, masks, reduction="sum")
    return squared + clean.shape[1] * focal


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
