"""The interactive heatmap explorer (ipywidgets) and its static counterpart.

Reconstructions, maps and scores are computed once and cached; moving a
slider only redraws one small figure. Where no widget front end runs
(papermill, nbval, a static viewer) the explorer shows a PNG of the same view.
"""

from __future__ import annotations

import contextlib
import io
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from . import plotting, storage
from .errors import ParameterError
from .scoring import Scored

SUBSETS = {"all": "all test images", "normal": "normal images", "anomaly": "anomalies"}


class Explorer:
    """Browse test images with their reconstruction, anomaly map, score and verdict.

    Args:
        scored: The test images, scored (see :func:`anomalymap_helpers.scoring.score`).
        labels: ``(N,)`` digit labels.
        is_anomaly: ``(N,)`` bool.
        threshold: Scores above it are called anomalies.
        scores: ``(N,)`` scores to show and threshold; default the MSE of ``scored``.
        indices: ``(N,)`` positions in the source dataset, shown in titles.
        scale: ``"per-image"`` or ``"global"`` colour scale of the map.
    """

    def __init__(
        self,
        scored: Scored,
        labels: Any,
        is_anomaly: Any,
        threshold: float,
        *,
        scores: Any = None,
        indices: Any = None,
        scale: str = "per-image",
    ) -> None:
        if scale not in plotting.SCALES:
            raise ParameterError(f"heatmap_scale={scale!r}: use one of {plotting.SCALES}")
        self.images = _plain(scored.images)
        self.reconstructions = _plain(scored.reconstructions)
        self.maps = _plain(scored.maps)
        self.scores = np.asarray(scored.scores if scores is None else scores, dtype=np.float64)
        self.labels = np.asarray(labels)
        self.is_anomaly = np.asarray(is_anomaly, dtype=bool)
        self.indices = np.asarray(indices) if indices is not None else np.arange(len(self.scores))
        self.threshold = float(threshold)
        self.scale = scale
        self.global_max = float(self.maps.max()) if self.maps.size else 1.0
        self.subset = "all"
        self.position = 0
        self._widget: Any = None

    # ------------------------------------------------------------------ the view

    def positions(self, subset: str | None = None) -> np.ndarray:
        """Positions of the images in ``subset`` (``"all"``, ``"normal"``, ``"anomaly"``)."""
        subset = subset or self.subset
        if subset == "all":
            return np.arange(len(self.scores))
        if subset == "normal":
            return np.flatnonzero(~self.is_anomaly)
        if subset == "anomaly":
            return np.flatnonzero(self.is_anomaly)
        raise ParameterError(f"subset={subset!r}: use one of {list(SUBSETS)}")

    def current(self) -> int:
        """The position (in the test set) of the image shown."""
        pos = self.positions()
        return int(pos[min(self.position, len(pos) - 1)])

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
            f"test image #{self.indices[i]} (digit {self.labels[i]}, {truth}): score {self.scores[i]:.5f} "
            f"{sign} threshold {t:.5f} -> {verdict} ({mark})"
        )

    def figure(self, i: int | None = None, threshold: float | None = None, scale: str | None = None) -> Figure:
        """The [input | reconstruction | anomaly map] view of image ``i`` with its verdict."""
        i = self.current() if i is None else i
        scale = scale or self.scale
        fig = plotting.NotebookFigure(figsize=(7.5, 2.7), layout="constrained")
        axes = fig.subplots(1, 3)
        art = plotting.triptych_axes(
            axes,
            self.images[i],
            self.reconstructions[i],
            self.maps[i],
            vmax=self.global_max if scale == "global" else None,
        )
        fig.colorbar(art, ax=axes[2], fraction=0.046, pad=0.04, label=f"|x - x̂| ({scale} scale)")
        fig.suptitle(self.caption(i, threshold), fontsize=9)
        return fig

    def png(self, i: int | None = None, threshold: float | None = None, scale: str | None = None) -> bytes:
        """The view of :meth:`figure` as PNG bytes."""
        buf = io.BytesIO()
        self.figure(i, threshold, scale).savefig(buf, format="png", dpi=90)
        return buf.getvalue()

    # ------------------------------------------------------------------ headless output

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        """Up to ``n`` positions, half anomalies and half normals, chosen with ``seed``."""
        rng = np.random.default_rng(seed)
        n_anomaly = min(int(self.is_anomaly.sum()), math.ceil(n / 2))
        picks = []
        for mask, k in ((self.is_anomaly, n_anomaly), (~self.is_anomaly, n - n_anomaly)):
            where = np.flatnonzero(mask)
            picks.append(rng.choice(where, size=min(k, len(where)), replace=False))
        return np.concatenate(picks).astype(int)

    def save_samples(self, folder: str | Path, n: int = 8, *, seed: int = 0) -> list[Path]:
        """Save ``n`` views as ``folder/sample_NN_<digit>_<verdict>.png`` (atomically)."""
        if not isinstance(n, int) or n < 1:
            raise ParameterError(f"n_heatmaps={n!r}: use a whole number of at least 1")
        out = []
        for k, i in enumerate(self.sample(n, seed)):
            path = Path(folder) / f"sample_{k:02d}_digit{self.labels[i]}_called-{self.verdict(i)}.png"
            storage.save_figure(self.figure(int(i)), path, dpi=90)
            out.append(path)
        return out

    # ------------------------------------------------------------------ widgets

    def widget(self) -> Any:
        """The ipywidgets explorer (built once, then reused)."""
        if self._widget is None:
            self._widget = self._build()
        return self._widget

    def _build(self) -> Any:
        import ipywidgets as w

        lo, hi = float(self.scores.min()), float(self.scores.max())
        if lo > 0:  # positive scores (errors, distances) are skewed: a log slider spreads them
            threshold = w.FloatLogSlider(
                value=self.threshold,
                base=10,
                min=math.log10(lo),
                max=math.log10(hi),
                step=(math.log10(hi) - math.log10(lo)) / 400 or 0.01,
                description="threshold",
                readout_format=".5f",
                continuous_update=True,
            )
        else:
            threshold = w.FloatSlider(
                value=self.threshold,
                min=lo,
                max=hi,
                step=(hi - lo) / 400 or 0.01,
                description="threshold",
                readout_format=".4f",
                continuous_update=True,
            )
        subset = w.Dropdown(options=[(v, k) for k, v in SUBSETS.items()], value=self.subset, description="show")
        image = w.IntSlider(0, 0, len(self.positions()) - 1, description="image", continuous_update=True)
        scale = w.ToggleButtons(options=list(plotting.SCALES), value=self.scale, description="colour scale")
        view = w.Image(format="png")
        status = w.HTML()

        def redraw(*_: Any) -> None:
            self.subset, self.position = subset.value, image.value
            self.threshold, self.scale = threshold.value, scale.value
            i = self.current()
            view.value = self.png(i)
            verdict = self.verdict(i)
            color = plotting.ANOMALY_COLOR if verdict == "anomaly" else plotting.NORMAL_COLOR
            status.value = f"<b style='color:{color}'>{verdict.upper()}</b> &nbsp; {self.caption(i)}"

        def on_subset(_: Any) -> None:
            image.max = len(self.positions(subset.value)) - 1
            image.value = 0
            redraw()

        subset.observe(on_subset, names="value")
        for control in (image, threshold, scale):
            control.observe(redraw, names="value")
        redraw()
        return w.VBox([w.HBox([subset, image]), w.HBox([threshold, scale]), status, view])

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        """The widget where a front end renders widgets; a PNG of the same view elsewhere."""
        import base64

        bundle: dict[str, Any] = {}
        with contextlib.suppress(ImportError):  # without ipywidgets: the static view alone
            bundle = self.widget()._repr_mimebundle_(**kwargs) or {}

        bundle["image/png"] = base64.b64encode(self.png()).decode("ascii")
        bundle["text/plain"] = self.caption(self.current())
        return bundle


def _plain(x: Any) -> np.ndarray:
    """``(N, 1, H, W)`` tensor or array to ``(N, H, W)`` float32 NumPy."""
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return a.reshape(len(a), *a.shape[-2:]).astype(np.float32, copy=False)
