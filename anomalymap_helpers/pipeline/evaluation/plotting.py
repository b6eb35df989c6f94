"""Figures. Each function returns a matplotlib ``Figure``; the caller shows or saves it.

Figures are built without pyplot, so nothing piles up in pyplot's global state
and a notebook shows each figure once, when it is the cell's value.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure


class NotebookFigure(Figure):
    """A Figure that Jupyter shows as a PNG when it is a cell's value, pyplot or not."""

    def _repr_png_(self) -> bytes:
        import io

        buf = io.BytesIO()
        self.savefig(buf, format="png", dpi=100, bbox_inches="tight")
        return buf.getvalue()


NORMAL_COLOR, ANOMALY_COLOR = "#4C72B0", "#C44E52"
OUTLINE_COLOR = "#00E5FF"
MAP_CMAP = "inferno"
SCALES = ("per-image", "global")


def displayable(images: Any) -> np.ndarray:
    """``(N, C, H, W)`` images (or ``(N, H, W)``) as what ``imshow`` takes: ``(N, H, W)`` gray or ``(N, H, W, 3)``."""
    a = images.detach().cpu().numpy() if hasattr(images, "detach") else np.asarray(images)
    a = a.astype(np.float32, copy=False)
    if a.ndim == 4 and a.shape[1] == 3:
        return a.transpose(0, 2, 3, 1)
    return a.reshape(len(a), *a.shape[-2:])


def show_image(ax: Any, image: np.ndarray) -> None:
    """One image from :func:`displayable`, gray or colour, on a [0, 1] scale."""
    if image.ndim == 3:
        ax.imshow(np.clip(image, 0, 1))
    else:
        ax.imshow(image, cmap="gray", vmin=0, vmax=1)


def outline(ax: Any, mask: np.ndarray | None) -> None:
    """Draw the outline of a defect mask ``(H, W)`` (nothing where there is none)."""
    if mask is not None and mask.any():
        ax.contour(mask.astype(float), levels=[0.5], colors=OUTLINE_COLOR, linewidths=1.2)


def class_name(class_names: Sequence[str] | None, label: Any) -> str:
    """The name of ``label`` (the number itself where there are no names)."""
    return class_names[int(label)] if class_names is not None else str(label)


def image_grid(
    images: Any,
    labels: Any,
    is_anomaly: Any,
    *,
    per_kind: int = 8,
    seed: int = 0,
    class_names: Sequence[str] | None = None,
) -> Figure:
    """Two rows of sample images ``(N, C, H, W)``: normal ones above, anomalies below, titled by class."""
    imgs = displayable(images)
    labels, y = np.asarray(labels), np.asarray(is_anomaly, dtype=bool)
    rng = np.random.default_rng(seed)
    fig = NotebookFigure(figsize=(per_kind * 0.9, 2.2), layout="constrained")
    grid = fig.subplots(2, per_kind, squeeze=False)
    for row, (mask, name) in enumerate(((~y, "normal"), (y, "anomaly"))):
        where = np.flatnonzero(mask)
        chosen = rng.choice(where, size=min(per_kind, len(where)), replace=False) if len(where) else []
        for col, ax in enumerate(grid[row]):
            ax.set_xticks([])
            ax.set_yticks([])
            if col < len(chosen):
                show_image(ax, imgs[chosen[col]])
                ax.set_title(class_name(class_names, labels[chosen[col]]), fontsize=7)
        grid[row, 0].set_ylabel(name, fontsize=9)
    return fig


def augmented_grid(images: Any, augmented: Any, names: Sequence[str]) -> Figure:
    """Two rows: training images ``(N, C, H, W)`` above, the same augmented below."""
    a, b = displayable(images), displayable(augmented)
    fig = NotebookFigure(figsize=(len(a) * 0.9, 2.2), layout="constrained")
    grid = fig.subplots(2, len(a), squeeze=False)
    for row, imgs in enumerate((a, b)):
        for col, ax in enumerate(grid[row]):
            ax.set_xticks([])
            ax.set_yticks([])
            show_image(ax, imgs[col])
    grid[0, 0].set_ylabel("training", fontsize=8)
    grid[1, 0].set_ylabel("augmented", fontsize=8)
    fig.suptitle(f"augmentations: {', '.join(names)}", fontsize=9)
    return fig


def damage_grid(images: Any, damaged: Any, masks: Any) -> Figure:
    """Three rows: training images ``(N, C, H, W)``, the same damaged, and the damage's masks ``(N, 1, H, W)``."""
    rows = (displayable(images), displayable(damaged), displayable(masks))
    fig = NotebookFigure(figsize=(len(rows[0]) * 0.9, 3.1), layout="constrained")
    grid = fig.subplots(3, len(rows[0]), squeeze=False)
    for row, imgs in enumerate(rows):
        for col, ax in enumerate(grid[row]):
            ax.set_xticks([])
            ax.set_yticks([])
            show_image(ax, imgs[col])
    for ax, label in zip(grid[:, 0], ("training", "damaged", "mask"), strict=True):
        ax.set_ylabel(label, fontsize=8)
    fig.suptitle("what the restore model is told a defect is: synthetic damage and its exact mask", fontsize=9)
    return fig


def prediction_grid(images: Any, maps: Any, captions: Sequence[str]) -> Figure:
    """Two rows: new images ``(N, C, H, W)`` above, each with its map ``(N, 1, H, W)`` over it below."""
    a, m = displayable(images), displayable(maps)
    fig = NotebookFigure(figsize=(len(a) * 1.5, 3.4), layout="constrained")
    grid = fig.subplots(2, len(a), squeeze=False)
    for col in range(len(a)):
        for row in range(2):
            ax = grid[row, col]
            ax.set_xticks([])
            ax.set_yticks([])
            show_image(ax, a[col])
        grid[1, col].imshow(m[col], cmap="inferno", alpha=0.55)
        grid[0, col].set_title(captions[col], fontsize=7)
    grid[0, 0].set_ylabel("image", fontsize=8)
    grid[1, 0].set_ylabel("map", fontsize=8)
    return fig


def prediction_figure(predictions: Any, i: int = 0, match: Any = None) -> Figure:
    """A new image's view (``predictions`` as ``Run.predict`` gives them): the image, its map over it,
    and its best normal match ``match`` ``(C, H, W)`` where the score has one, titled with its verdict,
    score, threshold and percentile among the validation normals."""
    from pathlib import Path

    from anomalymap_helpers.files.paths import shown as printable

    p = predictions
    image = displayable(p.images[i : i + 1])[0]
    panels = [("input", image, False), (f"map ({p.method})", image, True)]
    if match is not None:
        panels.append(("best normal match", displayable(match[None])[0], False))
    fig = NotebookFigure(figsize=(2.7 * len(panels), 3.0), layout="constrained")
    for ax, (title, shown, overlay) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels, strict=True):
        show_image(ax, shown)
        if overlay:
            ax.imshow(displayable(p.maps[i : i + 1])[0], cmap="inferno", alpha=0.55)
        ax.set_title(title, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    verdict = "anomaly" if bool(p.anomaly[i]) else "normal"
    sign = ">" if verdict == "anomaly" else "<="
    note = f" ({p.notes[i]})" if p.notes[i] else ""
    fig.suptitle(f"{printable(Path(p.names[i]).name)}{note}: {p.method} {float(p.scores[i]):.5f} {sign} threshold "
                 f"{p.threshold:.5f} -> {verdict}\nabove {float(p.percentiles[i]):.0f} % of the validation normals",
                 fontsize=8)
    return fig


def loss_curves(history: Sequence[dict[str, float]], best_epoch: int | None = None,
                ylabel: str = "mean squared error") -> Figure:
    """Training and validation loss per epoch; ``best_epoch`` (the weights kept) marked."""
    fig = NotebookFigure(figsize=(6, 3.5))
    ax = fig.add_subplot()
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["train_loss"] for h in history], "o-", label="training")
    ax.plot(epochs, [h["val_loss"] for h in history], "s--", label="validation")
    if best_epoch:
        best = next(h for h in history if h["epoch"] == best_epoch)
        ax.axvline(best_epoch, color="0.5", lw=1, ls=":")
        ax.plot([best_epoch], [best["val_loss"]], "*", ms=12, color="C1", label=f"best epoch {best_epoch} (kept)")
    ax.set(xlabel="epoch", ylabel=ylabel, title="Training and validation loss")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend()
    ax.grid(alpha=0.3)
    return fig


def score_steps(ax: Any, scores: Any, is_anomaly: Any, *, log: bool = True, suffix: str = "") -> None:
    """Draw the scores of normal and anomalous images on ``ax``, each kind a density of its own.

    60 bins, log-spaced (and a log axis) where ``log`` and every score is positive; matplotlib
    alone: seaborn's ``histplot`` draws the same and costs a notebook a second to import.
    ``suffix`` follows each kind's label (e.g. ``" (test)"``).
    """
    s, y = np.asarray(scores, dtype=float), np.asarray(is_anomaly, dtype=bool)
    log = log and bool((s > 0).all()) and s.max() > s.min()
    edges = np.geomspace(s.min(), s.max(), 61) if log else np.linspace(s.min(), s.max() + 1e-12, 61)
    for kind, where, color in (("normal", ~y, NORMAL_COLOR), ("anomaly", y, ANOMALY_COLOR)):
        if where.any():
            ax.hist(s[where], bins=edges, density=True, histtype="step", color=color, lw=1.2, label=kind + suffix)
    if log:
        ax.set_xscale("log")


def score_histogram(scores: Any, is_anomaly: Any, threshold: float | None = None, *, log: bool = True) -> Figure:
    """Histogram of anomaly scores of normal vs anomalous images (:func:`score_steps`) and the threshold."""
    fig = NotebookFigure(figsize=(7, 3.8))
    ax = fig.add_subplot()
    score_steps(ax, scores, is_anomaly, log=log)
    if threshold is not None:
        ax.axvline(threshold, color="k", ls="--", lw=1, label=f"threshold {threshold:.4g}")
    ax.legend(title="image", fontsize=8)
    ax.set(title="Anomaly scores on the test set", xlabel="anomaly score", ylabel="density")
    return fig


def roc_figure(curves: dict[str, tuple[Any, Any]]) -> Figure:
    """ROC curves, one per named ``(scores, is_anomaly)`` pair, with their AUC."""
    from sklearn.metrics import roc_auc_score, roc_curve

    fig = NotebookFigure(figsize=(4.5, 4.5))
    ax = fig.add_subplot()
    for name, (scores, y) in curves.items():
        fpr, tpr, _ = roc_curve(y, scores)
        ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(y, scores):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1, label="chance")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC curve", aspect="equal")
    ax.legend(loc="lower right", fontsize=8)
    return fig


def pr_figure(curves: dict[str, tuple[Any, Any]]) -> Figure:
    """Precision-recall curves, one per named ``(scores, is_anomaly)`` pair, with their AP."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    fig = NotebookFigure(figsize=(4.5, 4.5))
    ax = fig.add_subplot()
    base = None
    for name, (scores, y) in curves.items():
        precision, recall, _ = precision_recall_curve(y, scores)
        ax.plot(recall, precision, label=f"{name} (AP {average_precision_score(y, scores):.3f})")
        base = float(np.mean(y))
    if base is not None:
        ax.axhline(base, color="grey", ls=":", lw=1, label=f"chance ({base:.3f})")
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall curve", xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(loc="upper right", fontsize=8)
    return fig


def triptych_axes(
    axes: Sequence[Any],
    image: np.ndarray,
    reconstruction: np.ndarray,
    error_map: np.ndarray,
    *,
    vmax: float | None = None,
    titles: bool = True,
    mask: np.ndarray | None = None,
) -> Any:
    """Draw [input | reconstruction | anomaly map] of one image on three axes.

    Args:
        image, reconstruction: ``(H, W)`` gray or ``(H, W, 3)`` colour, in [0, 1].
        error_map: ``(H, W)``.
        vmax: Upper end of the map's colour scale; None for this image's own maximum.
        titles: Name the panels.
        mask: ``(H, W)`` bool defect mask, outlined on the input and the map.

    Returns:
        The map's image artist (for a colorbar).
    """
    top = float(vmax) if vmax is not None else max(float(error_map.max()), 1e-6)
    show_image(axes[0], image)
    show_image(axes[1], reconstruction)
    art = axes[2].imshow(error_map, cmap=MAP_CMAP, vmin=0, vmax=top)
    outline(axes[0], mask)
    outline(axes[2], mask)
    map_title = "anomaly map |x - x̂|" + (" + defect outline" if mask is not None and mask.any() else "")
    for ax, name in zip(axes, ("input", "reconstruction", map_title), strict=True):
        ax.set_xticks([])
        ax.set_yticks([])
        if titles:
            ax.set_title(name, fontsize=9)
    return art


SCORE_MAP_CMAP = "viridis"  # the score's own map: another colour map than the reconstruction error's


def score_map_axes(ax: Any, score_map: np.ndarray, name: str, *, title: bool = True, mask: np.ndarray | None = None) -> Any:
    """Draw a score's own map (e.g. ``patch-knn``'s, see ``scoring.PatchKnn``) on ``ax``,
    to its own maximum; returns the image artist (for a colorbar)."""
    art = ax.imshow(score_map, cmap=SCORE_MAP_CMAP, vmin=0, vmax=max(float(score_map.max()), 1e-6))
    outline(ax, mask)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(f"{name} map", fontsize=9)
    return art


def triptychs(
    images: Any,
    reconstructions: Any,
    maps: Any,
    *,
    captions: Sequence[str] | None = None,
    scale: str = "per-image",
    global_max: float | None = None,
    masks: Any = None,
    score_maps: Any = None,
    score_name: str = "score",
) -> Figure:
    """A grid of [input | reconstruction | anomaly map] rows with a colorbar each.

    Args:
        images, reconstructions: ``(N, C, H, W)`` (C = 1 or 3) or ``(N, H, W)`` arrays.
        maps: ``(N, 1, H, W)`` or ``(N, H, W)``.
        captions: One text per row (e.g. label and score).
        scale: ``"per-image"`` (each map to its own maximum) or ``"global"``
            (every map to ``global_max``, so colours compare across rows).
        global_max: The shared top of the scale; default the largest map value.
        masks: ``(N, 1, H, W)`` defect masks to outline, or None.
        score_maps: ``(N, 1, H, W)`` maps of the score itself where it is not the reconstruction
            error (``patch-knn``, ``latent-knn``): a fourth column, in its own colours and to its own maximum.
        score_name: The score those maps belong to, for their title and colour bar.
    """
    if scale not in SCALES:
        raise ValueError(f"scale={scale!r}: use one of {SCALES}")
    imgs, recs, errs = (displayable(a) for a in (images, reconstructions, maps))
    outlines = displayable(masks) > 0.5 if masks is not None else None
    n = len(imgs)
    top = global_max if global_max is not None else float(errs.max()) if n else 1.0
    extra = displayable(score_maps) if score_maps is not None else None
    columns = 3 if extra is None else 4
    fig = NotebookFigure(figsize=(2.5 * columns, 2.3 * max(n, 1)), layout="constrained")
    grid = fig.subplots(max(n, 1), columns, squeeze=False)
    for row in range(n):
        art = triptych_axes(
            grid[row, :3],
            imgs[row],
            recs[row],
            errs[row],
            vmax=top if scale == "global" else None,
            titles=row == 0,
            mask=outlines[row] if outlines is not None else None,
        )
        fig.colorbar(art, ax=grid[row, 2], fraction=0.046, pad=0.04, label="|x - x̂|" if extra is not None else None)
        if extra is not None:
            art = score_map_axes(grid[row, 3], extra[row], score_name, title=row == 0,
                                 mask=outlines[row] if outlines is not None else None)
            fig.colorbar(art, ax=grid[row, 3], fraction=0.046, pad=0.04, label=score_name)
        if captions is not None:
            grid[row, 0].set_ylabel(captions[row], fontsize=8)
    return fig


def tsne_scatter(
    embedding: Any,
    labels: Any,
    is_anomaly: Any,
    *,
    title: str = "t-SNE of the latent space",
    class_names: Sequence[str] | None = None,
) -> Figure:
    """Two panels of a 2-D embedding: coloured by normal/anomaly, and by class (named)."""
    xy = np.asarray(embedding, dtype=float)
    labels, y = np.asarray(labels), np.asarray(is_anomaly, dtype=bool)
    fig = NotebookFigure(figsize=(11, 5), layout="constrained")
    left, right = fig.subplots(1, 2)
    left.scatter(*xy[~y].T, s=6, alpha=0.6, color=NORMAL_COLOR, label="normal")
    left.scatter(*xy[y].T, s=6, alpha=0.8, color=ANOMALY_COLOR, label="anomaly")
    left.legend(markerscale=3)
    left.set_title("normal vs anomaly")
    classes = np.unique(labels)
    cmap = matplotlib.colormaps["tab10"]
    for c in classes:
        m = labels == c
        right.scatter(
            *xy[m].T,
            s=6,
            alpha=0.7,
            color=cmap(int(c) % 10),
            label=class_name(class_names, c),
            marker="x" if y[m].any() else "o",
        )
    right.legend(title="class", markerscale=2, fontsize=8, ncols=2)
    right.set_title("by class (x: anomaly class)")
    for ax in (left, right):
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title)
    return fig


def confusion_figure(matrix: Any) -> Figure:
    """A 2x2 confusion matrix ``[[tn, fp], [fn, tp]]`` as an annotated heatmap."""
    m = np.asarray(matrix)
    fig = NotebookFigure(figsize=(3.4, 3))
    ax = fig.add_subplot()
    ax.imshow(m, cmap="Blues")
    for (i, j), v in np.ndenumerate(m):
        ax.text(j, i, f"{v:,}", ha="center", va="center", color="white" if v > m.max() / 2 else "black")
    ax.set_xticks([0, 1], ["normal", "anomaly"])
    ax.set_yticks([0, 1], ["normal", "anomaly"])
    ax.set(xlabel="predicted", ylabel="true")
    return fig
