"""Scores, maps, thresholds and metrics against independent references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anomalymap_helpers.errors import ParameterError
from anomalymap_helpers.pipeline import metrics, scoring
from anomalymap_helpers.pipeline.device import resolve_precision
from anomalymap_helpers.pipeline.model import ConvAutoencoder


def test_mse_and_maps_match_numpy() -> None:
    rng = np.random.default_rng(0)
    x, r = rng.random((5, 1, 28, 28), dtype=np.float32), rng.random((5, 1, 28, 28), dtype=np.float32)
    expected = np.array([np.mean((x[i] - r[i]) ** 2) for i in range(5)])
    got = scoring.mse_scores(torch.from_numpy(x), torch.from_numpy(r)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    np.testing.assert_allclose(scoring.anomaly_maps(torch.from_numpy(x), torch.from_numpy(r)).numpy(), np.abs(x - r))


def test_score_is_the_mean_of_the_squared_map() -> None:
    torch.manual_seed(0)
    model = ConvAutoencoder()
    images = torch.rand(7, 1, 28, 28)
    s = scoring.score(model, images, batch_size=3)
    assert s.reconstructions.shape == images.shape and s.scores.shape == (7,)
    torch.testing.assert_close(s.scores, s.maps.pow(2).mean(dim=(1, 2, 3)))


def test_reconstruct_does_not_depend_on_batch_size() -> None:
    torch.manual_seed(0)
    model = ConvAutoencoder()
    images = torch.rand(10, 1, 28, 28)
    fp32 = resolve_precision(torch.device("cpu"), amp=False)
    a = scoring.reconstruct(model, images, batch_size=3, precision=fp32)
    b = scoring.reconstruct(model, images, batch_size=10, precision=fp32)
    torch.testing.assert_close(a, b)


def test_roc_auc_of_a_hand_computed_case() -> None:
    # Pairs (anomaly, normal): (0.35, 0.1) ok, (0.35, 0.4) wrong, (0.8, 0.1) ok, (0.8, 0.4) ok -> 3/4.
    m = metrics.evaluate([0.1, 0.4, 0.35, 0.8], [False, False, True, True], threshold=0.37)
    assert m.roc_auc == pytest.approx(0.75)
    # Above 0.37: 0.4 (normal, fp) and 0.8 (anomaly, tp); 0.35 is a missed anomaly.
    assert (m.tp, m.fp, m.tn, m.fn) == (1, 1, 1, 1)
    assert m.precision == pytest.approx(0.5) and m.recall == pytest.approx(0.5)
    assert m.mean_score_normal == pytest.approx(0.25) and m.mean_score_anomaly == pytest.approx(0.575)
    assert m.confusion_matrix.tolist() == [[1, 1], [1, 1]]


def test_average_precision_of_a_hand_computed_case() -> None:
    # Ranked: 0.8 (A) P=1, 0.4 (N), 0.35 (A) P=2/3 -> AP = (1 + 2/3) / 2.
    m = metrics.evaluate([0.1, 0.4, 0.35, 0.8], [False, False, True, True], threshold=0.5)
    assert m.average_precision == pytest.approx((1 + 2 / 3) / 2)


def test_threshold_is_the_percentile_of_validation_scores() -> None:
    val = np.arange(1, 101, dtype=float)  # 1..100
    assert metrics.fit_threshold(val, 99) == pytest.approx(np.percentile(val, 99))
    assert metrics.fit_threshold(val, 50) == pytest.approx(50.5)
    # About 1 % of the validation normals lie above the 99th percentile.
    t = metrics.fit_threshold(val, 99)
    assert (val > t).sum() == 1


@pytest.mark.parametrize("bad", [0, 100, -5, 120, float("nan"), "99", True])
def test_threshold_percentile_outside_0_100_is_refused(bad: object) -> None:
    with pytest.raises(ParameterError, match="threshold_percentile"):
        metrics.fit_threshold([1.0, 2.0], bad)  # type: ignore[arg-type]


def test_evaluate_needs_both_kinds() -> None:
    with pytest.raises(ParameterError, match="both normal and anomalous"):
        metrics.evaluate([0.1, 0.2], [False, False], 0.5)


def test_topk_is_the_mean_of_the_largest_squared_errors() -> None:
    maps = torch.rand(3, 1, 28, 28)
    expected = np.sort(maps.flatten(1).numpy() ** 2, axis=1)[:, -10:].mean(1)
    np.testing.assert_allclose(scoring.topk_scores(maps, 10).numpy(), expected, rtol=1e-6)


def test_ssim_of_constant_images_matches_the_formula() -> None:
    # For constant images a and b every window has zero variance, so SSIM = (2ab + c1) / (a² + b² + c1).
    a, b, c1 = 0.2, 0.6, 0.01**2
    x, y = torch.full((1, 1, 28, 28), a), torch.full((1, 1, 28, 28), b)
    expected = 1 - (2 * a * b + c1) / (a * a + b * b + c1)
    # float32 E[x²] - E[x]² leaves a variance of about 1e-8: well inside abs 2e-4.
    assert scoring.ssim_scores(x, y).item() == pytest.approx(expected, abs=2e-4)
    noise = torch.rand(2, 1, 28, 28)
    assert scoring.ssim_scores(noise, noise).abs().max().item() < 1e-5


def test_knn_distance_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    ref, q = rng.normal(size=(50, 8)), rng.normal(size=(7, 8))
    cos = 1 - (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (ref / np.linalg.norm(ref, axis=1, keepdims=True)).T
    expected = np.sort(cos, axis=1)[:, :3].mean(1)
    got = scoring.knn_distances(torch.from_numpy(ref), torch.from_numpy(q), k=3, chunk=2)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_scorer_gives_every_method_and_standardises_the_ensemble() -> None:
    torch.manual_seed(0)
    model = ConvAutoencoder()
    train, val = torch.rand(40, 1, 28, 28), torch.rand(20, 1, 28, 28)
    scorer = scoring.Scorer(model, train, val)
    on_val = scorer.all_scores(scoring.score(model, val))
    assert list(on_val) == list(scoring.METHODS)
    # On the validation normals themselves the standardised ensemble has mean 0.
    assert on_val["ensemble"].mean().item() == pytest.approx(0.0, abs=1e-5)
    # The validation scores it keeps are those, and a Scored of val fits the same scorer.
    from_scored = scoring.Scorer(model, train, scoring.score(model, val))
    for method in scoring.METHODS:
        torch.testing.assert_close(scorer.val_scores[method], on_val[method])
        torch.testing.assert_close(from_scored.val_scores[method], on_val[method])
    with pytest.raises(ParameterError, match="score_method"):
        scoring.check_method("psnr")
