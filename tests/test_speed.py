"""The speed benchmark: both paths run in turn and the report holds what issue 4 asks for."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from anomalymap_helpers.errors import AnomalyMapError
from benchmarks.speed_harness import run_speed


def test_speed_benchmark_writes_the_report(mnist_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # 2,000 of MNIST's 10,000 test images (scoring them 16 times for the medians took most of this test), and
    # rounds of 2 steps in the step breakdown: the claims are about the report, not the figures.
    report = run_speed(
        2, str(tmp_path / "speed"), data_dir=str(tmp_path / "data"), mnist_dir=str(mnist_dir), max_train=600,
        max_test=2000, profile_steps=2,
    )
    saved = json.loads((tmp_path / "speed" / "speed.json").read_text())
    for key in (
        "reference_train_images_per_s",
        "project_train_images_per_s",
        "speedup",
        "reference_roc_auc",
        "project_roc_auc",
        "scoring_images_per_s",
        "default_score_images_per_s",
        "onnxruntime_images_per_s",
    ):
        assert saved[key] == pytest.approx(report[key]) and saved[key] > 0
    assert saved["speedup"] == pytest.approx(
        saved["project_train_images_per_s"] / saved["reference_train_images_per_s"]
    )
    assert len(saved["epoch_speedups"]) == len(saved["reference"]["epoch_images_per_s"]) == 2
    assert 0 < saved["reference_roc_auc"] < 1 and 0 < saved["project_roc_auc"] < 1
    anomalies = saved["project"]["test_anomalies"]  # t-SNE on up to 500 normal and 500 anomalous test images
    assert saved["test_images"] == 2000 and 0 < anomalies < 500
    assert saved["tsne_points"] == 500 + anomalies
    assert saved["reference_retains_freed_memory"] and saved["reference"]["retain_memory"]
    b = saved["step_breakdown"]
    # Which part takes longer is a measurement (it failed once with the cores shared), not a property.
    assert b["pool_ms"] > 0 and b["gemm_ms"] > 0 and b["step_ms"] > 0 and b["batch_size"] == 256
    assert b["gemm_bound_images_per_s"] == pytest.approx(256 / b["gemm_ms"] * 1000)
    out = capsys.readouterr().out
    assert "epoch 2/2: reference" in out and "| speed-up (ratio of the medians) | 1.00x |" in out
    assert "| bound if all but convs + matrix products were free |" in out
    assert saved["device"] == "cpu" or saved["device"].startswith("cuda")  # both loops on one device
    assert f"| precision | fp32 on {saved['device']} |" in out
    assert "| the same, exported to ONNX, in onnxruntime (CPU) |  | " in out and "not measured" not in out


def test_speed_benchmark_reports_missing_data_clearly(tmp_path: Path) -> None:
    with pytest.raises(AnomalyMapError, match="MNIST"):
        run_speed(1, str(tmp_path / "speed"), data_dir=str(tmp_path / "data"), mnist_dir=str(tmp_path / "nowhere"))
    assert not (tmp_path / "speed" / "speed.json").exists()


def test_speed_benchmark_refuses_a_bad_cap_before_any_work(mnist_dir: Path, tmp_path: Path) -> None:
    for options, message in (({"max_test": 1}, "max_test=1: use a whole number of at least 2"),
                             ({"max_train": -5}, "max_train=-5"), ({"profile_steps": 0}, "profile_steps=0")):
        with pytest.raises(AnomalyMapError, match=message):
            run_speed(1, str(tmp_path / "speed"), data_dir=str(tmp_path / "data"), mnist_dir=str(mnist_dir), **options)
    assert not (tmp_path / "speed").exists() and not (tmp_path / "data").exists()


def test_speed_benchmark_at_another_size_and_the_cpu_line(
    mnist_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """``--image-size 32 --channels 3``: both paths train the grown model on colour images,
    and the report names the CPU and its AVX-512/bf16/AMX flags (from /proc/cpuinfo)."""
    report = run_speed(
        1, str(tmp_path / "speed"), data_dir=str(tmp_path / "data"), mnist_dir=str(mnist_dir), max_train=300,
        max_test=2000, image_size=32, channels=3, profile_steps=2,  # 2,000 test images, as the first test
    )
    assert (report["image_size"], report["channels"], report["train_images"]) == (32, 3, 270)
    assert report["project"]["scoring_images_per_s"] > 0 and 0 < report["tsne_points"] <= 1000
    flags = Path("/proc/cpuinfo").read_text()
    assert report["cpu"]["model"] in flags and report["cpu"]["bf16"] == ("avx512_bf16" in flags or "amx_bf16" in flags)
    out = capsys.readouterr().out
    assert "| CPU |  | " in out and "3x32x32 (MNIST scaled up), 270 training images" in out
