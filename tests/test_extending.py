"""What a newcomer touches to add a score or a model kind: each test adds one, in the places the
package's docstrings name, and checks it goes through the whole path (check, train, score, save, export)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from anomalymap_helpers.pipeline import scoring, training
from anomalymap_helpers.pipeline.models import ConvAutoencoder, ModelConfig, networks
from anomalymap_helpers.pipeline.scoring import scorer
from anomalymap_helpers.pipeline.training import checkpoint, objectives
from anomalymap_helpers.pipeline.training.device import Precision

FP32 = Precision("fp32", "cpu")


@pytest.fixture
def registries() -> Iterator[None]:
    """The registries as they were, after the test (a test adds to them in place, as a module would)."""
    saved = [(d, dict(d)) for d in (networks.MODEL_CLASSES, networks.MODELS, networks.MODEL_NAMES,
                                    objectives.OBJECTIVES, scorer.REGISTRY)]
    yield
    for d, before in saved:
        d.clear()
        d.update(before)


def test_a_new_score_is_one_registry_entry(registries, small_normals, tmp_path) -> None:
    """``max-error``, the largest pixel of the map: one :class:`Method` in scorer.REGISTRY (its file:
    scoring/scorer.py, or a module of its own that the registry imports). The parameter check, the
    Scorer, the pixel maps and the ONNX detector all take it from there."""
    from anomalymap_helpers.commands.export import Detector

    scorer.REGISTRY["max-error"] = scorer.Method("max-error", lambda s, x, n: x.maps.flatten(1).amax(1))
    x, v = small_normals
    assert scoring.check_method("max-error", "folder", "restore") == "max-error"
    from anomalymap_helpers import parameters

    assert parameters.validate({"score_method": "max-error"}, ["score_method"])["score_method"] == "max-error"
    torch.manual_seed(0)
    model = ConvAutoencoder().eval()
    fitted = scoring.Scorer(model, x[:200], v[:50], precision=FP32)
    test = scoring.score(model, v[50:80], precision=FP32)
    got = fitted.all_scores(test)["max-error"]
    reference = (test.images - test.reconstructions).abs().mean(1).flatten(1).amax(1)  # the map's definition
    torch.testing.assert_close(got, reference, rtol=0, atol=1e-6)  # fp32: the same ops, another order
    assert fitted.val_scores["max-error"].shape == (50,)
    assert torch.equal(scoring.pixel_maps(test, "max-error"), test.maps)
    detector = Detector(model, "max-error", 0.0, uint8=False).eval()
    maps, score, own = detector(v[50:80])
    torch.testing.assert_close(score, got, rtol=1e-5, atol=1e-6)  # plain fp32 layers against the fused ones
    torch.testing.assert_close(own, maps)
    import onnxruntime as ort

    from anomalymap_helpers.commands.export import write_onnx

    path = write_onnx(detector, v[:2].contiguous(), {"score_method": "max-error"}, tmp_path / "detector.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    onnx_score = session.run(["score"], {"images": v[50:80].contiguous().numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(onnx_score), got, rtol=1e-5, atol=1e-6)  # fp32 in onnxruntime


class DenoisingAE(ConvAutoencoder):
    """A model kind of the test's own: the autoencoder, asked to rebuild clean images from noisy ones."""

    architecture = "test-denoising-v1"
    title = "denoising autoencoder"

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__(replace(config or ModelConfig(), architecture=self.architecture))


class Denoise(objectives.Objective):
    """Its objective: Gaussian noise (sigma 0.2) drawn for the batch, the clean image the target."""

    stream = "noise"

    def draw(self, images: torch.Tensor, pool: torch.Tensor, generator: torch.Generator) -> objectives.Batch:
        noise = 0.2 * torch.randn(images.shape, generator=generator)
        return {"images": images, "noisy": (images + noise.to(images.device)).clamp(0, 1)}

    def forward(self, batch: objectives.Batch) -> torch.Tensor:
        with self.precision.autocast():
            out = self.model(batch["noisy"])
        return F.mse_loss(out.float(), batch["images"], reduction="sum")


def test_a_new_model_kind_is_a_class_and_an_objective(registries, small_normals, tmp_path) -> None:
    """``denoise``: its class registered in models/networks.py (:func:`register`) and its objective in
    training/objectives.py (OBJECTIVES). The parameter check, the loop, scoring and the checkpoint
    files take it from there; the loop is not touched."""
    from anomalymap_helpers import parameters

    networks.register("denoise", DenoisingAE)
    objectives.OBJECTIVES["denoise"] = Denoise
    assert parameters.validate({"model": "denoise"}, ["model"])["model"] == "denoise"
    x, v = small_normals
    config = training.TrainConfig(epochs=2, batch_size=64, model="denoise", device="cpu", amp=False)
    result = training.train(x, v, config, progress=False)
    assert type(result.model) is DenoisingAE
    losses = [h["val_loss"] for h in result.history]
    fresh = training.mean_loss(DenoisingAE(), v, FP32)
    assert losses[-1] < losses[0] < fresh  # it learns; its validation loss is the clean MSE, as the autoencoder's
    scored = scoring.score(result.model, v[:20], precision=FP32)
    assert scored.kl is None and scored.segmentation is None
    assert set(scoring.Scorer(result.model, x[:200], v[:50], precision=FP32).val_scores) >= set(scoring.METHODS)
    path = checkpoint.save_model(tmp_path / "model.safetensors", result.model, epoch=2)
    loaded = checkpoint.load_model(path)
    assert type(loaded) is DenoisingAE
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), result.model.state_dict().values(),
                                                 strict=True))
