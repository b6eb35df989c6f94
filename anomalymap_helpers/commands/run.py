"""Run the notebook series headless with papermill.

``python -m anomalymap_helpers run [-p NAME VALUE]... [-f params.yaml] [--results DIR]``
checks every value against :mod:`anomalymap_helpers.parameters` before anything runs,
executes ``notebooks/01_…`` to ``05_…`` in order, hands each parameter to every
notebook that takes it, echoes what each notebook prints (prefixed with its number),
writes the executed copies to ``<results>/notebooks/`` and stops at the first failure,
naming the notebook, the cell, and which files in the run folder are now from this run.

A refused run touches nothing. A run that fails part way leaves the files of the
notebooks it did not reach as they were; its message lists which files it replaced.
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

from anomalymap_helpers import parameters
from anomalymap_helpers.commands.echo import NotebookEcho
from anomalymap_helpers.errors import AnomalyMapError, ParameterError
from anomalymap_helpers.files.lock import LOCK_NAME, writing
from anomalymap_helpers.files.paths import DEFAULT_RESULTS_DIR, RunFiles, project_root, resolve
from anomalymap_helpers.pipeline.progress import HEADLESS_ENV
from anomalymap_helpers.pipeline.training import TrainConfig, check_resume

PATH_PARAMETERS = ("results_dir", "data_dir", "mnist_dir")
# The kernel's own log (not the notebook's output): only errors, not its start-up notices.
KERNEL_ARGUMENTS = ["--IPKernelApp.log_level=ERROR"]


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


def check_parameters(params: dict[str, Any], notebooks: list[Path]) -> dict[str, Any]:
    """Refuse an unknown parameter or a bad value of any notebook in ``notebooks``, before any work.

    Returns:
        Every parameter the notebooks take, defaults filled in.
    """
    numbers = {nb.name[:2] for nb in notebooks}
    values = parameters.validate(params, [p.name for p in parameters.PARAMETERS if numbers & set(p.notebooks)])
    files = RunFiles.at(values["results_dir"])
    if values.get("resume") and files.training_state.exists():
        # epochs=0 and batch_size=0 ("by data set") are resolved by notebook 02 on the split, not made yet:
        # check_resume takes them for the checkpoint's own values, so only a real difference is refused.
        config = TrainConfig.from_parameters(values).resolved(None, values.get("dataset", "mnist"))
        check_resume(files, config)
    return values


def _snapshot(folder: Path) -> dict[Path, int]:
    """Each file under ``folder`` (executed notebooks aside) with its modification time."""
    if not folder.is_dir():
        return {}
    return {
        p.relative_to(folder): p.stat().st_mtime_ns
        for p in folder.rglob("*")
        if p.is_file() and p.parts[len(folder.parts)] != "notebooks" and p.name != LOCK_NAME
    }


def changed_files(before: dict[Path, int], folder: Path) -> tuple[list[str], list[str]]:
    """``(files written since before, files still as before)`` under ``folder``, sorted."""
    after = _snapshot(folder)
    new = sorted(str(p) for p, t in after.items() if before.get(p) != t)
    kept = sorted(str(p) for p, t in after.items() if before.get(p) == t)
    return new, kept


def run_series(
    params: dict[str, Any] | None = None,
    results_dir: str | os.PathLike[str] | None = None,
    *,
    notebooks: list[Path] | None = None,
    echo: Callable[[str], None] = lambda line: print(line, flush=True),
    kernel_per_notebook: bool = False,
) -> list[NotebookRun]:
    """Execute the notebooks in order with papermill, in one kernel cleared between them.

    Args:
        params: Parameters by name; each goes to every notebook that takes it.
        results_dir: The run folder (default: ``params["results_dir"]``, else ``results/default``).
        notebooks: The notebooks to run (default: all of ``notebooks/``).
        echo: Where to print progress lines.
        kernel_per_notebook: A fresh kernel for each notebook (as JupyterLab would), instead
            of one kernel whose namespace is cleared between notebooks (see :mod:`.kernel`).

    Raises:
        ParameterError: unknown parameter or bad value (before anything runs).
        SeriesError: a notebook failed; the message names it, the cell and the files it replaced.
    """
    params = dict(params or {})
    results = resolve(results_dir or params.get("results_dir") or DEFAULT_RESULTS_DIR)
    params["results_dir"] = str(results)
    for key in PATH_PARAMETERS:  # absolute, so an executed copy reruns anywhere
        if params.get(key) and isinstance(params[key], str):
            params[key] = str(resolve(params[key]))
    notebooks = notebooks or series()
    check_parameters(params, notebooks)
    with writing(results, "run"):  # one writer: refused at once if another process writes this folder
        return _run_series(params, results, notebooks, echo, kernel_per_notebook)


def _run_series(params: dict[str, Any], results: Path, notebooks: list[Path], echo: Callable[[str], None],
                kernel_per_notebook: bool) -> list[NotebookRun]:
    files = RunFiles(results)
    before = _snapshot(results)
    files.notebooks.mkdir(parents=True, exist_ok=True)
    os.environ[HEADLESS_ENV] = "1"
    # The kernel named "python3" may be started as plain `python`: make that ours.
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    # After the checks: a refusal should not wait for papermill's import.
    from anomalymap_helpers.commands.kernel import SharedKernel

    runs: list[NotebookRun] = []
    with SharedKernel() as shared:
        for nb in notebooks:
            if kernel_per_notebook:
                runs.append(_execute(nb, files, params, before, echo))
            else:  # the clearing counts in the notebook's time
                runs.append(_execute(nb, files, params, before, echo, shared.engine_kwargs(), shared.reset))
    echo(f"series done in {sum(r.seconds for r in runs):.1f} s; results in {results}")
    return runs


def _execute(
    nb: Path,
    files: RunFiles,
    params: dict[str, Any],
    before: dict[Path, int],
    echo: Callable[[str], None],
    engine: dict[str, Any] | None = None,
    prepare: Callable[[], None] = lambda: None,
) -> NotebookRun:
    """Run one notebook of :func:`run_series`: ``prepare()``, then papermill with ``engine``'s arguments."""
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    out = files.notebooks / nb.name
    mine = {p.name: params[p.name] for p in parameters.for_notebook(nb.name[:2]) if p.name in params}
    echo(f"{nb.name} ...")
    stdout, stderr = NotebookEcho(nb.name[:2], echo), NotebookEcho(nb.name[:2], echo, "!")
    t0 = time.perf_counter()
    try:
        prepare()
        pm.execute_notebook(
            str(nb),
            str(out),
            parameters=mine,
            cwd=str(project_root()),
            progress_bar=False,
            kernel_name="python3",
            stdout_file=stdout,
            stderr_file=stderr,
            extra_arguments=KERNEL_ARGUMENTS,
            **(engine or {}),
        )
    except PapermillExecutionError as exc:
        new, kept = changed_files(before, files.root)
        raise SeriesError(
            f"{nb.name} failed in cell {exc.exec_count} (code cell {exc.cell_index + 1}): "
            f"{exc.ename}: {exc.evalue}\nthe executed copy with the full traceback is {out}\n"
            f"files in {files.root} now from this run: {', '.join(new) or 'none'}\n"
            f"files still from the earlier run (not in step with the new ones): {', '.join(kept) or 'none'}"
        ) from None
    finally:
        stdout.close()
        stderr.close()
    seconds = time.perf_counter() - t0
    echo(f"{nb.name} done in {seconds:.1f} s")
    return NotebookRun(nb.name, out, seconds)


def read_parameters(files: list[str], pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Parameters from YAML files, then ``-p NAME VALUE`` pairs (later ones win)."""
    params: dict[str, Any] = {}
    for path in files:
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ParameterError(f"cannot read parameters file {path}: {exc}") from None
        if not isinstance(loaded, dict):
            raise ParameterError(f"{path} must hold a mapping of parameter: value")
        params.update(loaded)
    for name, value in pairs:
        params[name] = parse_value(value)
    return params
