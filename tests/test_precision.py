"""The precision report: fp32 against mixed precision on the same weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import rankdata

from anomalymap_helpers.commands.cli import main
from anomalymap_helpers.errors import ParameterError
from anomalymap_helpers.pipeline.evaluation.metrics import compare_scores
from benchmarks import precision_report


def test_compare_scores_against_numpy() -> None:
    rng = np.random.default_rng(0)
    a = rng.gamma(2.0, 0.05, 500)
    b = a + rng.normal(0, 1e-3, 500)
    r = compare_scores(a, b, threshold=0.2)
    assert r["largest_difference"] == pytest.approx(np.abs(a - b).max())
    assert r["largest_difference_in_std"] == pytest.approx(np.abs(a - b).max() / a.std(ddof=1))
    ra, rb = rankdata(a), rankdata(b)  # Spearman = Pearson of the ranks
    assert r["spearman"] == pytest.approx(np.corrcoef(ra, rb)[0, 1])
    assert r["verdict_flips"] == sum((x > 0.2) != (y > 0.2) for x, y in zip(a, b, strict=True))
    same = compare_scores(a, a, threshold=0.2)
    assert same["largest_difference"] == 0 and same["spearman"] == pytest.approx(1) and same["verdict_flips"] == 0


def test_report_on_the_folder_run(folder_run_dir: Path, data_dir: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    """bf16 (emulated where the CPU lacks it) against fp32 through the whole topk path."""
    assert precision_report.main(["--results", str(folder_run_dir), "--precision", "bf16", "--device", "cpu",
                 "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "precision_report.json").read_text())
    assert report["precision"] == "bf16" and report["score"] == "topk" and report["test_images"] == 22
    assert 0 < report["largest_difference"] < 0.05  # bf16 keeps 8 bits of mantissa: close, not equal
    assert 0.9 < report["spearman"] <= 1 and 0 <= report["verdict_flips"] <= 22
    metrics = json.loads((folder_run_dir / "metrics.json").read_text())
    scored_by_03 = "roc_auc_bf16" if report["native"] else "roc_auc_fp32"  # bf16 where the CPU has it
    assert report[scored_by_03] == pytest.approx(metrics["roc_auc"], abs=1e-6)
    assert "rank correlation (Spearman)" in printed and "verdicts that differ at the threshold" in printed


def test_report_refuses_fp16_on_the_cpu_and_a_run_without_evaluation(folder_run_dir: Path, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from anomalymap_helpers.runs.opened import Run
    from benchmarks.precision_report import precision_report as report_of

    with pytest.raises(ParameterError, match="fp16' needs a CUDA device"):
        report_of(Run.open(folder_run_dir, device="cpu"), "fp16")
    assert precision_report.main(["--results", str(tmp_path / "nothing")]) == 1
    assert "run notebook 01_data first" in capsys.readouterr().err


def test_the_cpu_precision_switch(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    """$ANOMALYMAP_CPU_PRECISION: bf16 on any CPU (emulated where not native, and said so), fp32
    without a warning, auto as the CPU has it; another value refused before any work."""
    import warnings

    import torch

    from anomalymap_helpers.pipeline.training.device import (
        PRECISION_ENV,
        cpu_supports_bf16,
        inference_precision,
        precision_note,
        resolve_precision,
    )

    cpu = torch.device("cpu")
    monkeypatch.setenv(PRECISION_ENV, "bf16")
    bf16 = resolve_precision(cpu, True)
    assert bf16.name == "bf16" and inference_precision(cpu).name == "bf16"
    assert resolve_precision(cpu, False).name == "fp32"  # amp=False wins over the switch
    assert ("emulated" in precision_note(bf16, True)) == (not cpu_supports_bf16())
    with torch.inference_mode(), bf16.autocast():  # runs on any CPU
        assert torch.nn.Linear(4, 4)(torch.ones(2, 4)).dtype == torch.bfloat16
    monkeypatch.setenv(PRECISION_ENV, "FP32")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # asked for by name: no fallback warning
        fp32 = resolve_precision(cpu, True)
    assert fp32.name == "fp32" and precision_note(fp32, True) == f" ({PRECISION_ENV}=fp32)"
    monkeypatch.setenv(PRECISION_ENV, "")
    assert inference_precision(cpu).name == ("bf16" if cpu_supports_bf16() else "fp32")
    monkeypatch.setenv(PRECISION_ENV, "half")
    with pytest.raises(ParameterError, match=r"ANOMALYMAP_CPU_PRECISION='half' is not known: use one of \['auto', 'bf16', 'fp32'\]"):
        resolve_precision(cpu, True)
    out = tmp_path / "run"
    assert main(["run", "--results", str(out)]) == 2
    assert "ANOMALYMAP_CPU_PRECISION='half' is not known" in capsys.readouterr().err
    assert not out.exists()  # nothing written
