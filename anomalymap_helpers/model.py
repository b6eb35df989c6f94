"""The convolutional autoencoder: one config dataclass and one ``nn.Module``."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

ARCHITECTURE = "conv-ae-v1"


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the autoencoder.

    Attributes:
        latent_dim: Size of the bottleneck vector.
        image_size: Height and width of the (square) input images, in pixels.
        channels: Number of image channels.
    """

    latent_dim: int = 64
    image_size: int = 28
    channels: int = 1
    architecture: str = ARCHITECTURE


class ConvAutoencoder(nn.Module):
    """Convolutional autoencoder of the original design.

    Encoder: Conv-ReLU-MaxPool, Conv-ReLU-MaxPool, Flatten, Linear(latent_dim).
    Decoder: Linear, reshape, ConvTranspose-ReLU x2, Conv, Sigmoid, so the
    reconstruction lies in [0, 1] like the input.

    Each encoder block runs MaxPool before ReLU: ReLU is monotonic, so
    ``relu(maxpool(x)) == maxpool(relu(x))`` exactly (values and gradients),
    and the ReLU then touches a quarter of the pixels. The parameter names
    are those of the Conv-ReLU-MaxPool order.
    """

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = config or ModelConfig()
        c, s, d = self.config.channels, self.config.image_size, self.config.latent_dim
        if s % 4:
            raise ValueError(f"image_size must be a multiple of 4, got {s}")
        self._grid = s // 4
        flat = 64 * self._grid * self._grid
        self.encoder = nn.Sequential(
            nn.Conv2d(c, 32, 3, padding=1),
            nn.MaxPool2d(2),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.MaxPool2d(2),
            nn.ReLU(inplace=True),
            nn.Flatten(),
            nn.Linear(flat, d),
        )
        self.decoder_fc = nn.Linear(d, flat)
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(64, 32, 2, stride=2),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(32, 16, 2, stride=2),
            nn.ReLU(inplace=True),
            nn.Conv2d(16, c, 3, padding=1),
            nn.Sigmoid(),
        )
        # channels_last convolutions run several times faster on CPUs (oneDNN) and on
        # tensor-core GPUs; callers pass channels_last inputs (see train.to_device).
        self.to(memory_format=torch.channels_last)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Map images ``(B, C, H, W)`` in [0, 1] to latents ``(B, latent_dim)``."""
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Map latents ``(B, latent_dim)`` to images ``(B, C, H, W)`` in [0, 1]."""
        h = self.decoder_fc(z).view(-1, 64, self._grid, self._grid)
        return self.decoder(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruct images ``(B, C, H, W)``; same shape out."""
        return self.decode(self.encode(x))
