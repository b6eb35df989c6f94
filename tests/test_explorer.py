"""The explorer's view logic, its widgets and its static fallback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from anomalymap_helpers import scoring
from anomalymap_helpers.explorer import Explorer
from anomalymap_helpers.model import ConvAutoencoder


@pytest.fixture()
def explorer() -> Explorer:
    torch.manual_seed(0)
    images = torch.rand(12, 1, 28, 28)
    scored = scoring.score(ConvAutoencoder(), images)
    labels = torch.tensor([0, 1, 2, 9] * 3)
    return Explorer(scored, labels, labels == 9, threshold=float(scored.scores.median()))


def test_threshold_flips_the_verdict(explorer: Explorer) -> None:
    i = 0
    s = explorer.scores[i]
    assert explorer.verdict(i, s - 1e-6) == "anomaly"
    assert explorer.verdict(i, s + 1e-6) == "normal"
    assert "-> anomaly" in explorer.caption(i, s - 1e-6)


def test_widgets_drive_the_view(explorer: Explorer) -> None:
    pytest.importorskip("ipywidgets")
    box = explorer.widget()
    (subset, image), (threshold, scale), status, view = (
        box.children[0].children,
        box.children[1].children,
        *box.children[2:],
    )
    first = view.value
    image.value = 1
    assert view.value != first and explorer.current() == 1
    subset.value = "anomaly"
    assert explorer.current() == 3 and image.max == 2
    s = explorer.scores[3]
    threshold.value = s * 0.9
    assert "ANOMALY" in status.value
    threshold.value = s * 1.1
    assert "NORMAL" in status.value
    scale.value = "global"
    assert explorer.scale == "global"


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
