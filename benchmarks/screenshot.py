"""Notebook 04 in a real JupyterLab, for a picture or a browser test.

``python benchmarks/screenshot.py --results DIR [--out docs/explorer_jupyterlab.png]``
starts JupyterLab on a loopback port with a token, in a scratch folder holding a copy of
notebook 04 whose parameters point at the run folder, opens it in Debian's Chromium through
Playwright (no browser download), runs every cell and saves a picture of the explorer widget
alone, atomically (notebook 04 runs on the run folder as it would in JupyterLab, so its
``heatmaps/`` are written again). JupyterLab's news and update prompts are switched off in a settings folder
of its own, so no pop-up lies over the page. :func:`jupyterlab` and :func:`notebook_copy` are
what the browser test drives too.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python benchmarks/NAME.py`: the repository's root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from anomalymap_helpers.errors import AnomalyMapError

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
# JupyterLab's own settings for the scratch server: no news prompt, no update check.
QUIET_SETTINGS = {"@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                                        "checkForUpdates": False}}


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def notebook_copy(folder: Path, values: dict[str, Any], number: str = "04") -> Path:
    """Write notebook ``number`` into ``folder`` with its parameters cell set to ``values``
    (the others at their defaults); returns the copy's path."""
    import nbformat

    from anomalymap_helpers import parameters
    from anomalymap_helpers.commands.run import series

    source = next(p for p in series() if p.name.startswith(number))
    nb = nbformat.read(source, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    cell.source = "\n".join(
        f"{p.name}: {p.type.__name__} = {json.dumps(values.get(p.name, p.default))}"
        for p in parameters.for_notebook(number)
    )
    path = folder / source.name
    nbformat.write(nb, path)
    return path


@contextmanager
def jupyterlab(home: Path, start_timeout: float = 90.0) -> Iterator[tuple[str, str]]:
    """A JupyterLab server over ``home`` on a loopback port; yields ``(base URL, token)``.

    Its config, runtime, workspaces and user settings live under ``home``; its log is
    ``home/lab.log``. Stopped on leaving the context.
    """
    settings = home / ".settings"
    for name, values in QUIET_SETTINGS.items():
        path = settings / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    port, token = free_port(), secrets.token_hex(16)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "JUPYTER_CONFIG_DIR": str(home / ".config"),
        "JUPYTER_RUNTIME_DIR": str(home / ".runtime"),
        "JUPYTERLAB_WORKSPACES_DIR": str(home / ".workspaces"),
        "JUPYTERLAB_SETTINGS_DIR": str(settings),
    }
    env.pop("ANOMALYMAP_HEADLESS", None)  # the explorer is live in JupyterLab
    log = open(home / "lab.log", "w")  # noqa: SIM115 (closed below)
    server = subprocess.Popen(
        [
            sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
            f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={home}", "--allow-root",
            "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=", "--LabApp.extension_manager=readonly",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        ],
        cwd=home, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + start_timeout
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2):
                    break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    raise AnomalyMapError("JupyterLab did not start:\n" + (home / "lab.log").read_text()[-3000:]) from None
                time.sleep(0.5)
        yield url, token
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def open_and_run(page: Any, url: str, timeout_ms: int = 180_000) -> None:
    """Open a notebook URL, take the notebook's own kernel if asked, and start running every cell."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page.goto(url)
    page.wait_for_selector(".jp-NotebookPanel", timeout=90_000)
    page.wait_for_function(
        "window.jupyterapp && window.jupyterapp.commands.hasCommand('notebook:run-all-cells')", timeout=60_000
    )
    choose = page.locator(".jp-Dialog button", has_text="Select")  # a fresh JupyterLab may ask for a kernel
    try:
        choose.wait_for(timeout=10_000)
        choose.click()
    except PlaywrightTimeout:
        pass
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=90_000)
    # Started, not awaited: the command's promise settles only when every cell has run.
    page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
    page.locator("img.anomalymap-view").wait_for(state="visible", timeout=timeout_ms)


POINTS = ".anomalymap-linked .js-plotly-plot .scatterlayer .trace"


def click_point(page: Any, k: int) -> tuple[float, float]:
    """Click point ``k`` (its row in ``latent_embeddings.csv``) of notebook 05's map; return where."""
    box = page.locator(POINTS).first.locator("path.point").nth(k).bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)  # plotly picks the point under the hover, then takes the click
    page.mouse.click(x, y)
    return x, y


def flagged_anomaly_point(run: Any) -> tuple[int, str]:
    """The point of 05's map to click for a picture: a flagged anomaly, the one farthest from its neighbours
    (so the click cannot land on another); returns its row and its title (``test image #N``)."""
    import numpy as np

    lx = run.latent_explorer()
    scores, threshold = run.test_scores.numpy(), float(run.evaluation["threshold"])
    flagged = np.flatnonzero(lx.is_anomaly & (scores[lx.positions] > threshold))
    candidates = flagged if len(flagged) else np.arange(len(lx.positions))
    xy = lx.embedding
    d = np.sqrt(((xy[candidates, None] - xy[None]) ** 2).sum(-1))
    d[np.arange(len(candidates)), candidates] = np.inf
    k = int(candidates[d.min(1).argmax()])
    return k, f"test image #{int(run.splits['test'].indices[lx.positions[k]])}"


def flagged_anomaly_pick(run: Any, most: int = 60) -> tuple[int, str] | None:
    """For a picture of 04 on an image its score flags: the first flagged anomaly of the explorer's
    "anomalies" subset, as ``(its place in that subset, its title)``; None if none of the first ``most`` is."""
    ex = run.explorer()
    for k, i in enumerate(ex.positions("anomaly")[:most]):
        if ex.verdict(int(i)) == "anomaly":
            return k, ex.title(int(i))
    return None


def screenshot(
    results: str | os.PathLike[str],
    out: str | os.PathLike[str] = "docs/explorer_jupyterlab.png",
    *,
    data_dir: str = "data",
    mnist_dir: str = "",
    notebook: str = "04",
) -> Path:
    """Save a picture of notebook 04's explorer on the run ``results`` (see the module's note).

    On 04 the explorer shows its first flagged anomaly (:func:`flagged_anomaly_pick`: "show" set to
    anomalies, the image slider stepped with the arrow key), so the picture shows a map explaining a verdict.
    ``notebook="05"``: notebook 05's linked map instead (the run needs 01-05), with a flagged anomaly
    clicked (:func:`flagged_anomaly_point`) and its triptych beside the map.
    """
    if notebook not in ("04", "05"):
        raise AnomalyMapError(f"notebook={notebook!r}: the pictures are of 04 (the explorer) or 05 (the linked map)")
    from anomalymap_helpers.files import storage
    from anomalymap_helpers.files.paths import resolve
    from anomalymap_helpers.runs.opened import Run

    run_dir = resolve(results)
    run = Run.open(run_dir, data_dir=data_dir, mnist_dir=mnist_dir or None, device="cpu")
    run.evaluation  # noqa: B018 - 01-03 done?
    pick = None
    if notebook == "05":
        point, title = flagged_anomaly_point(run)
    else:
        pick = flagged_anomaly_pick(run)
    if not Path(CHROMIUM).exists():
        raise AnomalyMapError(f"no Chromium at {CHROMIUM}: apt-get install chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise AnomalyMapError("Playwright is not installed: pip install -e '.[test]'") from None
    target = resolve(out)
    with tempfile.TemporaryDirectory(prefix="anomalymap-lab-") as scratch:
        home = Path(scratch)
        values = {"results_dir": str(run_dir), "data_dir": str(resolve(data_dir)), "device": "cpu"}
        if mnist_dir:
            values["mnist_dir"] = str(resolve(mnist_dir))
        copy = notebook_copy(home, values, notebook)
        with jupyterlab(home) as (url, token), sync_playwright() as pw:
            browser = pw.chromium.launch_persistent_context(
                str(home / "profile"), executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True,
                viewport={"width": 1400, "height": 1800},
            )
            try:
                page = browser.pages[0] if browser.pages else browser.new_page()
                open_and_run(page, f"{url}/lab/tree/{copy.name}?token={token}")
                page.locator(".anomalymap-gallery-strip").wait_for(state="visible", timeout=60_000)
                widget = page.locator(".anomalymap-explorer")
                if notebook == "05":
                    page.locator(POINTS).first.locator("path.point").first.wait_for(timeout=60_000)
                    widget = page.locator(".anomalymap-linked-map")
                    widget.scroll_into_view_if_needed()
                    click_point(page, point)
                    page.locator(".anomalymap-linked-summary", has_text=title).wait_for(timeout=30_000)
                    page.mouse.move(5, 5)  # no hover label over the picture
                elif pick is not None:
                    steps, title = pick
                    page.locator(".anomalymap-subset select").select_option(label="anomalies")
                    handle = page.locator(".anomalymap-image .noUi-handle").first
                    for _ in range(steps):
                        handle.press("ArrowRight")
                    page.locator(".anomalymap-status", has_text=f"{title} (").first.wait_for(timeout=30_000)
                    page.mouse.move(5, 5)
                widget.scroll_into_view_if_needed()
                page.wait_for_timeout(500)  # the last images decoded
                if page.locator(".jp-toast-container .Toastify__toast").count():
                    raise AnomalyMapError("a JupyterLab notification lies over the page")
                with storage.atomic_path(target) as tmp:
                    widget.screenshot(path=str(tmp), type="png")
            finally:
                browser.close()
    return target


def _main(args: argparse.Namespace) -> int:
    default = "docs/explorer_jupyterlab.png" if args.notebook == "04" else "docs/latent_map_jupyterlab.png"
    out = screenshot(args.results, args.out or default, mnist_dir=args.mnist_dir or "", notebook=args.notebook)
    print(f"wrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit status."""
    from benchmarks._entry import run

    shot = argparse.ArgumentParser(prog="python benchmarks/screenshot.py", description="a picture of notebook 04's explorer in JupyterLab (Chromium, Playwright)")
    shot.add_argument("--results", default="results/default", metavar="DIR", help="a run folder made by notebooks 01-03")
    shot.add_argument("--out", default=None, metavar="PNG",
                      help="default docs/explorer_jupyterlab.png (04) or docs/latent_map_jupyterlab.png (05)")
    shot.add_argument("--notebook", default="04", choices=["04", "05"],
                      help="04: the heatmap explorer; 05: the linked latent map with a flagged anomaly clicked")
    shot.add_argument("--mnist-dir", default=None)
    return run(shot, _main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
