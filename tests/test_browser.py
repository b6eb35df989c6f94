"""Notebook 04's explorer in a real JupyterLab, driven in Debian's Chromium by Playwright.

JupyterLab runs headless on a loopback port with a token; Chromium is the
system one (no browser download). The test opens a copy of notebook 04 whose
parameters point at the smoke chain's run folder, runs all cells, and moves
the controls as a person would. Screenshots go to ``<run>/ui/``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from anomalymap_helpers.pipeline import scoring
from anomalymap_helpers.pipeline.evaluation import metrics
from benchmarks.screenshot import (
    CHROMIUM,
    CHROMIUM_FLAGS,
    click_point,
    jupyterlab,
    notebook_copy,
    open_and_run,
)

from .conftest import SMALL, require


@pytest.fixture(scope="module", autouse=True)
def chromium() -> None:
    """Debian's Chromium; its absence fails under CI=true and skips elsewhere."""
    if not Path(CHROMIUM).exists():
        require(f"no Chromium at {CHROMIUM}: apt-get install chromium")
    try:
        import playwright  # noqa: F401
    except ImportError:
        require("Playwright is not installed: pip install -e '.[test]'")


@pytest.fixture(scope="module", params=["run_dir", "folder_run_dir", "restore_run_dir"])
def lab(
    request: pytest.FixtureRequest, mnist_dir: Path, data_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path]]:
    """A JupyterLab server over a folder holding notebook 04 with a run's parameters (the MNIST
    smoke run, the example-folder run, then the restore model's texture run); yields its URL and the run folder."""
    run_dir = request.getfixturevalue(request.param)
    home = tmp_path_factory.mktemp("lab")
    values = {"results_dir": str(run_dir), "data_dir": str(data_dir), "mnist_dir": str(mnist_dir),
              "n_heatmaps": SMALL["n_heatmaps"], "device": "cpu"}
    notebook = notebook_copy(home, values)
    with jupyterlab(home) as (url, token):
        yield f"{url}/lab/tree/{notebook.name}?token={token}", run_dir


def _set_readout(page, name: str, value: str) -> None:  # noqa: ANN001
    # Typed while the kernel still answers the last change, the readout can be rewritten under the
    # keys (a CI run saw 0.00465 typed land as 0.00175): wait for the kernel to be idle first.
    page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").wait_for(timeout=60_000)
    readout = page.locator(f".anomalymap-{name} .widget-readout")
    readout.click()
    page.keyboard.press("Control+A")
    page.keyboard.type(value)
    page.keyboard.press("Enter")


def test_explorer_renders_and_responds_in_jupyterlab(lab: tuple[str, Path], tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    lab, run_dir = lab
    shots = run_dir / "ui"
    shots.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=CHROMIUM,
            args=CHROMIUM_FLAGS,
            headless=True,
            viewport={"width": 1400, "height": 1800},
        )
        page = browser.pages[0] if browser.pages else browser.new_page()
        try:
            open_and_run(page, lab)  # a fresh JupyterLab may ask for the kernel: the notebook's own
            view = page.locator("img.anomalymap-view")
            expect(view).to_be_visible(timeout=180_000)
            status = page.locator(".anomalymap-status")
            expect(status).to_contain_text("threshold", timeout=30_000)
            # The slider sends back the step it lands on: the explorer still opens on 03's threshold.
            page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").wait_for(timeout=60_000)
            metrics_json = json.loads((run_dir / "metrics.json").read_text())
            expect(status).to_contain_text(f"threshold {metrics_json['threshold']:.5f}", timeout=15_000)
            page.screenshot(path=str(shots / "explorer_loaded.png"), full_page=True)
            assert page.get_by_text("Error displaying widget").count() == 0

            # The image slider changes the image and its score.
            src, text = view.get_attribute("src"), status.inner_text()
            # An image of middling score, so the slider can reach below and above it (its range is
            # the scores' own: at the lowest-scored image "below" would clamp to the score itself).
            from anomalymap_helpers.pipeline.scoring import read_scores

            test_scores = read_scores(run_dir / "reconstruction_errors.csv", "test")[1]
            middle = int(test_scores.argsort()[len(test_scores) // 2])
            _set_readout(page, "image", str(middle if middle != 0 else 1))
            expect(status).not_to_have_text(text, timeout=15_000)
            expect(view).not_to_have_attribute("src", src, timeout=15_000)
            page.screenshot(path=str(shots / "explorer_image_moved.png"), full_page=True)

            # The threshold slider, moved across this image's score, flips the verdict.
            score = float(re.search(r": \S+ ([0-9.]+) (?:>|<=) threshold", status.inner_text()).group(1))
            _set_readout(page, "threshold", f"{score * 0.8:.5f}")
            expect(status).to_contain_text("ANOMALY", timeout=15_000)
            page.screenshot(path=str(shots / "explorer_threshold_low.png"), full_page=True)
            _set_readout(page, "threshold", f"{score * 1.25:.5f}")
            expect(status).to_contain_text("NORMAL", timeout=15_000)
            page.screenshot(path=str(shots / "explorer_threshold_high.png"), full_page=True)

            # The colour scale changes the colorbar's range.
            rng = page.locator(".anomalymap-range")
            before = rng.inner_text()
            page.locator(".anomalymap-scale button", has_text="global").click()
            expect(rng).to_contain_text("(global)", timeout=15_000)
            assert rng.inner_text() != before
            page.screenshot(path=str(shots / "explorer_global_scale.png"), full_page=True)

            # A rule's button puts the slider on that rule's threshold, not the nearest step.
            scores = run_dir / "reconstruction_errors.csv"
            val, test = (scoring.read_scores(scores, split)[1].numpy() for split in ("val", "test"))
            for rule in ("otsu", "percentile"):
                t = metrics.choose_threshold(rule, val, test, threshold_percentile=metrics_json["threshold_percentile"])
                page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").wait_for(timeout=60_000)
                page.locator(".anomalymap-rule button", has_text=rule).click()
                expect(status).to_contain_text(f"threshold {t:.5f}", timeout=15_000)
                page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").wait_for(timeout=60_000)
                expect(status).to_contain_text(f"threshold {t:.5f}", timeout=15_000)
                expect(page.locator(".anomalymap-rule button.mod-active")).to_have_text(rule, timeout=15_000)
            assert page.get_by_text("Error displaying widget").count() == 0

            # An image file dropped into the upload control gets predict's verdict and score.
            from anomalymap_helpers.runs.opened import Run
            from anomalymap_helpers.runs.predictions import write_pngs

            run = Run.open(run_dir, device="cpu")
            top = int(test_scores.argmax())  # the run's most anomalous test image, as a new file
            (upload,) = write_pngs(run.splits["test"].images[top : top + 1], tmp_path / "new")
            expected = run.predict(upload)
            verdict = "ANOMALY" if bool(expected.anomaly[0]) else "NORMAL"
            page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").wait_for(timeout=60_000)
            button = page.locator(".anomalymap-upload").first
            button.scroll_into_view_if_needed()
            with page.expect_file_chooser(timeout=30_000) as chooser:  # the file dialog a person would use
                button.click()
            chooser.value.set_files(str(upload))
            up = page.locator(".anomalymap-upload_status")
            expect(up).to_contain_text(f"uploaded {upload.name}", timeout=60_000)
            expect(up).to_contain_text(verdict)
            expect(up).to_contain_text(f"{float(expected.scores[0]):.5f}")
            page.wait_for_function(  # the uploaded image's view has arrived and decoded
                "() => { const i = document.querySelector('img.anomalymap-upload_view'); return i && i.naturalWidth > 0; }",
                timeout=30_000,
            )
            page.locator(".anomalymap-explorer").screenshot(path=str(shots / "explorer_upload.png"))
            assert page.get_by_text("Error displaying widget").count() == 0
        except Exception:
            page.screenshot(path=str(shots / "failure.png"), full_page=True)
            raise
        finally:
            browser.close()


def test_screenshot_shows_the_explorer_alone_without_pop_ups(run_dir: Path, mnist_dir: Path, tmp_path: Path) -> None:
    """The README's picture command on the smoke run: the widget alone, no notification over it
    (the command refuses to save one with a toast on the page)."""
    import shutil

    from PIL import Image

    from benchmarks import screenshot

    run = shutil.copytree(run_dir, tmp_path / "run")  # notebook 04 runs on it and rewrites heatmaps/
    out = tmp_path / "explorer.png"
    assert screenshot.main(["--results", str(run), "--mnist-dir", str(mnist_dir), "--out", str(out)]) == 0
    with Image.open(out) as image:
        width, height = image.size
        assert 600 < width < 1400 and height > 600  # the widget, not the whole 1400x1800 page
        assert len(image.getcolors(1 << 20) or []) > 50  # drawn images, not a blank box


def test_latent_map_click_opens_the_triptych_and_the_explorer_rings_it(
    run_dir: Path, mnist_dir: Path, data_dir: Path, tmp_path: Path
) -> None:
    """Notebook 05 live: a click on a point of the t-SNE map shows that image's triptych beside it and
    opens it in the heatmap explorer, which rings it in the map; moving the explorer moves the ring.
    The executed notebook of the series holds the static PNG of the same cell."""
    import base64
    import csv
    import json
    import shutil
    import time

    import numpy as np
    from playwright.sync_api import expect, sync_playwright

    run = shutil.copytree(run_dir, tmp_path / "run")  # notebook 05 rewrites the embeddings
    shots = run_dir / "ui"
    shots.mkdir(exist_ok=True)
    home = tmp_path / "lab"
    home.mkdir()
    values = {"results_dir": str(run), "data_dir": str(data_dir), "mnist_dir": str(mnist_dir), "device": "cpu",
              "tsne_samples": SMALL["tsne_samples"]}
    notebook = notebook_copy(home, values, "05")

    # The static fallback: what papermill stored for the linked cell in the series' executed copy.
    executed = json.loads((run_dir / "notebooks" / "05_latent.ipynb").read_text())
    bundle = next(o["data"] for c in executed["cells"] if c["cell_type"] == "code" and "latent_explorer(" in "".join(c["source"])
                  for o in c.get("outputs", []) if "data" in o)
    assert "application/vnd.jupyter.widget-view+json" not in bundle and "t-SNE map" in "".join(bundle["text/plain"])
    (shots / "linked_static_fallback.png").write_bytes(base64.b64decode(bundle["image/png"]))

    with jupyterlab(home) as (url, token), sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True,
            viewport={"width": 1400, "height": 2200},
        )
        page = browser.pages[0] if browser.pages else browser.new_page()
        try:
            open_and_run(page, f"{url}/lab/tree/{notebook.name}?token={token}")
            points = page.locator(".anomalymap-linked .js-plotly-plot .scatterlayer .trace").first.locator("path.point")
            expect(points.first).to_be_visible(timeout=60_000)
            with open(run / "latent_embeddings.csv", newline="") as fh:  # written by this notebook's run
                rows = list(csv.DictReader(fh))
            assert points.count() == len(rows)
            # The most isolated point, so the click cannot land on a neighbour.
            xy = np.array([[float(r["tsne_x"]), float(r["tsne_y"])] for r in rows])
            d = np.sqrt(((xy[:, None] - xy[None]) ** 2).sum(-1)) + np.eye(len(xy)) * 1e9
            k = int(d.min(1).argmax())
            expected = f"test image #{rows[k]['index']}"
            summary = page.locator(".anomalymap-linked-summary")
            expect(summary).to_contain_text("click a point", timeout=30_000)
            page.screenshot(path=str(shots / "linked_loaded.png"), full_page=True)

            t0 = time.perf_counter()
            cx, cy = click_point(page, k)
            expect(summary).to_contain_text(expected, timeout=30_000)
            print(f"click to triptych: {(time.perf_counter() - t0) * 1000:.0f} ms")
            page.wait_for_function(  # the triptych's PNG arrived and was decoded: a picture, not a broken icon
                "() => { const i = document.querySelector('img.anomalymap-linked-triptychs');"
                " return i && i.complete && i.naturalHeight > 100; }", timeout=15_000,
            )
            expect(page.locator(".anomalymap-status")).to_contain_text(expected, timeout=15_000)  # the explorer opened it
            ring = page.locator(".anomalymap-linked .js-plotly-plot .scatterlayer .trace").nth(1).locator("path.point")
            expect(ring).to_have_count(1, timeout=15_000)
            r = ring.bounding_box()
            assert abs(r["x"] + r["width"] / 2 - cx) < 3 and abs(r["y"] + r["height"] / 2 - cy) < 3
            page.screenshot(path=str(shots / "linked_point_clicked.png"), full_page=True)

            # The explorer moves on: the ring follows or, for an image not in the map, goes.
            before = ring.get_attribute("transform")
            _set_readout(page, "image", "0" if rows[k]["index"] != "0" else "1")
            expect(page.locator(".anomalymap-status")).not_to_contain_text(expected, timeout=15_000)
            page.wait_for_function(
                "([b]) => { const t = document.querySelectorAll('.anomalymap-linked .scatterlayer .trace')[1]"
                ".querySelectorAll('path.point'); return t.length === 0 || t[0].getAttribute('transform') !== b; }",
                arg=[before], timeout=15_000,
            )
            assert page.get_by_text("Error displaying widget").count() == 0
        except Exception:
            page.screenshot(path=str(shots / "linked_failure.png"), full_page=True)
            raise
        finally:
            browser.close()
