"""Speed benchmark: the project's training and scoring paths against the reference loop.

``python benchmarks/speed.py [--epochs N] [--out DIR]`` trains the same
model on the same data twice, each in a fresh process so that peak memory is
its own, the two taking turns epoch by epoch so that both see the same machine
(a shared machine's speed drifts over minutes):

- the *reference loop*, written here as the original design had it: fp32, a
  DataLoader over a TensorDataset, batch 256, shuffled, Adam 1e-3;
- the project's path, :func:`anomalymap_helpers.pipeline.training.train` with the
  notebooks' defaults (bf16 + channels_last where the CPU supports bf16).

It reports training images/s (median over epochs), peak resident memory, the
validation loss and digit-9 ROC-AUC after the same epochs, the scoring
throughput of the path notebooks 03 and 04 use, and the t-SNE time of notebook
05 at its default cap. It prints a table and writes ``speed.json``.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import torch

from anomalymap_helpers.errors import AnomalyMapError, ParameterError
from anomalymap_helpers.files import storage
from anomalymap_helpers.files.paths import resolve
from benchmarks.machine import cpu_info
from benchmarks.speed_report import format_table
from benchmarks.speed_workers import Workload, project_worker, reference_worker

DEFAULT_OUT = "results/speed"


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
    max_test: int | None = None,
    profile_steps: int = 20,
    reference_retains_memory: bool = True,
    image_size: int = 28,
    channels: int = 1,
    device: str = "auto",
) -> dict:
    """Run both paths an epoch at a time, in turn, print the table, write ``speed.json``.

    The machine's speed drifts over minutes, so the two paths take turns: epoch 1 of
    the reference, epoch 1 of the project, then epoch 2 with the project first, and
    so on. Each runs in its own process and waits while the other runs. Both keep
    freed memory for reuse unless ``reference_retains_memory`` is False, which runs
    the reference under glibc's defaults (see :func:`reference_worker`).

    At another ``image_size`` or ``channels`` both paths train on MNIST scaled up to
    that size and repeated to the channels (the model grows with the size), on 2,000
    training images unless ``max_train`` says otherwise, and score 1,000 test images;
    ``max_test`` cuts the test set (all 10,000 MNIST test images by default at 28x28);
    ``profile_steps`` is the steps of each round of the CPU step breakdown.

    ``device`` (``"auto"``: CUDA where there is one) is where *both* paths train and
    score, so the ratio compares loops on the same hardware.
    """
    from anomalymap_helpers.pipeline import data
    from anomalymap_helpers.pipeline.models import check_image_size
    from anomalymap_helpers.pipeline.training import check_positive
    from anomalymap_helpers.pipeline.training.device import resolve_device

    target = str(resolve_device(device))

    check_image_size(image_size)
    if channels not in (1, 3):
        raise ParameterError(f"--channels {channels}: use 1 (grayscale) or 3 (colour)")
    data.SplitConfig(max_train=max_train, max_test=max_test)  # refuses a bad cap before any work
    check_positive("profile_steps", profile_steps)
    if (image_size, channels) != (28, 1) and max_train is None:
        max_train = 2000

    data.prepare_mnist(data_dir, mnist_dir)  # once, here: two workers unpacking at once would race
    work = Workload(str(resolve(data_dir)), mnist_dir, max_train, image_size, channels, target, max_test, profile_steps)
    args = (epochs, seed, work)
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
        "cpu": cpu_info(),
        "image_size": image_size,
        "channels": channels,
        "train_images": proj_result["train_images"],
        "test_images": proj_result["test_images"],
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
        "device": target,
        "scoring_images_per_s": proj_result["scoring_images_per_s"],
        "default_score_images_per_s": proj_result["default_score_images_per_s"],
        "onnxruntime_images_per_s": proj_result["onnxruntime_images_per_s"],
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
