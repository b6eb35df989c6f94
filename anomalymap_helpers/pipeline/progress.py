"""How a long step reports progress: tqdm bars in a live front end, plain lines in a log.

Under the runner (papermill), nbval or CI, output goes to a file (``$ANOMALYMAP_HEADLESS``
is set): bars that redraw would fill it, so training prints a plain line now and then,
paced by :class:`Clock`, with images/s and the time left.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

HEADLESS_ENV = "ANOMALYMAP_HEADLESS"


def headless() -> bool:
    """Whether output goes to a file rather than a live front end (papermill, nbval, CI)."""
    return os.environ.get(HEADLESS_ENV, "") not in ("", "0")


def progress_bar(total: int, desc: str, *, leave: bool = True, disable: bool = False) -> Any:
    """A tqdm bar: a widget in JupyterLab, plain text that stays short when headless."""
    if headless():
        from tqdm.std import tqdm

        return tqdm(total=total, desc=desc, leave=leave, disable=disable, ascii=True, file=sys.stdout, mininterval=60)
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=leave, disable=disable)


class Clock:
    """Images per second and the time left, and whether a headless progress line is due."""

    def __init__(self, total_images: int, every: float) -> None:
        self.total, self.every, self.done = total_images, every, 0
        self.t0 = self.last = time.perf_counter()

    def tick(self, images: int) -> bool:
        self.done += images
        now = time.perf_counter()
        if now - self.last < self.every:
            return False
        self.last = now
        return True

    def rate(self) -> float:
        return self.done / max(time.perf_counter() - self.t0, 1e-9)

    def left(self) -> str:
        seconds = (self.total - self.done) / max(self.rate(), 1e-9)
        return f"about {seconds // 60:.0f} min {seconds % 60:.0f} s left" if seconds >= 60 else f"about {seconds:.0f} s left"
