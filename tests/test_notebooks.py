"""The notebooks as files: committed clean, one documented parameters cell, linted."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from anomalymap_helpers.commands.run import declared_parameters, series

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = series(ROOT / "notebooks")
COMMON = {"results_dir", "data_dir", "mnist_dir"}


def test_five_notebooks_in_order() -> None:
    assert [p.name[:3] for p in NOTEBOOKS] == ["01_", "02_", "03_", "04_", "05_"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not dirty, f"{path.name}: cells {dirty} hold outputs; clear them before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_one_documented_parameters_cell(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: {len(tagged)} cells tagged 'parameters'"
    params = declared_parameters(path)
    assert set(params) >= COMMON
    for name, p in params.items():
        assert p["inferred_type_name"] != "None", f"{path.name}: {name} has no type hint"
        assert p["help"], f"{path.name}: {name} has no comment"


def test_parameter_names_match_the_issue_list() -> None:
    declared = set().union(*(declared_parameters(p) for p in NOTEBOOKS))
    wanted = {
        "normal_classes",
        "anomaly_classes",
        "mnist_dir",
        "seed",
        "epochs",
        "batch_size",
        "lr",
        "latent_dim",
        "device",
        "amp",
        "threshold_percentile",
        "n_heatmaps",
        "tsne_samples",
    }
    assert wanted <= declared


def test_ruff_on_package_notebooks_and_tests() -> None:
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    result = subprocess.run(
        [ruff, "check", "anomalymap_helpers", "notebooks", "tests", "benchmarks"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_notebook_default_score_is_the_package_default() -> None:
    from anomalymap_helpers.pipeline.scoring import DEFAULT_METHOD, check_method

    evaluation = [p for p in NOTEBOOKS if p.name.startswith("03_")][0]
    default = declared_parameters(evaluation)["score_method"]["default"].strip("\"'")
    assert default == "auto" and check_method(default, "mnist") == DEFAULT_METHOD


def test_evaluation_opens_briefly_and_its_table_names_every_score_once() -> None:
    """03's first cell fits on a screen (about 15 lines); its table of scores holds each entry of the
    score registry once, no more, and the sentence above it counts them as the registry does."""
    import re

    from anomalymap_helpers.pipeline.scoring import METHODS, REGISTRY, RESTORE_METHODS, VAE_METHODS

    evaluation = [p for p in NOTEBOOKS if p.name.startswith("03_")][0]
    cells = [c.source for c in nbformat.read(evaluation, as_version=4).cells if c.cell_type == "markdown"]
    assert len(cells[0].splitlines()) <= 15
    (table,) = [c for c in cells if "| score | what it measures |" in c]
    rows = re.findall(r"^\| `([a-z-]+)` \|", table, re.M)
    assert sorted(rows) == sorted(REGISTRY), rows
    words = {6: "six", 7: "seven", 8: "eight"}
    assert f"{words[len(METHODS)]} for every model" in table
    assert VAE_METHODS == ("elbo",) and RESTORE_METHODS == ("segment", "two-signal")
