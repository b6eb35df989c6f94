"""``latent-knn``'s own map: which locations of the encoder's grid make the distance."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from anomalymap_helpers.errors import ParameterError
from anomalymap_helpers.pipeline.models import ConvAutoencoder
from anomalymap_helpers.pipeline.scoring.inference import encode
from anomalymap_helpers.pipeline.scoring.knn import nearest
from anomalymap_helpers.pipeline.training.device import Precision


class LatentKnnMaps:
    """Where in an image the ``latent-knn`` distance comes from: its map.

    The latent code is a Linear layer over the encoder's last feature map, so it is a sum of
    one part per location of that ``g x g`` grid (7x7 at 28x28) plus the bias. The score
    compares the code's direction with that of its ``k`` nearest training normals': for one
    neighbour ``n``, ``z/|z| - z_n/|z_n|`` is exactly the sum over locations of
    ``(W_l h_l)/|z| - (W_l h_{n,l})/|z_n|`` plus a bias term that belongs to no location. The
    map's value at a location is that part's length along the whole difference, so over the
    locations (and the bias term) it adds up to ``|z/|z| - z_n/|z_n||``, which is
    ``sqrt(2 * cosine distance)`` to that neighbour; averaged over the ``k`` neighbours and
    upsampled (bilinear) to the image. A location that pulls the code towards its neighbours
    counts negative; the map shows the positive part. The image score stays ``latent-knn``
    (the mean cosine distance); the map says which locations make it.

    Args:
        model: The trained (variational) autoencoder.
        train_images: ``(N, C, H, W)`` the normal training images, in the order of ``reference``.
        reference: ``(N, latent_dim)`` their latents (the kNN reference set).
        k: Neighbours, as in ``latent-knn``.
    """

    def __init__(self, model: ConvAutoencoder, train_images: torch.Tensor, reference: torch.Tensor, k: int = 2) -> None:
        if len(train_images) != len(reference):
            raise ParameterError(f"{len(train_images)} training images but {len(reference)} reference latents")
        self.model, self.train_images, self.reference, self.k = model, train_images, reference, k

    @torch.inference_mode()
    def parts(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(parts (B, k, g, g), bias parts (B, k), neighbours (B, k))`` of ``images`` ``(B, C, H, W)``, fp32."""
        model = self.model
        device = next(model.parameters()).device
        fc = model.encoder[7]
        weight = fc.weight.float().view(fc.out_features, 64, model._grid, model._grid)  # (d, c, h, w)

        def contributions(x: torch.Tensor) -> torch.Tensor:  # (B, g, g, d): W_l h_l per location
            h = model.feature_map(x.to(device).contiguous(memory_format=torch.channels_last)).float()
            return torch.einsum("bchw,dchw->bhwd", h, weight)

        z = encode(model, images, precision=Precision("fp32", device.type))
        _, neighbours = nearest(self.reference, z, self.k)
        mine = contributions(images)  # (B, g, g, d)
        theirs = contributions(self.train_images[neighbours.flatten()]).view(len(images), -1, *mine.shape[1:])
        bias = fc.bias.float()
        zq = mine.sum((1, 2)) + bias  # (B, d)
        zn = theirs.sum((2, 3)) + bias  # (B, k, d)
        nq, nn = zq.norm(dim=1).clamp_min(1e-12), zn.norm(dim=2).clamp_min(1e-12)
        diff = zq[:, None] / nq[:, None, None] - zn / nn[..., None]  # (B, k, d)
        direction = diff / diff.norm(dim=2, keepdim=True).clamp_min(1e-12)
        per_location = mine[:, None] / nq[:, None, None, None, None] - theirs / nn[..., None, None, None]
        parts = torch.einsum("bkhwd,bkd->bkhw", per_location, direction)
        bias_parts = torch.einsum("d,bkd->bk", bias, direction) * (1 / nq[:, None] - 1 / nn)
        return parts.cpu(), bias_parts.cpu(), neighbours.cpu()

    def __call__(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """The maps ``(B, 1, H, W)`` of ``images``: the positive part, averaged over neighbours, upsampled."""
        out = []
        for i in range(0, len(images), batch_size):
            parts, _, _ = self.parts(images[i : i + batch_size])
            grid = parts.mean(1, keepdim=True).clamp_min(0)
            out.append(F.interpolate(grid, size=images.shape[-2:], mode="bilinear", align_corners=False))
        return torch.cat(out) if out else torch.empty(0, 1, *images.shape[-2:])
