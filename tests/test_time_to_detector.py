"""The time-to-detector benchmark: the series and the original loop on the same split, one table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from anomalymap_helpers.files import storage
from benchmarks.time_to_detector import run_time_to_detector


def test_time_to_detector_times_both_on_one_split(
    small_series: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A 2,000-image slice of MNIST, in batches of 16 so the epoch takes as many steps as the smoke run's (112)
    # and the model learns enough for 02's check: the claims are about the timing and the table, not the scores.
    params = {**small_series, "max_train": 2000, "max_test": 400, "batch_size": 16}
    report = run_time_to_detector(str(tmp_path / "run"), params, repeats=2)
    saved = json.loads((tmp_path / "run" / "time_to_detector.json").read_text())
    assert saved["ratio"] == pytest.approx(saved["series_seconds"] / saved["reference"]["seconds"])
    rounds = saved["repeats"]  # two rounds, in turn; the table's figures are their medians
    assert len(rounds) == 2 and all(r["ratio"] == pytest.approx(r["series_seconds"] / r["reference_seconds"]) for r in rounds)
    assert saved["series_seconds"] == pytest.approx(sum(r["series_seconds"] for r in rounds) / 2)
    assert saved["reference"]["seconds"] == pytest.approx(sum(r["reference_seconds"] for r in rounds) / 2)
    assert all(sum(r["notebook_seconds"].values()) <= r["series_seconds"] for r in rounds)
    assert len(saved["notebook_seconds"]) == 5
    ref = report["reference"]
    assert ref["epochs"] == 5 and ref["train_images"] == 1800  # the split notebook 01 wrote
    assert 0.5 < ref["roc_auc_default"] < 1 and 0 < ref["roc_auc_mse"] < 1
    assert saved["series_roc_auc"] == storage.read_json(tmp_path / "run" / "metrics.json")["roc_auc"]
    out = capsys.readouterr().out
    assert "| CPU | " in out and "| ratio (series / reference training) | 1.00 | " in out
    assert "| seconds (median of 2) |" in out and "(each round: " in out
