"""``patch-knn``, the default score on MNIST and Fashion-MNIST, and its map: the part of an image
that its best-matching normal image does not match."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from anomalymap_helpers.errors import ParameterError
from anomalymap_helpers.pipeline.models import ConvAutoencoder
from anomalymap_helpers.pipeline.scoring.inference import encode
from anomalymap_helpers.pipeline.scoring.knn import nearest
from anomalymap_helpers.pipeline.training.device import Precision, inference_precision

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
