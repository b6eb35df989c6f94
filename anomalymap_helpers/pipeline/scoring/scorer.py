"""Every score by name: the registry of methods, the rule of ``score_method="auto"``, and the
:class:`Scorer` that fits them on normal images and computes them together."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from anomalymap_helpers.errors import ParameterError
from anomalymap_helpers.pipeline.models import Model, outputs_of
from anomalymap_helpers.pipeline.scoring.inference import Scored, score
from anomalymap_helpers.pipeline.scoring.knn import nearest
from anomalymap_helpers.pipeline.scoring.latent_maps import LatentKnnMaps
from anomalymap_helpers.pipeline.scoring.patch_knn import PatchKnn
from anomalymap_helpers.pipeline.scoring.patch_memory import PatchMemory
from anomalymap_helpers.pipeline.scoring.pixel import elbo_scores, ssim_scores, topk_scores
from anomalymap_helpers.pipeline.scoring.segment import SegmentMaps, segment_scores
from anomalymap_helpers.pipeline.scoring.two_signal import calibration, two_signal_maps
from anomalymap_helpers.pipeline.training.device import Precision

Neighbours = tuple[torch.Tensor, torch.Tensor]  # (distances (N, k), indices (N, k)) of the shared search


@dataclass(frozen=True)
class Method:
    """One score method, as the registry names it.

    Attributes:
        name: What ``score_method`` calls it.
        compute: ``(scorer, scored, neighbours) -> (N,)`` scores, from the images' :class:`Scored`
            and the one nearest-normal search :class:`Scorer` makes for every kNN score; None for
            a combination of other methods (``ensemble``).
        needs_reference: Whether it looks up the training normals (the kNN reference set, which
            the ONNX detector then carries).
        needs_train_images: Whether it compares with the training images themselves (the ONNX
            detector then carries them too).
        own_map: The class that draws the score's own map (called as ``cls(model, train_images,
            reference)`` on images), or None where the score is read off the reconstruction error.
        needs: What it reads of a model's :class:`~anomalymap_helpers.pipeline.models.Inference` beyond the
            reconstruction and latents every model gives (``logvar``, ``segmentation``): the model kinds
            whose ``outputs`` hold it have the score.
        pixel_map: ``(scorer, scored) -> (N, 1, H, W)``: the full-resolution map its pixels are judged by
            (pixel ROC-AUC, AUPRO), read off the images' :class:`Scored` or made by the :class:`Scorer`
            (``nearest-patch``'s memory); the reconstruction error's by default.
        map_in_scored: Whether ``pixel_map`` is also its own map, so that predict and the ONNX
            detector take it from there rather than computing ``own_map`` again.
        map_note: What the ONNX detector's ``score_map`` output is for it, said in the file's metadata.
        default_for_its_kinds: ``score_method="auto"`` for the model kinds (and data sets) that have it
            (a score that ``needs`` what only some kinds give); a ``folders_only`` one first, on folders.
        folders_only: Whether only folder data sets have it: a memory of every pixel's neighbourhood
            (``nearest-patch``) is about *where* on a surface, and would cost minutes on MNIST's
            10,000 test digits.
        needs_memory: Whether it searches ``nearest-patch``'s memory of the training images'
            neighbourhoods (the :class:`Scorer` then makes one, and the ONNX detector carries it).

    A new score is one entry of :data:`REGISTRY`: ``compute`` is called by the :class:`Scorer` and by
    the ONNX detector's graph (``commands/export.py``) alike, so it must use tensor operations only.
    """

    name: str
    compute: Callable[[Scorer, Scored, Neighbours], torch.Tensor] | None
    needs_reference: bool = False
    needs_train_images: bool = False
    own_map: type | None = None
    needs: tuple[str, ...] = ()
    pixel_map: Callable[[Scorer | None, Scored], torch.Tensor] = lambda s, x: x.maps
    map_in_scored: bool = False
    map_note: str = "score_map: the same as map"
    default_for_its_kinds: bool = False
    folders_only: bool = False
    needs_memory: bool = False

    def applies_to(self, kind: str | None, dataset: str | None = None) -> bool:
        """Whether a model of ``kind`` (the ``model`` parameter) on ``dataset`` has this score (None: not
        known yet)."""
        on_data = dataset is None or dataset == "folder" or not self.folders_only
        return on_data and (kind is None or set(self.needs) <= set(outputs_of(kind)))


ENSEMBLE = ("latent-knn", "ssim")  # what the ensemble averages, each standardised on the validation normals
REGISTRY: dict[str, Method] = {m.name: m for m in (
    Method("mse", lambda s, x, n: x.scores),
    Method("topk", lambda s, x, n: topk_scores(x.maps, s.topk)),
    Method("ssim", lambda s, x, n: ssim_scores(x.images, x.reconstructions)),
    Method("latent-knn", lambda s, x, n: n[0][:, : s.k].mean(1), needs_reference=True, own_map=LatentKnnMaps),
    Method("patch-knn", lambda s, x, n: s.patch.scores(x.images, neighbours=n[1]), needs_reference=True,
           needs_train_images=True, own_map=PatchKnn,
           map_note="score_map: N x 1 x H x W patch-knn's own map, upsampled from the encoder's grid (the score "
                    "is that grid's largest cell)"),
    Method("ensemble", None, needs_reference=True),
    Method("elbo", lambda s, x, n: elbo_scores(x.scores, x.kl, x.images[0].numel()), needs=("logvar",)),
    Method("segment", lambda s, x, n: segment_scores(x.segmentation), own_map=SegmentMaps, needs=("segmentation",),
           pixel_map=lambda s, x: x.segmentation, map_in_scored=True, default_for_its_kinds=True,
           map_note="score_map: N x 1 x H x W the restore model's segmentation, the probability of damage per "
                    "pixel (the score is its largest small-window mean)"),
    Method("nearest-patch", lambda s, x, n: segment_scores(s.nearest_maps(x)), folders_only=True, needs_memory=True,
           pixel_map=lambda s, x: s.nearest_maps(x), map_in_scored=True,
           map_note="score_map: N x 1 x H x W each pixel's distance to the nearest normal training neighbourhood, "
                    "in units of a normal's typical distance (the score is its largest small-window mean)"),
    Method("two-signal", lambda s, x, n: segment_scores(s.two_signal_maps(x)), needs=("segmentation",),
           folders_only=True, needs_memory=True, pixel_map=lambda s, x: s.two_signal_maps(x), map_in_scored=True,
           default_for_its_kinds=True,
           map_note="score_map: N x 1 x H x W the mean of the segmentation and nearest-patch's map, each in units "
                    "of the validation normals' pixels (the score is its largest small-window mean)"),
)}
NEEDS_MEMORY = tuple(n for n, m in REGISTRY.items() if m.needs_memory)  # the scores made of nearest-patch's memory
METHODS = tuple(n for n, m in REGISTRY.items() if not m.needs and not m.folders_only)  # every model's, on every data set
VAE_METHODS = tuple(n for n, m in REGISTRY.items() if m.needs == ("logvar",))  # the variational autoencoder's own
RESTORE_METHODS = tuple(n for n, m in REGISTRY.items() if m.needs == ("segmentation",))  # the restore model's own
DEFAULT_METHOD = "patch-knn"


def ensemble_scores(base: dict[str, torch.Tensor], stats: dict[str, tuple[float, float]]) -> torch.Tensor:
    """``ensemble``: the mean of the scores of ``stats``' methods, each standardised by its ``(mean, std)``
    on the validation normals (the Scorer's and the ONNX detector's one computation of it)."""
    return torch.stack([(base[m] - mu) / sd for m, (mu, sd) in stats.items()]).mean(0)


def pixel_maps(scored: Scored, method: str, scorer: Scorer | None = None) -> torch.Tensor:
    """The full-resolution maps ``(N, 1, H, W)`` that ``method``'s pixels are judged by (its registry entry's);
    the :class:`Scorer` makes those of the scores of nearest-patch's memory."""
    if scorer is None and method in NEEDS_MEMORY:
        raise ParameterError(f"the maps of {method!r} come from nearest-patch's memory: give the Scorer as scorer=")
    return REGISTRY[method].pixel_map(scorer, scored)


def check_method(method: str, dataset: str = "mnist", model: str | None = None) -> str:
    """Return ``method`` (``"auto"`` resolved for ``dataset``) if it is known, else say which are.

    With ``model`` (``"ae"``, ``"vae"`` or ``"restore"``), ``elbo`` is refused for any but a VAE
    and ``segment`` for any but the restore model.
    """
    if method == "auto":
        return default_method(dataset, model)
    if method not in REGISTRY:
        raise ParameterError(f"score_method={method!r}: use one of {['auto', *REGISTRY]}")
    if not REGISTRY[method].applies_to(model, dataset) and REGISTRY[method].applies_to(model):
        raise ParameterError(
            f"score_method={method!r} compares each pixel's neighbourhood with the normal training images', a score "
            f"for folders of images (dataset='folder'), not for dataset={dataset!r}: use one of "
            f"{['auto', *(n for n, m in REGISTRY.items() if m.applies_to(model, dataset))]}"
        )
    if not REGISTRY[method].applies_to(model) and method in VAE_METHODS:
        raise ParameterError(
            f"score_method={method!r} is the variational autoencoder's negative ELBO, and this run's model is "
            f"model={model!r}: train with -p model vae in 02, or use one of {['auto', *METHODS]}"
        )
    if not REGISTRY[method].applies_to(model):
        raise ParameterError(
            f"score_method={method!r} reads the restore model's segmentation, and this run's model is "
            f"model={model!r}: train with -p model restore in 02, or use one of {['auto', *METHODS]}"
        )
    return method


def default_method(dataset: str, model: str | None = None) -> str:
    """The score of ``score_method="auto"``: an entry that is ``default_for_its_kinds`` and that the model
    and data set have, a ``folders_only`` one first (the restore model: ``two-signal`` on folders,
    ``segment`` elsewhere), else ``topk`` (read off the map) for folders, else ``patch-knn``.

    ``two-signal`` became the restore model's default on folders by the rule of docs/photographs.md
    (its mean of image ROC-AUC, pixel ROC-AUC and AUPRO over the development photograph folders above
    each signal's alone), measured before the reported folders were looked at.

    A folder data set is about *where* the defect is, at the pixel, so its default score is
    read off the full-resolution reconstruction error that the pixel-level measures score;
    for MNIST and Fashion-MNIST the anomaly is a whole other class, which the encoder's
    features compared with the nearest normals' tell apart (``patch-knn``, whose own map is
    on the encoder's coarse grid). Chosen on a development split of the *training* images
    (docs/benchmarks.md), never on test results.
    """
    if model is not None:  # a model kind's own score, where it has one (the restore model's segment)
        own = sorted((n for n, m in REGISTRY.items() if m.default_for_its_kinds and m.applies_to(model, dataset)),
                     key=lambda n: not REGISTRY[n].folders_only)
        if own:
            return own[0]
    return "topk" if dataset == "folder" else DEFAULT_METHOD


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
        dataset: The run's data set: ``"folder"`` has the scores of nearest-patch's memory too
            (``folders_only``); None, as ``"mnist"``, has not.

    Attributes:
        val_scores: Every method's ``(M,)`` scores of the validation normals (for a
            threshold), computed once here.
        patch: The :class:`PatchKnn` of ``patch-knn`` (its maps).
        memory: ``nearest-patch``'s :class:`~anomalymap_helpers.pipeline.scoring.patch_memory.PatchMemory`
            of the training images' neighbourhoods (folders only; else None).
        calibration: ``two-signal``'s ``{"segment": (q50, q99 - q50), "nearest-patch": ...}`` of the
            validation normals' maps (folders and the restore model only; else empty).
    """

    def __init__(
        self,
        model: Model,
        train_images: torch.Tensor,
        val: torch.Tensor | Scored,
        *,
        reference: torch.Tensor | None = None,
        k: int = 2,
        topk: int = 10,
        blur: float = 0.0,
        precision: Precision | None = None,
        dataset: str | None = None,
    ) -> None:
        if train_images.dim() != 4:
            raise ParameterError(
                f"Scorer takes the normal training images (N, C, H, W), not a tensor of shape {tuple(train_images.shape)}; "
                "give their cached latents as reference="
            )
        self.model, self.k, self.topk, self.kind = model, k, topk, model.config.model
        self.methods = [n for n, m in REGISTRY.items() if m.applies_to(self.kind, dataset or "mnist")]
        self.patch = PatchKnn(model, train_images, reference, precision=precision)
        self.reference = self.patch.reference
        self.memory = PatchMemory(train_images) if set(NEEDS_MEMORY) & set(self.methods) else None
        self._cached: tuple[Scored, torch.Tensor] | None = None  # the last images' nearest-patch maps
        val_scored = val if isinstance(val, Scored) else score(model, val, blur=blur, precision=precision)
        self.calibration: dict[str, tuple[float, float]] = {}
        if "two-signal" in self.methods:
            self.calibration = {"segment": calibration(val_scored.segmentation),
                                "nearest-patch": calibration(self.nearest_maps(val_scored))}
        base = self._base(val_scored)
        self.stats = {m: (float(base[m].mean()), float(base[m].std()) or 1.0) for m in ENSEMBLE}
        self.val_scores = self._with_ensemble(base)

    def _base(self, scored: Scored) -> dict[str, torch.Tensor]:
        # One search of the reference for both kNN scores: the nearest first, so latent-knn's k are the first k.
        neighbours = nearest(self.reference, scored.latents, max(self.k, self.patch.k))
        return {name: REGISTRY[name].compute(self, scored, neighbours) for name in self.methods
                if REGISTRY[name].compute is not None}

    def nearest_maps(self, scored: Scored) -> torch.Tensor:
        """``nearest-patch``'s maps ``(N, 1, H, W)`` of the images of ``scored`` (the last images' kept, so
        that the score, its map and ``two-signal`` search the memory once)."""
        if self.memory is None:
            raise ParameterError("nearest-patch's memory is made for folder data sets only: give dataset='folder'")
        if self._cached is None or self._cached[0] is not scored:
            self._cached = (scored, self.memory(scored.images))
        return self._cached[1]

    def two_signal_maps(self, scored: Scored) -> torch.Tensor:
        """``two-signal``'s maps ``(N, 1, H, W)``: the segmentation and nearest-patch's map, calibrated, averaged."""
        return two_signal_maps(scored.segmentation, self.nearest_maps(scored), self.calibration)

    def _with_ensemble(self, base: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {**base, "ensemble": ensemble_scores(base, self.stats)}

    def all_scores(self, scored: Scored) -> dict[str, torch.Tensor]:
        """Every method's ``(N,)`` scores for images already reconstructed by :func:`score`."""
        return self._with_ensemble(self._base(scored))
