"""``nearest-patch`` and ``two-signal`` as entries of the score registry: the Scorer, the maps, the refusals
and the ONNX detector, against references computed apart (PatchMemory's own maps, NumPy's percentiles)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anomalymap_helpers.errors import ParameterError
from anomalymap_helpers.pipeline import scoring
from anomalymap_helpers.pipeline.models import ModelConfig, RestoreNet
from anomalymap_helpers.pipeline.scoring.patch_memory import PatchMemory
from anomalymap_helpers.pipeline.training.device import Precision

FP32 = Precision("fp32", "cpu")


@pytest.fixture(scope="module")
def fitted() -> tuple[RestoreNet, scoring.Scorer, torch.Tensor, torch.Tensor, torch.Tensor]:
    """An untrained restore model (its segmentation is a map like any other) fitted on striped normals."""
    gen = torch.Generator().manual_seed(0)
    stripes = (torch.arange(32)[None, :] % 4 < 2).float().expand(3, 32, 32)
    def normals(n: int) -> torch.Tensor:
        return (0.3 + 0.4 * stripes + 0.05 * torch.randn(n, 3, 32, 32, generator=gen)).clamp(0, 1)
    train, val, test = normals(60), normals(12), normals(4)
    test[1, :, 10:18, 12:20] = 0.5  # stripes gone
    torch.manual_seed(0)
    model = RestoreNet(ModelConfig(image_size=32, channels=3)).eval()
    return model, scoring.Scorer(model, train, val, precision=FP32, dataset="folder"), train, val, test


def test_nearest_patch_is_the_memorys_map_and_its_window_score(fitted) -> None:
    """Precision: the same float32 computation both ways, a few images at a time or all at once: 1e-5."""
    model, scorer, train, _, test = fitted
    scored = scoring.score(model, test, precision=FP32)
    scores = scorer.all_scores(scored)
    maps = PatchMemory(train)(test)  # the memory drawn again with the same seed
    torch.testing.assert_close(scoring.pixel_maps(scored, "nearest-patch", scorer), maps, rtol=0, atol=1e-5)
    torch.testing.assert_close(scores["nearest-patch"], scoring.segment_scores(maps), rtol=0, atol=1e-5)
    assert int(scores["nearest-patch"].argmax()) == 1  # the square without stripes
    assert scorer.val_scores["nearest-patch"].shape == (12,)


def test_two_signal_is_the_mean_of_the_maps_in_units_of_the_validation_normals(fitted) -> None:
    """Against NumPy's percentiles of the validation normals' pixels (float64) and the maps computed apart.
    Precision: float32 maps divided by float64 spreads, 1e-4 absolute on values of order 1-10."""
    model, scorer, train, val, test = fitted
    memory = PatchMemory(train)
    val_seg = scoring.score(model, val, precision=FP32).segmentation.double().numpy()
    val_patch = memory(val).double().numpy()
    seg = scoring.score(model, test, precision=FP32).segmentation.double().numpy()
    patch = memory(test).double().numpy()

    def units(maps: np.ndarray, of: np.ndarray) -> np.ndarray:
        q50, q99 = np.percentile(of, 50), np.percentile(of, 99)
        return (maps - q50) / (q99 - q50)

    want = (units(seg, val_seg) + units(patch, val_patch)) / 2
    scored = scoring.score(model, test, precision=FP32)
    got = scoring.pixel_maps(scored, "two-signal", scorer)
    np.testing.assert_allclose(got.double().numpy(), want, rtol=0, atol=1e-4)
    np.testing.assert_allclose(scorer.all_scores(scored)["two-signal"].numpy(),
                               scoring.segment_scores(torch.from_numpy(want)).numpy(), rtol=0, atol=1e-4)
    # In those units a normal pixel's 99th percentile is 1 for each signal, whatever its own scale.
    assert abs(np.percentile(units(val_patch, val_patch), 99) - 1) < 1e-9


def test_they_are_for_folders_and_say_so(fitted) -> None:
    model, _, train, val, test = fitted
    mnist_like = scoring.Scorer(model, train, val, precision=FP32)  # no data set: not a folder
    assert mnist_like.memory is None and not {"nearest-patch", "two-signal"} & set(mnist_like.val_scores)
    with pytest.raises(ParameterError, match="for folders of images"):
        scoring.check_method("nearest-patch", "mnist", "ae")
    with pytest.raises(ParameterError, match="for folders of images"):
        scoring.check_method("two-signal", "fashion", "restore")
    with pytest.raises(ParameterError, match="train with -p model restore"):
        scoring.check_method("two-signal", "folder", "ae")
    assert scoring.check_method("nearest-patch", "folder", "ae") == "nearest-patch"
    with pytest.raises(ParameterError, match="give the Scorer"):
        scoring.pixel_maps(scoring.score(model, test, precision=FP32), "two-signal")
    with pytest.raises(ParameterError, match="folder data sets only"):
        mnist_like.nearest_maps(scoring.score(model, test, precision=FP32))


@pytest.mark.parametrize("method", ["nearest-patch", "two-signal"])
def test_the_onnx_detector_carries_the_memory_and_the_calibration(fitted, method: str, tmp_path) -> None:
    """Precision: fp32 in PyTorch and in onnxruntime, whose sums run in another order; the distances'
    ``|q|^2 - 2 q.m + |m|^2`` loses about 1e-6 of ``|q|^2`` to it: 1e-4 absolute on maps of order 1-10; for
    two-signal, plus the segmentation's fp32 rounding (1e-6 of a probability) over its calibrated spread
    (about 0.002 on this untrained model)."""
    import onnxruntime as ort

    from anomalymap_helpers.commands.export import Detector, write_onnx

    model, scorer, _, _, test = fitted
    scored = scoring.score(model, test, precision=FP32)
    want_score, want_map = scorer.all_scores(scored)[method], scoring.pixel_maps(scored, method, scorer)
    with pytest.raises(ValueError, match="needs nearest-patch's memory"):
        Detector(model, method, 0.0, uint8=False)
    detector = Detector(model, method, 0.0, uint8=False, memory=scorer.memory, calibration=scorer.calibration).eval()
    path = write_onnx(detector, test[:2].contiguous(), {"score_method": method}, tmp_path / "d.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    tol = 1e-4 + (1e-6 / scorer.calibration["segment"][1] if method == "two-signal" else 0)
    for batch in (test, test[:1]):  # any batch size
        score, own = session.run(["score", "score_map"], {"images": batch.contiguous().numpy()})
        np.testing.assert_allclose(score, want_score[: len(batch)].numpy(), rtol=0, atol=tol)
        np.testing.assert_allclose(own, want_map[: len(batch)].numpy(), rtol=0, atol=tol)
