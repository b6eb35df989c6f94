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
