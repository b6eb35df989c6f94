"""The explorer a notebook shows: its state (:mod:`.state`), drawn (:mod:`.render`), with its
widgets (:mod:`.widgets`), and a PNG of the same view where no widget front end runs."""

from __future__ import annotations

import base64
import contextlib
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from anomalymap_helpers.pipeline.explorer import render
from anomalymap_helpers.pipeline.explorer.state import ExplorerState
from anomalymap_helpers.pipeline.explorer.widgets import ExplorerWidgets


class Explorer(ExplorerState):
    """Browse test images with their reconstruction, anomaly map, score and verdict: the state of
    :class:`~.state.ExplorerState` (same arguments), with its drawing, files and widgets."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._widgets: ExplorerWidgets | None = None
        self._view_figure: Figure | None = None  # the one view figure, refilled on each redraw (render.png)

    # ------------------------------------------------------------------ drawing, files and widgets

    def figure(self, i: int | None = None, threshold: float | None = None, scale: str | None = None) -> Figure:
        """The [input | reconstruction | anomaly map] view of image ``i`` (default: the current one)."""
        return render.figure(self, self.current() if i is None else i, threshold, scale)

    def png(self, i: int | None = None, threshold: float | None = None, scale: str | None = None) -> bytes:
        """The view of :meth:`figure` as PNG bytes."""
        return render.png(self, self.current() if i is None else i, threshold, scale)

    def histogram_png(self, threshold: float | None = None) -> bytes:
        """The test scores' histogram with each rule's threshold and the current one, as PNG bytes."""
        return render.histogram_png(self, threshold)

    def save_samples(self, folder: str | Path, n: int = 8, *, seed: int = 0) -> list[Path]:
        """Save ``n`` sampled views under ``folder`` (see :func:`.render.save_samples`)."""
        return render.save_samples(self, folder, n, seed=seed)

    def open(self, position: int) -> None:
        """Show test image ``position`` (in the test split): the subset becomes "all"; the widgets follow."""
        if self._widgets is None or not 0 <= int(position) < len(self.scores):
            super().open(position)  # refuses a position outside the test split
        else:
            self._widgets.open(position)

    def controls(self) -> dict[str, Any]:
        """The explorer's widgets by name (built on first use)."""
        if self._widgets is None:
            self._widgets = ExplorerWidgets(self)
        return self._widgets.controls

    def widget(self) -> Any:
        """The ipywidgets explorer (built once, then reused)."""
        self.controls()
        return self._widgets.box

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        """The widget where a front end renders widgets; a PNG of the same view elsewhere."""
        bundle: dict[str, Any] = {}
        with contextlib.suppress(ImportError):  # without ipywidgets: the static view alone
            bundle = self.widget()._repr_mimebundle_(**kwargs) or {}
        bundle["image/png"] = base64.b64encode(self.png()).decode("ascii")
        bundle["text/plain"] = self.caption(self.current())
        return bundle
