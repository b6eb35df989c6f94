"""The explorer's ipywidgets: the controls, and what each does to the view.

Every handler reads the controls into the :class:`~anomalymap_helpers.pipeline.explorer.view.Explorer`
state and redraws through :mod:`~anomalymap_helpers.pipeline.explorer.render`; nothing here
decides a verdict or a gallery.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from anomalymap_helpers.errors import AnomalyMapError
from anomalymap_helpers.pipeline.evaluation import plotting
from anomalymap_helpers.pipeline.explorer import render
from anomalymap_helpers.pipeline.explorer.state import GALLERIES

if TYPE_CHECKING:
    from anomalymap_helpers.pipeline.explorer.state import ExplorerState

def threshold_slider(scores: np.ndarray, value: float) -> Any:
    """A log slider for positive scores (errors and distances are skewed), else a linear one.

    Without steps (``step=None``): JupyterLab's slider moves to whole steps and sends the value it
    lands on back to the kernel, so a stepped slider would open on a threshold a little off 03's, and
    a rule's button would put it a little off that rule's, with other counts and no rule marked.
    """
    import ipywidgets as w

    lo, hi = min(float(scores.min()), value), max(float(scores.max()), value)
    if lo > 0:  # min and max are exponents of 10
        return w.FloatLogSlider(
            value=value, base=10, min=math.log10(lo), max=math.log10(hi), step=None, description="threshold", readout_format=".5f"
        )
    return w.FloatSlider(value=value, min=lo, max=hi, step=None, description="threshold", readout_format=".4f")


def confusion_html(counts: dict[str, int]) -> str:
    """The confusion counts as a small HTML table, with precision and recall."""
    tp, fp, tn, fn = counts["tp"], counts["fp"], counts["tn"], counts["fn"]
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return (
        "<table class='anomalymap-confusion' style='border-collapse:collapse'>"
        "<tr><th></th><th>called normal</th><th>called anomaly</th></tr>"
        f"<tr><th>normal</th><td>{tn:,}</td><td>{fp:,}</td></tr>"
        f"<tr><th>anomaly</th><td>{fn:,}</td><td>{tp:,}</td></tr></table>"
        f"precision {precision:.3f} &middot; recall {recall:.3f}"
    )


class ExplorerWidgets:
    """The controls of one explorer and their handlers.

    Attributes:
        controls: The widgets by name (``subset``, ``image``, ``threshold``, ``rule``, ``scale``,
            ``view``, ``status``, ``histogram``, ``confusion``, ``gallery``, ``strip``, ``picks``).
        box: The whole explorer, ready to display.
    """

    def __init__(self, ex: ExplorerState, gallery_size: int = 8) -> None:
        import ipywidgets as w

        self.ex, self.gallery_size = ex, gallery_size
        self.shown: list[int] = []
        c = self.controls = {
            "subset": w.Dropdown(options=[(v, k) for k, v in ex.subsets().items()], value=ex.subset, description="show"),
            "image": w.IntSlider(0, 0, len(ex.positions()) - 1, description="image"),
            "threshold": threshold_slider(ex.scores, ex.threshold),
            "rule": w.ToggleButtons(options=list(ex.rules), value=ex.rule_at(), description="rule"),
            "scale": w.ToggleButtons(options=list(plotting.SCALES), value=ex.scale, description="colour scale"),
            "view": w.Image(format="png"),
            "status": w.HTML(),
            "histogram": w.Image(format="png"),
            "confusion": w.HTML(),
            "gallery": w.Dropdown(options=[(v, k) for k, v in GALLERIES.items()], value="top", description="gallery"),
            "strip": w.Image(format="png"),
            "picks": w.ToggleButtons(options=[], description="open", style={"button_width": "84px"}),
            "upload": w.FileUpload(accept=".png,.jpg,.jpeg,.bmp,.tif,.tiff", multiple=False,
                                   description="score an image"),
            "upload_status": w.HTML(),
            "upload_view": w.Image(format="png", layout=w.Layout(max_width="600px")),
        }
        css = {"strip": "gallery-strip", "picks": "gallery-open"}
        for name, widget in c.items():
            widget.add_class(f"anomalymap-{css.get(name, name)}")
        c["subset"].observe(self.on_subset, names="value")
        c["image"].observe(self.redraw, names="value")
        c["scale"].observe(self.redraw, names="value")
        c["threshold"].observe(self.on_threshold, names="value")
        c["rule"].observe(self.on_rule, names="value")
        c["gallery"].observe(self.regallery, names="value")
        c["picks"].observe(self.open_pick, names="value")
        c["upload"].observe(self.on_upload, names="value")
        # Drawn once, with the rules' lines and 03's threshold: redrawn on every threshold change,
        # it made thresholds typed into the slider's readout land wrong in the browser test.
        c["histogram"].value = render.histogram_png(ex)
        self.redraw()
        self.recount()
        self.regallery()
        self.box = w.VBox(
            [
                w.HBox([c["subset"], c["image"]]),
                w.HBox([c["threshold"], c["scale"]]),
                *([c["rule"]] if self.ex.rules else []),
                c["status"],
                c["view"],
                c["histogram"],
                w.HBox([c["confusion"]]),
                c["gallery"],
                c["strip"],
                c["picks"],
                *([w.HBox([c["upload"], c["upload_status"]]), c["upload_view"]] if ex.predict_file else []),
            ]
        )
        self.box.add_class("anomalymap-explorer")

    def redraw(self, *_: Any) -> None:
        """Read the controls into the state; draw the view and its verdict."""
        c, ex = self.controls, self.ex
        ex.subset, ex.position = c["subset"].value, c["image"].value
        ex.threshold, ex.scale = c["threshold"].value, c["scale"].value
        i = ex.current()
        c["view"].value = render.png(ex, i)
        verdict = ex.verdict(i)
        color = plotting.ANOMALY_COLOR if verdict == "anomaly" else plotting.NORMAL_COLOR
        c["status"].value = (
            f"<b style='color:{color}'>{verdict.upper()}</b> &nbsp; {ex.caption(i)}"
            f"<br><span class='anomalymap-range'>map colour range 0 to {ex.map_range(i)[1]:.4f} ({ex.scale})</span>"
        )

    def recount(self, *_: Any) -> None:
        """The confusion matrix at the slider's threshold; the rule that sets it, if any."""
        c, t = self.controls, self.controls["threshold"].value
        c["confusion"].value = confusion_html(self.ex.confusion(t))
        c["rule"].unobserve(self.on_rule, names="value")
        c["rule"].value = self.ex.rule_at(t)
        c["rule"].observe(self.on_rule, names="value")

    def on_rule(self, change: Any) -> None:
        """Put the threshold where the chosen rule sets it (the slider's handler redraws the rest)."""
        if change["new"] is not None:
            self.controls["threshold"].value = self.ex.rules[change["new"]]

    def regallery(self, *_: Any) -> None:
        """The gallery strip and its buttons at the slider's threshold."""
        c = self.controls
        self.shown[:] = [int(i) for i in self.ex.gallery(c["gallery"].value, self.gallery_size, c["threshold"].value)]
        c["strip"].value = render.thumbnails(self.ex, np.array(self.shown, dtype=int))
        c["picks"].unobserve(self.open_pick, names="value")
        c["picks"].options = [(f"{k + 1}: {self.ex.labels[i]}", k) for k, i in enumerate(self.shown)]
        c["picks"].value = None
        c["picks"].observe(self.open_pick, names="value")

    def open_pick(self, change: Any) -> None:
        """Open the gallery image whose button was chosen."""
        if change["new"] is None:
            return
        self.open(self.shown[change["new"]])

    def open(self, position: int) -> None:
        """Show test image ``position`` (the subset becomes "all")."""
        if self.controls["subset"].value != "all":
            self.controls["subset"].value = "all"  # on_subset resets the slider; then jump
        self.controls["image"].value = int(position)

    def on_upload(self, change: Any) -> None:
        """Score an image file dropped into the upload control, as ``predict`` does, and show it."""
        import tempfile

        files = change["new"]
        if not files or self.ex.predict_file is None:
            return
        f = files[0]
        name = Path(f["name"]).name
        shown_name = html.escape(name)  # a file's name in the status line's HTML, as text
        c = self.controls
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_bytes(bytes(f["content"]))
            try:
                p, match = self.ex.predict_file(str(path))
                why = p.skipped[0][1] if p.skipped else (None if len(p) else "no image in it")
            except AnomalyMapError as exc:  # not an image, unreadable: say so, keep the explorer
                why = str(exc)
        if why is not None:
            c["upload_status"].value = (f"<b style='color:{plotting.ANOMALY_COLOR}'>cannot score {shown_name}</b>: "
                                        f"{html.escape(why)}")
            c["upload_view"].value = b""
            return
        verdict = "anomaly" if bool(p.anomaly[0]) else "normal"
        color = plotting.ANOMALY_COLOR if verdict == "anomaly" else plotting.NORMAL_COLOR
        note = f" ({p.notes[0]})" if p.notes[0] else ""
        c["upload_view"].value = render.prediction_png(p, match)  # the picture first, then the line that says so
        c["upload_status"].value = (
            f"<b style='color:{color}'>{verdict.upper()}</b> &nbsp; uploaded {shown_name}{html.escape(note)}: {p.method} "
            f"{float(p.scores[0]):.5f} {'>' if verdict == 'anomaly' else '<='} threshold {p.threshold:.5f}"
        )

    def on_subset(self, _: Any) -> None:
        self.controls["image"].max = len(self.ex.positions(self.controls["subset"].value)) - 1
        self.controls["image"].value = 0
        self.redraw()

    def on_threshold(self, _: Any) -> None:
        self.redraw()
        self.recount()
        if self.controls["gallery"].value != "top":
            self.regallery()
