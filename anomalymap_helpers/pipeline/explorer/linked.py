"""The latent map linked to the heatmap explorer (notebook 05).

The t-SNE scatter of the test images, coloured by class or by score, is a plotly
``FigureWidget``: zooming, panning and hovering run in the browser, and only a click or a
lasso selection comes back to the kernel. A click opens that image in the heatmap explorer
below (its triptych, score and verdict) and shows its triptych beside the scatter; a lasso
shows the triptychs of the selection, most anomalous first. Choosing an image in the heatmap
explorer (slider, gallery) marks it in the scatter. Headless (papermill, nbval, GitHub) the
cell shows a PNG of the same scatter.

Why plotly and not ipympl: ``python benchmarks/explorer_latency.py --linked`` measures
both (docs/benchmarks.md). ipympl draws every pan or zoom step in the kernel with Agg and sends
a PNG; plotly redraws in the browser and costs the kernel nothing until a point is chosen. And
``%matplotlib widget`` would turn every other figure of the notebook into a widget too, where
headless runs need PNGs.

The state (which points are chosen, what is marked) is plain NumPy here, tested without a
browser; the widgets only read and write it.
"""

from __future__ import annotations

import base64
import contextlib
import io
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from anomalymap_helpers.errors import ParameterError
from anomalymap_helpers.pipeline.evaluation import plotting

if TYPE_CHECKING:
    from anomalymap_helpers.pipeline.explorer.view import Explorer

COLOR_BY = ("class", "score")
MAX_SHOWN = 6  # triptychs beside the scatter for a lasso selection


class LatentExplorer:
    """The t-SNE map of (some of) the test images, linked to a heatmap :class:`Explorer`.

    Args:
        explorer: The heatmap explorer of the whole test split (notebook 04's).
        positions: ``(P,)`` positions in the test split of the points.
        embedding: ``(P, 2)`` their t-SNE coordinates.
        color_by: ``"class"`` or ``"score"``, the colouring shown first.

    Attributes:
        chosen: Test positions of the points last clicked or lasso-selected, most anomalous first.
    """

    def __init__(
        self,
        explorer: Explorer | Callable[[], Explorer],
        positions: Any,
        embedding: Any,
        *,
        color_by: str = "class",
        labels: Any = None,
        is_anomaly: Any = None,
        class_names: Any = None,
    ) -> None:
        self._ex = None if callable(explorer) and not hasattr(explorer, "scores") else explorer
        self._make = explorer if self._ex is None else None
        self.positions = np.asarray(positions, dtype=int)
        self.embedding = np.asarray(embedding, dtype=float)
        if self.embedding.shape != (len(self.positions), 2):
            raise ParameterError(
                f"the embedding has shape {self.embedding.shape}, expected ({len(self.positions)}, 2): one row of "
                "t-SNE coordinates per point"
            )
        if color_by not in COLOR_BY:
            raise ParameterError(f"color_by={color_by!r}: use one of {list(COLOR_BY)}")
        if self._ex is None and (labels is None or is_anomaly is None):
            raise ParameterError("with an explorer made on demand, give the points' labels and is_anomaly")
        if self._ex is not None:
            self._check_positions(self._ex)
        self.labels = np.asarray(labels) if labels is not None else self._ex.labels[self.positions]
        self.is_anomaly = np.asarray(is_anomaly, dtype=bool) if is_anomaly is not None else self._ex.is_anomaly[self.positions]
        self.class_names = tuple(class_names) if class_names is not None else getattr(self._ex, "class_names", None)
        self.color_by = color_by
        self.chosen: list[int] = []
        self._point = {int(p): k for k, p in enumerate(self.positions)}
        self._widgets: Any = None

    def _check_positions(self, ex: Explorer) -> None:
        if len(self.positions) and (self.positions.min() < 0 or self.positions.max() >= len(ex.scores)):
            raise ParameterError(f"positions must lie in 0..{len(ex.scores) - 1}, the explorer's test images")

    @property
    def ex(self) -> Explorer:
        """The heatmap explorer (made on first use where a maker was given: it scores every test image)."""
        if self._ex is None:
            ex = self._make()
            self._check_positions(ex)
            self._ex = ex
        return self._ex

    # ------------------------------------------------------------------ state

    def point_of(self, position: int) -> int | None:
        """The point (row of the embedding) of test image ``position``, or None where it is not in the map."""
        return self._point.get(int(position))

    def choose(self, points: Any) -> list[int]:
        """Choose points (rows of the embedding): their test positions, most anomalous first, become :attr:`chosen`."""
        rows = np.asarray(points, dtype=int).reshape(-1)
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self.positions)):
            raise ParameterError(f"points must lie in 0..{len(self.positions) - 1}")
        found = self.positions[rows]
        self.chosen = [int(p) for p in found[np.argsort(-self.ex.scores[found], kind="stable")]]
        return self.chosen

    def summary(self) -> str:
        """One line about :attr:`chosen`: how many, how many anomalies, how many flagged at the threshold."""
        if not self.chosen:
            return "click a point, or lasso a group (the lasso is in the plot's toolbar), to see its triptych"
        if len(self.chosen) == 1:
            return self.ex.caption(self.chosen[0])
        c = np.asarray(self.chosen)
        flagged = int((self.ex.scores[c] > self.ex.threshold).sum())
        shown = min(len(c), MAX_SHOWN)
        return (
            f"{len(c)} images selected: {int(self.ex.is_anomaly[c].sum())} anomalies, {flagged} flagged at the "
            f"threshold {self.ex.threshold:.5f}; the {shown} most anomalous below"
        )

    def hover_text(self) -> list[str]:
        """What hovering over each point says: test image, class, score and verdict."""
        return [
            f"{self.ex.title(p)}<br>{self.ex.class_name(p)} ({'anomaly' if self.ex.is_anomaly[p] else 'normal'})"
            f"<br>{self.ex.score_name} {self.ex.scores[p]:.5f} -> {self.ex.verdict(p)}"
            for p in self.positions
        ]

    def colors(self, color_by: str | None = None) -> dict[str, Any]:
        """The scatter's marker settings for ``color_by``: one colour per class, or the score on a colour scale."""
        color_by = color_by or self.color_by
        if color_by == "score":
            return {"color": self.ex.scores[self.positions].tolist(), "colorscale": "Viridis", "showscale": True,
                    "colorbar": {"title": {"text": self.ex.score_name}}}
        import matplotlib

        cmap = matplotlib.colormaps["tab10"]
        labels = self.labels
        return {"color": [matplotlib.colors.to_hex(cmap(int(c) % 10)) for c in labels], "showscale": False}

    # ------------------------------------------------------------------ drawing

    def triptychs_png(self, positions: list[int] | None = None) -> bytes:
        """The [input | reconstruction | map] rows of ``positions`` (default :attr:`chosen`, at most ``MAX_SHOWN``)."""
        from anomalymap_helpers.pipeline.explorer import render

        picks = (self.chosen if positions is None else positions)[:MAX_SHOWN]
        if not picks:
            return b""
        if len(picks) == 1:
            return render.png(self.ex, picks[0])
        ex, p = self.ex, np.asarray(picks)
        captions = [f"{ex.title(i)} · {ex.class_name(i)}\n{ex.score_name} {ex.scores[i]:.4f} -> {ex.verdict(i)}" for i in p]
        masks = ex.masks[p] if ex.masks is not None else None
        extra = np.stack([ex.score_map(int(i)) for i in p])[:, None] if ex.has_score_map else None
        fig = plotting.triptychs(ex.images[p], ex.reconstructions[p], ex.maps[p], captions=captions, scale=ex.scale,
                                 global_max=ex.global_max, masks=masks, score_maps=extra, score_name=ex.score_name)
        return _png(fig)

    def static_figure(self) -> Any:
        """The scatter as a matplotlib figure (the headless view): by class, anomaly classes as x."""
        return plotting.tsne_scatter(self.embedding, self.labels, self.is_anomaly, class_names=self.class_names)

    # ------------------------------------------------------------------ widgets

    def controls(self) -> dict[str, Any]:
        """The linked view's widgets by name (built on first use)."""
        if self._widgets is None:
            self._widgets = LinkedWidgets(self)
        return self._widgets.controls

    def widget(self) -> Any:
        """The linked view: scatter and triptychs above, the heatmap explorer below."""
        self.controls()
        return self._widgets.box

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        """The live view where a front end renders widgets; a PNG of the scatter alone when headless.

        Headless (the runner, papermill, CI) nobody can click, so neither the widgets nor the heatmap
        explorer they need are made: that saves the scoring of every test image and plotly's start.
        """
        from anomalymap_helpers.pipeline.progress import headless

        bundle: dict[str, Any] = {}
        with contextlib.suppress(ImportError):  # without plotly or ipywidgets: the static view alone
            if not headless():
                bundle = self.widget()._repr_mimebundle_(**kwargs) or {}
        bundle["image/png"] = base64.b64encode(_png(self.static_figure())).decode("ascii")
        bundle["text/plain"] = f"t-SNE map of {len(self.positions):,} test images, linked to the heatmap explorer"
        return bundle


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    return buf.getvalue()


class LinkedWidgets:
    """The scatter (plotly FigureWidget), the triptych panel and the heatmap explorer, wired together.

    Attributes:
        controls: ``scatter`` (the FigureWidget), ``color_by``, ``summary``, ``triptychs``.
        box: Everything, ready to display.
    """

    def __init__(self, lx: LatentExplorer) -> None:
        import ipywidgets as w
        import plotly.graph_objects as go

        self.lx = lx
        xy = lx.embedding
        symbols = np.where(lx.is_anomaly, "x", "circle").tolist()
        points = go.Scatter(
            x=xy[:, 0], y=xy[:, 1], mode="markers", name="test images", text=lx.hover_text(), hoverinfo="text",
            marker={"size": 7, "symbol": symbols, "opacity": 0.8, **lx.colors()},
        )
        mark = go.Scatter(x=[], y=[], mode="markers", name="in the explorer", hoverinfo="skip",
                          marker={"size": 18, "symbol": "circle-open", "color": "black", "line": {"width": 3}})
        scatter = go.FigureWidget(
            [points, mark],
            layout={
                "width": 560, "height": 480, "margin": {"l": 10, "r": 10, "t": 30, "b": 10}, "showlegend": False,
                "dragmode": "zoom", "hovermode": "closest", "clickmode": "event",
                "xaxis": {"visible": False}, "yaxis": {"visible": False},
            },
        )
        c = self.controls = {
            "scatter": scatter,
            "color_by": w.ToggleButtons(options=list(COLOR_BY), value=lx.color_by, description="colour by"),
            "summary": w.HTML(lx.summary()),
            "triptychs": w.Image(format="png", layout=w.Layout(max_width="480px")),
        }
        for name in ("color_by", "summary", "triptychs"):
            c[name].add_class(f"anomalymap-linked-{name}")
        scatter.data[0].on_click(self.on_click)
        scatter.data[0].on_selection(self.on_selection)
        c["color_by"].observe(self.recolor, names="value")
        explorer = lx.ex.controls()
        explorer["image"].observe(self.mark, names="value")
        explorer["subset"].observe(self.mark, names="value")
        self.mark()
        legend = w.HTML("<small>t-SNE of the test images &middot; &times;: an anomaly class &middot; "
                        "ring: the image the explorer below shows</small>")
        left = w.VBox([c["color_by"], legend, scatter], layout=w.Layout(min_width="580px"))
        right = w.VBox([c["summary"], c["triptychs"]], layout=w.Layout(flex="1 1 auto", padding="0 0 0 10px"))
        top = w.HBox([left, right])
        top.add_class("anomalymap-linked-map")
        self.box = w.VBox([top, lx.ex.widget()])
        self.box.add_class("anomalymap-linked")

    def show(self) -> None:
        """The summary and triptychs of the chosen points."""
        self.controls["triptychs"].value = self.lx.triptychs_png()
        self.controls["summary"].value = self.lx.summary()  # last: when it shows, the picture is sent

    def on_click(self, trace: Any, points: Any, selector: Any) -> None:
        """A click: that image's triptych here, and the heatmap explorer opens it (which marks it)."""
        if not points.point_inds:
            return
        self.lx.choose(points.point_inds[:1])
        self.show()
        self.lx.ex.open(self.lx.chosen[0])

    def on_selection(self, trace: Any, points: Any, selector: Any) -> None:
        """A lasso or box selection: the triptychs of the selected images, most anomalous first."""
        self.lx.choose(points.point_inds)
        self.show()

    def recolor(self, change: Any) -> None:
        """Colour the points by class or by score."""
        self.lx.color_by = change["new"]
        with self.controls["scatter"].batch_update():
            self.controls["scatter"].data[0].marker.update(self.lx.colors())

    def mark(self, *_: Any) -> None:
        """Ring the heatmap explorer's image in the scatter (nothing where it is not among the points)."""
        k = self.lx.point_of(self.lx.ex.current())
        x, y = ([], []) if k is None else ([self.lx.embedding[k, 0]], [self.lx.embedding[k, 1]])
        with self.controls["scatter"].batch_update():
            self.controls["scatter"].data[1].x, self.controls["scatter"].data[1].y = x, y
