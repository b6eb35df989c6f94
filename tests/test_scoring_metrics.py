"""Scores, maps, thresholds and metrics against independent references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anomalymap_helpers.errors import ParameterError
from anomalymap_helpers.pipeline import scoring
from anomalymap_helpers.pipeline.evaluation import metrics
from anomalymap_helpers.pipeline.models import ConvAutoencoder
from anomalymap_helpers.pipeline.scoring import pixel
from anomalymap_helpers.pipeline.training.device import resolve_precision

# Runs again with the other CPU precision in `make test` (fp32 on a bf16 CPU, emulated bf16 elsewhere).
pytestmark = pytest.mark.precision


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


@pytest.mark.parametrize("banded_max", [128, 0])  # window sums as matrix products, and as a convolution
def test_ssim_matches_a_window_by_window_reference(banded_max: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every 7x7 window that fits, weighted by the 2-D Gaussian, SSIM by the formula, averaged."""
    monkeypatch.setattr(pixel, "BANDED_MAX", banded_max)
    rng = np.random.default_rng(1)
    x, y = rng.random((3, 2, 12, 15)), rng.random((3, 2, 12, 15))
    coords = np.arange(7) - 3.0
    g = np.exp(-(coords**2) / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01**2, 0.03**2
    expected = []
    for a, b in zip(x, y, strict=True):
        values = []
        for c in range(a.shape[0]):
            for i in range(a.shape[1] - 6):
                for j in range(a.shape[2] - 6):
                    pa, pb = a[c, i : i + 7, j : j + 7], b[c, i : i + 7, j : j + 7]
                    ma, mb = (w * pa).sum(), (w * pb).sum()
                    va, vb = (w * (pa - ma) ** 2).sum(), (w * (pb - mb) ** 2).sum()
                    cov = (w * (pa - ma) * (pb - mb)).sum()
                    values.append(((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
        expected.append(1 - np.mean(values))
    got = scoring.ssim_scores(torch.from_numpy(x).float(), torch.from_numpy(y).float())
    np.testing.assert_allclose(got.numpy(), expected, atol=2e-5)


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
    # On the validation normals themselves the standardised ensemble has mean 0, to float32's
    # resolution: this untrained model's SSIM scores are 0.988 +- 0.0013, and a float32 step at
    # 0.988 (6e-8) is 5e-5 of that spread.
    assert on_val["ensemble"].mean().item() == pytest.approx(0.0, abs=1e-4)
    # The validation scores it keeps are those, and a Scored of val fits the same scorer.
    from_scored = scoring.Scorer(model, train, scoring.score(model, val))
    for method in scoring.METHODS:
        torch.testing.assert_close(scorer.val_scores[method], on_val[method])
        torch.testing.assert_close(from_scored.val_scores[method], on_val[method])
    with pytest.raises(ParameterError, match="score_method"):
        scoring.check_method("psnr")


def test_maps_average_the_channels_and_blur_like_scipy() -> None:
    from scipy import ndimage

    rng = np.random.default_rng(1)
    x, r = rng.random((3, 3, 20, 24), dtype=np.float32), rng.random((3, 3, 20, 24), dtype=np.float32)
    for sigma in (0.0, 1.0, 2.5):
        got = scoring.anomaly_maps(torch.from_numpy(x), torch.from_numpy(r), blur=sigma).numpy()
        plain = np.abs(x - r).mean(1, keepdims=True)
        expected = plain if sigma == 0 else np.stack(
            [ndimage.gaussian_filter(m, sigma, mode="mirror", truncate=4.0)[None] for m in plain[:, 0]]
        )
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_auto_rules_depend_on_the_kind_of_data_only() -> None:
    assert scoring.check_method("auto", "folder") == "topk"
    assert scoring.check_method("auto", "fashion-mnist") == scoring.check_method("auto", "mnist") == "patch-knn"
    assert scoring.blur_sigma(-1, "folder", 128) == 4.0 and scoring.blur_sigma(-1, "mnist", 28) == 0.0
    assert scoring.blur_sigma(1.5, "mnist", 28) == 1.5


def test_pixel_roc_auc_matches_scikit_learn_on_the_flattened_pixels() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(2)
    masks = np.zeros((6, 1, 16, 16), dtype=bool)
    masks[3, 0, 4:9, 5:10] = masks[5, 0, 10:14, 2:4] = True
    maps = rng.random(masks.shape) + masks * 0.4
    assert metrics.pixel_roc_auc(maps, masks) == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()))
    with pytest.raises(ParameterError, match="both defect and defect-free"):
        metrics.pixel_roc_auc(maps, np.zeros_like(masks))


def _brute_force_aupro(maps: np.ndarray, masks: np.ndarray, max_fpr: float) -> float:
    """PRO and FPR at every distinct threshold, from the regions found by a flood fill."""
    regions = []  # lists of (image, y, x) pixels, 8-connected
    for i, mask in enumerate(masks[:, 0]):
        seen = np.zeros_like(mask)
        for y0, x0 in zip(*np.nonzero(mask), strict=True):
            if seen[y0, x0]:
                continue
            stack, pixels = [(y0, x0)], []
            seen[y0, x0] = True
            while stack:
                y, x = stack.pop()
                pixels.append((i, y, x))
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        v, u = y + dy, x + dx
                        if 0 <= v < mask.shape[0] and 0 <= u < mask.shape[1] and mask[v, u] and not seen[v, u]:
                            seen[v, u] = True
                            stack.append((v, u))
            regions.append(pixels)
    values = maps[:, 0]
    normal = values[~masks[:, 0]]
    points = [(0.0, 0.0)]
    for t in np.unique(values)[::-1]:
        fpr = float((normal >= t).mean())
        pro = float(np.mean([np.mean([values[p] >= t for p in region]) for region in regions]))
        points.append((fpr, pro))
    xs, ys = np.array(points).T
    keep = xs <= max_fpr
    x, y = list(xs[keep]), list(ys[keep])
    if x[-1] < max_fpr:
        j = int(np.argmax(xs > max_fpr))
        y.append(ys[j - 1] + (ys[j] - ys[j - 1]) * (max_fpr - xs[j - 1]) / (xs[j] - xs[j - 1]))
        x.append(max_fpr)
    area = sum((x[k + 1] - x[k]) * (y[k + 1] + y[k]) / 2 for k in range(len(x) - 1))
    return area / max_fpr


def test_aupro_matches_a_brute_force_per_region_overlap_on_hand_made_masks() -> None:
    masks = np.zeros((3, 1, 8, 8), dtype=bool)
    masks[0, 0, 1:3, 1:3] = True  # a 4-pixel region
    masks[0, 0, 5:8, 4:8] = True  # a 12-pixel region in the same image
    masks[1, 0, 3, 3] = masks[1, 0, 4, 4] = True  # diagonal neighbours: one region
    rng = np.random.default_rng(3)
    maps = np.round(rng.random(masks.shape) + masks * 0.5, 2)  # ties on purpose
    for max_fpr in (0.3, 0.05, 1.0):
        assert metrics.aupro(maps, masks, max_fpr) == pytest.approx(_brute_force_aupro(maps, masks, max_fpr))
    perfect = masks.astype(float)
    assert metrics.aupro(perfect, masks) == pytest.approx(1.0)


def test_per_class_rows_name_missed_and_false_alarm_classes() -> None:
    from sklearn.metrics import roc_auc_score

    scores = np.array([0.1, 0.2, 0.9, 0.3, 0.8, 0.7, 0.15])
    labels = np.array([0, 0, 1, 1, 2, 2, 0])
    y = labels > 0
    rows = {r["name"]: r for r in metrics.per_class(scores, labels, y, ("good", "blob", "scratch"), 0.5)}
    assert rows["blob"]["roc_auc"] == pytest.approx(roc_auc_score([0, 0, 1, 1, 0], [0.1, 0.2, 0.9, 0.3, 0.15]))
    assert rows["blob"]["flagged"] == 0.5 and rows["scratch"]["flagged"] == 1.0
    assert rows["good"]["kind"] == "normal" and rows["good"]["roc_auc"] == pytest.approx(roc_auc_score(y, scores))


@pytest.mark.parametrize("fpr", [0.0, 0.01, 0.05, 0.3, 1.0])
def test_recall_at_fpr_is_the_best_recall_of_any_threshold_within_the_rate(fpr: float) -> None:
    rng = np.random.default_rng(3)
    scores = np.round(np.r_[rng.normal(0, 1, 400), rng.normal(1.5, 1, 60)], 1)  # rounded: many ties
    y = np.r_[np.zeros(400, bool), np.ones(60, bool)]
    best = 0.0
    for t in np.r_[-np.inf, np.unique(scores)]:  # every distinct verdict a threshold can give
        flagged = scores > t
        if flagged[~y].mean() <= fpr:
            best = max(best, flagged[y].mean())
    assert metrics.recall_at_fpr(scores, y, fpr) == pytest.approx(best)
    if fpr in (0.01, 0.05):
        result = metrics.evaluate(scores, y, threshold=0.0)
        assert getattr(result, f"recall_at_{round(fpr * 100)}pct_fpr") == pytest.approx(best)


def test_tsne_keeps_clusters_apart_and_is_seeded() -> None:
    from anomalymap_helpers.pipeline import latent

    rng = np.random.default_rng(0)
    centres = rng.normal(0, 10, (3, 16))
    x = np.concatenate([c + rng.normal(0, 1, (60, 16)) for c in centres]).astype(np.float32)
    cluster = np.repeat(np.arange(3), 60)
    e = latent.tsne(x, seed=1)
    assert e.shape == (180, 2)
    d = ((e[:, None] - e[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    assert (cluster[d.argmin(1)] == cluster).all()  # every point's nearest neighbour is of its cluster
    np.testing.assert_array_equal(latent.tsne(x, seed=1), e)
    with pytest.raises(ParameterError, match="at least 3 points"):
        latent.tsne(x[:2])


def _otsu_by_brute_force(scores: np.ndarray) -> float:
    """Try every distinct score as the threshold; between-class variance from the two groups' means."""
    best, best_t = -1.0, None
    for t in np.unique(scores)[:-1]:
        low, high = scores[scores <= t], scores[scores > t]
        w_low, w_high = len(low) / len(scores), len(high) / len(scores)
        between = w_low * w_high * (low.mean() - high.mean()) ** 2
        if between > best:
            best, best_t = between, t
    return float(best_t)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_otsu_threshold_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    scores = np.round(np.r_[rng.gamma(2.0, 0.05, 300), rng.normal(0.6, 0.1, 40)], 3)  # ties, two groups
    assert metrics.otsu_threshold(scores) == pytest.approx(_otsu_by_brute_force(scores))
    t = metrics.otsu_threshold(np.r_[np.full(50, 1.0), np.full(30, 5.0)])
    assert t == 1.0  # two values: the cut between them


def test_threshold_rules_use_scores_alone() -> None:
    rng = np.random.default_rng(0)
    val, test = rng.normal(0, 1, 2000), np.r_[rng.normal(0, 1, 900), rng.normal(6, 1, 100)]
    assert metrics.choose_threshold("percentile", val, test, threshold_percentile=95) == pytest.approx(np.percentile(val, 95))
    at_fpr = metrics.choose_threshold("fpr", val, test, target_fpr=0.05)
    assert at_fpr == pytest.approx(np.percentile(val, 95)) and (val > at_fpr).mean() == pytest.approx(0.05, abs=1e-3)
    otsu = metrics.choose_threshold("otsu", val, test)
    assert otsu == pytest.approx(_otsu_by_brute_force(np.r_[val, test])) and 1.5 < otsu < 4.5  # between the groups
    with pytest.raises(ParameterError, match="threshold_rule='mean'"):
        metrics.choose_threshold("mean", val, test)
    with pytest.raises(ParameterError, match="target_fpr=1.5"):
        metrics.choose_threshold("fpr", val, test, target_fpr=1.5)
    with pytest.raises(ParameterError, match="two different scores"):
        metrics.otsu_threshold(np.ones(5))


def test_comparison_puts_the_runs_score_first_and_keeps_the_order_given() -> None:
    from sklearn.metrics import average_precision_score, roc_auc_score

    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(80, bool), np.ones(20, bool)]
    scores = {"mse": rng.random(100), "topk": rng.random(100) + y, "latent-knn": rng.random(100) + 0.2 * y}
    rows = metrics.compare(scores, y, first="latent-knn")
    assert [r["method"] for r in rows] == ["latent-knn", "mse", "topk"]  # topk scores best, and stays last
    for r in rows:
        assert r["roc_auc"] == pytest.approx(roc_auc_score(y, scores[r["method"]]))
        assert r["average_precision"] == pytest.approx(average_precision_score(y, scores[r["method"]]))


def test_a_new_score_is_one_entry_in_the_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Scorer computes whatever the registry names; a registered method is scored for the
    validation normals and for new images alike, and the shipped ones equal their functions."""
    from anomalymap_helpers.pipeline.models import ConvAutoencoder, ModelConfig
    from anomalymap_helpers.pipeline.scoring import scorer

    torch.manual_seed(0)
    model = ConvAutoencoder(ModelConfig(latent_dim=8)).eval()
    train, val, test = torch.rand(20, 1, 28, 28), torch.rand(6, 1, 28, 28), torch.rand(4, 1, 28, 28)
    monkeypatch.setitem(scorer.REGISTRY, "max-error", scorer.Method("max-error", lambda s, x, n: x.maps.flatten(1).amax(1)))
    s = scoring.Scorer(model, train, val, k=2)
    scored = scoring.score(model, test)
    everything = s.all_scores(scored)
    torch.testing.assert_close(everything["max-error"], scored.maps.flatten(1).amax(1))
    assert s.val_scores["max-error"].shape == (6,)
    torch.testing.assert_close(everything["topk"], scoring.topk_scores(scored.maps, 10))
    torch.testing.assert_close(everything["latent-knn"], scoring.knn_distances(s.reference, scored.latents, 2))
    assert set(everything) == set(scoring.METHODS) | {"max-error"}  # elbo only for a VAE, segment for restore
    assert [n for n, m in scoring.REGISTRY.items() if m.own_map] == ["latent-knn", "patch-knn", "segment"]
