"""Speed benchmark: the project's training and scoring paths against the reference loop.

``python -m anomalymap_helpers speed [--epochs N] [--out DIR]`` trains the same
model on the same data twice, each in a fresh process so that peak memory is
its own:

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

import multiprocessing as mp
import resource
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from . import storage
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


def reference_worker(epochs: int, seed: int, data_dir: str, mnist_dir: str | None, max_train: int | None) -> dict:
    """The original design's loop: fp32, DataLoader over a TensorDataset, batch 256, Adam 1e-3."""
    from torch.utils.data import DataLoader, TensorDataset

    from .model import ConvAutoencoder, ReferenceAutoencoder

    d = _data(data_dir, mnist_dir, max_train)
    torch.manual_seed(seed)
    model = ReferenceAutoencoder(ConvAutoencoder())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(TensorDataset(d["train"].images), batch_size=256, shuffle=True)
    criterion = torch.nn.MSELoss()
    rates = []
    for _ in range(epochs):
        model.train()
        t0 = time.perf_counter()
        for (batch,) in loader:
            optimizer.zero_grad()
            loss = criterion(model(batch), batch)
            loss.backward()
            optimizer.step()
        rates.append(len(d["train"].images) / (time.perf_counter() - t0))
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
    }


def project_worker(epochs: int, seed: int, data_dir: str, mnist_dir: str | None, max_train: int | None) -> dict:
    """The project's path: train.train, then the scoring and t-SNE the notebooks use."""
    from . import data, latent, scoring, train

    d = _data(data_dir, mnist_dir, max_train)
    result = train.train(
        d["train"].images, d["val"].images, train.TrainConfig(epochs=epochs, seed=seed), progress=False
    )
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
    return {
        "train_images_per_s": statistics.median(rates),
        "epoch_images_per_s": rates,
        "val_loss": result.history[-1]["val_loss"],
        "roc_auc": _roc_auc(scored.scores, is_anomaly),
        "peak_rss_mb": _peak_rss_mb(),
        "precision": result.precision.name,
        "device": str(result.device),
        "scoring_images_per_s": len(d["test"].images) / statistics.median(times),
        "tsne_seconds": tsne_s,
        "tsne_points": len(pick),
    }


def _in_fresh_process(fn: Any, *args: Any) -> dict:
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


def run_speed(
    epochs: int = 5,
    out: str = DEFAULT_OUT,
    *,
    seed: int = 0,
    data_dir: str = "data",
    mnist_dir: str | None = None,
    max_train: int | None = None,
) -> dict:
    """Run both paths one after the other, print the table, write ``speed.json``."""
    args = (epochs, seed, str(resolve(data_dir)), mnist_dir, max_train)
    print(f"reference loop: {epochs} epochs ...", flush=True)
    ref = _in_fresh_process(reference_worker, *args)
    print(f"project path: {epochs} epochs ...", flush=True)
    proj = _in_fresh_process(project_worker, *args)
    report = {
        "epochs": epochs,
        "seed": seed,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "reference_train_images_per_s": ref["train_images_per_s"],
        "project_train_images_per_s": proj["train_images_per_s"],
        "speedup": proj["train_images_per_s"] / ref["train_images_per_s"],
        "reference_roc_auc": ref["roc_auc"],
        "project_roc_auc": proj["roc_auc"],
        "reference_val_loss": ref["val_loss"],
        "project_val_loss": proj["val_loss"],
        "reference_peak_rss_mb": ref["peak_rss_mb"],
        "project_peak_rss_mb": proj["peak_rss_mb"],
        "scoring_images_per_s": proj["scoring_images_per_s"],
        "tsne_seconds": proj["tsne_seconds"],
        "tsne_points": proj["tsne_points"],
        "project_precision": proj["precision"],
        "project_device": proj["device"],
        "reference": ref,
        "project": proj,
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
        ("speed-up", "1.00x", f"{r['speedup']:.2f}x"),
        ("precision", "fp32", f"{r['project_precision']} on {r['project_device']}"),
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
    lines = ["| | reference loop | AnomalyMap |", "|---|---:|---:|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)
