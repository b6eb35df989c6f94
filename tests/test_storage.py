"""Atomic writes: an interrupted write leaves the previous file whole."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from anomalymap_helpers.files import storage
from anomalymap_helpers.pipeline.models import ConvAutoencoder, ModelConfig
from anomalymap_helpers.pipeline.training import checkpoint


def test_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    path = storage.write_json(tmp_path / "metrics.json", {"roc_auc": 0.9})
    with pytest.raises(RuntimeError), storage.atomic_path(path) as tmp:
        tmp.write_text("{half")
        raise RuntimeError("disk full")
    assert storage.read_json(path) == {"roc_auc": 0.9}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_csv_and_figure_round_trip(tmp_path: Path) -> None:
    from anomalymap_helpers.pipeline.evaluation.plotting import NotebookFigure

    storage.write_csv(tmp_path / "s.csv", ["split", "score"], [("test", 0.5)])
    assert (tmp_path / "s.csv").read_text().splitlines() == ["split,score", "test,0.5"]
    fig = NotebookFigure()
    fig.add_subplot().plot([0, 1])
    path = storage.save_figure(fig, tmp_path / "f.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


_SAVER = textwrap.dedent(
    """
    import sys, torch
    from anomalymap_helpers.pipeline.training import checkpoint
    from anomalymap_helpers.pipeline.models import ConvAutoencoder, ModelConfig
    torch.manual_seed(0)
    model = ConvAutoencoder(ModelConfig(latent_dim=512))
    n = 0
    while True:  # keep overwriting one checkpoint until killed
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        checkpoint.save_model(sys.argv[1], model, step=n)
        n += 1
        print(n, flush=True)
    """
)


def test_sigkill_while_saving_leaves_a_loadable_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    torch.manual_seed(0)
    reference = ConvAutoencoder(ModelConfig(latent_dim=512))
    for kill_after in (0.3, 0.55, 0.8):
        proc = subprocess.Popen([sys.executable, "-c", _SAVER, str(path)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        proc.stdout.readline()  # one save done
        time.sleep(kill_after)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        model = checkpoint.load_model(path)  # never half-written
        step = checkpoint.read_metadata(path)["step"]
        expected = reference.state_dict()["decoder_fc.bias"] + (step + 1)
        torch.testing.assert_close(model.state_dict()["decoder_fc.bias"], expected)


@pytest.fixture
def full_disk(tmp_path: Path):  # noqa: ANN201 - a folder on a 1 MiB tmpfs, mounted for the test
    """A folder on a tmpfs of 1 MiB (mounted by root; these machines run the tests as root)."""
    import os

    from tests.conftest import require

    where = tmp_path / "small"
    where.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)],
                                           capture_output=True).returncode != 0:
        require("a 1 MiB tmpfs could not be mounted (the full-disk tests need root and mount)")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=False)


def test_a_full_disk_is_said_and_leaves_the_old_file_and_no_temporary_one(full_disk: Path) -> None:
    from anomalymap_helpers.errors import DiskFullError

    storage.write_bytes(full_disk / "kept.bin", b"before")
    with pytest.raises(DiskFullError, match=r"the disk holding .* is full: the file kept.bin was not written"):
        storage.write_bytes(full_disk / "kept.bin", bytes(2 << 20))
    assert (full_disk / "kept.bin").read_bytes() == b"before" and sorted(p.name for p in full_disk.iterdir()) == ["kept.bin"]
    # A checkpoint (safetensors writes it) and a folder of files (predict's) are refused the same way.
    model = ConvAutoencoder(ModelConfig(latent_dim=64, image_size=64, channels=3))  # 4 MB of weights
    with pytest.raises(DiskFullError, match="model.safetensors was not written"):
        checkpoint.save_model(full_disk / "model.safetensors", model)
    with pytest.raises(DiskFullError, match="the folder out was not written"), storage.new_folder(full_disk / "out") as build:
        storage.write_bytes(build / "a.bin", bytes(600 << 10))
        storage.write_bytes(build / "b.bin", bytes(600 << 10))
    assert sorted(p.name for p in full_disk.iterdir()) == ["kept.bin"]


def test_predict_onto_a_full_disk_stops_with_one_line(folder_run_dir: Path, full_disk: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from anomalymap_helpers.commands.cli import main
    from anomalymap_helpers.runs.opened import Run
    from anomalymap_helpers.runs.predictions import write_pngs

    write_pngs(Run.open(folder_run_dir).splits["test"].images[:4], tmp_path / "new")
    storage.write_bytes(full_disk / "filler.bin", bytes(1000 << 10))  # the disk all but full
    assert main(["predict", "--results", str(folder_run_dir), str(tmp_path / "new"), "--out", str(full_disk / "p")]) == 1
    err = capsys.readouterr().err
    assert "error: the disk holding" in err and "is full" in err and "Traceback" not in err
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler.bin"]
