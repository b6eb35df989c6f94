"""The per-pixel anomaly map: the absolute reconstruction error, averaged over channels and blurred."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur ``(N, 1, H, W)`` maps with a Gaussian of ``sigma`` pixels (0: unchanged).

    The kernel reaches ``round(4 * sigma)`` pixels each side; edges are mirrored
    (``dcb|abcd|cba``), as ``scipy.ndimage.gaussian_filter(mode="mirror")`` does.
    """
    if sigma <= 0:
        return maps
    radius = min(int(4 * sigma + 0.5), maps.shape[-1] - 1, maps.shape[-2] - 1)
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = (g / g.sum()).to(maps.dtype)
    out = F.pad(maps, (radius, radius, 0, 0), mode="reflect")
    out = F.conv2d(out, g.view(1, 1, 1, -1))
    out = F.pad(out, (0, 0, radius, radius), mode="reflect")
    return F.conv2d(out, g.view(1, 1, -1, 1))


def anomaly_maps(images: torch.Tensor, reconstructions: torch.Tensor, blur: float = 0.0) -> torch.Tensor:
    """Per-pixel absolute error ``|x - x̂|`` averaged over channels, blurred by ``blur``; ``(N, 1, H, W)``."""
    return gaussian_blur((images - reconstructions).abs().mean(1, keepdim=True), blur)


def blur_sigma(map_blur: float, dataset: str, image_size: int) -> float:
    """The Gaussian sigma of the maps: ``map_blur``, or where it is -1, ``image_size / 32`` for folders, else 0."""
    if map_blur >= 0:
        return float(map_blur)
    return image_size / 32 if dataset == "folder" else 0.0
