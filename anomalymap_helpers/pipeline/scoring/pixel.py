"""Scores read off the reconstruction: ``mse``, ``topk`` (off the map), ``ssim`` and the VAE's ``elbo``."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def mse_scores(images: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
    """Per-image mean squared error ``mean((x - x̂)²)`` over C, H, W; shape ``(N,)``."""
    return (images - reconstructions).pow(2).flatten(1).mean(1)


def elbo_scores(mse: torch.Tensor, kl: torch.Tensor, pixels: int) -> torch.Tensor:
    """The negative ELBO per pixel ``(sum of squared errors + kl) / pixels`` from the per-image
    MSE (:func:`mse_scores`, already the squared errors over ``pixels``); shape ``(N,)``."""
    return mse + kl / pixels


def topk_scores(maps: torch.Tensor, k: int = 10) -> torch.Tensor:
    """Mean of the ``k`` largest squared map values per image; ``maps`` ``(N, 1, H, W)`` from :func:`anomaly_maps`."""
    return maps.flatten(1).square().topk(min(k, maps[0].numel()), dim=1).values.mean(1)


# Up to this many pixels a side, SSIM's window sums are two matrix products with banded
# matrices (5x faster than the 7x7 convolution on 28x28 images); above it, the convolution.
BANDED_MAX = 128


def _banded(n: int, g: torch.Tensor) -> torch.Tensor:
    """``(n, n - len(g) + 1)``: column ``j`` holds ``g`` in rows ``j .. j + len(g) - 1``."""
    out = torch.zeros(n, n - len(g) + 1)
    for j in range(out.shape[1]):
        out[j : j + len(g), j] = g
    return out


def ssim_scores(
    images: torch.Tensor, reconstructions: torch.Tensor, window: int = 7, sigma: float = 1.5
) -> torch.Tensor:
    """``1 - mean SSIM`` per image, with a Gaussian window (Wang et al. 2004, constants for range 1).

    The local means and (co)variances are taken over every window that fits inside the image.
    """
    coords = torch.arange(window, dtype=torch.float32) - (window - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    c1, c2 = 0.01**2, 0.03**2
    x, y = images.float(), reconstructions.float()
    h, w = x.shape[-2:]

    def blur(t: torch.Tensor) -> torch.Tensor:  # (..., h, w) -> (..., h - window + 1, w - window + 1)
        if max(h, w) <= BANDED_MAX:  # the 2-D Gaussian is the product of two 1-D ones
            return _banded(h, g).T @ (t @ _banded(w, g))
        out = F.conv2d(t.reshape(-1, 1, h, w), g.outer(g).view(1, 1, window, window))
        return out.view(*t.shape[:-2], h - window + 1, w - window + 1)

    mx, my, xx, yy, xy = blur(torch.stack([x, y, x * x, y * y, x * y]))
    vx, vy, cxy = xx - mx**2, yy - my**2, xy - mx * my
    ssim = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return 1 - ssim.flatten(1).mean(1)
