"""How long the explorer takes from a control's new value to the redrawn view.

``python benchmarks/explorer_latency.py --results DIR`` opens a run made by
notebooks 01-03, moves each control ``--moves`` times and writes the median and
90th percentile to ``<run>/explorer_latency.json``. With ``--linked`` (a run made by
01-05) it also times notebook 05's linked map (:func:`measure_linked`), and what the same
scatter would cost drawn by ipympl instead of plotly.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python benchmarks/NAME.py`: the repository's root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import io
import time
from typing import Any

import numpy as np

from anomalymap_helpers.pipeline.evaluation import plotting
from anomalymap_helpers.pipeline.explorer import Explorer


def measure_latency(explorer: Explorer, moves: int = 40) -> dict[str, float]:
    """Median and 90th-percentile milliseconds from a control's new value to the redrawn view.

    ipywidgets call observers synchronously in the kernel, so setting a value
    runs the same code a slider move in the browser does (less the round trip).
    """


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


def _stats(name: str, times: list[float]) -> dict[str, float]:
    return {f"{name}_median_ms": float(np.median(times)), f"{name}_p90_ms": float(np.percentile(times, 90))}


def measure_linked(linked: Any, moves: int = 40) -> dict[str, float]:
    """Kernel milliseconds of notebook 05's linked map, and of the ipympl alternative.

    - ``click``: a click on a point (choose it, draw its triptych, open it in the explorer,
      move the ring): what plotly's click event runs in the kernel;
    - ``ring``: the explorer's image slider moved, the ring following (the explorer's own redraw
      included); ``mark``: the ring's move alone (one plotly trace update);
    - ``lasso``: a selection of 50 points (six triptychs drawn);
    - ``ipympl_frame``: the same scatter (560x480 pixels) drawn by matplotlib's Agg and
      encoded as a PNG: what ipympl does in the kernel for *every* frame of a pan or zoom
      and for every ring move. plotly pans and zooms in the browser, at no kernel cost.
    """
    from types import SimpleNamespace

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from PIL import Image

    w = linked.controls()
    handler = linked._widgets
    n = len(linked.positions)
    times: dict[str, list[float]] = {"click": [], "ring": [], "mark": [], "lasso": [], "ipympl_frame": []}
    slider = linked.ex.controls()["image"]
    rng = np.random.default_rng(0)
    for k in range(moves):
        t0 = time.perf_counter()
        handler.on_click(w["scatter"].data[0], SimpleNamespace(point_inds=[(k * 7919) % n]), None)
        times["click"].append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        slider.value = int(linked.positions[(k * 104_729) % n])
        times["ring"].append((time.perf_counter() - t0) * 1000)
        linked.ex.position = int(linked.positions[(k * 15_485_863) % n])  # another point, set behind the widgets
        t0 = time.perf_counter()
        handler.mark()
        times["mark"].append((time.perf_counter() - t0) * 1000)
    for _ in range(max(3, moves // 8)):
        t0 = time.perf_counter()
        handler.on_selection(w["scatter"].data[0], SimpleNamespace(point_inds=rng.choice(n, min(50, n), replace=False)), None)
        times["lasso"].append((time.perf_counter() - t0) * 1000)
    colors = linked.colors("class")["color"]
    fig = Figure(figsize=(5.6, 4.8), dpi=100)
    canvas = FigureCanvasAgg(fig)  # ipympl's canvas draws with Agg and sends the picture as a PNG
    ax = fig.add_subplot()
    ax.scatter(*linked.embedding.T, s=12, c=colors)
    ring = ax.scatter([], [], s=200, facecolors="none", edgecolors="black")
    for k in range(moves):
        ring.set_offsets(linked.embedding[[(k * 7919) % n]])
        ax.set_xlim(*(np.array(ax.get_xlim()) * 0.99))  # a zoom step
        t0 = time.perf_counter()
        canvas.draw()
        Image.fromarray(np.asarray(canvas.buffer_rgba())).save(io.BytesIO(), format="png")
        times["ipympl_frame"].append((time.perf_counter() - t0) * 1000)
    out: dict[str, float] = {"points": float(n)}
    for name, t in times.items():
        out.update(_stats(name, t))
    return out


def _main(args: argparse.Namespace) -> int:
    import json

    from anomalymap_helpers.files import storage
    from anomalymap_helpers.runs.opened import Run

    run = Run.open(args.results, mnist_dir=args.mnist_dir)
    result = {"moves": args.moves, **measure_latency(run.explorer(), args.moves)}
    if args.linked:
        result["linked"] = measure_linked(run.latent_explorer(), args.moves)
    print(json.dumps(result, indent=2))
    storage.write_json(run.files.root / "explorer_latency.json", result)
    return 0


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit status."""
    from benchmarks._entry import run

    lat = argparse.ArgumentParser(prog="python benchmarks/explorer_latency.py", description="milliseconds from a slider move to the redrawn explorer view")
    lat.add_argument("--results", default="results/default", metavar="DIR", help="a run folder made by notebooks 01-03")
    lat.add_argument("--moves", type=int, default=40)
    lat.add_argument("--linked", action="store_true",
                     help="also time notebook 05's linked map (plotly) against drawing it with ipympl (a run made by 01-05)")
    lat.add_argument("--mnist-dir", default=None)
    return run(lat, _main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
