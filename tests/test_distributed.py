"""Training in two processes with torchrun (gloo on CPU): the same step as one process, resume, failures."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from anomalymap_helpers.errors import ParameterError, TrainingError
from anomalymap_helpers.files import storage
from anomalymap_helpers.pipeline import checkpoint, distributed
from anomalymap_helpers.pipeline.device import PRECISION_ENV
from anomalymap_helpers.tools.cli import main
from anomalymap_helpers.tools.runner import run_series
from anomalymap_helpers.tools.training import train_run
from tests.conftest import BF16_STEP

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
# Each process one thread, as `launch` sets them on a 2-core machine; plain progress lines.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "ANOMALYMAP_HEADLESS": "1"}


def splits_only(run_dir: Path, out: Path) -> Path:
    """A run folder holding only what notebook 01 wrote (the splits of ``run_dir``)."""
    out.mkdir(parents=True)
    for name in ("splits.json", "splits.safetensors"):
        shutil.copy(run_dir / name, out / name)
    return out


@pytest.fixture
def sources(mnist_dir: Path, data_dir: Path) -> dict[str, str]:
    return {"mnist_dir": str(mnist_dir), "data_dir": str(data_dir)}


def torchrun_train(results: Path, params: dict[str, object], env: dict | None = None, **kwargs: object) -> subprocess.CompletedProcess[str]:
    cmd = distributed.command(results, params, 2)
    return subprocess.run(cmd, cwd=ROOT, env=env or ENV, capture_output=True, text=True, timeout=300, **kwargs)


def one_step_two_ways(run_dir: Path, tmp_path: Path, params: dict, env: dict | None = None) -> tuple[dict, dict, float, float]:
    """One optimizer step on a global batch of all 9,000 training images, in two processes (4,500
    each) and in one: ``(weights two, weights one, loss two, loss one)``."""
    two = splits_only(run_dir, tmp_path / "two")
    proc = torchrun_train(two, params, env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "training on 2 processes (gloo, DistributedDataParallel, 4500 images each per step)" in proc.stdout
    one = splits_only(run_dir, tmp_path / "one")
    single = train_run(params, str(one))
    a, b = load_file(two / "model.safetensors"), load_file(one / "model.safetensors")
    assert a.keys() == b.keys()
    changed = max((a[k] - checkpoint_init(k)).abs().max().item() for k in a)
    assert changed > 1e-4, "the step changed nothing"
    return a, b, storage.read_json(two / "model.json")["final_train_loss"], single.history[0]["train_loss"]


def test_two_gloo_processes_take_the_same_step_as_one(run_dir: Path, tmp_path: Path, sources: dict) -> None:
    """A claim about the gradient reduction, so made in fp32 (amp=False) on every CPU."""
    params = {**sources, "epochs": 1, "batch_size": 16384, "device": "cpu", "amp": False}
    a, b, loss_two, loss_one = one_step_two_ways(run_dir, tmp_path, params)
    # Tolerance: float rounding of the gradient sums (measured 3e-8; weights are ~0.3, Adam's step 1e-3).
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)
    assert loss_two == pytest.approx(loss_one, rel=1e-6)


def test_two_processes_in_bf16_take_the_step_of_one_to_bf16s_rounding(
    run_dir: Path, tmp_path: Path, sources: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same in bf16 autocast (forced, so emulated where the CPU lacks it). A process's half batch
    and the whole one round their bf16 products differently, so the losses agree to bf16's
    tolerance, and so do the gradients: Adam's first step moves each weight by lr (1e-3) in the
    sign of its gradient, so a weight whose gradient bf16 rounds across zero moves the other way.
    Those are few; every other weight takes the same step to fp32's rounding of the update."""
    monkeypatch.setenv(PRECISION_ENV, "bf16")
    params = {**sources, "epochs": 1, "batch_size": 16384, "device": "cpu"}
    a, b, loss_two, loss_one = one_step_two_ways(run_dir, tmp_path, params, {**ENV, PRECISION_ENV: "bf16"})
    assert storage.read_json(tmp_path / "two" / "model.json")["precision"] == "bf16"
    diff = torch.cat([(a[k] - b[k]).abs().flatten() for k in a])
    assert float(diff.max()) <= 2 * 1e-3 + 1e-6  # at most one step the other way
    same = float((diff <= 1e-6).float().mean())
    assert same >= 0.99, f"only {same:.2%} of the weights took the same step"
    assert loss_two == pytest.approx(loss_one, rel=4 * BF16_STEP)


def checkpoint_init(name: str) -> torch.Tensor:
    """The seed-0 initial weights (what both runs started from)."""
    from anomalymap_helpers.pipeline.model import ConvAutoencoder

    torch.manual_seed(0)
    return dict(checkpoint._tensors(ConvAutoencoder()))[name]


def test_two_processes_interrupted_then_resumed(run_dir: Path, tmp_path: Path, sources: dict) -> None:
    results = splits_only(run_dir, tmp_path / "run")
    params = {**sources, "epochs": 40, "batch_size": 256, "device": "cpu"}
    proc = subprocess.Popen(
        distributed.command(results, params, 2), cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )
    deadline = time.monotonic() + 180
    while not (results / "model.json").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)  # Ctrl-C: torchrun stops both workers
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0, out
    done = checkpoint.read_metadata(results / "training_state.safetensors", "training state")["epoch"]
    assert 1 <= done < 40, out
    saved = storage.read_json(results / "model.json")
    assert saved["epochs_completed"] == done  # model, state and model.json are of one epoch
    checkpoint.load_model(results / "model.safetensors")

    resumed = torchrun_train(results, {**params, "epochs": done + 1, "resume": True})
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"resuming after epoch {done} from" in resumed.stdout
    history = checkpoint.read_metadata(results / "training_state.safetensors", "training state")["history"]
    assert [h["epoch"] for h in history] == list(range(1, done + 2))
    assert history[-1]["processes"] == 2
    assert history[-1]["train_loss"] < history[0]["train_loss"]  # the loss falls
    assert history[-1]["val_loss"] < history[0]["val_loss"]


def test_a_failing_rank_ends_the_other_and_is_named(run_dir: Path, tmp_path: Path, sources: dict) -> None:
    results = splits_only(run_dir, tmp_path / "run")
    script = tmp_path / "fail_on_rank_1.py"
    script.write_text(textwrap.dedent(f"""
        from anomalymap_helpers.pipeline import distributed, train
        from anomalymap_helpers.tools.training import train_run

        real = train.train

        def train_or_fail(*args, **kwargs):
            if distributed.world().rank == 1:
                raise OSError("no space left on device (made up by the test)")
            return real(*args, **kwargs)

        train.train = train_or_fail
        train_run({{"epochs": 1, "device": "cpu", **{sources!r}}}, {str(results)!r})
    """))
    t0 = time.monotonic()
    proc = subprocess.run(
        [*TORCHRUN, str(script)], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode != 0
    assert "rank 1 of 2 failed: OSError: no space left on device (made up by the test)" in proc.stderr
    assert time.monotonic() - t0 < 120, "rank 0 was left waiting for rank 1"
    assert not (results / "model.safetensors").exists()


def test_launch_names_the_error_of_a_failed_run(run_dir: Path, tmp_path: Path, sources: dict) -> None:
    results = splits_only(run_dir, tmp_path / "run")
    lines: list[str] = []
    with pytest.raises(TrainingError, match=r"rank [01] of 2 failed: ParameterError: batch_size=1 is smaller than the 2"):
        distributed.launch(results, {**sources, "batch_size": 1, "device": "cpu"}, 2, echo=lines.append, cwd=ROOT)
    assert lines[0].startswith("$ OMP_NUM_THREADS=1 ") and "torch.distributed.run --standalone" in lines[0]


def test_notebook_02_trains_in_two_processes(run_dir: Path, tmp_path: Path, sources: dict) -> None:
    results = splits_only(run_dir, tmp_path / "run")
    lines: list[str] = []
    nb = ROOT / "notebooks" / "02_training.ipynb"
    run_series({**sources, "epochs": 1, "batch_size": 64, "nproc": 2}, results, notebooks=[nb], echo=lines.append)
    text = "\n".join(lines)
    assert "02 | training on 2 processes (gloo" in text
    assert re.search(r"02 \| epoch 1/1 .* images/s \([\d,]+ per process\)", text), text
    assert storage.read_json(results / "environment.json")["steps"]["02_training"]["processes"] == 2
    assert (results / "training_loss_plot.png").exists()


def test_too_many_processes_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    have = distributed.cpu_count()
    with pytest.raises(ParameterError, match=f"nproc={have + 1}: this machine has {have} CPU core"):
        distributed.check_nproc(have + 1, "cpu")
    with pytest.raises(ParameterError, match="nproc=0: use a whole number of at least 1"):
        distributed.check_nproc(0, "cpu")
    assert main(["train", "-p", "nproc", "2", "--results", str(tmp_path / "none")]) == 2
    assert "the train command takes no nproc: start it with `torchrun" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()
