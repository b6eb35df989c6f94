"""The smoke chain: the five notebooks headless through the `run` command, then nbval."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from anomalymap_helpers.commands.cli import main
from anomalymap_helpers.commands.run import SeriesError, run_series, series

from .conftest import NAMES, ROOT, SMALL


def test_series_writes_every_output(run_dir: Path) -> None:
    for name in [
        "splits.safetensors",
        "splits.json",
        "model.safetensors",
        "model.json",
        "training_loss_plot.png",
        "reconstruction_errors.csv",
        "error_histogram.png",
        "roc_curve.png",
        "pr_curve.png",
        "metrics.json",
        "per_type.csv",
        "reference_latents.safetensors",
        "latent_space_tsne.png",
        "latent_embeddings.csv",
        "environment.json",
    ]:
        assert (run_dir / name).stat().st_size > 0, name
    assert sorted(p.name for p in (run_dir / "notebooks").iterdir()) == NAMES
    assert len(list((run_dir / "heatmaps").glob("sample_*.png"))) == SMALL["n_heatmaps"]


def test_series_metrics_and_scores_agree(run_dir: Path) -> None:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in [
        "roc_auc",
        "average_precision",
        "threshold",
        "precision",
        "recall",
        "mean_score_normal",
        "mean_score_anomaly",
    ]:
        assert isinstance(metrics[key], float), key
    with open(run_dir / "reconstruction_errors.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["split", "index", "label", "score"]
    test = [r for r in rows if r["split"] == "test"]
    assert len(test) == SMALL["max_test"]
    anomalies = [float(r["score"]) for r in test if r["label"] == "9"]
    assert metrics["mean_score_anomaly"] == pytest.approx(sum(anomalies) / len(anomalies), rel=1e-9)
    env = json.loads((run_dir / "environment.json").read_text())
    assert env["steps"]["02_training"]["precision"] in {"bf16", "fp32", "fp16"}
    assert env["versions"]["torch"]


def test_executed_notebooks_show_no_widget_json(run_dir: Path) -> None:
    text = (run_dir / "notebooks" / "04_explorer.ipynb").read_text()
    assert '"image/png"' in text and "Error displaying widget" not in text


# What the series writes that a rerun must write again byte for byte (the records of times aside).
RERUN_FILES = ["metrics.json", "reconstruction_errors.csv", "score_comparison.csv", "per_type.csv",
               "latent_embeddings.csv", "model.json"]


def _losses(run: Path) -> list[tuple[str, str]]:
    with open(run / "training_history.csv") as fh:
        return [(r["train_loss"], r["val_loss"]) for r in csv.DictReader(fh)]


def test_nbval_reruns_the_executed_notebooks_and_fresh_kernels_write_the_same_files(run_dir: Path) -> None:
    """nbval reruns the series' executed notebooks, each in a fresh kernel as JupyterLab runs them;
    the files they write again are those of the runner's one shared kernel (cleared between
    notebooks): the same weights, losses, scores, metrics, per-type table and t-SNE."""
    from safetensors.torch import load_file

    shared = {name: (run_dir / name).read_bytes() for name in RERUN_FILES}
    shared_model, shared_losses = load_file(run_dir / "model.safetensors"), _losses(run_dir)
    notebooks = [str(run_dir / "notebooks" / n) for n in NAMES]
    env = {**os.environ, "ANOMALYMAP_HEADLESS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax", "--current-env", *notebooks],
        cwd=run_dir,
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    for name in RERUN_FILES:
        assert (run_dir / name).read_bytes() == shared[name], name
    fresh_model = load_file(run_dir / "model.safetensors")
    assert shared_model.keys() == fresh_model.keys()
    assert all(torch.equal(shared_model[k], fresh_model[k]) for k in shared_model)
    assert _losses(run_dir) == shared_losses


def test_kernel_per_notebook_runs_each_notebook_in_a_fresh_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """``run --kernel-per-notebook``: each notebook in a kernel of its own (another process), so a name
    the first defines is gone in the second; here the series is two small notebooks."""
    import nbformat

    from anomalymap_helpers.commands import run as runner

    first, second = tmp_path / "01_first.ipynb", tmp_path / "02_second.ipynb"  # they take 01's and 02's parameters
    pid = str(tmp_path / "pid")
    for path, code in ((first, f"import os\nleft_over = os.getpid()\nopen({pid!r}, 'w').write(str(left_over))"),
                       (second, f"import os\nassert 'left_over' not in globals()\nassert open({pid!r}).read() != str(os.getpid())")):
        nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)], metadata={
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}), path)
    monkeypatch.setattr(runner, "series", lambda folder=None: [first, second])
    assert main(["run", "--kernel-per-notebook", "--results", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "01_first.ipynb done in" in out and "02_second.ipynb done in" in out


def test_the_shared_kernel_is_cleared_between_notebooks(tmp_path: Path) -> None:
    import nbformat

    first, second = tmp_path / "first.ipynb", tmp_path / "second.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import matplotlib.pyplot as plt\nleft_over = 1\nfigure = plt.figure()"
    )]), first)
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import sys\nassert 'left_over' not in globals() and 'plt' not in globals()\n"
        "assert sys.modules['matplotlib.pyplot'].get_fignums() == []"
    ), nbformat.v4.new_code_cell("1")]), second)
    import papermill as pm

    from anomalymap_helpers.commands.kernel import SharedKernel

    with SharedKernel() as shared:
        for nb in (first, second):
            shared.reset()
            pm.execute_notebook(str(nb), str(nb), progress_bar=False, kernel_name="python3", **shared.engine_kwargs())
        pid = shared.km.provisioner.pid if shared.km.provisioner else None
        assert shared.km.is_alive()
    assert not shared.km.has_kernel and pid is not None
    executed = nbformat.read(second, as_version=4)
    assert [c.execution_count for c in executed.cells if c.cell_type == "code"] == [1, 2]


def test_runner_names_the_failing_notebook_and_the_missing_step(tmp_path: Path) -> None:
    evaluation = [p for p in series(ROOT / "notebooks") if p.name.startswith("03_")]
    with pytest.raises(SeriesError) as info:
        run_series({}, tmp_path / "empty", notebooks=evaluation, echo=lambda line: None)
    text = str(info.value)
    assert "03_evaluation.ipynb failed in cell" in text
    assert "run notebook 01_data first" in text


def test_unknown_or_bad_parameters_fail_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = tmp_path / "never"
    assert main(["run", "-p", "epoch", "3", "--results", str(results)]) == 2
    assert "unknown parameter(s) ['epoch']" in capsys.readouterr().err
    assert main(["run", "-p", "anomaly_classes", "[0, 9]", "--results", str(results)]) == 2
    assert "are in both" in capsys.readouterr().err
    assert main(["run", "-p", "threshold_percentile", "100", "--results", str(results)]) == 2
    assert main(["run", "-p", "mnist_dir", str(tmp_path), "--results", str(results)]) == 1
    assert "train-images-idx3-ubyte.gz (or train-images-idx3-ubyte) is missing" in capsys.readouterr().err
    assert not results.exists()


def test_runner_echoes_progress_without_kernel_noise(run_dir: Path) -> None:
    log = (run_dir / "runner.log").read_text()
    assert "  01 | train " in log  # notebook 01's split counts
    epoch_lines = [line for line in log.splitlines() if line.startswith("  02 | epoch 1/1")]
    assert epoch_lines and "images/s" in epoch_lines[-1] and "val loss" in epoch_lines[-1]
    assert "without encryption" not in log and "\r" not in log


def test_a_failed_run_says_which_files_are_new(tmp_path: Path, mnist_dir: Path, data_dir: Path) -> None:
    results = tmp_path / "run"
    results.mkdir()
    (results / "metrics.json").write_text("{}")  # an earlier run's evaluation
    notebooks = [p for p in series(ROOT / "notebooks") if p.name[:2] in ("01", "03")]
    params = {"max_train": 200, "max_test": 100, "mnist_dir": str(mnist_dir), "data_dir": str(data_dir)}
    with pytest.raises(SeriesError) as info:
        run_series(params, results, notebooks=notebooks, echo=lambda line: None)
    text = str(info.value)
    assert "03_evaluation.ipynb failed" in text and "run notebook 02_training first" in text
    new = text.split("now from this run: ")[1].splitlines()[0]
    kept = text.split("from the earlier run (not in step with the new ones): ")[1].splitlines()[0]
    assert "splits.json" in new and "splits.safetensors" in new and "metrics.json" not in new
    assert kept == "metrics.json"
    assert (results / "metrics.json").read_text() == "{}"


def test_run_opens_a_trained_run(run_dir: Path, data_dir: Path) -> None:
    from anomalymap_helpers.runs.opened import Run

    run = Run.open(run_dir, data_dir=str(data_dir), device="cpu")
    assert len(run.splits["test"]) == SMALL["max_test"] and run.model.config.latent_dim == 64
    assert run.test_scores.shape == (SMALL["max_test"],)
    assert run.evaluation["score"] == "patch-knn"
    # The default score is read off its own map: each image's largest cell is 03's score.
    patch = run.score_maps("patch-knn")
    grids, _ = patch.grids(run.splits["test"].images[:6])
    np.testing.assert_allclose(grids.flatten(1).amax(1).numpy(), run.test_scores[:6].numpy(), rtol=1e-5, atol=1e-6)
    explorer = run.explorer()
    assert explorer.threshold == run.evaluation["threshold"]
    # The rules' thresholds from the scores 03 wrote; 03's own rule (percentile) gives its threshold.
    assert set(explorer.rules) == {"percentile", "otsu", "fpr"}
    assert explorer.rules["percentile"] == pytest.approx(run.evaluation["threshold"]) and explorer.rule_at() == "percentile"


def test_run_without_a_model_names_notebook_02(tmp_path: Path, mnist_dir: Path, data_dir: Path) -> None:
    from anomalymap_helpers.errors import MissingInputError
    from anomalymap_helpers.files.paths import RunFiles
    from anomalymap_helpers.pipeline import data
    from anomalymap_helpers.runs.opened import Run

    mnist = data.load_mnist(data_dir, str(mnist_dir))
    source = {"data_dir": str(data_dir), "mnist_dir": ""}
    data.write_splits(RunFiles(tmp_path), mnist, data.SplitConfig(max_train=200), source=source)
    run = Run.open(tmp_path, data_dir=str(data_dir), device="cpu")
    with pytest.raises(MissingInputError, match="no model.safetensors .* run notebook 02_training first"):
        assert run.model is None


def test_folder_series_measures_the_maps_against_the_masks(folder_run_dir: Path) -> None:
    """On a folder data set: pixel ROC-AUC and AUPRO in metrics.json, a row per defect type in
    per_type.csv, the map-read default score, and triptychs named by defect type."""
    metrics = json.loads((folder_run_dir / "metrics.json").read_text())
    assert metrics["dataset"] == "folder" and metrics["score"] == "topk" and metrics["score_method"] == "auto"
    assert metrics["map_blur"] == 1.0  # image_size 32 / 32
    for key in ("roc_auc", "pixel_roc_auc", "aupro"):
        assert 0.0 <= metrics[key] <= 1.0, key
    with open(folder_run_dir / "per_type.csv") as fh:
        rows = {r["name"]: r for r in csv.DictReader(fh)}
    assert set(rows) == {"good", "blob", "scratch"}
    assert rows["blob"]["kind"] == "anomaly" and int(rows["blob"]["n"]) == 6 and int(rows["good"]["n"]) == 10
    manifest = json.loads((folder_run_dir / "splits.json").read_text())
    assert manifest["class_names"] == ["good", "blob", "scratch"] and manifest["channels"] == 3
    names = {p.name.split("_")[2] for p in (folder_run_dir / "heatmaps").glob("sample_*.png")}
    assert names <= {"good", "blob", "scratch"} and names & {"blob", "scratch"}
    model = json.loads((folder_run_dir / "model.json").read_text())
    assert model["model"]["image_size"] == 32 and model["model"]["channels"] == 3


def test_fashion_series_names_the_classes(fashion_run_dir: Path) -> None:
    metrics = json.loads((fashion_run_dir / "metrics.json").read_text())
    assert metrics["dataset"] == "fashion-mnist" and metrics["score"] == "patch-knn" and "aupro" not in metrics
    with open(fashion_run_dir / "per_type.csv") as fh:
        names = [r["name"] for r in csv.DictReader(fh)]
    assert names == ["T-shirt/top", "Trouser", "Bag"]
    assert "T-shirt/top" in (fashion_run_dir / "runner.log").read_text()


@pytest.mark.parametrize("which", ["folder_run_dir", "fashion_run_dir"])
def test_nbval_reruns_the_other_data_sets(which: str, request: pytest.FixtureRequest) -> None:
    folder = request.getfixturevalue(which)
    notebooks = [str(folder / "notebooks" / n) for n in NAMES]
    env = {**os.environ, "ANOMALYMAP_HEADLESS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax", "--current-env", *notebooks],
        cwd=folder, capture_output=True, text=True, timeout=900, env=env,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_reference_latents_are_cached_per_model_and_made_again_after_retraining(
    tmp_path: Path, mnist_dir: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """03's kNN reference latents are encoded once per model file; a retrained model (other
    weights in model.safetensors) never gets the stale ones."""
    import torch

    from anomalymap_helpers.files.paths import RunFiles
    from anomalymap_helpers.pipeline import data, scoring
    from anomalymap_helpers.pipeline.models import ConvAutoencoder
    from anomalymap_helpers.pipeline.training import checkpoint
    from anomalymap_helpers.runs.opened import Run

    files = RunFiles(tmp_path)
    mnist = data.load_mnist(data_dir, str(mnist_dir))
    data.write_splits(files, mnist, data.SplitConfig(max_train=300), source={"data_dir": str(data_dir)})
    torch.manual_seed(0)
    checkpoint.save_model(files.model, ConvAutoencoder())
    run = Run.open(tmp_path, data_dir=str(data_dir), device="cpu")
    first = run.reference_latents()
    torch.testing.assert_close(first, scoring.encode(run.model, run.splits["train"].images))
    assert files.reference_latents.exists()

    def no_encoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("encoded again although the model did not change")

    with monkeypatch.context() as m:
        m.setattr(scoring, "encode", no_encoding)
        assert torch.equal(Run.open(tmp_path, data_dir=str(data_dir), device="cpu").reference_latents(), first)

    torch.manual_seed(1)  # "retrained": other weights in the same file
    checkpoint.save_model(files.model, ConvAutoencoder())
    again = Run.open(tmp_path, data_dir=str(data_dir), device="cpu")
    fresh = again.reference_latents()
    assert not torch.allclose(fresh, first)
    torch.testing.assert_close(fresh, scoring.encode(again.model, again.splits["train"].images))


def test_an_mnist_run_in_a_folder_once_used_for_a_folder_data_set_ignores_its_file_names(
    run_dir: Path, data_dir: Path, tmp_path: Path
) -> None:
    import shutil

    from anomalymap_helpers.runs.opened import Run

    reused = Path(shutil.copytree(run_dir, tmp_path / "reused"))
    (reused / "image_names.json").write_text(json.dumps(["test/good/stale.png"] * SMALL["max_test"]))
    explorer = Run.open(reused, data_dir=str(data_dir), device="cpu").explorer()
    assert explorer.caption(0).startswith("test image #")
