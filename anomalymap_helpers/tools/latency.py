"""How long the explorer takes from a control's new value to the redrawn view.

``python -m anomalymap_helpers explorer-latency --results DIR`` opens a run made by
notebooks 01-03, moves each control ``--moves`` times and writes the median and
90th percentile to ``<run>/explorer_latency.json``.
"""

from __future__ import annotations

import time

import numpy as np

from anomalymap_helpers.pipeline import plotting
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
