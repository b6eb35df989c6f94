"""The schedule-curve command: measurements along training, per schedule and seed, a table and a plot."""

from __future__ import annotations

import csv
import statistics
from pathlib import Path

import pytest

from anomalymap_helpers.errors import ParameterError
from benchmarks.schedule_curve import parse_schedule, run_curve


def test_curve_measures_every_so_many_images_and_at_the_end(
    mnist_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    summary = run_curve(["2x64", "1x32"], 2, str(tmp_path / "curve"), every=200, mnist_dir=str(mnist_dir),
                        max_train=500, max_test=1000)
    with open(tmp_path / "curve" / "curve.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    n = 450  # 500 normals less the 10 % validation share
    for schedule, epochs in (("2x64", 2), ("1x32", 1)):
        for seed in ("0", "1"):
            seen = [int(r["images"]) for r in rows if r["schedule"] == schedule and r["seed"] == seed]
            assert seen[-1] == epochs * n and seen == sorted(seen)
            assert all(b - a <= 200 + 64 for a, b in zip([0, *seen], seen, strict=False))  # at least every 200 (+1 batch)
    first = [float(r["val_mse"]) for r in rows if r["schedule"] == "2x64" and r["seed"] == "0"]
    assert first[-1] < first[0]  # it learns
    finals = summary["schedules"]["1x32"]
    assert len(finals) == 2 and all(f["seconds"] > 0 and 0 < f["roc_auc"] < 1 for f in finals)
    out = capsys.readouterr().out
    mean = statistics.mean(f["val_mse"] for f in finals)
    assert "| 1x32 | " in out and f"{mean:.4f} ± " in out and "mean ± sample std" in out
    assert (tmp_path / "curve" / "schedule_curve.png").stat().st_size > 10_000


def test_schedule_is_epochs_by_batch() -> None:
    assert parse_schedule("5x256") == (5, 256)
    with pytest.raises(ParameterError, match="use EPOCHSxBATCH, e.g. 5x256"):
        parse_schedule("5 epochs")
