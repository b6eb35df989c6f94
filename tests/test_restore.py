"""The restore model: its synthetic damage, its segmentation loss and score, its checkpoint, its
resume, its export and the series with it on a texture folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from anomalymap_helpers.commands.cli import main
from anomalymap_helpers.errors import CheckpointError, ParameterError
from anomalymap_helpers.files.paths import RunFiles
from anomalymap_helpers.pipeline import scoring
from anomalymap_helpers.pipeline import training as train
from anomalymap_helpers.pipeline.evaluation import metrics
from anomalymap_helpers.pipeline.models import ConvAutoencoder, ModelConfig, RestoreNet, damage
from anomalymap_helpers.pipeline.scoring.two_signal import two_signal_maps
from anomalymap_helpers.pipeline.training import checkpoint
from anomalymap_helpers.pipeline.training.device import Precision
from anomalymap_helpers.runs.opened import Run

FP32 = Precision("fp32", "cpu")


@pytest.fixture(scope="module")
def textures(tmp_path_factory: pytest.TempPathFactory) -> torch.Tensor:
    """64 procedural wood images (32x32 RGB) in [0, 1]."""
    from anomalymap_helpers.pipeline.data.textures import material

    rng = np.random.default_rng(0)
    return torch.tensor(np.stack([material("wood", 32, rng) for _ in range(64)]) / 255.0,
                        dtype=torch.float32).permute(0, 3, 1, 2).contiguous()


def test_damage_changes_exactly_the_masked_pixels_and_leaves_some_images_clean(textures) -> None:
    damaged, masks = damage.damage(textures, textures, torch.Generator().manual_seed(1))
    changed = (damaged != textures).any(1, keepdim=True)
    assert torch.equal(changed, masks.bool())
    # every masked pixel is changed visibly, and the result stays an image
    visible = (damaged - textures).abs().amax(1, keepdim=True) > damage.MIN_CHANGE
    assert torch.equal(visible, masks.bool())
    assert float(damaged.min()) >= 0 and float(damaged.max()) <= 1
    clean = masks.flatten(1).sum(1) == 0
    assert 0 < int(clean.sum()) < len(textures)  # about CLEAN of them (0.3 of 64: 19 expected)
    assert torch.equal(damaged[clean], textures[clean])
    share = float(masks[~clean].mean())
    assert 0.005 < share < 0.4, share  # regions, not the whole image nor a speck


def test_damage_is_seeded(textures) -> None:
    a = damage.damage(textures[:8], textures, torch.Generator().manual_seed(5))
    b = damage.damage(textures[:8], textures, torch.Generator().manual_seed(5))
    c = damage.damage(textures[:8], textures, torch.Generator().manual_seed(6))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_every_shape_and_fill_is_drawn(textures) -> None:
    gen = torch.Generator().manual_seed(0)
    for shape in damage.SHAPES:
        region = damage._shape(shape, 32, gen)
        assert region.dtype == torch.bool and 0 < int(region.sum()) < 32 * 32 * 0.5, shape
    for fill in damage.FILLS:
        out = damage._fill(fill, textures[0], textures, gen)
        assert out.shape == textures[0].shape and float(out.min()) >= 0 and float(out.max()) <= 1
        assert not torch.equal(out, textures[0]), fill


def test_the_focal_loss_of_a_hand_made_case() -> None:
    """Four pixels, by hand: FL = -(1 - p_t)^2 log(p_t), p_t the probability given to the true class."""
    masks = torch.tensor([1.0, 0.0, 1.0, 0.0]).view(1, 1, 2, 2)
    logits = torch.tensor([2.0, -1.0, -0.5, 3.0]).view(1, 1, 2, 2)
    p = 1 / (1 + np.exp(-np.array([2.0, -1.0, -0.5, 3.0])))
    pt = np.where(np.array([1, 0, 1, 0]) == 1, p, 1 - p)
    expected = float(np.mean(-((1 - pt) ** 2) * np.log(pt)))
    clean = torch.zeros(1, 3, 2, 2)
    squared, focal = train.restore_loss(torch.full((1, 3, 2, 2), 0.5), logits, clean, masks)
    assert float(focal) == pytest.approx(expected, rel=1e-6)
    assert float(squared) == pytest.approx(0.25, rel=1e-6)
    # confident and right costs almost nothing, confident and wrong a lot
    right, _ = train.restore_loss(clean, (masks * 2 - 1) * 20, clean, masks)[::-1]
    wrong, _ = train.restore_loss(clean, (1 - masks * 2) * 20, clean, masks)[::-1]
    assert float(right) < 1e-8 and float(wrong) > 10


def test_segment_score_is_the_largest_window_mean() -> None:
    maps = torch.rand(3, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    k = scoring.segment.window_for(64)
    assert k == 5
    m = maps.numpy()[:, 0]
    brute = []
    for img in m:  # every window of k x k, cut at the border (the mean of what is inside)
        best = 0.0
        for i in range(64):
            for j in range(64):
                win = img[max(0, i - 2) : i + 3, max(0, j - 2) : j + 3]
                best = max(best, float(win.mean()))
        brute.append(best)
    np.testing.assert_allclose(scoring.segment_scores(maps).numpy(), brute, rtol=1e-5)


def test_segment_is_the_restore_models_own_and_two_signal_its_default_on_folders() -> None:
    assert scoring.check_method("auto", "folder", "restore") == "two-signal"
    assert scoring.check_method("auto", "mnist", "restore") == "segment"
    assert scoring.check_method("auto", "folder", "ae") == "topk"
    assert scoring.check_method("segment", "folder", "restore") == "segment"
    with pytest.raises(ParameterError, match="train with -p model restore"):
        scoring.check_method("segment", "folder", "ae")
    with pytest.raises(ParameterError, match="negative ELBO"):
        scoring.check_method("elbo", "folder", "restore")
    with pytest.raises(ParameterError, match="needs the restore model"):
        scoring.SegmentMaps(ConvAutoencoder(ModelConfig(image_size=32, channels=3)))


def test_a_restore_checkpoint_is_refused_as_an_autoencoder_and_the_reverse(tmp_path: Path) -> None:
    config = ModelConfig(image_size=32, channels=3)
    restore, ae = RestoreNet(config), ConvAutoencoder(config)
    checkpoint.save_model(tmp_path / "restore.safetensors", restore)
    checkpoint.save_model(tmp_path / "ae.safetensors", ae)
    with pytest.raises(CheckpointError, match=r"holds a defect-learning autoencoder \(model='restore'\).*give model='restore'"):
        checkpoint.load_model(tmp_path / "restore.safetensors", model="ae")
    with pytest.raises(CheckpointError, match=r"holds an autoencoder \(model='ae'\).*asks for a defect-learning"):
        checkpoint.load_model(tmp_path / "ae.safetensors", model="restore")
    loaded = checkpoint.load_model(tmp_path / "restore.safetensors", model="restore")
    assert isinstance(loaded, RestoreNet)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), restore.state_dict().values(), strict=True))


def _config(**kw: object) -> train.TrainConfig:
    return train.TrainConfig(**{"epochs": 2, "batch_size": 16, "model": "restore", "device": "cpu", "amp": False, **kw})


def test_restore_training_learns_and_resumes_exactly(textures, tmp_path: Path) -> None:
    x, v = textures[:48], textures[48:]
    whole = train.train(x, v, _config(epochs=3), files=RunFiles(tmp_path / "a"), progress=False)
    assert isinstance(whole.model, RestoreNet)
    files = RunFiles(tmp_path / "b")
    train.train(x, v, _config(epochs=1), files=files, progress=False)
    resumed = train.train(x, v, _config(epochs=3), files=files, resume=True, progress=False)
    assert [h["val_loss"] for h in resumed.history] == [h["val_loss"] for h in whole.history]
    assert resumed.best_epoch == whole.best_epoch
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the validation loss is the fixed damaged set's, and the laziest model's is far above it
    clean, damaged, masks = train.restore_validation(x, v)
    assert len(clean) == train.RESTORE_VAL_COPIES * len(v)
    loss = train.validation_loss(train.objective_for("restore", whole.model, FP32),
                                {"images": clean, "damaged": damaged, "masks": masks})
    assert loss == pytest.approx(whole.history[whole.best_epoch - 1]["val_loss"], rel=1e-5)
    assert train.baseline_loss("restore", x, v) > loss


def test_the_schedule_of_the_restore_model_sees_more_images() -> None:
    assert train.schedule_for(180, model="restore") == (45, 16)  # 40,000 images, 900 an epoch
    assert train.schedule_for(180) == (112, 16)


def test_the_series_scores_the_restore_model_by_its_two_signals(restore_run_dir: Path) -> None:
    """03's default on a folder is two-signal: its figures are those of the segmentation and nearest-patch's
    map calibrated on the validation normals, recomputed here from the run folder. Precision: the run's
    inference precision in both; 1e-3 on ROC-AUCs, which move by one pair in 1,000 of these test images."""
    run = Run.open(restore_run_dir, device="cpu")
    m = json.loads((restore_run_dir / "metrics.json").read_text())
    assert m["score"] == "two-signal" and run.model_kind == "restore"
    test = run.splits["test"]
    scored = scoring.score(run.model, test.images, blur=m["map_blur"])
    scorer = run.scorer()
    maps = scoring.pixel_maps(scored, "two-signal", scorer)
    want = two_signal_maps(scored.segmentation, scorer.memory(test.images), scorer.calibration)
    torch.testing.assert_close(maps, want, rtol=0, atol=1e-5)
    # 03's pixel figures are the two-signal map's, not the reconstruction error's
    assert m["pixel_roc_auc"] == pytest.approx(metrics.pixel_roc_auc(maps, test.masks), abs=1e-3)
    assert m["roc_auc"] == pytest.approx(
        metrics.roc_auc_score(test.is_anomaly.numpy(), scoring.segment_scores(maps).numpy()), abs=1e-3)
    per_type = (restore_run_dir / "per_type.csv").read_text().splitlines()
    assert "pixel_roc_auc" in per_type[0] and "aupro" in per_type[0]
    comparison = (restore_run_dir / "score_comparison.csv").read_text()
    assert "segment" in comparison and "nearest-patch" in comparison  # each signal alone beside it
    log = (restore_run_dir / "runner.log").read_text()
    assert "model 'restore' (auto)" in log and "score two-signal (auto)" in log


def test_the_exported_restore_detector_gives_the_two_signal_map(restore_run_dir: Path, tmp_path: Path) -> None:
    """Precision: fp32 in PyTorch and onnxruntime; the calibration divides the segmentation's rounding
    (1e-6 of a probability) by its spread on the validation normals, so the tolerance is 1e-4 + 1e-6 / spread."""
    run = Run.open(restore_run_dir, device="cpu")
    out = tmp_path / "d.onnx"
    assert main(["export", "--results", str(restore_run_dir), "--out", str(out)]) == 0
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert "the mean of the segmentation and nearest-patch's map" in meta["outputs"]
    assert "nearest-patch's memory" in meta["reference_set"]
    images = run.splits["test"].images
    x = (images * 255).round().to(torch.uint8).numpy()
    _, score, own = session.run(["map", "score", "score_map"], {"images": x})
    model = run.model.cpu()
    scorer = scoring.Scorer(model, run.splits["train"].images, scoring.score(model, run.splits["val"].images, precision=FP32),
                            precision=FP32, dataset="folder")
    scored = scoring.score(model, images, precision=FP32)
    tol = 1e-4 + 1e-6 / scorer.calibration["segment"][1]
    np.testing.assert_allclose(own, scoring.pixel_maps(scored, "two-signal", scorer).numpy(), rtol=0, atol=tol)
    np.testing.assert_allclose(score, scorer.all_scores(scored)["two-signal"].numpy(), rtol=0, atol=tol)


def test_the_head_reads_large_images_in_cells_and_keeps_their_full_resolution(tmp_path: Path) -> None:
    from anomalymap_helpers.commands.export import Detector, write_onnx
    from anomalymap_helpers.pipeline.models import head_cell

    assert [head_cell(s) for s in (28, 64, 96, 127, 128, 192, 224, 256, 512)] == [1, 1, 1, 1, 2, 2, 2, 4, 8]
    torch.manual_seed(0)
    model = RestoreNet(ModelConfig(image_size=128, channels=3)).eval()
    assert model.head.cell == 2
    x = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        logits = model.segment(x)
        assert logits.shape == (2, 1, 128, 128)
        # one pixel's logit is its own, not its 2x2 cell's: a cell's four logits differ
        cells = torch.nn.functional.pixel_unshuffle(logits, 2)  # (2, 4, 64, 64)
        assert float((cells - cells.mean(1, keepdim=True)).abs().amax()) > 0
        # the cell-wise head as onnxruntime runs it (fp32 both ways)
        detector = Detector(model, "segment", blur=0.0, uint8=False).eval()
        target = write_onnx(detector, torch.zeros(2, 3, 128, 128), {}, tmp_path / "d.onnx")
    session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    _, score, own = session.run(["map", "score", "score_map"], {"images": x.numpy()})
    np.testing.assert_allclose(own, torch.sigmoid(logits).numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(score, scoring.segment_scores(torch.sigmoid(logits)).numpy(), rtol=0, atol=1e-5)


def test_model_auto_is_restore_for_folders_and_the_autoencoder_elsewhere() -> None:
    from anomalymap_helpers import parameters
    from anomalymap_helpers.commands import train as training
    from anomalymap_helpers.pipeline.models import resolve_model

    values = parameters.validate({}, training.NAMES)
    assert values["model"] == "auto"
    assert training.config_for(values, 180, "folder").model == "restore"
    assert training.config_for(values, 180, "folder").epochs == 45
    # The autoencoder on the example folder of the series tests (144 training images): by data set,
    # 20,000 images seen in batches of 16 (the series there gives epochs, to keep the tests short).
    ae = training.config_for({**values, "model": "ae"}, 144, "folder")
    assert (ae.model, ae.epochs, ae.batch_size) == ("ae", 139, 16)
    assert training.config_for(values, 48_000, "mnist").model == "ae"
    assert training.config_for(values, 5_000, "fashion-mnist").model == "ae"
    assert resolve_model("vae", "folder") == "vae"
    with pytest.raises(ParameterError, match="model='gan'"):
        resolve_model("gan", "folder")
