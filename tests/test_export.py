"""The ONNX export against the PyTorch path in onnxruntime, the README's snippet, and refusals."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from anomalymap_helpers.commands.cli import main
from anomalymap_helpers.pipeline import scoring
from anomalymap_helpers.pipeline.training.device import Precision
from anomalymap_helpers.runs.opened import Run

ROOT = Path(__file__).resolve().parents[1]
FP32 = Precision("fp32", "cpu")
TOLERANCE = 1e-5  # scores and maps: fp32 in both, the order of sums differs


def torch_path(run: Run) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The test split's maps and scores of notebook 03's method, by the package's own scoring in fp32."""
    ev = run.evaluation
    method, blur = ev["score"], float(ev["map_blur"])
    model = run.model.cpu()
    val = scoring.score(model, run.splits["val"].images, blur=blur, precision=FP32)
    scorer = scoring.Scorer(model, run.splits["train"].images, val, reference=run.reference_latents().cpu(), blur=blur, precision=FP32)
    test = scoring.score(model, run.splits["test"].images, blur=blur, precision=FP32)
    return test.maps, scorer.all_scores(test)[method], float(ev["threshold"])


def export(run_dir: Path, out: Path, *extra: str) -> ort.InferenceSession:
    assert main(["export", "--results", str(run_dir), "--out", str(out), *extra]) == 0
    return ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("which", ["run_dir", "folder_run_dir"])
def test_onnxruntime_gives_the_pytorch_maps_scores_and_verdicts(which: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    run_dir = request.getfixturevalue(which)
    run = Run.open(run_dir, device="cpu")
    session = export(run_dir, tmp_path / "detector.onnx")
    meta = session.get_modelmeta().custom_metadata_map
    test = run.splits["test"]
    assert meta["score_method"] == run.evaluation["score"] and float(meta["threshold"]) == run.evaluation["threshold"]
    assert (int(meta["channels"]), int(meta["image_size"])) == tuple(test.images.shape[1:3])
    assert meta["class_names"] == json.dumps(list(test.class_names))
    maps, scores, threshold = torch_path(run)
    x = (test.images * 255).round().to(torch.uint8).numpy()  # as the images came from their files
    onnx_maps, onnx_scores, onnx_own = session.run(["map", "score", "score_map"], {"images": x})
    assert len(x) >= (500 if which == "run_dir" else 20)  # all of each run's test images
    np.testing.assert_allclose(onnx_maps, maps.numpy(), rtol=0, atol=TOLERANCE)
    if run.evaluation["score"] == "patch-knn":
        # patch-knn compares with the 10 normals nearest by latent code: where the 10th and 11th are
        # as near as float rounding (a tie), the two paths may take either, and only there may differ.
        differ = np.flatnonzero(np.abs(onnx_scores - scores.numpy()) > TOLERANCE)
        z = scoring.encode(run.model.cpu(), test.images[differ], precision=FP32)
        sims = torch.nn.functional.normalize(z, dim=1) @ torch.nn.functional.normalize(run.reference_latents().cpu(), dim=1).T
        top = sims.topk(scoring.PATCH_NEIGHBOURS + 1, dim=1).values
        assert bool((top[:, -2] - top[:, -1] < 1e-6).all()), f"scores differ without a tie at {differ}"
        same = np.setdiff1d(np.arange(len(x)), differ)
        # The score's own map, whose grid's largest cell is the score.
        patch = scoring.PatchKnn(run.model.cpu(), run.splits["train"].images, run.reference_latents().cpu(), precision=FP32)
        np.testing.assert_allclose(onnx_own[same], patch(test.images[same]).numpy(), rtol=0, atol=TOLERANCE)
        assert "score_map: N x 1 x H x W patch-knn's own map" in meta["outputs"]
    else:
        same = np.arange(len(x))
        np.testing.assert_array_equal(onnx_own, onnx_maps)
    np.testing.assert_allclose(onnx_scores[same], scores.numpy()[same], rtol=0, atol=TOLERANCE)
    assert np.array_equal(onnx_scores > threshold, scores.numpy() > threshold)
    # The run's own scores (notebook 03's) give the same verdicts too, on a CPU without bf16 inference.
    if run.device.type == "cpu" and scoring.inference_precision(run.device).name == "fp32":
        assert np.array_equal(onnx_scores > threshold, run.test_scores.numpy() > threshold)


def test_float_input_and_any_batch_size(run_dir: Path, tmp_path: Path) -> None:
    as_uint8 = export(run_dir, tmp_path / "u8.onnx")
    as_float = export(run_dir, tmp_path / "f32.onnx", "--input", "float")
    images = Run.open(run_dir, device="cpu").splits["test"].images[:7]
    a = as_uint8.run(["score"], {"images": (images * 255).round().to(torch.uint8).numpy()})[0]
    b = as_float.run(["score"], {"images": images.numpy()})[0]
    np.testing.assert_allclose(a, b, rtol=0, atol=TOLERANCE)
    assert as_float.get_modelmeta().custom_metadata_map["input"] == "float32 0-1"
    assert as_uint8.run(["score"], {"images": (images[:1] * 255).to(torch.uint8).numpy()})[0].shape == (1,)


def readme_snippet() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Deploying: one ONNX file") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def run_snippet(model: Path, image: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    code = readme_snippet().replace("results/default/detector.onnx", str(model)).replace("my_image.png", str(image))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=120)


@pytest.mark.parametrize("which", ["run_dir", "folder_run_dir"])
def test_readme_snippet_scores_a_png(which: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    run_dir = request.getfixturevalue(which)
    run = Run.open(run_dir, device="cpu")
    model = tmp_path / "detector.onnx"
    export(run_dir, model)
    test = run.splits["test"]
    threshold = run.evaluation["threshold"]
    _, scores, _ = torch_path(run)
    i = int(torch.argmax(scores))  # the most anomalous test image, clear of the threshold
    pixels = (test.images[i] * 255).round().to(torch.uint8).permute(1, 2, 0).squeeze(-1).numpy()
    Image.fromarray(pixels).save(tmp_path / "my_image.png")
    proc = run_snippet(model, tmp_path / "my_image.png", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("anomaly" if scores[i] > threshold else "normal"), proc.stdout
    assert f"score {scores[i]:.4f}" in proc.stdout

    # A PNG of the wrong size: the snippet's own check says so, before onnxruntime does.
    Image.fromarray(np.zeros((40, 30), np.uint8)).save(tmp_path / "wrong.png")
    proc = run_snippet(model, tmp_path / "wrong.png", tmp_path)
    assert proc.returncode != 0
    size = test.images.shape[-1]
    assert f"ValueError: the detector takes {size}x{size} images, " in proc.stderr and "is 30x40: resize it first" in proc.stderr


def test_wrong_channels_refused_by_the_model(folder_run_dir: Path, tmp_path: Path) -> None:
    session = export(folder_run_dir, tmp_path / "detector.onnx")
    gray = np.zeros((1, 1, 32, 32), np.uint8)  # the folder run is RGB
    with pytest.raises(Exception, match=r"(?s)invalid dimensions for input: images.*index: 1 Got: 1 Expected: 3"):
        session.run(["score"], {"images": gray})


def test_export_refuses_a_run_without_model_or_evaluation(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    only_data = tmp_path / "only-data"
    only_data.mkdir()
    for name in ("splits.json", "splits.safetensors"):
        (only_data / name).write_bytes((run_dir / name).read_bytes())
    assert main(["export", "--results", str(only_data)]) == 1
    err = capsys.readouterr().err
    assert "model.safetensors" in err and "02_training" in err
    assert not (only_data / "detector.onnx").exists()
    (only_data / "model.safetensors").write_bytes((run_dir / "model.safetensors").read_bytes())
    assert main(["export", "--results", str(only_data)]) == 1
    assert "metrics.json" in capsys.readouterr().err
    assert main(["export", "--results", str(tmp_path / "nowhere")]) == 1
    assert "no run folder at" in capsys.readouterr().err


def test_export_check_prints_the_comparison(folder_run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "detector.onnx"
    assert main(["export", "--results", str(folder_run_dir), "--out", str(out), "--check"]) == 0
    text = capsys.readouterr().out
    found = re.search(r"largest score difference (\S+), largest map difference (\S+), (\d+) verdict", text)
    assert found, text
    assert float(found[1]) < TOLERANCE and float(found[2]) < TOLERANCE and found[3] == "0"
    assert re.search(r"onnxruntime [\d,]+ images/s, PyTorch [\d,]+ images/s", text)
