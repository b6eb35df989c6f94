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

from . import metrics, plotting, storage
from .errors import ParameterError
from .scoring import Scored

SUBSETS = {"all": "all test images", "normal": "normal images", "anomaly": "anomalies"}
GALLERIES = {
    "top": "most anomalous",
    "missed": "missed anomalies (most normal-looking)",
    "false-alarm": "false alarms (most anomalous normals)",
}


class Explorer:
    """Browse test images with their reconstruction, anomaly map, score and verdict.

    Args:
        scored: The test images, scored (see :func:`anomalymap_helpers.scoring.score`).
        labels: ``(N,)`` digit labels.
        is_anomaly: ``(N,)`` bool.
        threshold: Scores above it are called anomalies.
        scores: ``(N,)`` scores to show and threshold; default the MSE of ``scored``.
        score_name: What the scores are (e.g. ``"latent-knn"``), shown in captions.
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
        score_name: str = "score",
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
        self.score_name = score_name

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
            f"test image #{self.indices[i]} (digit {self.labels[i]}, {truth}): {self.score_name} {self.scores[i]:.5f} "
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

    def thumbnails(self, positions: np.ndarray, zoom: int = 3) -> bytes:
        """A PNG strip of the given images, each framed red (anomaly) or blue (normal).

        Drawn with NumPy and Pillow, not matplotlib, so a gallery redraws in milliseconds.
        """
        from PIL import Image

        h, w = self.images.shape[1:]
        pad = 2
        tile_w = w * zoom + 2 * pad
        strip = np.full((h * zoom + 2 * pad, max(1, len(positions)) * (tile_w + 4), 3), 255, np.uint8)
        for k, i in enumerate(positions):
            color = (196, 78, 82) if self.is_anomaly[i] else (76, 114, 176)
            x0 = k * (tile_w + 4)
            strip[:, x0 : x0 + tile_w] = color
            gray = (np.kron(self.images[i], np.ones((zoom, zoom))) * 255).astype(np.uint8)
            strip[pad : pad + h * zoom, x0 + pad : x0 + pad + w * zoom] = gray[..., None]
        buf = io.BytesIO()
        Image.fromarray(strip).save(buf, format="PNG")
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
        """Save ``n`` views as ``folder/sample_NN_<digit>_<verdict>.png`` (atomically).

        Samples an earlier run left in ``folder`` are removed once the new ones are written.
        """
        if not isinstance(n, int) or n < 1:
            raise ParameterError(f"n_heatmaps={n!r}: use a whole number of at least 1")
        out = []
        for k, i in enumerate(self.sample(n, seed)):
            path = Path(folder) / f"sample_{k:02d}_digit{self.labels[i]}_called-{self.verdict(i)}.png"
            storage.save_figure(self.figure(int(i)), path, dpi=90)
            out.append(path)
        for stale in set(Path(folder).glob("sample_*.png")) - set(out):  # from an earlier run of 04
            stale.unlink()
        return out

    # ------------------------------------------------------------------ widgets

    def widget(self) -> Any:
        """The ipywidgets explorer (built once, then reused)."""
        if self._widget is None:
            self._widget = self._build()
        return self._widget

    def _build(self, gallery_size: int = 8) -> Any:
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
        confusion = w.HTML()
        kind = w.Dropdown(options=[(v, k) for k, v in GALLERIES.items()], value="top", description="gallery")
        strip = w.Image(format="png")
        picks = w.ToggleButtons(options=[], description="open", style={"button_width": "84px"})
        shown: list[int] = []
        for name, widget in (
            ("subset", subset),
            ("image", image),
            ("threshold", threshold),
            ("scale", scale),
            ("view", view),
            ("status", status),
            ("confusion", confusion),
            ("gallery", kind),
            ("gallery-strip", strip),
            ("gallery-open", picks),
        ):
            widget.add_class(f"anomalymap-{name}")

        def redraw(*_: Any) -> None:
            self.subset, self.position = subset.value, image.value
            self.threshold, self.scale = threshold.value, scale.value
            i = self.current()
            view.value = self.png(i)
            verdict = self.verdict(i)
            color = plotting.ANOMALY_COLOR if verdict == "anomaly" else plotting.NORMAL_COLOR
            top = self.map_range(i)[1]
            status.value = (
                f"<b style='color:{color}'>{verdict.upper()}</b> &nbsp; {self.caption(i)}"
                f"<br><span class='anomalymap-range'>map colour range 0 to {top:.4f} ({self.scale})</span>"
            )

        def recount(*_: Any) -> None:
            c = self.confusion(threshold.value)
            precision = c["tp"] / (c["tp"] + c["fp"]) if c["tp"] + c["fp"] else 0.0
            recall = c["tp"] / (c["tp"] + c["fn"]) if c["tp"] + c["fn"] else 0.0
            confusion.value = (
                "<table class='anomalymap-confusion' style='border-collapse:collapse'>"
                "<tr><th></th><th>called normal</th><th>called anomaly</th></tr>"
                f"<tr><th>normal</th><td>{c['tn']:,}</td><td>{c['fp']:,}</td></tr>"
                f"<tr><th>anomaly</th><td>{c['fn']:,}</td><td>{c['tp']:,}</td></tr></table>"
                f"precision {precision:.3f} &middot; recall {recall:.3f}"
            )

        def regallery(*_: Any) -> None:
            shown[:] = [int(i) for i in self.gallery(kind.value, gallery_size, threshold.value)]
            strip.value = self.thumbnails(np.array(shown, dtype=int))
            picks.unobserve(open_pick, names="value")
            picks.options = [(f"{k + 1}: {self.labels[i]}", k) for k, i in enumerate(shown)]
            picks.value = None
            picks.observe(open_pick, names="value")

        def open_pick(change: Any) -> None:
            if change["new"] is None:
                return
            target = shown[change["new"]]
            if subset.value != "all":
                subset.value = "all"  # on_subset resets the slider; then jump
            image.value = target

        def on_subset(_: Any) -> None:
            image.max = len(self.positions(subset.value)) - 1
            image.value = 0
            redraw()

        def on_threshold(_: Any) -> None:
            redraw()
            recount()
            if kind.value != "top":
                regallery()

        subset.observe(on_subset, names="value")
        image.observe(redraw, names="value")
        scale.observe(redraw, names="value")
        threshold.observe(on_threshold, names="value")
        kind.observe(regallery, names="value")
        picks.observe(open_pick, names="value")
        redraw()
        recount()
        regallery()
        self._controls = {
            "subset": subset,
            "image": image,
            "threshold": threshold,
            "scale": scale,
            "view": view,
            "status": status,
            "confusion": confusion,
            "gallery": kind,
            "strip": strip,
            "picks": picks,
        }
        return w.VBox(
            [
                w.HBox([subset, image]),
                w.HBox([threshold, scale]),
                status,
                view,
                w.HBox([confusion]),
                kind,
                strip,
                picks,
            ]
        )

    def controls(self) -> dict[str, Any]:
        """The explorer's widgets by name (built on first use)."""
        self.widget()
        return self._controls

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


def from_run(
    files: Any, *, data_dir: str = "data", mnist_dir: str | None = None, device: str = "auto", scale: str = "per-image"
) -> Explorer:
    """The explorer of a run folder: its test split, model, scores and threshold (notebooks 01-03)."""
    from . import checkpoint, data, scoring, storage
    from .device import resolve_device

    splits, _ = data.load_splits(files, data_dir=data_dir, mnist_dir=mnist_dir)
    model = checkpoint.load_model(files.require(files.model, "02_training"), device=resolve_device(device))
    evaluation = storage.read_json(files.require(files.metrics, "03_evaluation"))
    indices, scores = scoring.read_scores(files.require(files.scores, "03_evaluation"), "test")
    test = splits["test"]
    if not torch.equal(indices, test.indices):
        raise ParameterError(f"the scores in {files.scores} are of other splits: run notebook 03_evaluation again")
    scored = scoring.score(model, test.images)  # reconstructions and maps, computed once
    return Explorer(
        scored,
        test.labels,
        test.is_anomaly,
        evaluation["threshold"],
        scores=scores,
        score_name=evaluation.get("score", "mse"),
        indices=test.indices,
        scale=scale,
    )


def measure_latency(explorer: Explorer, moves: int = 40) -> dict[str, float]:
    """Median and 90th-percentile milliseconds from a control's new value to the redrawn view.

    ipywidgets call observers synchronously in the kernel, so setting a value
    runs the same code a slider move in the browser does (less the round trip).
    """
    import time

    c = explorer.controls()
    n = c["image"].max + 1
    lo, hi = c["threshold"].min, c["threshold"].max
    log = hasattr(c["threshold"], "base")
    values = {
        "image": [(k * 7919) % n for k in range(1, moves + 1)],
        "threshold": [
            (10 ** (lo + (hi - lo) * ((k * 0.37) % 1)) if log else lo + (hi - lo) * ((k * 0.37) % 1))
            for k in range(moves)
        ],
        "scale": [plotting.SCALES[k % 2] for k in range(1, moves + 1)],
    }
    out: dict[str, float] = {}
    for name, seq in values.items():
        times = []
        for v in seq:
            t0 = time.perf_counter()
            c[name].value = v
            times.append((time.perf_counter() - t0) * 1000)
        out[f"{name}_median_ms"] = float(np.median(times))
        out[f"{name}_p90_ms"] = float(np.percentile(times, 90))
    return out
