"""The convolutional autoencoder: one config dataclass and one ``nn.Module``."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ARCHITECTURE = "conv-ae-v1"
VAE_ARCHITECTURE = "conv-vae-v1"
RESTORE_ARCHITECTURE = "conv-restore-v1"
# The ``model`` parameter's values and the layer layout each names, and each layout's name for people:
# filled by :func:`register` from each model class (the end of this module).
MODELS: dict[str, str] = {}
MODEL_NAMES: dict[str, str] = {}
HEAD_WIDTHS = (16, 32, 64, 64)  # the restore model's segmentation head, per level
HEAD_SIDE = 64  # the side the head works at: a larger image is read in cells of 2x2 (4x4, ...) pixels
MAX_GRID = 8  # the bottleneck grid's largest side: the model halves the image until it is this small


def depth_for(image_size: int) -> int:
    """How many times the encoder halves an image of this side (at least 2, as at 28x28)."""
    depth = 2
    while image_size / 2**depth > MAX_GRID:
        depth += 1
    return depth


def head_cell(image_size: int) -> int:
    """The side of the pixel cells the restore head reads an image of this side in: the largest power
    of two that leaves at least ``HEAD_SIDE`` cells a side (1 up to 127 px, 2 at 128x128, 4 at 256x256)."""
    cell = 1
    while image_size // (2 * cell) >= HEAD_SIDE:
        cell *= 2
    return cell


def check_image_size(image_size: int) -> int:
    """Return ``image_size`` if the model can take it, else say which sizes it can.

    The encoder halves the image :func:`depth_for` times down to a grid of at most
    ``MAX_GRID`` x ``MAX_GRID``, so the side must be a multiple of ``2**depth``.

    Raises:
        ParameterError: the size is under 8 or does not halve evenly.
    """
    from anomalymap_helpers.errors import ParameterError

    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8:
        raise ParameterError(f"image_size={image_size!r}: use a whole number of at least 8, e.g. 64 or 128")
    step = 2 ** depth_for(image_size)
    if image_size % step:
        lower, upper = image_size // step * step, (image_size // step + 1) * step
        near = [n for n in (lower, upper) if n >= 8 and n % 2 ** depth_for(n) == 0]
        raise ParameterError(
            f"image_size={image_size}: the model halves it {depth_for(image_size)} times, so use a multiple of "
            f"{step}, e.g. {' or '.join(map(str, near))}"
        )
    return image_size


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the autoencoder.

    Attributes:
        latent_dim: Size of the bottleneck vector.
        image_size: Height and width of the (square) input images, in pixels.
        channels: Number of image channels (1 grayscale, 3 colour).
        architecture: The layer layout's name, checked when a checkpoint is loaded.
    """

    latent_dim: int = 64
    image_size: int = 28
    channels: int = 1
    architecture: str = ARCHITECTURE

    @property
    def model(self) -> str:
        """``"ae"`` or ``"vae"``: the ``model`` parameter that builds this architecture."""
        return next((k for k, v in MODELS.items() if v == self.architecture), self.architecture)


def check_model(model: str) -> str:
    """Return ``model`` if it is ``"ae"``, ``"vae"`` or ``"restore"``, else say which are."""
    from anomalymap_helpers.errors import ParameterError

    if model not in MODELS:
        kinds = ", ".join(f"{k!r} ({MODEL_NAMES[a]})" for k, a in MODELS.items())
        raise ParameterError(f"model={model!r}: use one of {kinds}")
    return model


# model="auto": the model of each kind of data, by the rule fixed in docs/benchmarks.md ("Which model
# folders get"): on the development texture folders (example-folder --kind textures --seed 1), the
# restore model is the folders' default only if its mean image ROC-AUC, pixel ROC-AUC and AUPRO over
# the folders and 3 seeds are all higher than the autoencoder's (each with its own default score), and
# its mean training time is at most 5 minutes at 64x64 on a 2-core CPU. MNIST and Fashion-MNIST keep
# the autoencoder (the restore model is not measured there).
AUTO_MODELS = {"folder": "restore"}


def resolve_model(model: str, dataset: str) -> str:
    """``model`` with ``"auto"`` resolved for ``dataset`` (:data:`AUTO_MODELS`, else ``"ae"``)."""
    return AUTO_MODELS.get(dataset, "ae") if model == "auto" else check_model(model)


def build_model(config: ModelConfig) -> Model:
    """The module of ``config.architecture``: :class:`ConvAutoencoder`, :class:`ConvVAE` or :class:`RestoreNet`."""
    return MODEL_CLASSES[config.model](config) if config.model in MODEL_CLASSES else ConvAutoencoder(config)


def outputs_of(model: str) -> tuple[str, ...]:
    """What :meth:`~ConvAutoencoder.infer` gives for model kind ``model`` (the :class:`Inference` fields it fills)."""
    return MODEL_CLASSES[check_model(model)].outputs


@dataclass(frozen=True)
class Inference:
    """What a model gives for a batch of images (:meth:`ConvAutoencoder.infer`), every kind the same call.

    Attributes:
        reconstruction: ``(B, C, H, W)`` in [0, 1]; None where it was not asked for (``decode=False``).
        latents: ``(B, latent_dim)``: the codes (a VAE's, the means of q(z|x)).
        logvar: ``(B, latent_dim)``: a VAE's log-variances of q(z|x); else None.
        segmentation: ``(B, 1, H, W)``: the restore model's logits of "this pixel is damaged"; else None.
    """

    reconstruction: torch.Tensor | None
    latents: torch.Tensor
    logvar: torch.Tensor | None = None
    segmentation: torch.Tensor | None = None

    @property
    def kl(self) -> torch.Tensor | None:
        """``(B,)`` a VAE's KL divergence of q(z|x) from the prior, in nats (:func:`kl_divergence`); else None."""
        return None if self.logvar is None else kl_divergence(self.latents, self.logvar)


class ConvAutoencoder(nn.Module):
    """Convolutional autoencoder of the original design.

    Encoder: Conv-ReLU-MaxPool, Conv-ReLU-MaxPool, Flatten, Linear(latent_dim).
    Decoder: Linear, reshape, ConvTranspose-ReLU x2, Conv, Sigmoid, so the
    reconstruction lies in [0, 1] like the input.

    The layers and parameter names are those of the original design; the forward
    pass computes the same function in a cheaper way (same values up to float
    rounding, same gradients; ``tests/test_model_checkpoint.py`` checks both
    against the plain layers):

    - each encoder block runs MaxPool before ReLU: ReLU is monotonic, so
      ``relu(maxpool(x)) == maxpool(relu(x))`` exactly, and the ReLU touches a
      quarter of the pixels;
    - activations stay channels_last (NHWC); the two Linear layers take and give
      that order directly, their weights permuted to match, so no copy is made;
    - a ConvTranspose with kernel 2 and stride 2 maps each input pixel to its own
      2x2 output block, which is one matrix product per pixel. The decoder does
      both as matrix products and rearranges the 4x4 blocks into the image once;
    - the last Conv (16 channels to ``channels``) runs as the transposed
      convolution with the flipped kernel, which oneDNN runs faster than a
      convolution with a single output channel.

    Larger images: at 28x28 the two blocks leave a 7x7 grid. Where two blocks would
    leave a grid wider than ``MAX_GRID``, ``down`` adds Conv(64, 64)-MaxPool-ReLU blocks
    after them and ``up`` the matching ConvTranspose(64, 64, 2, 2)-ReLU blocks before
    the decoder, so the bottleneck stays at most 8x8 (4,096 inputs to the Linear layer
    at any size) and the parameter count modest. At 28x28 both are empty: the same
    layers, names and checkpoints as before.
    """

    architecture = ARCHITECTURE  # the layer layout's name, in its checkpoints
    title = "autoencoder"  # its name for people
    outputs: tuple[str, ...] = ("reconstruction", "latents")  # the Inference fields infer() fills

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = config or ModelConfig()
        c, s, d = self.config.channels, self.config.image_size, self.config.latent_dim
        check_image_size(s)
        extra = depth_for(s) - 2
        self._grid = s // 2 ** (extra + 2)
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
        self.down = nn.Sequential(
            *(
                m
                for _ in range(extra)
                for m in (nn.Conv2d(64, 64, 3, padding=1), nn.MaxPool2d(2), nn.ReLU(inplace=True))
            )
        )
        self.up = nn.Sequential(
            *(m for _ in range(extra) for m in (nn.ConvTranspose2d(64, 64, 2, stride=2), nn.ReLU(inplace=True)))
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
        return self._nhwc_linear(self.encoder[7], self._features(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Map latents ``(B, latent_dim)`` to images ``(B, C, H, W)`` in [0, 1]."""
        b, g = len(z), self._grid
        fc, up1, up2, out = self.decoder_fc, self.decoder[0], self.decoder[2], self.decoder[4]
        # decoder_fc with its rows in (h, w, c) order: its output is the (B, g, g, 64) image.
        w = fc.weight.view(64, g * g, -1).transpose(0, 1).reshape(fc.weight.shape)
        bias = fc.bias.view(64, g * g).t().reshape(-1)
        h = F.linear(z, w, bias).view(b * g * g, 64)
        if len(self.up):  # larger images: upsample to a quarter of the image side first
            h = self.up(h.view(b, g, g, 64).permute(0, 3, 1, 2))  # channels_last
            g = h.shape[-1]
            h = h.permute(0, 2, 3, 1).reshape(b * g * g, 64)
        # ConvTranspose(k=2, s=2): pixel (i, j) -> block (2i+p, 2j+q); weight (in, out, p, q).
        h = F.relu(F.linear(h, up1.weight.permute(2, 3, 1, 0).reshape(-1, 64), up1.bias.repeat(4)))
        h = F.linear(h.view(-1, 32), up2.weight.permute(2, 3, 1, 0).reshape(-1, 32), up2.bias.repeat(4))
        # h is (B, i, j, p1, q1, p2, q2, 16); output row 4i + 2p1 + p2, column 4j + 2q1 + q2.
        s = 4 * g
        h = h.view(b, g, g, 2, 2, 2, 2, 16).permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(b, s, s, 16)
        h = F.relu(h).permute(0, 3, 1, 2)  # (B, 16, s, s), channels_last
        # Conv2d(16, C, 3, padding=1) == ConvTranspose2d with the flipped, transposed kernel.
        w = out.weight.flip(2, 3).transpose(0, 1).contiguous(memory_format=torch.channels_last)
        return torch.sigmoid(F.conv_transpose2d(h, w, out.bias, padding=1))

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's last feature map ``(B, 64, g, g)``: what the bottleneck's Linear layer reads."""
        return self.down(self.encoder[:6](x))  # channels_last

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's last feature map, flattened in NHWC order ``(B, 64 * g * g)``."""
        h = self.feature_map(x)
        return h.permute(0, 2, 3, 1).reshape(len(h), -1)

    def _nhwc_linear(self, fc: nn.Linear, h: torch.Tensor) -> torch.Tensor:
        # Flatten in the NHWC order the memory already has; permute the weight's columns
        # from the original (c, h, w) order to (h, w, c) to match.
        g = self._grid
        w = fc.weight.view(-1, 64, g * g).transpose(1, 2).reshape(fc.weight.shape)
        return F.linear(h, w, fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruct images ``(B, C, H, W)``; same shape out."""
        return self.decode(self.encode(x))

    @property
    def autoencoder(self) -> ConvAutoencoder:
        """The part that reconstructs: the model itself (a restore model holds one beside its head)."""
        return self

    def infer(self, x: torch.Tensor, *, decode: bool = True) -> Inference:
        """The latents of images ``x`` ``(B, C, H, W)`` and, with ``decode``, their reconstructions."""
        z = self.encode(x)
        return Inference(self.decode(z) if decode else None, z)


class ConvVAE(ConvAutoencoder):
    """The variational autoencoder: the same encoder and decoder, a Gaussian bottleneck.

    The encoder's last Linear gives the mean ``mu`` of q(z|x) (``encoder.7``, as in the
    autoencoder) and a second Linear of the same shape its log-variance (``encoder_logvar``).
    Training decodes a sample ``z = mu + exp(logvar / 2) * noise`` (:meth:`sample`) and adds
    ``beta * KL(q(z|x) || N(0, I))`` to the reconstruction error (its objective, ``ELBO`` in
    ``training/objectives.py``), so the latent codes are pulled towards one smooth, standard-normal
    cloud. Scoring, the latents and :meth:`forward` use ``mu``: deterministic, like the autoencoder.
    """

    architecture, title = VAE_ARCHITECTURE, "variational autoencoder"
    outputs = ("reconstruction", "latents", "logvar")

    def __init__(self, config: ModelConfig | None = None) -> None:
        config = replace(config or ModelConfig(), architecture=VAE_ARCHITECTURE)
        super().__init__(config)
        self.encoder_logvar = nn.Linear(64 * self._grid * self._grid, config.latent_dim)

    def encode_stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, logvar)`` of q(z|x), each ``(B, latent_dim)``."""
        h = self._features(x)
        return self._nhwc_linear(self.encoder[7], h), self._nhwc_linear(self.encoder_logvar, h)

    def infer(self, x: torch.Tensor, *, decode: bool = True) -> Inference:
        """The means ``mu`` as the latents, their log-variances and, with ``decode``, the reconstruction of ``mu``."""
        mu, logvar = self.encode_stats(x)
        return Inference(self.decode(mu) if decode else None, mu, logvar)

    def sample(self, x: torch.Tensor, noise: torch.Tensor) -> Inference:
        """With ``noise`` ``(B, latent_dim)`` (standard normal): the reconstruction of the sample
        ``mu + exp(logvar / 2) * noise``, with ``mu`` and ``logvar``, for the training loss."""
        mu, logvar = self.encode_stats(x)
        return Inference(self.decode(mu + torch.exp(0.5 * logvar) * noise.to(mu.dtype)), mu, logvar)


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU(inplace=True))


class SegmentationHead(nn.Module):
    """A small U-Net: ``(B, in_channels, H, W)`` to one logit per pixel ``(B, 1, H, W)``.

    Blocks of two 3x3 convolutions at ``widths`` channels, each level half the side of the one
    before (max-pooling); the way up upsamples (bilinear), joins the level's skip connection and
    convolves again, so the map keeps the image's full resolution. DRAEM's discriminative network
    is the same idea at 64-1,024 channels; these widths are sized for a laptop CPU.

    With ``cell`` > 1 the head reads the image in ``cell`` x ``cell`` pixel cells (each cell's
    pixels side by side as channels, ``pixel_unshuffle``) and gives back a logit for each pixel of
    the cell (``pixel_shuffle``): the map keeps full resolution, while the U-Net works at the side
    it works at on a 64x64 image, for the same time per image and a field of view of the same
    share of it (:func:`head_cell`).
    """

    def __init__(self, in_channels: int, widths: tuple[int, ...] = HEAD_WIDTHS, cell: int = 1) -> None:
        super().__init__()
        self.cell = cell
        self.down = nn.ModuleList(
            _block(cin, cout) for cin, cout in zip((in_channels * cell**2, *widths[:-1]), widths, strict=True)
        )
        self.up = nn.ModuleList(_block(widths[i] + widths[i + 1], widths[i]) for i in range(len(widths) - 1))
        self.out = nn.Conv2d(widths[0], cell**2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cell > 1:
            x = F.pixel_unshuffle(x, self.cell)
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for i in reversed(range(len(self.up))):
            x = F.interpolate(x, size=skips[i].shape[-2:], mode="bilinear", align_corners=False)
            x = self.up[i](torch.cat([skips[i], x], 1))
        x = self.out(x)
        return F.pixel_shuffle(x, self.cell) if self.cell > 1 else x


class RestoreNet(nn.Module):
    """The defect-learning model (``model="restore"``): an autoencoder that restores synthetic
    damage, and a segmentation head that says where it was.

    Made of two parts: :attr:`autoencoder`, a :class:`ConvAutoencoder`, and :attr:`head`, a
    :class:`SegmentationHead`. Trained on normal images damaged by
    :mod:`~anomalymap_helpers.pipeline.models.damage`: the autoencoder is asked for the *undamaged* image,
    and the head reads the input, its reconstruction and their absolute difference and predicts the
    damaged pixels (DRAEM's reconstructive and discriminative networks, Zavrtanik et al., ICCV 2021,
    at a laptop's size). The head reads the reconstruction without passing its gradient back, so the
    autoencoder only ever learns to restore. :meth:`forward` is the reconstruction, as every model's;
    :meth:`infer` adds the per-pixel logits of "damaged", whose sigmoid is the ``segment`` score's map.

    Its checkpoints name the autoencoder's weights as a :class:`ConvAutoencoder`'s (``encoder.0.weight``,
    not ``autoencoder.encoder.0.weight``), beside ``head.*``: the files of ``conv-restore-v1``.
    """

    architecture, title = RESTORE_ARCHITECTURE, "defect-learning autoencoder"
    outputs = ("reconstruction", "latents", "segmentation")

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = replace(config or ModelConfig(), architecture=RESTORE_ARCHITECTURE)
        self.autoencoder = ConvAutoencoder(replace(self.config, architecture=ARCHITECTURE))
        self.head = SegmentationHead(3 * self.config.channels, cell=head_cell(self.config.image_size))
        self.to(memory_format=torch.channels_last)
        self.register_state_dict_post_hook(_unprefixed)
        self.register_load_state_dict_pre_hook(_prefixed)

    @property
    def _grid(self) -> int:
        return self.autoencoder._grid

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.encode(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.decode(z)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.feature_map(x)

    def segment(self, x: torch.Tensor, reconstruction: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``(B, 1, H, W)`` of "this pixel is damaged" for images ``x`` ``(B, C, H, W)``."""
        r = (self.autoencoder(x) if reconstruction is None else reconstruction).detach().to(x.dtype)
        return self.head(torch.cat([x, r, (x - r).abs()], 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The reconstruction of images ``x``, as every model's."""
        return self.autoencoder(x)

    def infer(self, x: torch.Tensor, *, decode: bool = True) -> Inference:
        """The autoencoder's latents and, with ``decode``, its reconstruction and the head's logits."""
        out = self.autoencoder.infer(x, decode=decode)
        r = out.reconstruction
        return out if r is None else Inference(r, out.latents, segmentation=self.segment(x, r))


def _unprefixed(module: nn.Module, state: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    """State-dict hook: the autoencoder's weights under the names of a :class:`ConvAutoencoder`'s."""
    inner = prefix + "autoencoder."
    items = list(state.items())
    state.clear()  # refilled in the same order
    state.update((prefix + k[len(inner):] if k.startswith(inner) else k, v) for k, v in items)


def _prefixed(module: nn.Module, state: dict[str, Any], prefix: str, *args: Any) -> None:
    """Load pre-hook: :func:`_unprefixed`'s names back under ``autoencoder.``."""
    own = (prefix + "head.", prefix + "autoencoder.")
    items = list(state.items())
    state.clear()
    state.update((prefix + "autoencoder." + k[len(prefix):] if k.startswith(prefix) and not k.startswith(own) else k, v)
                 for k, v in items)


# Every model kind's module, by the ``model`` parameter's value.
MODEL_CLASSES: dict[str, type[nn.Module]] = {}


def register(kind: str, cls: type[nn.Module]) -> None:
    """Make ``cls`` the model of ``model=kind``: its ``architecture`` names its checkpoints, its ``title``
    is said to people, its ``outputs`` are the :class:`Inference` fields its ``infer`` fills (which scores
    it has). A new model kind is a class and this call here, and its objective in
    ``training/objectives.py`` (``OBJECTIVES``)."""
    MODEL_CLASSES[kind], MODELS[kind], MODEL_NAMES[cls.architecture] = cls, cls.architecture, cls.title


for _kind, _cls in (("ae", ConvAutoencoder), ("vae", ConvVAE), ("restore", RestoreNet)):
    register(_kind, _cls)
Model = ConvAutoencoder | ConvVAE | RestoreNet  # what the rest of the package types a model as


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``KL(N(mu, exp(logvar)) || N(0, I))`` per row, in nats; ``(B,)`` float32."""
    mu, logvar = mu.float(), logvar.float()
    return 0.5 * (mu.square() + logvar.exp() - 1 - logvar).sum(1)


class ReferenceAutoencoder(nn.Module):
    """The original design's forward pass over a :class:`ConvAutoencoder`'s own layers.

    Conv-ReLU-MaxPool blocks, Flatten, the ConvTranspose and Conv modules called as
    they are, contiguous (NCHW) weights. It shares the parameters of ``model`` (and
    moves them to the NCHW layout). Used as the baseline of the speed benchmark and
    by the tests that check :class:`ConvAutoencoder` computes the same function.
    """

    def __init__(self, model: ConvAutoencoder) -> None:
        super().__init__()
        e = model.encoder
        self._grid = model._grid
        down = [m for conv in model.down[::3] for m in (conv, nn.ReLU(), nn.MaxPool2d(2))]
        self.encoder = nn.Sequential(
            e[0], nn.ReLU(), nn.MaxPool2d(2), e[3], nn.ReLU(), nn.MaxPool2d(2), *down, e[6], e[7]
        )
        self.decoder_fc = model.decoder_fc
        self.up = model.up
        self.decoder = model.decoder
        self.to(memory_format=torch.contiguous_format)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruct images ``(B, C, H, W)``; same shape out."""
        h = self.decoder_fc(self.encoder(x)).view(-1, 64, self._grid, self._grid)
        return self.decoder(self.up(h))
