"""The explorer's view logic, its widgets and its static fallback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from anomalymap_helpers.pipeline import scoring
from anomalymap_helpers.pipeline.explorer import Explorer
from anomalymap_helpers.pipeline.explorer.widgets import threshold_slider
from anomalymap_helpers.pipeline.models import ConvAutoencoder


@pytest.fixture()
def explorer() -> Explorer:
    torch.manual_seed(0)
    images = torch.rand(12, 1, 28, 28)
    scored = scoring.score(ConvAutoencoder(), images)
    labels = torch.tensor([0, 1, 2, 9] * 3)
    names = tuple(f"digit {i}" for i in range(10))
    return Explorer(scored, labels, labels == 9, threshold=float(scored.scores.median()), class_names=names)


def test_threshold_flips_the_verdict(explorer: Explorer) -> None:
    i = 0
    s = explorer.scores[i]
    assert explorer.verdict(i, s - 1e-6) == "anomaly"
    assert explorer.verdict(i, s + 1e-6) == "normal"
    assert "-> anomaly" in explorer.caption(i, s - 1e-6)


def test_widgets_drive_the_view(explorer: Explorer) -> None:
    pytest.importorskip("ipywidgets")
    c = explorer.controls()
    first = c["view"].value
    c["image"].value = 1
    assert c["view"].value != first and explorer.current() == 1
    c["subset"].value = "anomaly"
    assert explorer.current() == 3 and c["image"].max == 2
    s = explorer.scores[3]
    c["threshold"].value = s * 0.9
    assert "ANOMALY" in c["status"].value
    c["threshold"].value = s * 1.1
    assert "NORMAL" in c["status"].value
    per_image = c["status"].value
    c["scale"].value = "global"
    assert explorer.scale == "global" and c["status"].value != per_image
    assert f"0 to {explorer.global_max:.4f} (global)" in c["status"].value


def test_confusion_follows_the_threshold(explorer: Explorer) -> None:
    c = explorer.controls()
    n_normal = int((~explorer.is_anomaly).sum())
    assert explorer.confusion(float(explorer.scores.min()) * 0.99)["fp"] == n_normal
    assert explorer.confusion(float(explorer.scores.max()))["tp"] == 0
    before = c["confusion"].value
    c["threshold"].value = float(np.quantile(explorer.scores, 0.25))
    counts = explorer.confusion(c["threshold"].value)
    assert c["confusion"].value != before
    assert f"<td>{counts['tn']:,}</td><td>{counts['fp']:,}</td>" in c["confusion"].value


def test_galleries_and_opening_a_pick(explorer: Explorer) -> None:
    t = float(np.median(explorer.scores))
    top = explorer.gallery("top", 3)
    assert list(explorer.scores[top]) == sorted(explorer.scores, reverse=True)[:3]
    missed = explorer.gallery("missed", 8, t)
    assert all(explorer.is_anomaly[missed]) and all(explorer.scores[missed] <= t)
    assert list(explorer.scores[missed]) == sorted(explorer.scores[missed])
    alarms = explorer.gallery("false-alarm", 8, t)
    assert not any(explorer.is_anomaly[alarms]) and all(explorer.scores[alarms] > t)
    c = explorer.controls()
    c["subset"].value = "normal"
    c["picks"].value = 1  # the second most anomalous image
    assert explorer.subset == "all" and explorer.current() == top[1]
    c["gallery"].value = "missed"
    assert c["strip"].value[:4] == b"\x89PNG"


def test_static_fallback_is_in_the_mime_bundle(explorer: Explorer) -> None:
    bundle = explorer._repr_mimebundle_()
    assert "image/png" in bundle and "application/vnd.jupyter.widget-view+json" in bundle


def test_colour_scale_sets_the_colorbar_range(explorer: Explorer) -> None:
    i = int(np.argmin(explorer.maps.reshape(12, -1).max(1)))
    per_image = explorer.figure(i, scale="per-image").axes[-1].get_ylim()[1]
    global_ = explorer.figure(i, scale="global").axes[-1].get_ylim()[1]
    assert per_image == pytest.approx(explorer.maps[i].max(), rel=1e-5)
    assert global_ == pytest.approx(explorer.global_max, rel=1e-5)
    assert global_ > per_image


def test_save_samples_writes_pngs(explorer: Explorer, tmp_path: Path) -> None:
    paths = explorer.save_samples(tmp_path, 4, seed=0)
    assert len(paths) == 4 and all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)
    assert sum("digit9" in p.name for p in paths) == 2
    fewer = explorer.save_samples(tmp_path, 2, seed=1)
    assert sorted(tmp_path.glob("sample_*.png")) == sorted(fewer)


def test_colour_images_with_masks_show_the_defect_outline(tmp_path: Path) -> None:
    """RGB images show in colour; a mask is outlined on the input and the map, and a
    file name and the defect type's name are in the caption and the saved file's name."""
    torch.manual_seed(0)
    from anomalymap_helpers.pipeline.models import ModelConfig

    images = torch.rand(4, 3, 32, 32)
    scored = scoring.score(ConvAutoencoder(ModelConfig(8, 32, 3)), images, blur=1.0)
    masks = torch.zeros(4, 1, 32, 32, dtype=torch.bool)
    masks[2, 0, 10:20, 5:9] = True
    labels = torch.tensor([0, 0, 2, 1])
    ex = Explorer(
        scored, labels, labels > 0, threshold=float(scored.scores.median()), class_names=("good", "blob", "scratch"),
        masks=masks, names=["test/good/a.png", "test/good/b.png", "test/scratch/c.png", "test/blob/d.png"],
    )
    assert ex.images.shape == (4, 32, 32, 3) and ex.maps.shape == (4, 32, 32)
    fig = ex.figure(2)
    panels = [ax for ax in fig.axes if ax.get_images()][:3]
    assert panels[0].get_images()[0].get_array().shape == (32, 32, 3)
    assert len(panels[0].collections) == 1 and len(panels[2].collections) == 1  # the outlines
    assert not ex.figure(0).axes[0].collections  # no mask, no outline
    assert ex.caption(2).startswith("test/scratch/c.png (scratch, anomaly)")
    from anomalymap_helpers.pipeline.explorer import render

    assert render.thumbnails(ex, np.arange(4))[:4] == b"\x89PNG"
    paths = ex.save_samples(tmp_path, 4)
    assert {p.name.split("_")[2] for p in paths} == {"good", "blob", "scratch"}
    assert ex.subsets()["class:2"] == "only scratch" and ex.positions("class:2").tolist() == [2]
    ex.controls()["subset"].value = "class:1"
    assert ex.current() == 3


def test_switching_the_threshold_rule_moves_the_line_and_the_confusion() -> None:
    from anomalymap_helpers.pipeline.evaluation import metrics

    torch.manual_seed(0)
    scored = scoring.score(ConvAutoencoder(), torch.rand(40, 1, 28, 28))
    labels = torch.tensor([0, 1, 2, 9] * 10)
    val = np.random.default_rng(0).choice(scored.scores.numpy(), 30)  # stand-in validation normals
    rules = {r: metrics.choose_threshold(r, val, scored.scores.numpy(), threshold_percentile=90, target_fpr=0.2)
             for r in metrics.THRESHOLD_RULES}
    assert len(set(rules.values())) == 3
    ex = Explorer(scored, labels, labels == 9, threshold=rules["percentile"], rules=rules)
    c = ex.controls()
    assert c["rule"].value == "percentile" and c["threshold"].value == pytest.approx(rules["percentile"])
    histogram = c["histogram"].value
    assert histogram[:4] == b"\x89PNG"  # drawn once, with every rule's line
    for rule in ("otsu", "fpr"):
        c["rule"].value = rule
        assert c["threshold"].value == pytest.approx(rules[rule]) and ex.threshold == pytest.approx(rules[rule])
        tp, fp, tn, fn = metrics.confusion(scored.scores.numpy(), (labels == 9).numpy(), rules[rule])
        assert f"<td>{tn:,}</td><td>{fp:,}</td>" in c["confusion"].value
        assert f"<td>{fn:,}</td><td>{tp:,}</td>" in c["confusion"].value
    assert c["histogram"].value == histogram
    c["threshold"].value = (rules["otsu"] + rules["fpr"]) / 2 + 1e-4  # moved by hand: no rule
    assert c["rule"].value is None and ex.rule_at() is None


def test_score_histogram_draws_each_kind_as_its_own_density() -> None:
    from anomalymap_helpers.pipeline.evaluation import plotting

    rng = np.random.default_rng(0)
    s = np.r_[rng.gamma(2, 0.02, 900), rng.gamma(5, 0.03, 100)]
    y = np.r_[np.zeros(900, bool), np.ones(100, bool)]
    ax = plotting.score_histogram(s, y, 0.1).axes[0]
    assert ax.get_xscale() == "log"
    edges = np.geomspace(s.min(), s.max(), 61)
    for patch, where in zip(ax.patches, (~y, y), strict=True):
        heights = patch.get_xy()[:, 1]
        density, _ = np.histogram(s[where], bins=edges, density=True)
        np.testing.assert_allclose(np.unique(heights[heights > 0]), np.unique(density[density > 0]), rtol=1e-9)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["normal", "anomaly", "threshold 0.1"]


@pytest.mark.parametrize(("scores", "threshold"), [([0.011, 0.05, 0.12], 0.08137), ([-0.3, 0.05, 0.9], 0.123), ([0.2, 0.4], 0.9)])
def test_the_threshold_slider_is_continuous_and_reaches_every_score(scores: list[float], threshold: float) -> None:
    """JupyterLab's slider snaps to its steps and sends that value back: a slider with steps would open
    on another threshold than 03's (tests/test_browser.py checks it in the browser)."""
    slider = threshold_slider(np.array(scores), threshold)
    assert slider.step is None
    log = min(scores) > 0
    low, high = (10**slider.min, 10**slider.max) if log else (slider.min, slider.max)
    assert low == pytest.approx(min(scores)) and high == pytest.approx(max(max(scores), threshold))  # every score
    assert slider.value == pytest.approx(threshold, rel=1e-12)
