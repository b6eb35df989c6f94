"""The CUDA paths: fp16 autocast with a GradScaler, scoring in fp16 against fp32, the ONNX detector
with the CUDA provider, and nccl with one GPU. Marked ``cuda``: ``benchmarks/gpu_check.py`` runs
them on a machine with a GPU (with ``ANOMALYMAP_REQUIRE_CUDA=1``, so none can skip there); on a
machine without one they skip and say why."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from anomalymap_helpers.pipeline import scoring
from anomalymap_helpers.pipeline import training as train
from anomalymap_helpers.pipeline.models import ConvAutoencoder, ModelConfig
from anomalymap_helpers.pipeline.training.device import Precision

pytestmark = pytest.mark.cuda
ROOT = Path(__file__).resolve().parents[1]
FP16_STEP = 2.0**-11  # fp16's unit roundoff (11 significant bits)


@pytest.fixture(scope="session")  # session: decided before the session fixtures a test also takes
def cuda() -> torch.device:
    if not torch.cuda.is_available():
        if os.environ.get("ANOMALYMAP_REQUIRE_CUDA") == "1":
            pytest.fail("ANOMALYMAP_REQUIRE_CUDA=1 and torch sees no CUDA GPU", pytrace=False)
        pytest.skip("no CUDA GPU here: benchmarks/gpu_check.py runs these on a machine with one")
    return torch.device("cuda")


def test_fp16_training_uses_a_grad_scaler_and_learns(cuda: torch.device, small_normals) -> None:
    x, v = small_normals
    cfg = dict(device="cuda", batch_size=128, epochs=2)
    mixed = train.train(x, v, train.TrainConfig(**cfg), progress=False)
    assert mixed.precision == Precision("fp16", "cuda") and mixed.precision.use_grad_scaler
    fp32 = train.train(x, v, train.TrainConfig(**cfg, amp=False), progress=False)
    losses = [h["val_loss"] for h in mixed.history]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    # Same seed, same batches: the first epoch's loss in fp16 is fp32's to a few hundred fp16 steps
    # (a whole epoch of Adam steps on fp16-rounded gradients lies between them).
    assert mixed.history[0]["train_loss"] == pytest.approx(fp32.history[0]["train_loss"], rel=200 * FP16_STEP)


def test_scores_in_fp16_agree_with_fp32(cuda: torch.device, small_normals) -> None:
    x, v = small_normals
    torch.manual_seed(0)
    model = ConvAutoencoder(ModelConfig(latent_dim=16)).to(cuda, memory_format=torch.channels_last).eval()
    fp16, fp32 = Precision("fp16", "cuda"), Precision("fp32", "cuda")
    a, b = scoring.score(model, v, precision=fp16), scoring.score(model, v, precision=fp32)
    torch.testing.assert_close(a.reconstructions, b.reconstructions, rtol=8 * FP16_STEP, atol=8 * FP16_STEP)
    torch.testing.assert_close(a.scores, b.scores, rtol=16 * FP16_STEP, atol=1e-6)
    pa = scoring.PatchKnn(model, x[:500], precision=fp16).scores(v)
    pb = scoring.PatchKnn(model, x[:500], precision=fp32).scores(v)
    torch.testing.assert_close(pa, pb, rtol=16 * FP16_STEP, atol=16 * FP16_STEP * float(pb.max()))


def test_the_onnx_detector_on_the_cuda_provider(cuda: torch.device, run_dir: Path, tmp_path: Path) -> None:
    import numpy as np
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip(f"onnxruntime has no CUDA provider here ({ort.get_available_providers()}): pip install onnxruntime-gpu")
    from anomalymap_helpers.commands.cli import main

    out = tmp_path / "detector.onnx"
    assert main(["export", "--results", str(run_dir), "--out", str(out)]) == 0
    images = (np.random.default_rng(0).random((8, 1, 28, 28)) * 255).astype(np.uint8)
    cpu = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    gpu = ort.InferenceSession(str(out), providers=["CUDAExecutionProvider"])
    name = cpu.get_inputs()[0].name
    for x, y in zip(cpu.run(None, {name: images}), gpu.run(None, {name: images}), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)


NCCL_STEP = """
import os, torch, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from anomalymap_helpers.pipeline.models import ConvAutoencoder
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29533")
dist.init_process_group("nccl", rank=0, world_size=1, device_id=torch.device("cuda", 0))
x = torch.rand(64, 1, 28, 28, device="cuda")
steps = []
for wrap in (True, False):
    torch.manual_seed(0)
    model = ConvAutoencoder().cuda()
    net = DistributedDataParallel(model, device_ids=[0]) if wrap else model
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    torch.nn.functional.mse_loss(net(x), x).backward()
    opt.step()
    steps.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
print("largest difference", float((steps[0] - steps[1]).abs().max()))
dist.destroy_process_group()
"""


def test_nccl_with_one_gpu(cuda: torch.device) -> None:
    """DistributedDataParallel over an nccl group of one GPU takes a plain step (the all-reduce of
    one process is the identity): the nccl path, where a second GPU is not to be had."""
    proc = subprocess.run([sys.executable, "-c", NCCL_STEP], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert float(proc.stdout.split("largest difference")[1]) <= 1e-6, proc.stdout
