"""The explorer's state: which image, which threshold, which colour scale, and what follows.

Reconstructions, maps and scores are computed once and held here; a control change
only redraws. Everything here is plain NumPy, testable without widgets, and knows nothing
of drawing (:mod:`.render`) or widgets (:mod:`.widgets`); :class:`~.view.Explorer` puts the
three together. The layers run one way: ``state`` <- ``render`` <- ``widgets`` <- ``view``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from anomalymap_helpers.errors import ParameterError
from anomalymap_helpers.files.paths import shown
from anomalymap_helpers.pipeline.evaluation import metrics, plotting
from anomalymap_helpers.pipeline.scoring import Scored

SUBSETS = {"all": "all test images", "normal": "normal images", "anomaly": "anomalies"}
GALLERIES = {
    "top": "most anomalous",
    "missed": "missed anomalies (most normal-looking)",
    "false-alarm": "false alarms (most anomalous normals)",
}


class ExplorerState:
    """Browse test images with their reconstruction, anomaly map, score and verdict.

    Args:
        scored: The test images, scored (see :func:`anomalymap_helpers.pipeline.scoring.score`).
        labels: ``(N,)`` class labels.
        is_anomaly: ``(N,)`` bool.
        threshold: Scores above it are called anomalies.
        scores: ``(N,)`` scores to show and threshold; default the MSE of ``scored``.
        score_name: What the scores are (e.g. ``"patch-knn"``), shown in captions.
        indices: ``(N,)`` positions in the source dataset, shown in titles.
        scale: ``"per-image"`` or ``"global"`` colour scale of the map.
        class_names: The name of each label (e.g. ``"digit 9"``, ``"scratch"``).
        masks: ``(N, 1, H, W)`` defect masks, outlined over the map; None where there are none.
        names: ``(N,)`` file names, shown in titles where the images have them.
        rules: The threshold of each threshold rule by name (e.g. ``{"percentile": ...,
            "otsu": ...}``, see :func:`~anomalymap_helpers.pipeline.evaluation.metrics.choose_threshold`):
            the widget switches between them and marks them on the histogram.
        score_maps: Where the score is not read off the reconstruction error (``patch-knn``,
            ``latent-knn``), a function from a test position to that image's ``(H, W)`` map of the
            score (e.g. :class:`~anomalymap_helpers.pipeline.scoring.PatchKnn`): the view shows it
            beside the reconstruction error. Computed when an image is first shown, then kept.
        nearest: Where the map compares the image with one normal training image (``patch-knn``'s
            best match), a function from a test position to that normal, ``((C, H, W) image, its
            name)``: the view shows it beside the map, so the map reads "differs from this normal here".
    """

    def __init__(
        self,
        scored: Scored,
        labels: Any,
        is_anomaly: Any,
        threshold: float,
        *,
        scores: Any = None,
        score_name: str = "score",
        indices: Any = None,
        scale: str = "per-image",
        class_names: Any = None,
        masks: Any = None,
        names: Any = None,
        rules: dict[str, float] | None = None,
        score_maps: Callable[[int], np.ndarray] | None = None,
        nearest: Callable[[int], tuple[Any, str]] | None = None,
        predict: Callable[[str], tuple[Any, Any]] | None = None,
    ) -> None:
        if scale not in plotting.SCALES:
            raise ParameterError(f"heatmap_scale={scale!r}: use one of {list(plotting.SCALES)}")
        self.images = plotting.displayable(scored.images)
        self.reconstructions = plotting.displayable(scored.reconstructions)
        self.maps = plotting.displayable(scored.maps)
        self.masks = plotting.displayable(masks) > 0.5 if masks is not None else None
        self.scores = np.asarray(scored.scores if scores is None else scores, dtype=np.float64)
        self.labels = np.asarray(labels)
        self.is_anomaly = np.asarray(is_anomaly, dtype=bool)
        self.indices = np.asarray(indices) if indices is not None else np.arange(len(self.scores))
        self.class_names = tuple(class_names) if class_names is not None else None
        self.names = tuple(names) if names else None
        self.threshold = float(threshold)
        self.rules = {name: float(t) for name, t in (rules or {}).items()}
        self.scale = scale
        self.global_max = float(self.maps.max()) if self.maps.size else 1.0
        self.score_name = score_name
        self.subset = "all"
        self.position = 0
        self._score_maps, self._score_map_cache = score_maps, {}
        self._nearest, self._nearest_cache = nearest, {}
        # A new image file's (Predictions, best normal match or None): the upload control's; None hides it.
        self.predict_file = predict

    # ------------------------------------------------------------------ state and what follows from it

    def subsets(self) -> dict[str, str]:
        """The subsets to browse, by key: all, normal, anomalies, then each class (``"class:K"``)."""
        per_class = {f"class:{c}": f"only {plotting.class_name(self.class_names, c)}" for c in np.unique(self.labels)}
        return {**SUBSETS, **per_class}

    def positions(self, subset: str | None = None) -> np.ndarray:
        """Positions of the images in ``subset`` (``"all"``, ``"normal"``, ``"anomaly"``, ``"class:K"``)."""
        subset = subset or self.subset
        if subset.startswith("class:") and subset[6:].isdigit():
            return np.flatnonzero(self.labels == int(subset[6:]))
        if subset == "all":
            return np.arange(len(self.scores))
        if subset == "normal":
            return np.flatnonzero(~self.is_anomaly)
        if subset == "anomaly":
            return np.flatnonzero(self.is_anomaly)
        raise ParameterError(f"subset={subset!r}: use one of {list(self.subsets())}")

    def current(self) -> int:
        """The position (in the test set) of the image shown."""
        pos = self.positions()
        return int(pos[min(self.position, len(pos) - 1)])

    def rule_at(self, threshold: float | None = None) -> str | None:
        """The first rule whose threshold is ``threshold`` (default: the current one), else None."""
        t = self.threshold if threshold is None else threshold
        return next((name for name, value in self.rules.items() if math.isclose(value, t, rel_tol=1e-9)), None)

    def verdict(self, i: int, threshold: float | None = None) -> str:
        """``"anomaly"`` if image ``i``'s score is above the threshold, else ``"normal"``."""
        t = self.threshold if threshold is None else threshold
        return "anomaly" if self.scores[i] > t else "normal"

    def caption(self, i: int, threshold: float | None = None) -> str:
        """One line: image, label, score against threshold, verdict."""
        t = self.threshold if threshold is None else threshold
        truth = "anomaly" if self.is_anomaly[i] else "normal"
        verdict = self.verdict(i, t)
        sign = ">" if verdict == "anomaly" else "<="
        mark = "correct" if verdict == truth else "wrong"
        return (
            f"{self.title(i)} ({self.class_name(i)}, {truth}): {self.score_name} {self.scores[i]:.5f} "
            f"{sign} threshold {t:.5f} -> {verdict} ({mark})"
        )

    def class_name(self, i: int) -> str:
        """The class name of image ``i`` (e.g. ``"digit 9"``, ``"scratch"``)."""
        return plotting.class_name(self.class_names, self.labels[i])

    def title(self, i: int) -> str:
        """How image ``i`` is named: its file (folder data sets) or its number in the test set."""
        return shown(self.names[int(self.indices[i])]) if self.names else f"test image #{self.indices[i]}"

    @property
    def has_score_map(self) -> bool:
        """Whether the score has a map of its own beside the reconstruction error."""
        return self._score_maps is not None

    def score_map(self, i: int) -> np.ndarray | None:
        """Image ``i``'s ``(H, W)`` map of the score (see ``score_maps``), or None."""
        if self._score_maps is None:
            return None
        if i not in self._score_map_cache:
            self._score_map_cache[int(i)] = np.asarray(self._score_maps(int(i)), dtype=np.float32)
        return self._score_map_cache[int(i)]

    def nearest_normal(self, i: int) -> tuple[np.ndarray, str] | None:
        """The normal training image that image ``i``'s score map compares against (see ``nearest``),
        displayable (``(H, W)`` or ``(H, W, 3)``), with its name; None where the map has none."""
        if self._nearest is None:
            return None
        if i not in self._nearest_cache:
            image, name = self._nearest(int(i))
            self._nearest_cache[int(i)] = (plotting.displayable(np.asarray(image)[None])[0], str(name))
        return self._nearest_cache[int(i)]

    def mask(self, i: int) -> np.ndarray | None:
        """Image ``i``'s defect mask ``(H, W)``, or None."""
        return self.masks[i] if self.masks is not None else None

    def gallery(self, kind: str, n: int = 8, threshold: float | None = None) -> np.ndarray:
        """Positions of up to ``n`` images of a gallery at ``threshold``.

        ``"top"``: the highest scores; ``"missed"``: anomalies at or under the
        threshold, lowest score first (the anomalies that look most normal);
        ``"false-alarm"``: normals above it, highest score first.
        """
        t = self.threshold if threshold is None else threshold
        if kind == "top":
            return np.argsort(-self.scores, kind="stable")[:n]
        if kind == "missed":
            where = np.flatnonzero(self.is_anomaly & (self.scores <= t))
            return where[np.argsort(self.scores[where], kind="stable")][:n]
        if kind == "false-alarm":
            where = np.flatnonzero(~self.is_anomaly & (self.scores > t))
            return where[np.argsort(-self.scores[where], kind="stable")][:n]
        raise ParameterError(f"gallery={kind!r}: use one of {list(GALLERIES)}")

    def confusion(self, threshold: float | None = None) -> dict[str, int]:
        """Counts at ``threshold``: ``tp, fp, tn, fn`` (anomalies are positive)."""
        tp, fp, tn, fn = metrics.confusion(
            self.scores, self.is_anomaly, self.threshold if threshold is None else threshold
        )
        return {"tp": tp, "fp": fp, "tn": tn, "fn": fn}

    def map_range(self, i: int | None = None, scale: str | None = None) -> tuple[float, float]:
        """The colour range ``(0, top)`` of image ``i``'s map under ``scale``."""
        i = self.current() if i is None else i
        if (scale or self.scale) == "global":
            return 0.0, self.global_max
        return 0.0, max(float(self.maps[i].max()), 1e-6)

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        """Up to ``n`` positions, half anomalies and half normals, chosen with ``seed``."""
        rng = np.random.default_rng(seed)
        n_anomaly = min(int(self.is_anomaly.sum()), math.ceil(n / 2))
        picks = []
        for mask, k in ((self.is_anomaly, n_anomaly), (~self.is_anomaly, n - n_anomaly)):
            where = np.flatnonzero(mask)
            picks.append(rng.choice(where, size=min(k, len(where)), replace=False))
        return np.concatenate(picks).astype(int)

    def open(self, position: int) -> None:
        """Show test image ``position`` (in the test split): the subset becomes "all"."""
        if not 0 <= int(position) < len(self.scores):
            raise ParameterError(f"position={position}: use 0..{len(self.scores) - 1}, a test image")
        self.subset, self.position = "all", int(position)
