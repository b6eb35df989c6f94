"""Notebook 05's latent map linked to the heatmap explorer: its state and its widgets, without a browser
(``tests/test_browser.py`` clicks it in JupyterLab)."""

from __future__ import annotations

import base64
import io
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from anomalymap_helpers.errors import ParameterError
from anomalymap_helpers.pipeline import scoring
from anomalymap_helpers.pipeline.explorer import Explorer, LatentExplorer
from anomalymap_helpers.pipeline.models import ConvAutoencoder


@pytest.fixture()
def linked() -> LatentExplorer:
    """40 test images, 25 of them on the map (positions in a shuffled order)."""
    torch.manual_seed(0)
    scored = scoring.score(ConvAutoencoder().eval(), torch.rand(40, 1, 28, 28))
    labels = torch.arange(40) % 10
    names = [f"digit {d}" for d in range(10)]
    ex = Explorer(scored, labels, labels == 9, threshold=float(scored.scores.median()), class_names=names)
    positions = np.random.default_rng(1).permutation(40)[:25]
    embedding = np.random.default_rng(2).normal(size=(25, 2))
    return LatentExplorer(ex, positions, embedding)


def test_choosing_points_orders_them_by_score_and_names_them(linked: LatentExplorer) -> None:
    rows = [3, 10, 17, 4]
    chosen = linked.choose(rows)
    expected = sorted(linked.positions[rows], key=lambda p: -linked.ex.scores[p])
    assert chosen == [int(p) for p in expected]
    line = linked.summary()
    anomalies = int(linked.ex.is_anomaly[chosen].sum())
    flagged = int((linked.ex.scores[chosen] > linked.ex.threshold).sum())
    assert line.startswith(f"4 images selected: {anomalies} anomalies, {flagged} flagged")
    linked.choose([7])
    assert linked.summary() == linked.ex.caption(int(linked.positions[7]))
    for k, p in enumerate(linked.positions):
        assert linked.point_of(p) == k
    assert linked.point_of(next(i for i in range(40) if i not in set(linked.positions))) is None


def test_bad_inputs_are_refused_before_any_drawing(linked: LatentExplorer) -> None:
    with pytest.raises(ParameterError, match=r"shape \(3, 2\), expected \(25, 2\)"):
        LatentExplorer(linked.ex, linked.positions, np.zeros((3, 2)))
    with pytest.raises(ParameterError, match=r"positions must lie in 0..39"):
        LatentExplorer(linked.ex, [0, 40], np.zeros((2, 2)))
    with pytest.raises(ParameterError, match=r"color_by='digit': use one of \['class', 'score'\]"):
        LatentExplorer(linked.ex, linked.positions, linked.embedding, color_by="digit")
    with pytest.raises(ParameterError, match=r"points must lie in 0..24"):
        linked.choose([25])


def test_triptychs_of_a_selection_are_one_row_each(linked: LatentExplorer) -> None:
    from PIL import Image

    linked.choose([0])
    assert linked.triptychs_png() == linked.ex.png(linked.chosen[0])  # one image: the explorer's own view
    heights = {}
    for n in (2, 4, 6, 12):
        linked.choose(range(n))
        heights[n] = Image.open(io.BytesIO(linked.triptychs_png())).size[1]
    assert heights[2] < heights[4] < heights[6] == heights[12]  # a row per image, at most MAX_SHOWN (6) rows
    linked.choose([])
    assert linked.triptychs_png() == b"" and "click a point" in linked.summary()


def test_colours_by_class_or_by_score(linked: LatentExplorer) -> None:
    import matplotlib

    by_class = linked.colors("class")["color"]
    labels = linked.ex.labels[linked.positions]
    assert len(set(by_class)) == len(set(labels.tolist()))
    assert by_class[0] == matplotlib.colors.to_hex(matplotlib.colormaps["tab10"](int(labels[0])))
    assert linked.colors("score")["color"] == linked.ex.scores[linked.positions].tolist()


def test_widgets_link_both_ways(linked: LatentExplorer) -> None:
    """A click opens the image in the explorer and rings it; the explorer's slider moves the ring."""
    pytest.importorskip("plotly")
    c = linked.controls()
    scatter, explorer = c["scatter"], linked.ex.controls()
    assert list(scatter.data[1].x) == ([] if linked.point_of(0) is None else [linked.embedding[linked.point_of(0), 0]])

    linked._widgets.on_click(scatter.data[0], SimpleNamespace(point_inds=[5]), None)
    p = int(linked.positions[5])
    assert linked.ex.current() == p and explorer["image"].value == p
    assert c["summary"].value == linked.ex.caption(p) and c["triptychs"].value == linked.ex.png(p)
    assert (scatter.data[1].x, scatter.data[1].y) == ((linked.embedding[5, 0],), (linked.embedding[5, 1],))

    outside = next(i for i in range(40) if linked.point_of(i) is None)
    explorer["image"].value = outside
    assert scatter.data[1].x == () and scatter.data[1].y == ()  # not on the map: no ring
    inside = int(linked.positions[11])
    explorer["subset"].value = "anomaly"  # a subset the image may not be in: the ring follows the shown image
    explorer["subset"].value = "all"
    explorer["image"].value = inside
    assert scatter.data[1].x == (linked.embedding[11, 0],)

    linked._widgets.on_selection(scatter.data[0], SimpleNamespace(point_inds=[1, 2, 3]), None)
    assert len(linked.chosen) == 3 and c["summary"].value.startswith("3 images selected")
    c["color_by"].value = "score"
    assert list(scatter.data[0].marker.color) == linked.ex.scores[linked.positions].tolist()


def test_live_bundle_has_the_widget_and_headless_only_the_png(linked: LatentExplorer, monkeypatch) -> None:  # noqa: ANN001
    pytest.importorskip("plotly")
    from PIL import Image

    from anomalymap_helpers.pipeline.progress import HEADLESS_ENV

    monkeypatch.delenv(HEADLESS_ENV, raising=False)
    live = linked._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in live
    monkeypatch.setenv(HEADLESS_ENV, "1")
    bundle = linked._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" not in bundle and bundle["image/png"] == live["image/png"]
    with Image.open(io.BytesIO(base64.b64decode(bundle["image/png"]))) as image:
        assert image.size[0] > 400 and len(image.getcolors(1 << 20) or []) > 20
    assert "25 test images" in bundle["text/plain"]


def test_an_explorer_made_on_demand_is_made_once_and_only_for_the_live_view(linked: LatentExplorer, monkeypatch) -> None:  # noqa: ANN001
    from anomalymap_helpers.pipeline.progress import HEADLESS_ENV

    made = []

    def make() -> Explorer:
        made.append(1)
        return linked.ex

    lazy = LatentExplorer(make, linked.positions, linked.embedding, labels=linked.labels, is_anomaly=linked.is_anomaly)
    monkeypatch.setenv(HEADLESS_ENV, "1")
    lazy._repr_mimebundle_()
    assert made == []  # headless: the static map needs labels only
    assert lazy.ex is linked.ex and lazy.ex is linked.ex and made == [1]
    with pytest.raises(ParameterError, match=r"give the points' labels and is_anomaly"):
        LatentExplorer(make, linked.positions, linked.embedding)
    bad = LatentExplorer(make, [0, 40], np.zeros((2, 2)), labels=[0, 1], is_anomaly=[False, True])
    with pytest.raises(ParameterError, match=r"positions must lie in 0..39"):
        _ = bad.ex


def test_latency_command_times_the_linked_map_and_the_ipympl_frame(linked: LatentExplorer) -> None:
    pytest.importorskip("plotly")
    from benchmarks.explorer_latency import measure_linked

    out = measure_linked(linked, moves=4)
    assert out["points"] == 25
    for name in ("click", "ring", "mark", "lasso", "ipympl_frame"):
        assert 0 < out[f"{name}_median_ms"] <= out[f"{name}_p90_ms"]
    assert linked.chosen and len(linked.chosen) == 25  # the last lasso took 50 points' worth: all 25


def test_run_reads_the_linked_map_of_notebook_05(run_dir, mnist_dir, data_dir) -> None:  # noqa: ANN001
    import csv

    from anomalymap_helpers.runs.opened import Run

    run = Run.open(run_dir, data_dir=str(data_dir), mnist_dir=str(mnist_dir), device="cpu")
    lx = run.latent_explorer()
    assert lx._ex is None  # made when the live view needs it
    with open(run.files.embeddings, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(lx.positions) == len(rows)
    test = run.splits["test"]
    for k in (0, len(rows) - 1):
        p = int(lx.positions[k])
        assert int(test.indices[p]) == int(rows[k]["index"]) and int(test.labels[p]) == int(rows[k]["label"])
        assert lx.embedding[k].tolist() == [float(rows[k]["tsne_x"]), float(rows[k]["tsne_y"])]
