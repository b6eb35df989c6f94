"""The score selection's development split and candidates (``tools/score_selection.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from anomalymap_helpers.pipeline import scoring
from anomalymap_helpers.pipeline.data.images import ImageData
from anomalymap_helpers.pipeline.models import ConvAutoencoder, ModelConfig
from benchmarks import score_selection
from tests.conftest import assert_close

# Runs again with the other CPU precision in `make test` (fp32 on a bf16 CPU, emulated bf16 elsewhere).
pytestmark = pytest.mark.precision


def test_the_development_split_holds_training_images_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(score_selection, "DEV_TEST", 30)
    train = torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1).expand(100, 1, 2, 2).clone()
    test = torch.full((20, 1, 2, 2), 255, dtype=torch.uint8)  # never to be seen
    images = ImageData("mnist", train, torch.arange(100) % 10, test, torch.zeros(20, dtype=torch.long), ("a",) * 10)
    dev = score_selection.dev_data(images)
    assert len(dev.test_labels) == 30 and len(dev.train_labels) == 70
    assert not bool((dev.test_images == 255).any()) and not bool((dev.train_images == 255).any())
    seen = torch.cat([dev.train_images[:, 0, 0, 0], dev.test_images[:, 0, 0, 0]]).sort().values
    assert torch.equal(seen, torch.arange(100, dtype=torch.uint8))  # a partition of the training set
    assert torch.equal(dev.test_labels, dev.test_images[:, 0, 0, 0].long() % 10)  # labels travel with images
    assert torch.equal(score_selection.dev_data(images).test_images, dev.test_images)  # one fixed split


def test_candidates_agree_with_the_shipped_score_and_each_other(precision: str) -> None:
    """The candidates against the shipped score (same precision: exact) and feature-knn against a
    brute force in fp32 (in bf16 autocast: to its tolerance of the distances' own size)."""
    torch.manual_seed(0)
    model = ConvAutoencoder(ModelConfig(latent_dim=8)).eval()
    train, queries = torch.rand(25, 1, 28, 28), torch.rand(6, 1, 28, 28)
    patch = scoring.PatchKnn(model, train, k=4)
    features = patch.features(train).flatten(1)
    scores = score_selection.candidate_scores(patch, queries, features)
    assert set(scores) == set(score_selection.CANDIDATES) - {"feature-knn + patch-knn, each cell its nearest"}
    torch.testing.assert_close(scores["patch-knn"], patch.scores(queries))
    # Each cell its nearest normal: PatchKnn's unsmoothed cell distances, the minimum over the normals.
    latents = scoring.encode(model, queries)
    maps, _ = scoring.PatchKnn(model, train, k=4, smooth=1).neighbour_maps(queries)
    torch.testing.assert_close(scores["patch-knn, each cell its nearest, no 3x3 mean"], maps.amin(1).flatten(1).amax(1))
    # Any cell includes the same cell, so it is never farther; a patchwork of normals never farther than one.
    anywhere = score_selection._any_cell(patch, queries, latents)
    assert anywhere.shape == maps.flatten(2).shape and bool((anywhere <= maps.flatten(2) + 1e-6).all())
    assert bool((anywhere.amin(2) < maps.flatten(2).amin(2) - 1e-6).any())  # and somewhere nearer
    assert bool((scores["patch-knn, each cell its nearest"] <= scores["patch-knn"] + 1e-6).all())
    # feature-knn: the cosine distance of whole feature maps, by brute force.
    with torch.no_grad():
        f = lambda x: model.feature_map(x.contiguous(memory_format=torch.channels_last)).flatten(1)  # noqa: E731
        cos = torch.nn.functional.cosine_similarity(f(queries)[:, None], f(train)[None], dim=2)
    expected = 1 - cos.topk(2, dim=1).values.mean(1)
    assert_close(scores["feature-knn"], expected, precision, float(expected.max()), "feature-knn")


def test_a_class_outside_0_to_9_is_refused_before_any_work(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:

    out = tmp_path / "selection"
    with pytest.raises(SystemExit) as stop:
        score_selection.main(["--digits", "3", "12", "--out", str(out)])
    assert stop.value.code == 2 and "invalid choice: 12" in capsys.readouterr().err
    assert not out.exists()  # nothing written, nothing trained
