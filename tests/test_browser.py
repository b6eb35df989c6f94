"""Notebook 04's explorer in a real JupyterLab, driven in Debian's Chromium by Playwright.

JupyterLab runs headless on a loopback port with a token; Chromium is the
system one (no browser download). The test opens a copy of notebook 04 whose
parameters point at the smoke chain's run folder, runs all cells, and moves
the controls as a person would. Screenshots go to ``<run>/ui/``.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest

from .conftest import ROOT, SMALL, require

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


@pytest.fixture(scope="module", autouse=True)
def chromium() -> None:
    """Debian's Chromium; its absence fails under CI=true and skips elsewhere."""
    if not Path(CHROMIUM).exists():
        require(f"no Chromium at {CHROMIUM}: apt-get install chromium")
    try:
        import playwright  # noqa: F401
    except ImportError:
        require("Playwright is not installed: pip install -e '.[test]'")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module", params=["run_dir", "folder_run_dir"])
def lab(
    request: pytest.FixtureRequest, mnist_dir: Path, data_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path]]:
    """A JupyterLab server over a folder holding notebook 04 with a run's parameters (the MNIST
    smoke run, then the example-folder run); yields its URL and the run folder."""
    run_dir = request.getfixturevalue(request.param)
    home = tmp_path_factory.mktemp("lab")
    nb = nbformat.read(ROOT / "notebooks" / "04_explorer.ipynb", as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    cell.source = "\n".join(
        [
            f"results_dir: str = {json.dumps(str(run_dir))}",
            f"data_dir: str = {json.dumps(str(data_dir))}",
            f"mnist_dir: str = {json.dumps(str(mnist_dir))}",
            f"n_heatmaps: int = {SMALL['n_heatmaps']}",
            'heatmap_scale: str = "per-image"',
            "seed: int = 0",
            'device: str = "cpu"',
        ]
    )
    nbformat.write(nb, home / "04_explorer.ipynb")
    port, token = _free_port(), secrets.token_hex(16)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "JUPYTER_CONFIG_DIR": str(home / ".config"),
        "JUPYTER_RUNTIME_DIR": str(home / ".runtime"),
        "JUPYTERLAB_WORKSPACES_DIR": str(home / ".workspaces"),
    }
    env.pop("ANOMALYMAP_HEADLESS", None)
    log = open(home / "lab.log", "w")  # noqa: SIM115 (closed below)
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyter",
            "lab",
            "--no-browser",
            "--ip=127.0.0.1",
            f"--port={port}",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={home}",
            "--allow-root",
            "--LabApp.expose_app_in_browser=True",
            "--LabApp.news_url=",
            "--LabApp.extension_manager=readonly",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        ],
        cwd=home,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2):
                    break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    raise AssertionError(
                        "JupyterLab did not start:\n" + (home / "lab.log").read_text()[-3000:]
                    ) from None
                time.sleep(0.5)
        yield f"{url}/lab/tree/04_explorer.ipynb?token={token}", run_dir
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def _set_readout(page, name: str, value: str) -> None:  # noqa: ANN001
    readout = page.locator(f".anomalymap-{name} .widget-readout")
    readout.click()
    page.keyboard.press("Control+A")
    page.keyboard.type(value)
    page.keyboard.press("Enter")


def test_explorer_renders_and_responds_in_jupyterlab(lab: tuple[str, Path], tmp_path: Path) -> None:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import expect, sync_playwright

    lab, run_dir = lab
    shots = run_dir / "ui"
    shots.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=CHROMIUM,
            args=FLAGS,
            headless=True,
            viewport={"width": 1400, "height": 1800},
        )
        page = browser.pages[0] if browser.pages else browser.new_page()
        try:
            page.goto(lab)
            page.wait_for_selector(".jp-NotebookPanel", timeout=90_000)
            page.wait_for_function(
                "window.jupyterapp && window.jupyterapp.commands.hasCommand('notebook:run-all-cells')", timeout=60_000
            )
            # A fresh JupyterLab may ask which kernel to start: take the notebook's own (Python 3).
            choose = page.locator(".jp-Dialog button", has_text="Select")
            try:
                choose.wait_for(timeout=10_000)
                choose.click()
            except PlaywrightTimeout:
                pass
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=90_000)
            # Started, not awaited: the command's promise settles only when every cell has run.
            page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
            view = page.locator("img.anomalymap-view")
            expect(view).to_be_visible(timeout=180_000)
            status = page.locator(".anomalymap-status")
            expect(status).to_contain_text("threshold", timeout=30_000)
            page.screenshot(path=str(shots / "explorer_loaded.png"), full_page=True)
            assert page.get_by_text("Error displaying widget").count() == 0

            # The image slider changes the image and its score.
            src, text = view.get_attribute("src"), status.inner_text()
            _set_readout(page, "image", "7")
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
            assert page.get_by_text("Error displaying widget").count() == 0
        except Exception:
            page.screenshot(path=str(shots / "failure.png"), full_page=True)
            raise
        finally:
            browser.close()
