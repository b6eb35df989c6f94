"""predict on new images: the run's own scores for the same images read back from PNG, the ONNX
detector's, and every kind of input that does not fit the run."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from anomalymap_helpers.commands.cli import main
from anomalymap_helpers.errors import ParameterError
from anomalymap_helpers.pipeline import scoring
from anomalymap_helpers.pipeline.training.device import Precision
from anomalymap_helpers.runs.opened import Run
from anomalymap_helpers.runs.predictions import write_pngs

from .conftest import TOLERANCE, assert_close


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("which", ["run_dir", "folder_run_dir", "restore_run_dir"])
def test_predict_gives_the_runs_own_test_scores_for_its_test_images_read_back(
    which: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    run_dir = request.getfixturevalue(which)
    run = Run.open(run_dir, device="cpu")
    test = run.splits["test"]
    n = min(len(test), 120)
    write_pngs(test.images[:n], tmp_path / "png")
    out = tmp_path / "pred"
    assert main(["predict", "--results", str(run_dir), str(tmp_path / "png"), "--out", str(out)]) == 0
    rows = _rows(out / "predictions.csv")
    assert [Path(r["path"]).name for r in rows] == [f"{k:04d}.png" for k in range(n)]
    got = np.array([float(r["score"]) for r in rows])
    theirs = run.test_scores[:n].numpy()
    # The same pixels and the same scoring path as 03; in bf16 the batches differ (256 here, 512 in
    # 03), which may round differently: within bf16's relative step, else float rounding.
    precision = scoring.inference_precision(run.device).name
    rtol, atol = TOLERANCE[precision]
    close = np.isclose(got, theirs, rtol=rtol, atol=atol * float(np.abs(theirs).max()))
    if run.evaluation["score"] == "patch-knn":
        # patch-knn compares with the 10 normals nearest by latent code: where the 10th and 11th are as
        # near as the precision's rounding (a tie), the two batches may take either, and only there differ.
        differ = np.flatnonzero(~close)
        z = scoring.encode(run.model.cpu(), test.images[differ], precision=Precision(precision, "cpu"))
        sims = F.normalize(z.float(), dim=1) @ F.normalize(run.reference_latents().cpu().float(), dim=1).T
        top = sims.topk(scoring.PATCH_NEIGHBOURS + 1, dim=1).values
        tie = rtol + atol  # cosines are at most 1, so this is the precision's step at their scale
        assert bool((top[:, -2] - top[:, -1] <= tie).all()), f"scores differ without a tie at {differ}"
    else:
        assert close.all(), np.abs(got - theirs).max()
    # Each verdict is its own score against the run's threshold (so verdicts differ from 03's only
    # where the scores do, above: by rounding or a tie).
    threshold = run.evaluation["threshold"]
    assert all(r["verdict"] == ("anomaly" if float(r["score"]) > threshold else "normal") for r in rows)
    assert all(float(r["threshold"]) == pytest.approx(threshold, rel=1e-5) for r in rows)
    flagged = sorted((out / "flagged").glob("*.png")) if (out / "flagged").exists() else []
    assert len(flagged) == sum(r["verdict"] == "anomaly" for r in rows)
    # the percentile is the share of validation normals scoring lower
    val = scoring.read_scores(run.files.scores, "val")[1].numpy()
    k = int(np.argmax(got))
    assert float(rows[k]["percentile"]) == pytest.approx(100 * float((val < got[k]).mean()), abs=0.05)


def test_the_onnx_detector_agrees_with_predict(folder_run_dir: Path, tmp_path: Path) -> None:
    run = Run.open(folder_run_dir, device="cpu")
    paths = write_pngs(run.splits["test"].images[:40], tmp_path / "png")
    p = run.predict(tmp_path / "png")
    assert main(["export", "--results", str(folder_run_dir), "--out", str(tmp_path / "d.onnx")]) == 0
    session = ort.InferenceSession(str(tmp_path / "d.onnx"), providers=["CPUExecutionProvider"])
    x = np.stack([np.asarray(Image.open(q).convert("RGB")).transpose(2, 0, 1) for q in paths])
    _, onnx_scores, _ = session.run(["map", "score", "score_map"], {"images": x})
    precision = scoring.inference_precision(run.device).name
    rtol, atol = TOLERANCE[precision]  # ONNX in fp32, predict in the CPU's inference precision
    np.testing.assert_allclose(p.scores.numpy(), onnx_scores, rtol=rtol, atol=atol * float(np.abs(onnx_scores).max()))


def test_a_mixed_folder_scores_what_it_can_and_says_what_it_did(folder_run_dir: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    run = Run.open(folder_run_dir, device="cpu")
    mixed = tmp_path / "today"
    write_pngs(run.splits["test"].images[:3], mixed)
    good = (mixed / "0000.png").read_bytes()
    (mixed / "truncated.png").write_bytes(good[: len(good) // 3])
    (mixed / "notes.txt").write_text("not an image\n")
    (mixed / "sub").mkdir()
    Image.fromarray((np.random.default_rng(0).random((30, 40, 3)) * 255).astype(np.uint8)).save(mixed / "sub" / "small.jpg")
    Image.fromarray((run.splits["test"].images[0].mean(0) * 255).round().to(torch.uint8).numpy()).save(mixed / "gray.png")
    out = tmp_path / "out"
    status = main(["predict", "--results", str(folder_run_dir), str(mixed), "--out", str(out)])
    printed = capsys.readouterr().out
    assert status == 3  # some skipped, the others scored
    rows = {Path(r["path"]).name: r for r in _rows(out / "predictions.csv")}
    assert set(rows) == {"0000.png", "0001.png", "0002.png", "small.jpg", "gray.png"}
    assert rows["small.jpg"]["note"] == "resized from 40x30 to 32x32"
    assert rows["gray.png"]["note"] == "grayscale converted to RGB"
    assert rows["0000.png"]["note"] == ""
    assert "skipped" in printed and "truncated.png" in printed and "notes.txt" in printed
    assert "of 5 flagged at threshold" in printed and "1 file(s) skipped" in printed
    assert [r["path"] for r in _rows(out / "skipped.csv")] == [str(mixed / "truncated.png")]
    # A second call never mixes its rows into the first's: into the same --out it is refused,
    # leaving the first untouched; without --out each call gets a new folder.
    before = (out / "predictions.csv").read_bytes()
    assert main(["predict", "--results", str(folder_run_dir), str(mixed), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (out / "predictions.csv").read_bytes() == before
    for k in (1, 2):
        assert main(["predict", "--results", str(folder_run_dir), str(mixed / "0000.png")]) == 0
        assert (folder_run_dir / f"predictions-{k}" / "predictions.csv").exists()


def test_bad_inputs_are_refused_before_any_work(folder_run_dir: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "never"
    assert main(["predict", "--results", str(folder_run_dir), str(tmp_path / "nothing-here"), "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err and not out.exists()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("x")
    assert main(["predict", "--results", str(folder_run_dir), str(tmp_path / "notes"), "--out", str(out)]) == 2
    assert "no image files" in capsys.readouterr().err and not out.exists()
    assert main(["predict", "--results", str(tmp_path), str(tmp_path / "notes")]) == 1  # not a run folder
    assert "01_data" in capsys.readouterr().err


def test_arrays_and_tensors_of_any_layout(folder_run_dir: Path) -> None:
    run = Run.open(folder_run_dir, device="cpu")
    x = run.splits["test"].images[:4]
    base = run.predict(x)
    as_uint8 = (x * 255).round().to(torch.uint8)
    hwc = run.predict(as_uint8[0].permute(1, 2, 0).numpy())  # H x W x C uint8
    assert len(hwc) == 1 and hwc.notes == [""]
    torch.testing.assert_close(hwc.scores, run.predict(as_uint8[:1].float() / 255).scores)
    torch.testing.assert_close(base.scores, run.predict(x.numpy()).scores)
    many = run.predict(x.repeat(3, 1, 1, 1), batch_size=5)  # several batches: every image scored, in order
    assert many.names == [f"#{k}" for k in range(12)]
    torch.testing.assert_close(many.scores, base.scores.repeat(3))
    gray = run.predict(as_uint8[0, 0].numpy())  # H x W: one gray image into an RGB run
    assert gray.notes == ["grayscale converted to RGB"] and gray.maps.shape == (1, 1, 32, 32)
    big = run.predict(torch.nn.functional.interpolate(x, size=(48, 64), mode="bilinear"))
    assert big.notes[0] == "resized from 64x48 to 32x32" and len(big) == 4
    with pytest.raises(ParameterError, match=r"must lie in \[0, 1\]"):
        run.predict(x * 255)
    with pytest.raises(ParameterError, match="is not images"):
        run.predict(np.zeros((2, 5, 32, 32), dtype=np.uint8))


def test_the_speed_benchmark_times_files_against_memory(folder_run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks.predict_speed import main as speed

    assert speed(["--results", str(folder_run_dir), "--images", "30", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "30 images 3x32x32" in out and "same scores: True" in out
    assert "predict on PNG files (decode included):" in out and "images/s" in out


def test_predict_a_batch_at_a_time_holds_one_batch_and_gives_what_predict_gives(folder_run_dir: Path,
                                                                               tmp_path: Path) -> None:
    from anomalymap_helpers.runs.predictions import predict_batches

    run = Run.open(folder_run_dir)
    paths = write_pngs(run.splits["test"].images[:23], tmp_path / "new")
    (tmp_path / "new" / "broken.png").write_bytes(b"")
    whole = run.predict(tmp_path / "new")
    parts = list(predict_batches(run, tmp_path / "new", batch_size=5))
    files = len(paths) + 1  # the broken file sorts last: the last batch of 5 files has one image fewer
    sizes = [min(5, files - i) for i in range(0, files, 5)]
    sizes[-1] -= 1
    assert [len(p) for p in parts] == [k for k in sizes if k] and all(len(p.images) == len(p.maps) == len(p) for p in parts)
    assert [n for p in parts for n in p.names] == whole.names == [str(p) for p in paths]
    # The same computation in batches of 5 and of 64: a CPU's kernels may block a batch's sums by its size
    # (AVX2's fp32 convolutions do), so they agree to the inference precision's rounding, not bit for bit.
    precision = scoring.inference_precision(run.device).name
    assert_close(torch.cat([p.scores for p in parts]), whole.scores, precision, scale=float(whole.scores.abs().max()))
    assert_close(torch.cat([p.maps for p in parts]), whole.maps, precision, scale=float(whole.maps.abs().max()))
    assert parts[-1].skipped == whole.skipped and "broken.png" in whole.skipped[0][0]
    with pytest.raises(ParameterError):  # the inputs are checked at the call, before any batch is read
        predict_batches(run, tmp_path / "nothing-here")


def test_predicts_peak_memory_is_measured_per_process(folder_run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks.predict_speed import main as speed

    assert speed(["--results", str(folder_run_dir), "--memory", "20,60"]) == 0
    rows = [r for r in capsys.readouterr().out.splitlines() if r.startswith("| 20 |") or r.startswith("| 60 |")]
    assert len(rows) == 2 and all(float(r.split("|")[2].replace(",", "")) > 100 for r in rows)  # MB: torch alone is more


def test_a_detector_without_a_run_folder_is_a_model_a_scorer_and_a_threshold(small_normals) -> None:
    """``judge`` needs no Run: a model, its Scorer and a threshold give the Scorer's own scores, the verdicts
    at the threshold, and each image's share of validation normals below it."""
    from anomalymap_helpers.pipeline.models import ConvAutoencoder
    from anomalymap_helpers.runs.predictions import image_batches, judge

    x, v = small_normals
    torch.manual_seed(0)
    model = ConvAutoencoder().eval()
    scorer = scoring.Scorer(model, x[:300], v[:100])
    val = scorer.val_scores["topk"]
    threshold = float(val.quantile(0.9))
    batches = image_batches(v[100:140].numpy(), 28, 1, batch_size=16)  # three batches
    got = judge(model, scorer, "topk", threshold, batches, val_scores=val)
    first = scoring.score(model, got.images[:16])  # the first batch as read, scored as judge scores it
    assert torch.equal(got.scores[:16], scorer.all_scores(first)["topk"]) and len(got) == 40
    assert torch.equal(got.maps[:16], first.maps)  # topk's map: the reconstruction error
    assert torch.equal(got.anomaly, got.scores > threshold) and got.names[:2] == ["#0", "#1"]
    assert torch.equal(got.percentiles, (val[None] < got.scores[:, None]).float().mean(1) * 100)
