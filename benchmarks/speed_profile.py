"""Where a CPU training step's time goes: the profiler part of the speed benchmark."""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

# Operators that run the model's convolutions and matrix products (oneDNN on CPU).
# ``_convolution`` holds the transposed convolution, which has no operator of its own.
_GEMM_OPS = frozenset(
    {"aten::mkldnn_convolution", "aten::_convolution", "aten::convolution_backward", "aten::mm", "aten::addmm"}
)
_POOL_OPS = frozenset({"aten::max_pool2d_with_indices", "aten::max_pool2d_with_indices_backward"})


def step_breakdown(
    images: torch.Tensor, precision: Any, config: Any, steps: int = 20, batch_size: int = 256
) -> dict[str, float]:
    """Where a CPU training step's time goes: all of it, the convolutions and matrix products, the pooling.

    Times three rounds of ``steps`` steps of
    :func:`~anomalymap_helpers.pipeline.training.training_step` on a fresh model of ``config``
    (a :class:`~anomalymap_helpers.pipeline.models.ModelConfig`; the median round counts),
    then profiles one more round. The convolutions and matrix products are work
    that no rewrite of the other operators removes, so
    ``batch_size`` over their time bounds the training speed from above, for these
    layers in this precision. Pooling is counted with the zero-fill of its backward.
    """
    from torch.profiler import ProfilerActivity, profile

    from anomalymap_helpers.pipeline import training as train
    from anomalymap_helpers.pipeline.models import ConvAutoencoder

    model = ConvAutoencoder(config)
    optimizer = train.new_optimizer(model, 1e-3)
    scaler = torch.amp.GradScaler("cpu", enabled=precision.use_grad_scaler)
    batch = train.to_device(images[:batch_size], torch.device("cpu"))

    objective = train.objective_for("ae", model, precision)

    def run(n: int) -> None:
        for _ in range(n):
            train.training_step(objective, optimizer, scaler, {"images": batch})

    run(5)  # warm-up: oneDNN builds its kernels on the first calls
    rounds = []
    for _ in range(3):
        t0 = time.perf_counter()
        run(steps)
        rounds.append((time.perf_counter() - t0) / steps * 1000)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run(steps)
    events = prof.key_averages()
    gemm_ms = sum(e.self_cpu_time_total for e in events if e.key in _GEMM_OPS) / steps / 1000
    pool_ms = sum(e.cpu_time_total for e in events if e.key in _POOL_OPS) / steps / 1000
    return {
        "batch_size": len(batch),
        "step_ms": statistics.median(rounds),
        "gemm_ms": gemm_ms,
        "pool_ms": pool_ms,
        "gemm_bound_images_per_s": len(batch) / gemm_ms * 1000,
    }
