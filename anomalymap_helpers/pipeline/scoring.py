"""Reconstructions, per-pixel anomaly maps and per-image anomaly scores.

The anomaly map of an image ``x`` with reconstruction ``x̂`` is the absolute
error ``|x - x̂|`` per pixel, averaged over the colour channels and, where
``map_blur`` asks for it, smoothed by a Gaussian (as the MVTec AD literature does:
a defect is a region, not a single pixel). Per-image scores (higher = more anomalous):

- ``mse``: the mean squared error ``mean((x - x̂)²)`` (the original design);
- ``topk``: the mean of the ``k`` largest squared values of the map, so a small
  wrong stroke is not averaged away by a well-rebuilt background; it is read off
  the map, so the map always shows where it comes from;
- ``ssim``: ``1 - SSIM(x, x̂)``, a structural rather than pixel-wise error;
- ``latent-knn``: the cosine distance from the image's latent vector to its
  ``k`` nearest *training normals'* latents;
- ``patch-knn`` (the default on MNIST and Fashion-MNIST): the largest cell of a map
  of its own, on the encoder's feature grid: how far each cell's features are from
  those at the same cell of the best-matching of the image's nearest training
  normals (:class:`PatchKnn`);
- ``ensemble``: ``latent-knn`` (what the image is) and ``ssim`` (how its
  structure is rebuilt), each standardised by the mean and spread of its
  scores on the validation normals, then averaged;
- ``elbo`` (``model="vae"`` only): the negative evidence lower bound per pixel,
  ``(sum of squared errors + KL(q(z|x) || N(0, I))) / pixels``, with the
  reconstruction of the mean code (one deterministic pass, no sampling) and the
  KL weight 1 whatever ``beta`` trained with: the bound on ``-log p(x)`` (up to a
  constant) that the VAE's likelihood view scores by.

Everything a score is fitted on (the kNN reference set, the standardisation)
comes from the normal training and validation images, never the test labels.
``score_method="auto"`` and ``map_blur=-1`` are fixed rules by the kind of data
(:func:`default_method`, :func:`blur_sigma`), not choices made on test results.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from anomalymap_helpers.errors import ParameterError
from anomalymap_helpers.pipeline.device import Precision, inference_precision, retain_freed_memory
from anomalymap_helpers.pipeline.model import ConvAutoencoder, ConvVAE, kl_divergence
from anomalymap_helpers.runs import storage


@torch.inference_mode()
def infer(
    model: ConvAutoencoder,
    images: torch.Tensor,
    *,
    batch_size: int = 512,
    precision: Precision | None = None,
    decode: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """The one inference loop: latents, and reconstructions unless ``decode`` is False.

    Runs ``images`` ``(N, C, H, W)`` in [0, 1] through the model in batches on the
    model's device, with :func:`~anomalymap_helpers.pipeline.device.inference_precision`
    unless ``precision`` is given, and returns float32 tensors on the CPU.

    Returns:
        ``(reconstructions (N, C, H, W) or None, latents (N, latent_dim))``; a VAE's latents
        are the means of q(z|x).
    """
    out, latents, _ = _infer(model, images, batch_size=batch_size, precision=precision, decode=decode)
    return out, latents


@torch.inference_mode()
def _infer(
    model: ConvAutoencoder,
    images: torch.Tensor,
    *,
    batch_size: int = 512,
    precision: Precision | None = None,
    decode: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
    """:func:`infer`, plus each image's KL divergence ``(N,)`` where ``model`` is a VAE (else None)."""
    device = next(model.parameters()).device
    precision = precision or inference_precision(device)
    if device.type == "cpu":
        retain_freed_memory()
    model.eval()
    out = torch.empty(images.shape, dtype=torch.float32) if decode else None
    latents = torch.empty(len(images), model.config.latent_dim, dtype=torch.float32)
    variational = isinstance(model, ConvVAE)
    kl = torch.empty(len(images), dtype=torch.float32) if variational else None
    for i in range(0, len(images), batch_size):
        batch = images[i : i + batch_size].to(device).contiguous(memory_format=torch.channels_last)
        with precision.autocast():
            if variational:
                z, logvar = model.encode_stats(batch)
                kl[i : i + batch_size] = kl_divergence(z, logvar).cpu()
            else:
                z = model.encode(batch)
            if out is not None:
                out[i : i + batch_size] = model.decode(z).float().cpu()
        latents[i : i + batch_size] = z.float().cpu()
    return out, latents, kl


def reconstruct(
    model: ConvAutoencoder, images: torch.Tensor, *, batch_size: int = 512, precision: Precision | None = None
) -> torch.Tensor:
    """Reconstructions ``(N, C, H, W)`` float32 of ``images`` (see :func:`infer`)."""
    return infer(model, images, batch_size=batch_size, precision=precision)[0]


def encode(
    model: ConvAutoencoder, images: torch.Tensor, *, batch_size: int = 512, precision: Precision | None = None
) -> torch.Tensor:
    """Latents ``(N, latent_dim)`` float32 of ``images``, without decoding (see :func:`infer`)."""
    return infer(model, images, batch_size=batch_size, precision=precision, decode=False)[1]


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


def default_method(dataset: str) -> str:
    """The score of ``score_method="auto"``: ``topk`` (read off the map) for folders, else ``patch-knn``.

    A folder data set is about *where* the defect is, at the pixel, so its default score is
    read off the full-resolution reconstruction error that the pixel-level measures score;
    for MNIST and Fashion-MNIST the anomaly is a whole other class, which the encoder's
    features compared with the nearest normals' tell apart (``patch-knn``, whose own map is
    on the encoder's coarse grid). Chosen on a development split of the *training* images
    (docs/benchmarks.md), never on test results.
    """
    return "topk" if dataset == "folder" else DEFAULT_METHOD


def blur_sigma(map_blur: float, dataset: str, image_size: int) -> float:
    """The Gaussian sigma of the maps: ``map_blur``, or where it is -1, ``image_size / 32`` for folders, else 0."""
    if map_blur >= 0:
        return float(map_blur)
    return image_size / 32 if dataset == "folder" else 0.0


def mse_scores(images: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
    """Per-image mean squared error ``mean((x - x̂)²)`` over C, H, W; shape ``(N,)``."""
    return (images - reconstructions).pow(2).flatten(1).mean(1)


@dataclass(frozen=True)
class Scored:
    """Images with their reconstructions, maps and scores.

    Attributes:
        images: ``(N, C, H, W)`` float32 in [0, 1].
        reconstructions: ``(N, C, H, W)`` float32 in [0, 1].
        maps: ``(N, 1, H, W)`` anomaly maps (see :func:`anomaly_maps`).
        scores: ``(N,)`` per-image MSE.
        latents: ``(N, latent_dim)`` encoder outputs.
        kl: ``(N,)`` KL divergence of q(z|x) from the prior, for a VAE; else None.
    """

    images: torch.Tensor
    reconstructions: torch.Tensor
    maps: torch.Tensor
    scores: torch.Tensor
    latents: torch.Tensor
    kl: torch.Tensor | None = None


def score(
    model: ConvAutoencoder,
    images: torch.Tensor,
    *,
    batch_size: int = 512,
    blur: float = 0.0,
    precision: Precision | None = None,
) -> Scored:
    """Reconstruct and score ``images`` ``(N, C, H, W)``; ``blur`` is the maps' Gaussian sigma in pixels.

    ``precision`` as in :func:`infer` (default: mixed where the device has it natively).
    """
    recon, latents, kl = _infer(model, images, batch_size=batch_size, precision=precision)
    return Scored(images, recon, anomaly_maps(images, recon, blur), mse_scores(images, recon), latents, kl)


METHODS = ("mse", "topk", "ssim", "latent-knn", "patch-knn", "ensemble")  # every model's
VAE_METHODS = ("elbo",)  # the variational autoencoder's own
DEFAULT_METHOD = "patch-knn"
ENSEMBLE = ("latent-knn", "ssim")


def check_method(method: str, dataset: str = "mnist", model: str | None = None) -> str:
    """Return ``method`` (``"auto"`` resolved for ``dataset``) if it is known, else say which are.

    With ``model`` (``"ae"`` or ``"vae"``), ``elbo`` is refused for an autoencoder.
    """
    if method == "auto":
        return default_method(dataset)
    if method not in METHODS + VAE_METHODS:
        raise ParameterError(f"score_method={method!r}: use one of {['auto', *METHODS, *VAE_METHODS]}")
    if method in VAE_METHODS and model == "ae":
        raise ParameterError(
            f"score_method={method!r} is the variational autoencoder's negative ELBO, and this run's model is an "
            f"autoencoder: train with -p model vae in 02, or use one of {['auto', *METHODS]}"
        )
    return method


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


def knn_distances(reference: torch.Tensor, queries: torch.Tensor, k: int = 2, chunk: int = 1024) -> torch.Tensor:
    """Mean cosine distance from each query ``(M, D)`` to its ``k`` nearest rows of ``reference`` ``(N, D)``."""
    return nearest(reference, queries, k, chunk)[0].mean(1)


def nearest(
    reference: torch.Tensor, queries: torch.Tensor, k: int = 2, chunk: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` nearest rows of ``reference`` ``(N, D)`` to each query ``(M, D)`` by cosine distance:
    ``(distances (M, k), indices (M, k))``, nearest first."""
    ref = F.normalize(reference.float(), dim=1)
    k = min(k, len(ref))
    dist, index = torch.empty(len(queries), k), torch.empty(len(queries), k, dtype=torch.long)
    # One similarity buffer, reused: fresh 100 MB blocks cost page faults on every chunk.
    buf = torch.empty(min(chunk, len(queries)), len(ref))
    for i in range(0, len(queries), chunk):
        q = F.normalize(queries[i : i + chunk].float(), dim=1)
        sim = torch.mm(q, ref.T, out=buf[: len(q)])
        top = sim.topk(k, dim=1)
        dist[i : i + len(q)], index[i : i + len(q)] = 1 - top.values, top.indices
    return dist, index


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


PATCH_NEIGHBOURS = 10  # training normals whose feature maps patch-knn compares against, found by latent code
PATCH_SMOOTH = 3  # the side of the neighbourhood patch-knn's grid is averaged over


def unit_cells(h: torch.Tensor) -> torch.Tensor:
    """``patch-knn``'s step 2: feature maps ``(B, C, g, g)`` each divided by its whole length, as
    ``(B, g * g, C)`` float32, cell by cell (shared by :class:`PatchKnn` and the ONNX export)."""
    f = h.float().permute(0, 2, 3, 1).flatten(1, 2)
    return f / f.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None]


def smooth_cells(cells: torch.Tensor, g: int, smooth: int) -> torch.Tensor:
    """``(..., g * g)`` cell distances averaged over each cell's ``smooth x smooth`` neighbourhood
    (cells off the grid left out), as ``(..., g, g)``; ``smooth`` 1: unchanged."""
    grid = cells.reshape(-1, 1, g, g)
    if smooth > 1:
        grid = F.avg_pool2d(grid, smooth, 1, smooth // 2, count_include_pad=False)
    return grid.reshape(*cells.shape[:-1], g, g)


def lowest_peak(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``patch-knn``'s step 4: of ``(N, k, g, g)`` maps, each image's with the lowest peak (its best
    match), ``(N, g, g)``, and which of the ``k`` it is, ``(N,)``."""
    best = maps.flatten(2).amax(2).argmin(1)
    g = maps.shape[-2:]
    return maps.gather(1, best[:, None, None, None].expand(-1, 1, *g))[:, 0], best


class PatchKnn:
    """``patch-knn``, the default score: the part of an image that its best-matching normal image does not match.

    1. The ``k`` training normals whose latent codes are nearest the image's are found
       (cosine distance, as for ``latent-knn``).
    2. Every image's last encoder feature map (the ``g x g`` grid the bottleneck reads,
       7x7 at 28x28, 64 features a cell, each cell seeing about a third of the image) is
       divided by its length (all cells and features together), so that what is compared
       is the pattern of the features, not how strongly the strokes fire.
    3. For each of those normals, a map: at each cell, the Euclidean distance between the
       image's features and the normal's at the same cell, averaged over the cell's
       ``smooth x smooth`` neighbourhood (cells beyond the edge left out). (Before the
       averaging, the squares of one map's cells add up to twice the cosine distance between
       the two feature maps.)
    4. The map is that of the normal whose map has the lowest peak: the best match.
       :meth:`__call__` upsamples it (bilinear) to the image; :meth:`grids` gives it on the
       grid with the normal's position in the training images.
    5. The image score is the map's largest cell (:meth:`scores`).

    So the image score is read off the map: its brightest cell on the grid (the upsampled
    picture's peak can lie a little below it, between cells). One normal image must match
    every cell at once, so the image's layout counts (a model of one digit rejects the
    others, and a plain 1 is not pieced together from the strokes of several 7s); the largest
    cell keeps a small odd part (the closed loop that turns a 4 into a 9) from being averaged
    away.

    Args:
        model: The trained (variational) autoencoder.
        train_images: ``(N, C, H, W)`` the normal training images, in the order of ``reference``.
        reference: ``(N, latent_dim)`` their latents (the retrieval set); encoded here if None.
        k: Normals compared against.
        smooth: The neighbourhood's side in cells (1: no averaging).
        precision: Of the encoder's passes (default: as :func:`infer`).
    """

    def __init__(
        self,
        model: ConvAutoencoder,
        train_images: torch.Tensor,
        reference: torch.Tensor | None = None,
        *,
        k: int = PATCH_NEIGHBOURS,
        smooth: int = PATCH_SMOOTH,
        precision: Precision | None = None,
    ) -> None:
        if train_images.dim() != 4:
            raise ParameterError(f"patch-knn needs the training images (N, C, H, W), not a tensor of shape {tuple(train_images.shape)}")
        reference = encode(model, train_images, precision=precision) if reference is None else reference
        if len(train_images) != len(reference):
            raise ParameterError(f"{len(train_images)} training images but {len(reference)} reference latents")
        self.model, self.train_images, self.reference = model, train_images, reference
        self.k, self.smooth, self.precision = min(k, len(train_images)), smooth, precision
        self._train_features: torch.Tensor | None = None  # every training image's, once many images are scored

    @torch.inference_mode()
    def features(self, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """The encoder's last feature map of ``images``, ``(N, g * g, 64)`` float32 on the CPU, cell by cell,
        each image's divided by its length (step 2)."""
        device = next(self.model.parameters()).device
        precision = self.precision or inference_precision(device)
        self.model.eval()
        out = []
        for i in range(0, len(images), batch_size):
            batch = images[i : i + batch_size].to(device).contiguous(memory_format=torch.channels_last)
            with precision.autocast():
                h = self.model.feature_map(batch)
            out.append(unit_cells(h).cpu())  # (b, L, 64)
        return torch.cat(out) if out else torch.empty(0, 0, 0)

    def smoothed(self, cells: torch.Tensor) -> torch.Tensor:
        """``(..., g * g)`` cell distances averaged over each cell's neighbourhood, as ``(..., g, g)``."""
        return smooth_cells(cells, self.model._grid, self.smooth)

    @torch.inference_mode()
    def neighbour_maps(
        self,
        images: torch.Tensor,
        latents: torch.Tensor | None = None,
        chunk: int = 2048,
        neighbours: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Step 3: ``(maps (N, k, g, g), neighbours (N, k))``, one map per latent-nearest normal, nearest first.

        Args:
            images: ``(N, C, H, W)`` in [0, 1].
            latents: Their latents, where already encoded (else encoded here).
            chunk: Images handled together.
            neighbours: ``(N, >= k)`` their latent-nearest training images, nearest first, where already
                found (:func:`nearest` over ``reference``; :class:`Scorer` shares one search with ``latent-knn``).

        Where ``images`` have at least as many neighbours in all as there are training images, every
        training image's feature map is encoded once and kept (``N x g*g x 64`` floats: 610 MB for
        MNIST's 48,646); for fewer, just their neighbours' are encoded.
        """
        if neighbours is not None and (len(neighbours) != len(images) or neighbours.shape[1] < self.k):
            raise ParameterError(f"neighbours of shape {tuple(neighbours.shape)} for {len(images)} images and k={self.k}")
        if neighbours is None:
            latents = encode(self.model, images, precision=self.precision) if latents is None else latents
        if self._train_features is None and len(images) * self.k >= len(self.train_images):
            # Many images: their neighbours cover much of the training set, so encode it all once.
            self._train_features = self.features(self.train_images)
        maps, found = [], []
        for i in range(0, len(images), chunk):
            if neighbours is None:
                _, near = nearest(self.reference, latents[i : i + chunk], self.k)  # (b, k)
            else:
                near = neighbours[i : i + chunk, : self.k]
            if self._train_features is not None:
                theirs, where = self._train_features, near
            else:  # a few images: encode just their neighbours
                used, where = torch.unique(near, return_inverse=True)
                theirs = self.features(self.train_images[used])  # (u, L, 64)
            mine = self.features(images[i : i + chunk])  # (b, L, 64)
            cells = torch.stack([(theirs[where[:, j]] - mine).norm(dim=2) for j in range(where.shape[1])], 1)
            maps.append(self.smoothed(cells))  # (b, k, g, g)
            found.append(near)
        if not maps:
            g = self.model._grid
            return torch.empty(0, self.k, g, g), torch.empty(0, self.k, dtype=torch.long)
        return torch.cat(maps), torch.cat(found)

    def grids(
        self, images: torch.Tensor, latents: torch.Tensor | None = None, neighbours: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Step 4: ``(maps (N, g, g), matches (N,))``: each image's map and its best-matching normal
        (a position in the training images). ``latents``, ``neighbours``: as :meth:`neighbour_maps`."""
        maps, neighbours = self.neighbour_maps(images, latents, neighbours=neighbours)
        best_map, best = lowest_peak(maps)
        return best_map, neighbours.gather(1, best[:, None])[:, 0]

    def scores(
        self, images: torch.Tensor, latents: torch.Tensor | None = None, neighbours: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The image scores ``(N,)``: each map's largest cell."""
        grids, _ = self.grids(images, latents, neighbours)
        return grids.flatten(1).amax(1) if len(grids) else torch.empty(0)

    def explain(self, images: torch.Tensor, latents: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(maps (N, 1, H, W), matches (N,))``: :meth:`grids`' maps upsampled (bilinear) to the images'
        size, and each image's best-matching normal (a position in the training images), the image
        its map compares against."""
        grids, matches = self.grids(images, latents)
        if not len(grids):
            return torch.empty(0, 1, *images.shape[-2:]), matches
        return F.interpolate(grids[:, None], size=images.shape[-2:], mode="bilinear", align_corners=False), matches

    def __call__(self, images: torch.Tensor, latents: torch.Tensor | None = None) -> torch.Tensor:
        """The maps ``(N, 1, H, W)`` of :meth:`explain`."""
        return self.explain(images, latents)[0]


class Scorer:
    """Every score method, fitted on normal images only.

    Args:
        model: The trained autoencoder.
        train_images: ``(N, C, H, W)`` normal training images: the reference set of the kNN
            scores (``patch-knn`` compares feature maps of the nearest of them).
        val: Validation normals, ``(M, C, H, W)`` images or what :func:`score` made of
            them: the standardisation of the ensemble.
        reference: ``train_images``' latents where already encoded (e.g.
            :meth:`~anomalymap_helpers.runs.opened.Run.reference_latents`, cached per model);
            else encoded here.
        k: Neighbours of ``latent-knn``.
        topk: Pixels of ``topk``.
        blur: The maps' Gaussian sigma, where ``val`` is images.
        precision: Of ``patch-knn``'s encoder passes (default: as :func:`infer`).

    Attributes:
        val_scores: Every method's ``(M,)`` scores of the validation normals (for a
            threshold), computed once here.
        patch: The :class:`PatchKnn` of ``patch-knn`` (its maps).
    """

    def __init__(
        self,
        model: ConvAutoencoder,
        train_images: torch.Tensor,
        val: torch.Tensor | Scored,
        *,
        reference: torch.Tensor | None = None,
        k: int = 2,
        topk: int = 10,
        blur: float = 0.0,
        precision: Precision | None = None,
    ) -> None:
        if train_images.dim() != 4:
            raise ParameterError(
                f"Scorer takes the normal training images (N, C, H, W), not a tensor of shape {tuple(train_images.shape)}; "
                "give their cached latents as reference="
            )
        self.model, self.k, self.topk = model, k, topk
        self.patch = PatchKnn(model, train_images, reference, precision=precision)
        self.reference = self.patch.reference
        base = self._base(val if isinstance(val, Scored) else score(model, val, blur=blur, precision=precision))
        self.stats = {m: (float(base[m].mean()), float(base[m].std()) or 1.0) for m in ENSEMBLE}
        self.val_scores = self._with_ensemble(base)

    def _base(self, scored: Scored) -> dict[str, torch.Tensor]:
        # One search of the reference for both kNN scores: the nearest first, so latent-knn's k are the first k.
        distances, neighbours = nearest(self.reference, scored.latents, max(self.k, self.patch.k))
        base = {
            "mse": scored.scores,
            "topk": topk_scores(scored.maps, self.topk),
            "ssim": ssim_scores(scored.images, scored.reconstructions),
            "latent-knn": distances[:, : self.k].mean(1),
            "patch-knn": self.patch.scores(scored.images, neighbours=neighbours),
        }
        if scored.kl is not None:
            base["elbo"] = elbo_scores(scored.scores, scored.kl, scored.images[0].numel())
        return base

    def _with_ensemble(self, base: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        ensemble = torch.stack([(base[m] - mu) / sd for m, (mu, sd) in self.stats.items()]).mean(0)
        return {**base, "ensemble": ensemble}

    def all_scores(self, scored: Scored) -> dict[str, torch.Tensor]:
        """Every method's ``(N,)`` scores for images already reconstructed by :func:`score`."""
        return self._with_ensemble(self._base(scored))


def write_scores(
    path: str | os.PathLike[str], parts: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
) -> Path:
    """Write ``reconstruction_errors.csv``: columns ``split,index,label,score``.

    Args:
        path: The CSV file.
        parts: By split name, ``(indices, labels, scores)``, each ``(N,)``.
    """
    rows = (
        (name, int(i), int(label), float(s))
        for name, (indices, labels, scores) in parts.items()
        for i, label, s in zip(indices.tolist(), labels.tolist(), scores.tolist(), strict=True)
    )
    return storage.write_csv(path, ["split", "index", "label", "score"], rows)


def read_scores(path: str | os.PathLike[str], split: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
    """``(indices, scores)`` of one split from ``reconstruction_errors.csv``."""
    import csv

    with open(path, newline="") as fh:
        rows = [(int(r["index"]), float(r["score"])) for r in csv.DictReader(fh) if r["split"] == split]
    if not rows:
        raise ParameterError(f"{path} has no rows of split {split!r}: run notebook 03_evaluation again")
    indices, scores = zip(*rows, strict=True)
    return torch.tensor(indices), torch.tensor(scores, dtype=torch.float64)
