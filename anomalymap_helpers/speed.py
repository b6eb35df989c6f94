"""Speed benchmark: the project's training and scoring paths against the reference loop.

``python -m anomalymap_helpers speed [--epochs N] [--out DIR]`` trains the same
model on the same data twice, each in a fresh process so that peak memory is
its own, the two taking turns epoch by epoch so that both see the same machine
(its speed drifts by 20% over minutes here):

- the *reference loop*, written here as the original design had it: fp32, a
  DataLoader over a TensorDataset, batch 256, shuffled, Adam 1e-3;
- the project's path, :func:`anomalymap_helpers.train.train` with the
  notebooks' defaults (bf16 + channels_last where the CPU supports bf16).

It reports training images/s (median over epochs), peak resident memory, the
validation loss and digit-9 ROC-AUC after the same epochs, the scoring
throughput of the path notebooks 03 and 04 use, and the t-SNE time of notebook
05 at its default cap. It prints a table and writes ``speed.json``.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing as mp
import resource
import statistics
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import torch

from . import storage
from .errors import AnomalyMapError
from .paths import resolve

DEFAULT_OUT = "results/speed"


def _data(data_dir: str, mnist_dir: str | None, max_train: int | None) -> dict[str, Any]:
    from . import data

    mnist = data.load_mnist(data_dir, mnist_dir)
    config = data.SplitConfig(max_train=max_train)
    return data.take(mnist, data.make_splits(mnist.train_labels, mnist.test_labels, config), config.anomaly_classes)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _roc_auc(scores: torch.Tensor, is_anomaly: torch.Tensor) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(is_anomaly.numpy(), scores.numpy()))


def _wait_for_turn(conn: Connection) -> None:
    if conn.recv() != "go":
        raise SystemExit(0)


def reference_worker(
    conn: Connection,
    epochs: int,
    seed: int,
    data_dir: str,
    mnist_dir: str | None,
    max_train: int | None,
    retain_memory: bool = True,
) -> dict:
    """The original design's loop: fp32, DataLoader over a TensorDataset, batch 256, Adam 1e-3.

    With ``retain_memory`` it runs under the same allocator setting as the project's
    path (:func:`~anomalymap_helpers.device.retain_freed_memory`). Under glibc's
    defaults its speed depends on the process's allocation history, which decides
    how many freed blocks are unmapped and faulted in again each step: 1,500 to
    2,100 images/s between runs here (``speed --reference-glibc-defaults``).
    """
    from torch.utils.data import DataLoader, TensorDataset

    from .device import retain_freed_memory
    from .model import ConvAutoencoder, ReferenceAutoencoder

    if retain_memory:
        retain_freed_memory()
    d = _data(data_dir, mnist_dir, max_train)
    torch.manual_seed(seed)
    model = ReferenceAutoencoder(ConvAutoencoder())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(TensorDataset(d["train"].images), batch_size=256, shuffle=True)
    criterion = torch.nn.MSELoss()
    rates = []
    for _ in range(epochs):
        _wait_for_turn(conn)
        model.train()
        t0 = time.perf_counter()
        for (batch,) in loader:
            optimizer.zero_grad()
            loss = criterion(model(batch), batch)
            loss.backward()
            optimizer.step()
        rates.append(len(d["train"].images) / (time.perf_counter() - t0))
        conn.send(("epoch", rates[-1]))
    _wait_for_turn(conn)
    model.eval()
    with torch.no_grad():
        val = torch.cat([model(b) for b in d["val"].images.split(1024)])
        val_loss = float(((val - d["val"].images) ** 2).mean())
        recon = torch.cat([model(b) for b in d["test"].images.split(1024)])
    scores = ((recon - d["test"].images) ** 2).flatten(1).mean(1)
    return {
        "train_images_per_s": statistics.median(rates),
        "epoch_images_per_s": rates,
        "val_loss": val_loss,
        "roc_auc": _roc_auc(scores, d["test"].is_anomaly),
        "peak_rss_mb": _peak_rss_mb(),
        "precision": "fp32",
        "retain_memory": retain_memory,
    }


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
    :func:`~anomalymap_helpers.train.training_step` on a fresh model of ``config``
    (a :class:`~anomalymap_helpers.model.ModelConfig`; the median round counts),
    then profiles one more round. The convolutions and matrix products are work
    that no rewrite of the other operators removes, so
    ``batch_size`` over their time bounds the training speed from above, for these
    layers in this precision. Pooling is counted with the zero-fill of its backward.
    """
    from torch.profiler import ProfilerActivity, profile

    from . import train
    from .model import ConvAutoencoder

    model = ConvAutoencoder(config)
    optimizer = train.new_optimizer(model, 1e-3)
    scaler = torch.amp.GradScaler("cpu", enabled=precision.use_grad_scaler)
    batch = train.to_device(images[:batch_size], torch.device("cpu"))

    def run(n: int) -> None:
        for _ in range(n):
            train.training_step(model, optimizer, scaler, batch, precision)

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


def project_worker(
    conn: Connection, epochs: int, seed: int, data_dir: str, mnist_dir: str | None, max_train: int | None
) -> dict:
    """The project's path: train.train, then the scoring and t-SNE the notebooks use."""
    from . import data, latent, scoring, train

    def next_epoch(record: dict[str, float]) -> None:
        conn.send(("epoch", record["images_per_s"]))
        if record["epoch"] < epochs:
            _wait_for_turn(conn)

    d = _data(data_dir, mnist_dir, max_train)
    _wait_for_turn(conn)
    with contextlib.redirect_stdout(io.StringIO()):  # the parent prints both paths' epochs
        result = train.train(
            d["train"].images,
            d["val"].images,
            train.TrainConfig(epochs=epochs, seed=seed),
            progress=False,
            on_epoch=next_epoch,
        )
    _wait_for_turn(conn)
    model = result.model
    scoring.score(model, d["test"].images[:2048])  # warm-up
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        scored = scoring.score(model, d["test"].images)
        times.append(time.perf_counter() - t0)
    is_anomaly = d["test"].is_anomaly
    pick = torch.cat([data.sample_indices(~is_anomaly, 500, seed), data.sample_indices(is_anomaly, 500, seed)])
    t0 = time.perf_counter()
    latent.tsne(latent.encode(model, d["test"].images[pick]), seed=seed)
    tsne_s = time.perf_counter() - t0
    rates = [h["images_per_s"] for h in result.history]
    peak_rss_mb = _peak_rss_mb()  # before the profiler's own memory
    cpu = result.device.type == "cpu"
    breakdown = step_breakdown(d["train"].images, result.precision, model.config) if cpu else None
    return {
        "train_images_per_s": statistics.median(rates),
        "epoch_images_per_s": rates,
        "val_loss": result.history[-1]["val_loss"],
        "roc_auc": _roc_auc(scored.scores, is_anomaly),
        "peak_rss_mb": peak_rss_mb,
        "precision": result.precision.name,
        "device": str(result.device),
        "scoring_images_per_s": len(d["test"].images) / statistics.median(times),
        "tsne_seconds": tsne_s,
        "tsne_points": len(pick),
        "step_breakdown": breakdown,
    }


def _child(conn: Connection, fn: Callable[..., dict], args: tuple) -> None:
    try:
        message: tuple[str, Any] = ("result", fn(conn, *args))
    except EOFError:  # the parent stopped the benchmark
        return
    except AnomalyMapError as e:  # a bad setting or missing data: the message says what to do
        message = ("error", e)
    except BaseException:  # the parent reports it, with the child's traceback
        message = ("error", RuntimeError(traceback.format_exc()))
    with contextlib.suppress(OSError):  # the parent is gone
        conn.send(message)
    conn.close()


class _Worker:
    """One benchmark path in a fresh process (its own peak memory), run a turn at a time."""

    def __init__(self, name: str, fn: Callable[..., dict], args: tuple) -> None:
        ctx = mp.get_context("spawn")
        self.name = name
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_child, args=(child, fn, args), daemon=True)
        self.process.start()
        child.close()

    def turn(self) -> Any:
        """Let the worker run its next part; return what it sends back."""
        with contextlib.suppress(OSError):  # it stopped early; its error, if it sent one, is waiting
            self.conn.send("go")
        return self.receive()

    def receive(self) -> Any:
        try:
            kind, value = self.conn.recv()
        except EOFError:
            self.process.join(timeout=5)
            raise RuntimeError(
                f"the {self.name} process ended without a result (exit code {self.process.exitcode})"
            ) from None
        if kind == "error":
            raise value
        return value

    def close(self) -> None:
        self.conn.close()
        self.process.join(timeout=30)
        if self.process.is_alive():
            self.process.terminate()


def run_speed(
    epochs: int = 5,
    out: str = DEFAULT_OUT,
    *,
    seed: int = 0,
    data_dir: str = "data",
    mnist_dir: str | None = None,
    max_train: int | None = None,
    reference_retains_memory: bool = True,
) -> dict:
    """Run both paths an epoch at a time, in turn, print the table, write ``speed.json``.

    The machine's speed drifts over minutes, so the two paths take turns: epoch 1 of
    the reference, epoch 1 of the project, then epoch 2 with the project first, and
    so on. Each runs in its own process and waits while the other runs. Both keep
    freed memory for reuse unless ``reference_retains_memory`` is False, which runs
    the reference under glibc's defaults (see :func:`reference_worker`).
    """
    from . import data

    data.prepare_mnist(data_dir, mnist_dir)  # once, here: two workers unpacking at once would race
    args = (epochs, seed, str(resolve(data_dir)), mnist_dir, max_train)
    ref = _Worker("reference loop", reference_worker, (*args, reference_retains_memory))
    proj = _Worker("project path", project_worker, args)
    try:
        for epoch in range(epochs):
            rates = {}
            for worker in (ref, proj) if epoch % 2 == 0 else (proj, ref):
                rates[worker.name] = worker.turn()
            print(
                f"epoch {epoch + 1}/{epochs}: reference {rates[ref.name]:,.0f} images/s, "
                f"AnomalyMap {rates[proj.name]:,.0f} images/s",
                flush=True,
            )
        print("evaluating, then timing scoring and t-SNE ...", flush=True)
        ref_result = ref.turn()
        proj_result = proj.turn()
    finally:
        ref.close()
        proj.close()
    report = {
        "epochs": epochs,
        "seed": seed,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "reference_retains_freed_memory": reference_retains_memory,
        "reference_train_images_per_s": ref_result["train_images_per_s"],
        "project_train_images_per_s": proj_result["train_images_per_s"],
        "speedup": proj_result["train_images_per_s"] / ref_result["train_images_per_s"],
        "epoch_speedups": [
            p / r for p, r in zip(proj_result["epoch_images_per_s"], ref_result["epoch_images_per_s"], strict=True)
        ],
        "reference_roc_auc": ref_result["roc_auc"],
        "project_roc_auc": proj_result["roc_auc"],
        "reference_val_loss": ref_result["val_loss"],
        "project_val_loss": proj_result["val_loss"],
        "reference_peak_rss_mb": ref_result["peak_rss_mb"],
        "project_peak_rss_mb": proj_result["peak_rss_mb"],
        "scoring_images_per_s": proj_result["scoring_images_per_s"],
        "tsne_seconds": proj_result["tsne_seconds"],
        "tsne_points": proj_result["tsne_points"],
        "project_precision": proj_result["precision"],
        "project_device": proj_result["device"],
        "step_breakdown": proj_result["step_breakdown"],
        "reference": ref_result,
        "project": proj_result,
    }
    path = storage.write_json(Path(resolve(out)) / "speed.json", report)
    print(format_table(report))
    print(f"wrote {path}")
    return report


def format_table(r: dict) -> str:
    """The benchmark as a markdown table."""
    rows = [
        (
            "training images/s (median of epochs)",
            f"{r['reference_train_images_per_s']:,.0f}",
            f"{r['project_train_images_per_s']:,.0f}",
        ),
        ("speed-up (ratio of the medians)", "1.00x", f"{r['speedup']:.2f}x"),
        (
            "speed-up epoch by epoch",
            "",
            " ".join(f"{x:.2f}x" for x in r["epoch_speedups"]),
        ),
        ("precision", "fp32", f"{r['project_precision']} on {r['project_device']}"),
        (
            "freed memory kept for reuse (glibc)",
            "yes" if r["reference_retains_freed_memory"] else "no (glibc defaults)",
            "yes",
        ),
        ("peak resident memory, MiB", f"{r['reference_peak_rss_mb']:,.0f}", f"{r['project_peak_rss_mb']:,.0f}"),
        (
            f"validation MSE after {r['epochs']} epochs",
            f"{r['reference_val_loss']:.5f}",
            f"{r['project_val_loss']:.5f}",
        ),
        ("digit-9 ROC-AUC (per-image MSE)", f"{r['reference_roc_auc']:.3f}", f"{r['project_roc_auc']:.3f}"),
        ("scoring images/s (03/04 path)", "", f"{r['scoring_images_per_s']:,.0f}"),
        (f"t-SNE of {r['tsne_points']:,} latents, s", "", f"{r['tsne_seconds']:.1f}"),
    ]
    step = r.get("step_breakdown")
    if step:
        bound = step["gemm_bound_images_per_s"]
        rows += [
            (
                f"one training step of {step['batch_size']}, ms: whole / convs + matrix products / pooling",
                "",
                f"{step['step_ms']:.1f} / {step['gemm_ms']:.1f} / {step['pool_ms']:.1f}",
            ),
            (
                "bound if all but convs + matrix products were free",
                "",
                f"{bound:,.0f} images/s ({bound / r['reference_train_images_per_s']:.2f}x)",
            ),
        ]
    lines = ["| | reference loop | AnomalyMap |", "|---|---:|---:|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)
