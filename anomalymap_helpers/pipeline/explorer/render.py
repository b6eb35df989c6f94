"""Drawing the explorer's view and writing it to files; no widgets here.

Each function takes an :class:`~anomalymap_helpers.pipeline.explorer.state.ExplorerState`
(the state: images, maps, scores, threshold, colour scale) and draws from it.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.figure import Figure

from anomalymap_helpers.errors import ParameterError
from anomalymap_helpers.files import storage
from anomalymap_helpers.pipeline.evaluation import plotting

if TYPE_CHECKING:
    from anomalymap_helpers.pipeline.explorer.state import ExplorerState


def figure(ex: ExplorerState, i: int, threshold: float | None = None, scale: str | None = None) -> Figure:
    """The [input | reconstruction | anomaly map] view of image ``i`` with its verdict; where the
    score has a map of its own, that map beside it (after the normal it compares against, if any)."""
    scale = scale or ex.scale
    score_map, nearest = ex.score_map(i), ex.nearest_normal(i)
    # Fixed positions rather than a layout engine: the same view, drawn in two thirds of the time.
    if score_map is None:
        fig = plotting.NotebookFigure(figsize=(7.5, 2.7))
        axes = fig.subplots(1, 3, gridspec_kw={"left": 0.01, "right": 0.875, "bottom": 0.03, "top": 0.85, "wspace": 0.04})
        bars = [(0.89, 0.06, 0.015, 0.76)]
    elif nearest is None:  # the score's own map beside the reconstruction error, each with its colour bar
        fig = plotting.NotebookFigure(figsize=(10.5, 2.7))
        axes = [fig.add_axes((x, 0.03, 0.19, 0.82)) for x in (0.005, 0.2, 0.395, 0.695)]
        bars = [(0.59, 0.06, 0.011, 0.76), (0.89, 0.06, 0.011, 0.76)]
    else:  # ... and the normal that map compares against, just before it
        fig = plotting.NotebookFigure(figsize=(12.8, 2.7))
        axes = [fig.add_axes((x, 0.03, 0.156, 0.82)) for x in (0.004, 0.164, 0.324, 0.57, 0.73)]
        bars = [(0.484, 0.06, 0.009, 0.76), (0.89, 0.06, 0.009, 0.76)]
    art = plotting.triptych_axes(
        axes[:3],
        ex.images[i],
        ex.reconstructions[i],
        ex.maps[i],
        vmax=ex.global_max if scale == "global" else None,
        mask=ex.mask(i),
    )
    fig.colorbar(art, cax=fig.add_axes(bars[0]), label=f"|x - x̂| ({scale} scale)")
    if score_map is not None:
        if nearest is not None:
            plotting.show_image(axes[3], nearest[0])
            axes[3].set_xticks([])
            axes[3].set_yticks([])
            axes[3].set_title(_nearest_title(nearest[1]), fontsize=9)
        art = plotting.score_map_axes(axes[-1], score_map, ex.score_name, mask=ex.mask(i))
        fig.colorbar(art, cax=fig.add_axes(bars[1]), label=f"{ex.score_name} (per-image scale)")
    fig.suptitle(ex.caption(i, threshold), fontsize=9)
    return fig


def _nearest_title(name: str) -> str:
    return f"best match: {name}"


def png(ex: ExplorerState, i: int, threshold: float | None = None, scale: str | None = None) -> bytes:
    """The view of :func:`figure` as PNG bytes.

    The explorer keeps one such figure and swaps its pictures, colour ranges and texts on each
    redraw (:func:`_refill`): making the figure's axes and colour bars anew cost more than drawing them.
    """
    buf = io.BytesIO()
    view_figure(ex, i, threshold, scale).savefig(buf, format="png", dpi=90)
    return buf.getvalue()


def view_figure(ex: ExplorerState, i: int, threshold: float | None = None, scale: str | None = None) -> Figure:
    """The explorer's one view figure, showing image ``i`` (made by :func:`figure` the first time)."""
    fig = getattr(ex, "_view_figure", None)
    if fig is None:
        fig = ex._view_figure = figure(ex, i, threshold, scale)
    else:
        _refill(fig, ex, i, threshold, scale)
    return fig


def _refill(fig: Figure, ex: ExplorerState, i: int, threshold: float | None, scale: str | None) -> None:
    """Put image ``i``'s view into a figure that :func:`figure` made for another image of ``ex``."""
    scale = scale or ex.scale
    axes = [ax for ax in fig.axes if ax.images]
    image, reconstruction = ex.images[i], ex.reconstructions[i]
    for ax, picture in zip(axes[:2], (image, reconstruction), strict=True):
        ax.images[0].set_data(np.clip(picture, 0, 1) if picture.ndim == 3 else picture)
    error = ex.maps[i]
    axes[2].images[0].set_data(error)
    axes[2].images[0].set_clim(0, ex.global_max if scale == "global" else max(float(error.max()), 1e-6))
    mask = ex.mask(i)
    for ax in axes:
        for drawn in list(ax.collections):  # the last image's defect outline
            drawn.remove()
    plotting.outline(axes[0], mask)
    plotting.outline(axes[2], mask)
    outlined = mask is not None and mask.any()
    axes[2].set_title("anomaly map |x - x̂|" + (" + defect outline" if outlined else ""), fontsize=9)
    bars = [ax for ax in fig.axes if not ax.images]
    bars[0].set_ylabel(f"|x - x̂| ({scale} scale)")
    score_map, nearest = ex.score_map(i), ex.nearest_normal(i)
    if score_map is not None:
        axes[-1].images[0].set_data(score_map)
        axes[-1].images[0].set_clim(0, max(float(score_map.max()), 1e-6))
        plotting.outline(axes[-1], mask)
    if nearest is not None:
        picture, name = nearest
        axes[3].images[0].set_data(np.clip(picture, 0, 1) if picture.ndim == 3 else picture)
        axes[3].set_title(_nearest_title(name), fontsize=9)
    fig.suptitle(ex.caption(i, threshold), fontsize=9)


def prediction_png(predictions: Any, match: Any = None, i: int = 0) -> bytes:
    """:func:`~anomalymap_helpers.pipeline.evaluation.plotting.prediction_figure` as PNG bytes (the upload control's view)."""
    buf = io.BytesIO()
    plotting.prediction_figure(predictions, i, match).savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def histogram(ex: ExplorerState, threshold: float | None = None) -> Figure:
    """The test scores of normals and anomalies, each rule's threshold (dashed) and ``threshold``
    (default: the explorer's, at first notebook 03's)."""
    t = ex.threshold if threshold is None else threshold
    fig = plotting.NotebookFigure(figsize=(7.5, 2.5))
    ax = fig.add_axes((0.08, 0.2, 0.9, 0.64))
    plotting.score_steps(ax, ex.scores, ex.is_anomaly, suffix=" (test)")
    by_value: dict[float, list[str]] = {}
    for name, value in ex.rules.items():
        by_value.setdefault(value, []).append(name)
    for value, names in by_value.items():
        ax.axvline(value, color="0.45", ls=(0, (3, 2)), lw=1)
        ax.annotate(" = ".join(names), (value, 0.97), xycoords=("data", "axes fraction"), rotation=90,
                    va="top", ha="right", fontsize=7, color="0.3")
    ax.axvline(t, color="k", lw=1.5, label=f"{'threshold' if threshold is not None else 'the run threshold'} {t:.4g}")
    ax.set_xlabel(f"{ex.score_name} score", fontsize=8)
    ax.set_ylabel("density", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False)
    return fig


def histogram_png(ex: ExplorerState, threshold: float | None = None) -> bytes:
    """The view of :func:`histogram` as PNG bytes."""
    buf = io.BytesIO()
    histogram(ex, threshold).savefig(buf, format="png", dpi=90)
    return buf.getvalue()


def thumbnails(ex: ExplorerState, positions: np.ndarray, zoom: int = 3) -> bytes:
    """A PNG strip of the given images, each framed red (anomaly) or blue (normal).

    Drawn with NumPy and Pillow, not matplotlib, so a gallery redraws in milliseconds.
    """
    from PIL import Image

    h, w = ex.images.shape[1:3]
    pad = 2
    tile_w = w * zoom + 2 * pad
    strip = np.full((h * zoom + 2 * pad, max(1, len(positions)) * (tile_w + 4), 3), 255, np.uint8)
    for k, i in enumerate(positions):
        color = (196, 78, 82) if ex.is_anomaly[i] else (76, 114, 176)
        x0 = k * (tile_w + 4)
        strip[:, x0 : x0 + tile_w] = color
        pixels = (ex.images[i].repeat(zoom, 0).repeat(zoom, 1) * 255).clip(0, 255).astype(np.uint8)
        strip[pad : pad + h * zoom, x0 + pad : x0 + pad + w * zoom] = pixels[..., None] if pixels.ndim == 2 else pixels
    buf = io.BytesIO()
    Image.fromarray(strip).save(buf, format="PNG")
    return buf.getvalue()


def save_samples(ex: ExplorerState, folder: str | Path, n: int = 8, *, seed: int = 0) -> list[Path]:
    """Save ``n`` views as ``folder/sample_NN_<class>_called-<verdict>.png`` (atomically), e.g. ``digit9``.

    Samples an earlier run left in ``folder`` are removed once the new ones are written.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ParameterError(f"n_heatmaps={n!r}: use a whole number of at least 1")
    out = []
    for k, i in enumerate(ex.sample(n, seed)):
        name = re.sub(r"[^A-Za-z0-9-]+", "", ex.class_name(int(i)).replace("/", "-"))
        path = Path(folder) / f"sample_{k:02d}_{name}_called-{ex.verdict(i)}.png"
        storage.save_figure(view_figure(ex, int(i)), path, dpi=90)
        out.append(path)
    for stale in set(Path(folder).glob("sample_*.png")) - set(out):  # from an earlier run of 04
        stale.unlink()
    return out
