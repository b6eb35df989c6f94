"""The training loop: it learns, it is deterministic, it resumes, it stops on NaN."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from anomalymap_helpers.errors import ParameterError, TrainingError
from anomalymap_helpers.files.paths import RunFiles
from anomalymap_helpers.pipeline import training as train
from anomalymap_helpers.pipeline.models import ConvAutoencoder
from anomalymap_helpers.pipeline.training import checkpoint
from anomalymap_helpers.pipeline.training.device import resolve_device, resolve_precision
from anomalymap_helpers.pipeline.training.resume import _Interrupts

# Marked `precision`: run again with the other CPU precision in `make test` (fp32 on a bf16 CPU,
# emulated bf16 elsewhere); the slow end-to-end ones run once.
PRECISION = pytest.mark.precision

CPU = dict(device="cpu", batch_size=64)


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


@PRECISION
def test_training_lowers_the_loss(small_normals) -> None:
    x, v = small_normals
    cfg = train.TrainConfig(epochs=3, **CPU)
    before = train.mean_loss(ConvAutoencoder(), v, resolve_precision(torch.device("cpu"), False))
    result = train.train(x, v, cfg, progress=False)
    losses = [h["val_loss"] for h in result.history]
    assert len(losses) == 3
    assert losses[-1] < losses[0] < before


@PRECISION
def test_same_seed_same_weights(small_normals) -> None:
    x, v = small_normals
    x, v = x[:256], v[:64]  # 4 steps an epoch: the claim needs no more, and bf16 emulated is slow
    cfg = train.TrainConfig(epochs=1, **CPU)
    a = train.train(x, v, cfg, progress=False)
    b = train.train(x, v, cfg, progress=False)
    c = train.train(x, v, train.TrainConfig(epochs=1, seed=1, **CPU), progress=False)
    wa, wb, wc = _weights(a.model), _weights(b.model), _weights(c.model)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


@PRECISION
def test_resume_equals_an_uninterrupted_run(small_normals, tmp_path: Path) -> None:
    x, v = small_normals
    x, v = x[:256], v[:64]  # 4 steps an epoch: the claim needs no more, and bf16 emulated is slow
    whole = train.train(x, v, train.TrainConfig(epochs=2, **CPU), files=RunFiles(tmp_path / "a"), progress=False)
    part = RunFiles(tmp_path / "b")
    train.train(x, v, train.TrainConfig(epochs=1, **CPU), files=part, progress=False)
    resumed = train.train(x, v, train.TrainConfig(epochs=2, **CPU), files=part, resume=True, progress=False)
    wa, wb = _weights(whole.model), _weights(resumed.model)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    assert resumed.history[1]["val_loss"] == pytest.approx(whole.history[1]["val_loss"], abs=0.0)


@PRECISION
def test_nan_loss_stops_with_epoch_and_step_and_keeps_the_checkpoint(small_normals, tmp_path: Path) -> None:
    x, v = small_normals
    x, v = x[:256], v[:64]  # 4 steps an epoch: the claim needs no more, and bf16 emulated is slow
    x = x.clone()
    files = RunFiles(tmp_path)
    # On the CPU the training tensor is x itself, so poisoning x after epoch 1 poisons epoch 2.
    assert train.to_device(x, torch.device("cpu")).data_ptr() == x.data_ptr()
    kept: dict[str, torch.Tensor] = {}

    def poison(record: dict) -> None:
        kept.update(_weights(checkpoint.load_model(files.model)))
        x.fill_(float("nan"))

    with pytest.raises(TrainingError, match=r"epoch 2, step 1.*checkpoint of epoch 1"):
        train.train(x, v, train.TrainConfig(epochs=2, **CPU), files=files, progress=False, on_epoch=poison)
    after = _weights(checkpoint.load_model(files.model))
    assert kept and all(torch.equal(kept[k], after[k]) for k in kept)


def test_resume_refuses_other_settings_and_names_them(small_normals, tmp_path: Path) -> None:
    x, v = small_normals
    x, v = x[:256], v[:64]  # 4 steps an epoch: the claim needs no more, and bf16 emulated is slow
    files = RunFiles(tmp_path)
    train.train(x, v, train.TrainConfig(epochs=2, **CPU), files=files, progress=False)
    before = files.model.stat().st_mtime_ns
    cases = [
        (dict(epochs=3, lr=0.01), r"lr: checkpoint 0\.001, now 0\.01"),
        (dict(epochs=3, latent_dim=32), r"latent_dim: checkpoint 64, now 32"),
        (dict(epochs=3, batch_size=32), r"batch_size: checkpoint 64, now 32"),
        (dict(epochs=1), r"epochs: the checkpoint has 2 done, now 1 asked"),
    ]
    for settings, message in cases:
        cfg = train.TrainConfig(**{**CPU, **settings})
        with pytest.raises(ParameterError, match=message):
            train.train(x, v, cfg, files=files, resume=True, progress=False)
    with pytest.raises(ParameterError, match="the training images differ"):
        train.train(x[:-64], v, train.TrainConfig(epochs=3, **CPU), files=files, resume=True, progress=False)
    assert files.model.stat().st_mtime_ns == before


def test_resume_with_more_epochs_is_recorded(small_normals, tmp_path: Path) -> None:
    x, v = small_normals
    x, v = x[:256], v[:64]  # 4 steps an epoch: the claim needs no more, and bf16 emulated is slow
    files = RunFiles(tmp_path)
    train.train(x, v, train.TrainConfig(epochs=1, **CPU), files=files, progress=False)
    result = train.train(x, v, train.TrainConfig(epochs=2, **CPU), files=files, resume=True, progress=False)
    assert [h["epoch"] for h in result.history] == [1, 2]
    saved = json.loads(files.model_config.read_text())
    assert saved["train"]["epochs"] == 2 and saved["train"]["resumed_after_epoch"] == 1
    assert saved["train"]["train_images_sha256"] == train.fingerprint(x)


def test_the_runner_refuses_a_mixed_resume_before_notebook_01(small_normals, tmp_path: Path) -> None:
    from anomalymap_helpers.commands.cli import main

    x, v = small_normals
    files = RunFiles(tmp_path)
    train.train(x, v, train.TrainConfig(epochs=1, **CPU), files=files, progress=False)
    before = sorted((p.name, p.stat().st_mtime_ns) for p in tmp_path.iterdir())
    args = ["run", "--results", str(tmp_path), "-p", "resume", "true", "-p", "device", "cpu", "-p", "batch_size", "64"]
    assert main([*args, "-p", "lr", "0.01"]) == 2
    assert sorted((p.name, p.stat().st_mtime_ns) for p in tmp_path.iterdir()) == before


def test_interrupt_between_epochs_names_the_saved_checkpoint(
    small_normals, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A signal that lands after epoch 1's checkpoint is written, before epoch 2 begins,
    still points at that checkpoint (on_epoch runs in exactly that window)."""
    x, v = small_normals
    files = RunFiles(tmp_path)

    def interrupt(record: dict) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train.train(x, v, train.TrainConfig(epochs=3, **CPU), files=files, progress=False, on_epoch=interrupt)
    err = capsys.readouterr().err
    assert "after 1 complete epoch(s); the checkpoint of epoch 1" in err and "pass resume=True" in err
    assert checkpoint.read_metadata(files.training_state)["epoch"] == 1


@pytest.mark.parametrize(
    ("field", "value"),
    [("epochs", -1), ("batch_size", -1), ("batch_size", 1.5), ("lr", 0.0), ("latent_dim", 2.5), ("epochs", True),
     ("lr", float("inf")), ("model", "gan"), ("augment", "blur")],
)
def test_non_positive_settings_are_named(field: str, value: object) -> None:
    with pytest.raises(ParameterError, match=field):
        train.TrainConfig(**{field: value})


def test_train_config_defaults_are_notebook_02s_and_resolve_in_one_place() -> None:
    """TrainConfig() is notebook 02's parameters' defaults; resolved() sets "by data set" as schedule_for,
    resolve_model and for_dataset say, and the runner's resume check and 02's config go through it."""
    from dataclasses import fields

    from anomalymap_helpers import parameters
    from anomalymap_helpers.commands.train import config_for
    from anomalymap_helpers.pipeline.models import augment

    defaults = train.TrainConfig()
    for f in fields(train.TrainConfig):
        if f.name in parameters.BY_NAME:
            assert getattr(defaults, f.name) == parameters.BY_NAME[f.name].default, f.name
    assert defaults.epochs == defaults.batch_size == 0 and defaults.model == "auto"
    folder = defaults.resolved(180, "folder")
    assert (folder.epochs, folder.batch_size) == train.schedule_for(180, 0, 0, "restore") and folder.model == "restore"
    aug = train.TrainConfig(augment="auto")
    assert aug.resolved(180, "folder").augment == augment.AUGMENTATIONS and aug.resolved(180, "mnist").augment == ()
    assert defaults.resolved(None, "mnist").epochs == 0  # the split not made yet: left by data set
    values = parameters.validate({}, [p.name for p in parameters.for_notebook("02")])
    assert config_for(values, 180, "folder") == folder


def test_cuda_where_there_is_none_says_how_to_run_on_cpu() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ParameterError, match="device='cpu'"):
        resolve_device("cuda")


_CHILD = textwrap.dedent(
    """
    import sys, torch
    from anomalymap_helpers.pipeline import training as train
    from anomalymap_helpers.files.paths import RunFiles
    torch.manual_seed(5)
    x = torch.rand(3000, 1, 28, 28); v = torch.rand(200, 1, 28, 28)
    cfg = train.TrainConfig(epochs=int(sys.argv[2]), batch_size=64, device="cpu")
    train.train(x, v, cfg, files=RunFiles(__import__("pathlib").Path(sys.argv[1])), resume=sys.argv[3] == "1", progress=False)
    """
)


def _child(folder: Path, epochs: int, resume: bool) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(folder), str(epochs), "1" if resume else "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_sigterm_keeps_the_last_epoch_and_resume_matches(tmp_path: Path) -> None:
    stopped = RunFiles(tmp_path / "stopped")
    proc = _child(stopped.root, 4, False)
    deadline = time.time() + 120
    while not stopped.training_state.exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0, "the child finished before SIGTERM: the test proves nothing"
    assert "pass resume=True to continue" in err
    epoch = checkpoint.read_metadata(stopped.training_state)["epoch"]
    assert 1 <= epoch < 4
    assert _child(stopped.root, 4, True).wait(timeout=300) == 0
    whole = RunFiles(tmp_path / "whole")
    assert _child(whole.root, 4, False).wait(timeout=300) == 0
    a, b = checkpoint.load_model(stopped.model), checkpoint.load_model(whole.model)
    wa, wb = _weights(a), _weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


_FAULTS = """
import resource, sys, torch
from anomalymap_helpers.pipeline.training import device
from anomalymap_helpers.pipeline import training as train
from anomalymap_helpers.pipeline.models import ConvAutoencoder

if sys.argv[1] == "retain":
    assert device.retain_freed_memory()
else:  # glibc's initial threshold, pinned: pinning stops glibc from raising it as blocks are freed
    import ctypes
    assert ctypes.CDLL(None).mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD
torch.manual_seed(0)
model = ConvAutoencoder()
optimizer = train.new_optimizer(model, 1e-3)
scaler = torch.amp.GradScaler("cpu", enabled=False)
fp32 = device.Precision("fp32", "cpu")
objective = train.objective_for("ae", model, fp32)
x = torch.rand(256, 1, 28, 28).contiguous(memory_format=torch.channels_last)
def step():
    train.training_step(objective, optimizer, scaler, {"images": x})
for _ in range(5):  # warm up: first allocations always fault their pages in
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_retained_memory_stops_page_faults_on_every_step() -> None:
    """At its initial mmap threshold glibc unmaps the step's freed activations (up to 25 MB each in
    fp32), so the next step faults thousands of pages in again; with retain_freed_memory they are
    reused. Left alone, glibc raises that threshold as large blocks are freed, at moments that
    depend on the allocation history (the count then varies by orders of magnitude between runs),
    so the baseline pins it."""

    def faults(mode: str) -> float:
        out = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, check=True)
        return float(out.stdout)

    default = faults("pinned")
    assert default > 2000
    assert faults("retain") < default / 5  # the heap still grows now and then


def test_a_signal_during_a_checkpoint_waits_for_its_last_file() -> None:
    interrupts = _Interrupts()
    written = []
    with pytest.raises(KeyboardInterrupt, match="signal 15"), interrupts.held():
        written.append("training_state")
        interrupts.handler(signal.SIGTERM, None)  # lands between two files: held back
        written.append("model")
    assert written == ["training_state", "model"]
    with pytest.raises(KeyboardInterrupt):
        interrupts.handler(signal.SIGTERM, None)  # outside a checkpoint: at once


def test_cosine_schedule_warms_up_then_decays_to_zero() -> None:
    config = train.TrainConfig(lr=0.004, lr_schedule="cosine")
    total = 200  # 10 warm-up steps (5 %)
    rates = [train.learning_rate(config, step, total) for step in range(total)]
    assert rates[:10] == pytest.approx([0.004 * (i + 1) / 10 for i in range(10)])
    assert rates[10] == pytest.approx(0.004)
    assert rates[10 + 95] == pytest.approx(0.002)  # half-way through the decay: half the peak
    assert all(a >= b for a, b in zip(rates[10:], rates[11:], strict=False)) and rates[-1] < 1e-6
    assert train.learning_rate(train.TrainConfig(lr=0.004), 123, total) == 0.004
    with pytest.raises(ParameterError, match="lr_schedule='linear': use one of"):
        train.TrainConfig(lr_schedule="linear")


@PRECISION
def test_cosine_schedule_resumes_only_over_its_planned_epochs(small_normals, tmp_path: Path) -> None:
    x, v = small_normals
    x, v = x[:256], v[:64]
    files = RunFiles(tmp_path / "run")
    cfg = dict(CPU, lr_schedule="cosine")
    whole = train.train(x, v, train.TrainConfig(epochs=2, **cfg), progress=False)
    with pytest.raises(KeyboardInterrupt):
        train.train(x, v, train.TrainConfig(epochs=2, **cfg), files=files, progress=False,
                    on_epoch=lambda record: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(ParameterError, match="schedule was planned over 2 epochs, now 3 asked"):
        train.check_resume(files, train.TrainConfig(epochs=3, **cfg))
    with pytest.raises(ParameterError, match="lr_schedule: checkpoint 'cosine', now 'constant'"):
        train.check_resume(files, train.TrainConfig(epochs=2, **CPU))
    resumed = train.train(x, v, train.TrainConfig(epochs=2, **cfg), files=files, resume=True, progress=False)
    for name, w in _weights(whole.model).items():
        torch.testing.assert_close(_weights(resumed.model)[name], w, msg=name)


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (48_646, (2, 64)),  # MNIST digits 0-8: 2 epochs of 64
        (5_400, (4, 64)),  # one Fashion-MNIST class: 20,000 images seen at most
        (2_000, (10, 64)),
        (270, (75, 16)),  # the example folder: about 16 steps an epoch
        (160, (125, 16)),
    ],
)
def test_schedule_by_data_set(n: int, expected: tuple[int, int]) -> None:
    assert train.schedule_for(n) == expected
    assert train.schedule_for(n, 3, 100) == (3, 100)  # given values are kept


def test_resume_with_the_schedule_by_data_set_is_not_refused_early(small_normals, tmp_path: Path) -> None:
    """epochs=0 and batch_size=0 (the defaults) stand for the checkpoint's values in the runner's early check."""
    from anomalymap_helpers.commands.run import check_parameters, series

    x, v = small_normals
    train.train(x, v, train.TrainConfig(epochs=1, **CPU), files=RunFiles(tmp_path), progress=False)
    values = check_parameters({"results_dir": str(tmp_path), "resume": True, "device": "cpu"}, series())
    assert values["epochs"] == 0 and values["batch_size"] == 0
    with pytest.raises(ParameterError, match="lr: checkpoint 0.001, now 0.01"):
        check_parameters({"results_dir": str(tmp_path), "resume": True, "device": "cpu", "lr": 0.01}, series())
