"""Run the notebook series headless with papermill.

``python -m anomalymap_helpers run [-p NAME VALUE]... [-f params.yaml] [--results DIR]``
executes ``notebooks/01_…`` to ``05_…`` in order, hands each parameter to every
notebook that declares it, writes the executed copies to
``<results>/notebooks/``, prints each notebook's wall time and stops at the
first failure, naming the notebook and the failing cell.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .errors import AnomalyMapError, ParameterError
from .paths import DEFAULT_RESULTS_DIR, RunFiles, project_root, resolve
from .train import HEADLESS_ENV

PATH_PARAMETERS = ("results_dir", "data_dir", "mnist_dir")


class SeriesError(AnomalyMapError):
    """A notebook of the series failed."""


@dataclass(frozen=True)
class NotebookRun:
    """One executed notebook: its name, output copy and wall time in seconds."""

    name: str
    output: Path
    seconds: float


def notebooks_dir() -> Path:
    """The ``notebooks/`` folder of the project."""
    folder = project_root() / "notebooks"
    if not folder.is_dir():
        raise SeriesError(f"no notebooks folder at {folder}: run from inside the AnomalyMap checkout")
    return folder


def series(folder: Path | None = None) -> list[Path]:
    """The numbered notebooks ``NN_*.ipynb``, in order."""
    return sorted((folder or notebooks_dir()).glob("[0-9][0-9]_*.ipynb"))


def parse_value(text: str) -> Any:
    """Read a ``-p`` value as YAML: ``5`` -> 5, ``[0, 1]`` -> list, ``None`` -> None, else the text."""
    if text in ("None", "none"):
        return None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def declared_parameters(notebook: Path) -> dict[str, dict[str, Any]]:
    """The parameters a notebook's ``parameters`` cell declares (papermill's reading)."""
    import papermill as pm

    return pm.inspect_notebook(str(notebook))


def check_parameters(params: dict[str, Any], notebooks: list[Path]) -> dict[str, dict[str, str]]:
    """Fail before any work on a parameter no notebook declares or on a bad value.

    Returns:
        Each notebook's declared parameters, by notebook name.
    """
    declared = {nb.name: declared_parameters(nb) for nb in notebooks}
    known = set().union(*(d.keys() for d in declared.values())) if declared else set()
    unknown = sorted(set(params) - known)
    if unknown:
        raise ParameterError(f"unknown parameter(s) {unknown}: the notebooks declare {sorted(known)}")
    validate(params)
    return declared


def validate(params: dict[str, Any]) -> None:
    """Check the values the package would reject, so a bad one fails before notebook 01."""
    from .data import SplitConfig
    from .device import resolve_device
    from .metrics import check_percentile
    from .train import TrainConfig

    split_keys = ("normal_classes", "anomaly_classes", "val_fraction", "seed", "max_train", "max_test")
    split = {k: params[k] for k in split_keys if k in params}
    SplitConfig(**split)
    train_keys = ("epochs", "batch_size", "lr", "latent_dim", "seed", "device", "amp")
    TrainConfig(**{k: params[k] for k in train_keys if k in params})
    if "device" in params:
        resolve_device(params["device"])
    if "threshold_percentile" in params:
        check_percentile(params["threshold_percentile"])
    if params.get("mnist_dir"):
        from .data import check_mnist_dir

        check_mnist_dir(params["mnist_dir"])


def run_series(
    params: dict[str, Any] | None = None,
    results_dir: str | os.PathLike[str] | None = None,
    *,
    notebooks: list[Path] | None = None,
    log_output: bool = False,
    echo: Callable[[str], None] = lambda line: print(line, flush=True),
) -> list[NotebookRun]:
    """Execute the notebooks in order with papermill.

    Args:
        params: Parameters by name; each goes to every notebook that declares it.
        results_dir: The run folder (default ``results/default``).
        notebooks: The notebooks to run (default: all of ``notebooks/``).
        log_output: Stream the notebooks' output to the log.
        echo: Where to print progress lines.

    Raises:
        ParameterError: unknown parameter or bad value (before anything runs).
        SeriesError: a notebook failed; the message names it and the cell.
    """
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    params = dict(params or {})
    results = resolve(results_dir or params.get("results_dir") or DEFAULT_RESULTS_DIR)
    params["results_dir"] = str(results)
    for key in PATH_PARAMETERS:  # absolute, so an executed copy reruns anywhere
        if params.get(key):
            params[key] = str(resolve(params[key]))
    notebooks = notebooks or series()
    declared = check_parameters(params, notebooks)
    files = RunFiles(results)
    files.notebooks.mkdir(parents=True, exist_ok=True)
    os.environ[HEADLESS_ENV] = "1"
    # The kernel named "python3" may be started as plain `python`: make that ours.
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    runs: list[NotebookRun] = []
    for nb in notebooks:
        out = files.notebooks / nb.name
        mine = {k: v for k, v in params.items() if k in declared[nb.name]}
        echo(f"{nb.name} ...")
        t0 = time.perf_counter()
        try:
            pm.execute_notebook(
                str(nb),
                str(out),
                parameters=mine,
                cwd=str(project_root()),
                progress_bar=False,
                log_output=log_output,
                kernel_name="python3",
            )
        except PapermillExecutionError as exc:
            raise SeriesError(
                f"{nb.name} failed in cell {exc.exec_count} (code cell {exc.cell_index + 1}): "
                f"{exc.ename}: {exc.evalue}\nthe executed copy with the full traceback is {out}"
            ) from None
        seconds = time.perf_counter() - t0
        runs.append(NotebookRun(nb.name, out, seconds))
        echo(f"{nb.name} done in {seconds:.1f} s")
    echo(f"series done in {sum(r.seconds for r in runs):.1f} s; results in {results}")
    return runs
