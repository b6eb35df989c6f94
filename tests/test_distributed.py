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

from anomalymap_helpers.commands.cli import main
from anomalymap_helpers.commands.run import run_series
from anomalymap_helpers.commands.train import train_run
from anomalymap_helpers.errors import ParameterError, TrainingError
from anomalymap_helpers.files import storage
from anomalymap_helpers.pipeline.models import ConvAutoencoder
from anomalymap_helpers.pipeline.training import checkpoint, distributed
from anomalymap_helpers.pipeline.training.device import PRECISION_ENV

from .conftest import SMALL

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


# A slice of MNIST small enough that one step of a batch of 128 takes all its training images,
# in two processes (33 and 32) and in one: the step's claims need no more images, and bf16 emulated
# where the CPU lacks it is slow.
STEP_SPLITS = {"max_train": 72, "max_test": 20}  # 65 training images, 7 for validation
ADAM_BETA1 = 0.9  # torch's default: after one step exp_avg = (1 - beta1) * gradient


@pytest.fixture(scope="module")
def step_splits(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path, data_dir: Path) -> Path:
    """A run folder holding only notebook 01's splits of :data:`STEP_SPLITS`."""
    out = tmp_path_factory.mktemp("step-splits")
    sources = {"mnist_dir": str(mnist_dir), "data_dir": str(data_dir)}
    run_series({**STEP_SPLITS, **sources}, out, notebooks=[ROOT / "notebooks" / "01_data.ipynb"], echo=lambda _: None)
    return out


def one_step_two_ways(splits: Path, tmp_path: Path, params: dict, env: dict | None = None) -> dict[str, dict]:
    """One optimizer step on a global batch of all the training images, in two processes (half each)
    and in one: for each, ``{"weights", "gradient", "loss"}``; the gradient is Adam's first moment
    after the step divided by ``1 - beta1``."""
    runs = {}
    for name in ("two", "one"):
        folder = splits_only(splits, tmp_path / name)
        if name == "two":
            proc = torchrun_train(folder, params, env)
            assert proc.returncode == 0, proc.stdout + proc.stderr
            assert re.search(r"training on 2 processes \(gloo, DistributedDataParallel, 3\d images each per step\)", proc.stdout)
            loss = storage.read_json(folder / "model.json")["final_train_loss"]
        else:
            loss = train_run(params, str(folder)).history[0]["train_loss"]
        state = load_file(folder / "training_state.safetensors")
        weights = load_file(folder / "model.safetensors")
        names = [k for k, _ in ConvAutoencoder().named_parameters()]  # the optimizer's order
        gradient = {k: state[f"optim.{i}.exp_avg"].double() / (1 - ADAM_BETA1) for i, k in enumerate(names)}
        runs[name] = {"weights": weights, "gradient": gradient, "loss": loss}
    a, b = runs["two"]["weights"], runs["one"]["weights"]
    assert a.keys() == b.keys()
    changed = max((a[k] - checkpoint_init(k)).abs().max().item() for k in a)
    assert changed > 1e-4, "the step changed nothing"
    return runs


def test_two_gloo_processes_take_the_same_step_as_one(step_splits: Path, tmp_path: Path, sources: dict) -> None:
    """A claim about the gradient reduction, so made in fp32 (amp=False) on every CPU."""
    params = {**sources, "epochs": 1, "batch_size": 128, "device": "cpu", "amp": False}
    runs = one_step_two_ways(step_splits, tmp_path, params)
    a, b = runs["two"]["weights"], runs["one"]["weights"]
    # Precision fp32: weights (~0.3) differ by the rounding of Adam's step (1e-3) from gradients
    # that differ by fp32's rounding of their sums, well under 1e-6.
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)
    # Precision fp32: the same per-image squared errors summed in another order (2**-24 each).
    assert runs["two"]["loss"] == pytest.approx(runs["one"]["loss"], rel=1e-6)


@pytest.mark.bf16_kernels
def test_two_processes_in_bf16_take_the_step_of_one_to_bf16s_rounding(
    step_splits: Path, tmp_path: Path, sources: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same in bf16 autocast (forced, so emulated where the CPU lacks it), as a bound, not a share.

    Each image's forward and backward pass is the same computation in both runs; what differs is
    how the per-image weight gradients are summed: over 65 images in one process, over 33 and 32
    in two and then in fp32 across them. Summing ``n`` terms in bf16 (unit roundoff ``u = 2**-8``)
    errs by at most ``(n - 1) u`` times the sum of their magnitudes, whatever the order (Higham,
    *Accuracy and Stability of Numerical Algorithms*, eq. 4.4); rounding each image's gradient and
    the sum once more adds ``u`` each, and a kernel's fp32 (or blocked bf16) sum of an image's
    products within ``2u`` times their magnitudes. CPUs with native bf16 sum the images in fp32;
    the fallback of CPUs without it adds them up one by one in bf16, so the bound allows that.
    The fp32 per-image gradients and magnitudes come from ``ReferenceAutoencoder`` in float64.
    Adam's first step moves a weight by ``lr * g / (|g| + eps)``: its steps in the two runs can
    differ only as far as gradients within the bound of each other allow."""
    monkeypatch.setenv(PRECISION_ENV, "bf16")
    params = {**sources, "epochs": 1, "batch_size": 128, "device": "cpu"}
    runs = one_step_two_ways(step_splits, tmp_path, params, {**ENV, PRECISION_ENV: "bf16"})
    assert storage.read_json(tmp_path / "two" / "model.json")["precision"] == "bf16"
    images = load_splits_images(step_splits, sources)
    n, half = len(images), -(-len(images) // 2)
    per_image, products = fp64_gradients(images)
    u = 2.0**-8
    differ = total = 0
    worst = 0.0
    for name, g_one in runs["one"]["gradient"].items():
        g_two = runs["two"]["gradient"][name]
        mags = per_image[name].abs().sum(0)
        bound = u * ((n + 1) * mags + 2 * products[name]) + u * ((half + 1) * mags + 2 * products[name])
        over = (g_two - g_one).abs() > bound
        assert not over.any(), (
            f"{name}: {int(over.sum())} gradients differ by more than bf16's rounding of the sums allows, "
            f"worst {float(((g_two - g_one).abs() / bound).max()):.2f} times the bound"
        )
        # The bound can fail: a doubled gradient, or one process's share left out, would break it.
        assert (g_one.abs() > bound).any() and (per_image[name][1::2].sum(0).abs() > bound).any(), name
        # Adam's steps of the two gradients, and how far gradients within the bound could move them.
        moved = (runs["two"]["weights"][name] - runs["one"]["weights"][name]).double().abs()
        allowed = adam_first_step(g_one + bound) - adam_first_step(g_one - bound)
        # Precision fp32: the weights (~0.3) round the step by 3e-8.
        assert (moved <= allowed + 1e-6).all(), name
        differ, total = differ + int((moved > 1e-6).sum()), total + moved.numel()
        worst = max(worst, float(((g_two - g_one).abs() / bound).max()))
    print(f"{differ / total:.2%} of the weights took another step than in one process; "
          f"the gradients differ by at most {worst:.3f} times the bound")
    # Precision: the same per-image squared errors summed in fp32 in another order; a kernel that
    # rounds an image's bf16 output otherwise in a batch of another size moves it by u.
    assert runs["two"]["loss"] == pytest.approx(runs["one"]["loss"], rel=u)


def adam_first_step(g: torch.Tensor, lr: float = 1e-3, eps: float = 1e-8) -> torch.Tensor:
    """The size of Adam's first step for gradient ``g`` (bias-corrected moments ``g`` and ``g**2``)."""
    return lr * g / (g.abs() + eps)


def load_splits_images(splits: Path, sources: dict) -> torch.Tensor:
    """The training images of the run folder ``splits``, in their order."""
    from anomalymap_helpers.files.paths import RunFiles
    from anomalymap_helpers.pipeline import data

    loaded, _ = data.load_splits(RunFiles.at(splits), data_dir=sources["data_dir"], mnist_dir=sources["mnist_dir"])
    return loaded["train"].images


def fp64_gradients(images: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """At the seed-0 initial weights, in float64 on the original design's layers: each image's gradient
    of the batch's mean squared error ``{name: (n, *shape)}``, and for each weight the sum over the
    batch of the magnitudes of the products its gradient adds up ``{name: shape}``."""
    from torch import nn
    from torch.nn import functional as F

    from anomalymap_helpers.pipeline.models import ReferenceAutoencoder

    torch.manual_seed(0)
    model = ConvAutoencoder()
    ref = ReferenceAutoencoder(model).double()
    names = {id(p): k for k, p in model.named_parameters()}
    x = images.double().contiguous()
    per_image = {k: [] for k in names.values()}
    for one in x:
        ref.zero_grad()
        ((ref(one[None]) - one[None]) ** 2).sum().div(x.numel()).backward()
        for p in model.parameters():
            per_image[names[id(p)]].append(p.grad.clone())
    seen: dict[nn.Module, list[torch.Tensor]] = {}

    def keep(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        seen[module] = [inputs[0].detach()]
        output.register_hook(lambda g: seen[module].append(g.detach()))

    layers = [m for m in ref.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
    hooks = [m.register_forward_hook(keep) for m in layers]
    ref.zero_grad()
    ((ref(x) - x) ** 2).sum().div(x.numel()).backward()
    for h in hooks:
        h.remove()
    products = {}
    for m, (inp, grad_out) in seen.items():
        w = m.weight.detach().clone().requires_grad_()
        if isinstance(m, nn.Conv2d):
            out = F.conv2d(inp.abs(), w, None, m.stride, m.padding)
        elif isinstance(m, nn.ConvTranspose2d):
            out = F.conv_transpose2d(inp.abs(), w, None, m.stride, m.padding)
        else:
            out = F.linear(inp.abs(), w)
        (products[names[id(m.weight)]],) = torch.autograd.grad((out * grad_out.abs()).sum(), w)
        products[names[id(m.bias)]] = grad_out.abs().sum([d for d in range(grad_out.dim()) if d != 1])
    return {k: torch.stack(v) for k, v in per_image.items()}, products


def checkpoint_init(name: str) -> torch.Tensor:
    """The seed-0 initial weights (what both runs started from)."""
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
        from anomalymap_helpers.pipeline.training import distributed
        from anomalymap_helpers.pipeline import training as train
        from anomalymap_helpers.commands.train import train_run

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
    # The smoke run's split and batch size (112 steps of 32, enough for 02's check), in two processes.
    run_series({**sources, "epochs": 1, "batch_size": SMALL["batch_size"], "nproc": 2}, results, notebooks=[nb], echo=lines.append)
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
