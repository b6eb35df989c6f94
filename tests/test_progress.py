"""Progress: the runner's line echo and the training clock."""

from __future__ import annotations

import time

from anomalymap_helpers.commands.echo import NotebookEcho
from anomalymap_helpers.pipeline.progress import Clock


def test_echo_prints_whole_lines_once_with_the_notebook_number() -> None:
    out: list[str] = []
    echo = NotebookEcho("02", out.append)
    echo.write("epoch 1/5  lo")
    assert out == []  # half a line waits
    echo.write("ss 0.1\r\nbar 10%\rbar 20%\n\n")
    echo.write("last")
    echo.close()
    assert out == ["  02 | epoch 1/5  loss 0.1", "  02 | bar 10%", "  02 | bar 20%", "  02 | last"]


def test_clock_paces_lines_and_says_the_time_left() -> None:
    clock = Clock(total_images=1500, every=3600.0)
    assert not clock.tick(500)  # the first line waits an interval
    clock.t0 -= 10.0  # 500 images in 10 s: 50 images/s, 1,000 images left
    assert abs(clock.rate() - 50) < 1
    assert clock.left() == "about 20 s left"
    clock.total = 6500  # 6,000 left at 50 images/s: two minutes
    assert clock.left() == "about 2 min 0 s left"
    clock.every, clock.last = 0.0, time.perf_counter() - 1
    assert clock.tick(1)
