"""The detection benchmark: its resume keys on every setting; its table uses the sample std."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from anomalymap_helpers.commands import benchmark
from anomalymap_helpers.errors import ParameterError


def _rows(folder: Path, aucs: list[float]) -> Path:
    path = folder / "benchmark.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(benchmark.COLUMNS)
        for seed, auc in enumerate(aucs):
            w.writerow(["leave-one-out", 9, seed, "mse", auc, 0.5, auc / 4, auc / 2])
    return path


def test_resume_refuses_rows_of_other_settings(tmp_path: Path) -> None:
    _rows(tmp_path, [0.6])
    quick = benchmark.check_settings(tmp_path / "new", benchmark.QUICK, True)
    (tmp_path / "settings.json").write_text(__import__("json").dumps(quick))
    assert benchmark.check_settings(tmp_path, benchmark.QUICK, True) == quick
    with pytest.raises(ParameterError, match=r"quick: there True, now False.*epochs_leave_one_out: there 2, now 5"):
        benchmark.check_settings(tmp_path, benchmark.Settings(), False)
    (tmp_path / "settings.json").unlink()
    with pytest.raises(ParameterError, match="no settings.json beside it"):
        benchmark.check_settings(tmp_path, benchmark.QUICK, True)


def test_summary_reports_the_sample_std(tmp_path: Path) -> None:
    path = _rows(tmp_path, [0.6, 0.7, 0.8])
    table = benchmark.summarize(path, ("leave-one-out",), (9,), 3)
    assert "| 9 | 0.700 ± 0.100 |" in table  # NumPy: std([0.6, 0.7, 0.8], ddof=1) = 0.1
    assert "sample std (ddof=1)" in table


def test_resume_keeps_data_sets_apart(tmp_path: Path) -> None:
    """Rows of MNIST are never resumed as Fashion-MNIST rows; a folder from before the
    dataset setting existed counts as MNIST."""
    _rows(tmp_path, [0.6])
    saved = benchmark.check_settings(tmp_path / "new", benchmark.QUICK, True)
    saved.pop("dataset")
    (tmp_path / "settings.json").write_text(__import__("json").dumps(saved))
    assert benchmark.check_settings(tmp_path, benchmark.QUICK, True, "mnist")["dataset"] == "mnist"
    with pytest.raises(ParameterError, match="dataset: there 'mnist', now 'fashion-mnist'"):
        benchmark.check_settings(tmp_path, benchmark.QUICK, True, "fashion-mnist")


def test_summary_reports_recall_at_1_and_5_percent_fpr(tmp_path: Path) -> None:
    path = _rows(tmp_path, [0.6, 0.7, 0.8])  # recall at 1 %: auc / 4; at 5 %: auc / 2
    table = benchmark.summarize(path, ("leave-one-out",), (9,), 3)
    assert "| mean recall at 1 % FPR | 0.175 ± 0.025 |" in table  # mean and std(ddof=1) of 0.15, 0.175, 0.2
    assert "| mean recall at 5 % FPR | 0.350 ± 0.050 |" in table


def test_rows_without_the_recall_columns_are_not_resumed(tmp_path: Path) -> None:
    """A folder written before the recall columns existed names the difference instead of mixing rows."""
    _rows(tmp_path, [0.6])
    old = benchmark.check_settings(tmp_path / "new", benchmark.QUICK, True)
    old.pop("columns")
    (tmp_path / "settings.json").write_text(__import__("json").dumps(old))
    with pytest.raises(ParameterError, match=r"columns: there None, now \['protocol'.*'recall_at_5pct_fpr'\]"):
        benchmark.check_settings(tmp_path, benchmark.QUICK, True)


def test_rows_of_another_method_set_are_not_resumed(tmp_path: Path) -> None:
    """A folder scored before patch-knn existed (the old method set) is refused, the sets named."""
    _rows(tmp_path, [0.6])
    old = benchmark.check_settings(tmp_path / "new", benchmark.QUICK, True)
    old["methods"] = [m for m in old["methods"] if m != "patch-knn"]
    (tmp_path / "settings.json").write_text(__import__("json").dumps(old))
    with pytest.raises(ParameterError, match=r"methods: there \[.*'latent-knn', 'ensemble'\], now \[.*'latent-knn', 'patch-knn'"):
        benchmark.check_settings(tmp_path, benchmark.QUICK, True)


def test_the_default_column_comes_first(tmp_path: Path) -> None:
    path = tmp_path / "benchmark.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(benchmark.COLUMNS)
        for method, auc in (("mse", 0.9), ("latent-knn", 0.95), ("patch-knn", 0.5)):  # the default scores worst here
            w.writerow(["one-class", 3, 0, method, auc, 0.5, 0.1, 0.2])
    header = benchmark.summarize(path, ("one-class",), (3,), 1).splitlines()[2]
    assert header == "| class | patch-knn (default) | mse | latent-knn |"


def test_settings_keep_every_commit_that_added_rows(tmp_path: Path) -> None:
    recorded = benchmark.check_settings(tmp_path, benchmark.QUICK, True)
    first = benchmark.record_settings(tmp_path, recorded, "a" * 40)
    assert first["commit"] == "a" * 40 and first["commits"] == ["a" * 40]
    benchmark.record_settings(tmp_path, recorded, "a" * 40)  # the same checkout again: listed once
    later = benchmark.record_settings(tmp_path, recorded, "b" * 40)
    saved = json.loads((tmp_path / "settings.json").read_text())
    assert saved == later and saved["commit"] == "b" * 40 and saved["commits"] == ["a" * 40, "b" * 40]
    assert {k: saved[k] for k in recorded} == recorded
    # A folder written before the list existed keeps its one commit.
    (tmp_path / "settings.json").write_text(json.dumps({**recorded, "commit": "c" * 40}))
    assert benchmark.record_settings(tmp_path, recorded, "d" * 40)["commits"] == ["c" * 40, "d" * 40]
