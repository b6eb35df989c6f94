"""The one declaration of every parameter, and the runner refusing bad values before any work."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from anomalymap_helpers import parameters
from anomalymap_helpers.commands.cli import main
from anomalymap_helpers.commands.run import declared_parameters, series
from anomalymap_helpers.errors import ParameterError

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = series(ROOT / "notebooks")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_parameters_cell_matches_the_declaration(path: Path) -> None:
    declared = declared_parameters(path)
    wanted = parameters.for_notebook(path.name[:2])
    assert list(declared) == [p.name for p in wanted], f"{path.name}: names or order differ from parameters.py"
    for p in wanted:
        cell = declared[p.name]
        assert cell["inferred_type_name"] == p.type.__name__, p.name
        assert ast.literal_eval(cell["default"]) == p.default, p.name
        assert cell["help"] == p.help, p.name


def test_papermill_help_lists_each_parameter_with_its_meaning() -> None:
    papermill = str(Path(sys.executable).parent / "papermill")
    for path in NOTEBOOKS:
        out = subprocess.run(
            [papermill, "--help-notebook", str(path)], capture_output=True, text=True, timeout=120
        ).stdout
        for p in parameters.for_notebook(path.name[:2]):
            assert p.name in out and p.help in out, f"{path.name}: {p.name}"


def test_the_parameter_tables_are_the_declaration() -> None:
    """docs/parameters.md holds the whole generated table; the README's short one is ten of its rows."""
    table = parameters.markdown_table()
    full = (ROOT / "docs" / "parameters.md").read_text()
    assert table in full, "docs/parameters.md's table differs: paste `python -m anomalymap_helpers params`"
    readme = (ROOT / "README.md").read_text().split("## Parameters", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in readme.splitlines() if line.startswith("| `")]
    assert len(rows) == 10 and all(row in table.splitlines() for row in rows), "README's rows differ from the declaration"
    assert "docs/parameters.md" in readme


def test_every_parameter_has_a_notebook_and_a_valid_default() -> None:
    assert all(p.notebooks for p in parameters.PARAMETERS)
    assert parameters.validate({}) == {p.name: p.default for p in parameters.PARAMETERS}


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("score_method", "knn", "score_method='knn': use one of ['auto', 'mse', 'topk', 'ssim', 'latent-knn', 'patch-knn', 'ensemble', 'elbo', 'segment', 'nearest-patch', 'two-signal']"),
        ("heatmap_scale", "log", "heatmap_scale='log': use one of ['per-image', 'global']"),
        ("perplexity", -3, "perplexity=-3.0: use a number above 0"),
        ("tsne_samples", 0, "tsne_samples=0: use a whole number of at least 2"),
        ("epochs", 2.5, "epochs=2.5 (float): epochs takes a int"),
        ("amp", "sometimes", "amp='sometimes' (str): amp takes a bool"),
        ("lr", 0, "lr=0.0: use a number above 0"),
        ("normal_classes", [0, 12], "unknown class(es) [12]"),
        ("device", "tpu", "device='tpu' is not known"),
        ("dataset", "cifar", "dataset='cifar': use one of ['mnist', 'fashion-mnist', 'folder']"),
        ("map_blur", -0.5, "map_blur=-0.5: use -1 (automatic), 0 (none) or a number above 0"),
        ("nproc", 4096, "nproc=4096: this machine has"),
        ("threshold_rule", "mean", "threshold_rule='mean': use one of ['percentile', 'otsu', 'fpr']"),
        ("target_fpr", 1.5, "target_fpr=1.5: use a number strictly between 0 and 1"),
    ],
)
def test_bad_value_refused_before_any_work(
    name: str, value: object, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = tmp_path / "run"
    results.mkdir()
    model = results / "model.safetensors"
    model.write_bytes(b"an earlier run's model")
    before = model.stat().st_mtime_ns
    t0 = time.perf_counter()
    assert main(["run", "-p", name, repr(value) if not isinstance(value, str) else value, "--results", str(results)]) == 2
    assert time.perf_counter() - t0 < 10
    err = capsys.readouterr().err
    assert message in err, err
    assert sorted(p.name for p in results.iterdir()) == ["model.safetensors"]
    assert model.stat().st_mtime_ns == before


def test_unwritable_results_folder_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--results", "/proc/forbidden"]) == 2
    assert "results_dir='/proc/forbidden': cannot write there" in capsys.readouterr().err
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["run", "--results", str(blocker)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        assert main(["run", "--results", str(locked / "run")]) == 2
        assert "cannot write there" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) in (["a-file"], ["a-file", "locked"])


def test_a_notebook_alone_checks_its_own_values() -> None:
    namespace = {p.name: p.default for p in parameters.for_notebook("05")}
    assert parameters.check_notebook("05", namespace)["perplexity"] == 30.0
    with pytest.raises(ParameterError, match="perplexity=-3.0"):
        parameters.check_notebook("05", {**namespace, "perplexity": -3})


def test_params_command_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["params"]) == 0
    assert capsys.readouterr().out.strip() == parameters.markdown_table()
