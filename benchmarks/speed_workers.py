"""The two training paths the speed benchmark measures, each run in its own process.

- :func:`reference_worker`: the original design's loop, written here as it had it;
- :func:`project_worker`: the project's path (``train.train``), then the scoring and
  t-SNE the notebooks use.

Each waits for its turn (a ``"go"`` on its pipe) before every epoch, so the harness
can make them take turns.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import resource
import statistics
import time
from multiprocessing.connection import Connection
from typing import Any

import torch

from benchmarks.speed_profile import step_breakdown


@dataclasses.dataclass(frozen=True)
class Workload:
    """What both paths train and score on: the default MNIST splits, at a size.

    At another ``(image_size, channels)`` than ``(28, 1)`` the images are scaled up
    (bilinear) and repeated to the channels, and the test set is cut to 1,000 images:
    the content does not change the speed, the size does. ``max_test`` cuts it at any size.
    """

    data_dir: str
    mnist_dir: str | None = None
    max_train: int | None = None
    image_size: int = 28
    channels: int = 1
    device: str = "cpu"  # both paths train and score here (resolved by the harness)
    max_test: int | None = None
    profile_steps: int = 20  # steps a round of the CPU step breakdown (see speed_profile.step_breakdown)

    def splits(self) -> dict[str, Any]:
        import torch.nn.functional as F

        from anomalymap_helpers.pipeline import data

        native = (self.image_size, self.channels) == (28, 1)
        mnist = data.load_mnist(self.data_dir, self.mnist_dir)
        max_test = self.max_test if self.max_test is not None else None if native else 1000  # 0: all
        config = data.SplitConfig(max_train=self.max_train, max_test=max_test)
        splits = data.take(mnist, data.make_splits(mnist.train_labels, mnist.test_labels, config), config.anomaly_classes)
        if native:
            return splits
        size = (self.image_size, self.image_size)
        return {
            name: dataclasses.replace(
                s, images=F.interpolate(s.images, size=size, mode="bilinear").repeat(1, self.channels, 1, 1)
            )
            for name, s in splits.items()
        }


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _roc_auc(scores: torch.Tensor, is_anomaly: torch.Tensor) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(is_anomaly.numpy(), scores.numpy()))


def _wait_for_turn(conn: Connection) -> None:
    if conn.recv() != "go":
        raise SystemExit(0)


class ReferenceLoop:
    """The original design's training loop: fp32, a DataLoader over a TensorDataset, batch 256, shuffled, Adam 1e-3.

    Seeded with ``seed`` before the model is built (the DataLoader's shuffling then
    follows from it); trains on ``device``.
    """

    def __init__(self, train_images: torch.Tensor, seed: int, device: str = "cpu") -> None:
        from torch.utils.data import DataLoader, TensorDataset

        from anomalymap_helpers.pipeline.models import ConvAutoencoder, ModelConfig, ReferenceAutoencoder

        torch.manual_seed(seed)
        self.device = torch.device(device)
        _, channels, size, _ = train_images.shape
        self.model = ReferenceAutoencoder(ConvAutoencoder(ModelConfig(image_size=size, channels=channels)))
        self.model = self.model.to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.loader = DataLoader(TensorDataset(train_images), batch_size=256, shuffle=True)
        self.criterion = torch.nn.MSELoss()

    def epoch(self) -> None:
        """One pass over the training images."""
        self.model.train()
        for (batch,) in self.loader:
            batch = batch.to(self.device)
            self.optimizer.zero_grad()
            loss = self.criterion(self.model(batch), batch)
            loss.backward()
            self.optimizer.step()

    @torch.no_grad()
    def apply(self, images: torch.Tensor, encode: bool = False) -> torch.Tensor:
        """Reconstructions (or, with ``encode``, latents) of ``images`` in batches of 1,024, on the CPU."""
        self.model.eval()
        fn = self.model.encoder if encode else self.model
        return torch.cat([fn(b.to(self.device)).cpu() for b in images.split(1024)])


def reference_worker(conn: Connection, epochs: int, seed: int, work: Workload, retain_memory: bool = True) -> dict:
    """The original design's loop: fp32, DataLoader over a TensorDataset, batch 256, Adam 1e-3.

    With ``retain_memory`` it runs under the same allocator setting as the project's
    path (:func:`~anomalymap_helpers.pipeline.training.device.retain_freed_memory`). Under glibc's
    defaults its speed depends on the process's allocation history, which decides
    how many freed blocks are unmapped and faulted in again each step: 1,500 to
    2,100 images/s between runs here (``speed --reference-glibc-defaults``).
    """
    from anomalymap_helpers.pipeline.training.device import retain_freed_memory

    if retain_memory:
        retain_freed_memory()
    d = work.splits()
    loop = ReferenceLoop(d["train"].images, seed, work.device)
    rates = []
    for _ in range(epochs):
        _wait_for_turn(conn)
        t0 = time.perf_counter()
        loop.epoch()
        rates.append(len(d["train"].images) / (time.perf_counter() - t0))
        conn.send(("epoch", rates[-1]))
    _wait_for_turn(conn)
    val_loss = float(((loop.apply(d["val"].images) - d["val"].images) ** 2).mean())
    recon = loop.apply(d["test"].images)
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


def project_worker(conn: Connection, epochs: int, seed: int, work: Workload) -> dict:
    """The project's path: train.train, then the scoring and t-SNE the notebooks use."""
    from anomalymap_helpers.pipeline import data, latent, scoring
    from anomalymap_helpers.pipeline import training as train

    def next_epoch(record: dict[str, float]) -> None:
        conn.send(("epoch", record["images_per_s"]))
        if record["epoch"] < epochs:
            _wait_for_turn(conn)

    d = work.splits()
    _wait_for_turn(conn)
    with contextlib.redirect_stdout(io.StringIO()):  # the parent prints both paths' epochs
        result = train.train(
            d["train"].images,
            d["val"].images,
            train.TrainConfig(epochs=epochs, batch_size=256, seed=seed, device=work.device, patience=0),
            progress=False,
            on_epoch=next_epoch,
        )
    _wait_for_turn(conn)
    model = result.model
    scoring.score(model, d["test"].images[:512])  # warm-up
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        scored = scoring.score(model, d["test"].images)
        times.append(time.perf_counter() - t0)
    # The default score's whole path: reconstructions and maps, latents, kNN against the
    # training normals' latents (encoded once per model, as the run folder caches them).
    reference = scoring.encode(model, d["train"].images)
    default_times = []
    for _ in range(5):
        t0 = time.perf_counter()
        scored = scoring.score(model, d["test"].images)
        scoring.knn_distances(reference, scored.latents)
        default_times.append(time.perf_counter() - t0)
    onnx_rate = _onnxruntime_rate(model, reference, d["test"].images)
    is_anomaly = d["test"].is_anomaly
    pick = torch.cat([data.sample_indices(~is_anomaly, 500, seed), data.sample_indices(is_anomaly, 500, seed)])
    pick = pick[: len(d["test"].images)]
    t0 = time.perf_counter()
    latent.tsne(latent.encode(model, d["test"].images[pick]), seed=seed)
    tsne_s = time.perf_counter() - t0
    rates = [h["images_per_s"] for h in result.history]
    peak_rss_mb = _peak_rss_mb()  # before the profiler's own memory
    cpu = result.device.type == "cpu"
    breakdown = (step_breakdown(d["train"].images, result.precision, model.config, work.profile_steps)
                 if cpu else None)
    return {
        "train_images_per_s": statistics.median(rates),
        "epoch_images_per_s": rates,
        "train_images": len(d["train"].images),
        "test_images": len(d["test"].images),
        "test_anomalies": int(is_anomaly.sum()),
        "val_loss": result.history[-1]["val_loss"],
        "roc_auc": _roc_auc(scored.scores, is_anomaly),
        "peak_rss_mb": peak_rss_mb,
        "precision": result.precision.name,
        "device": str(result.device),
        "scoring_images_per_s": len(d["test"].images) / statistics.median(times),
        "default_score_images_per_s": len(d["test"].images) / statistics.median(default_times),
        "onnxruntime_images_per_s": onnx_rate,
        "tsne_seconds": tsne_s,
        "tsne_points": len(pick),
        "step_breakdown": breakdown,
    }


def _onnxruntime_rate(model: Any, reference: torch.Tensor, images: torch.Tensor) -> float | None:
    """Images/s of the exported detector (``latent-knn`` map and score) in onnxruntime on the CPU, or None without it."""
    import tempfile
    from pathlib import Path

    try:
        import onnxruntime as ort
    except ImportError:
        return None
    from anomalymap_helpers.commands.export import Detector, write_onnx

    detector = Detector(model.cpu(), "latent-knn", 0.0, reference, uint8=False).eval()
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        path = write_onnx(detector, images[:2], {}, Path(tmp) / "detector.onnx")
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = images.numpy()
    session.run(None, {"images": x[:512]})  # warm-up
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        for i in range(0, len(x), 512):
            session.run(None, {"images": x[i : i + 512]})
        times.append(time.perf_counter() - t0)
    return len(x) / statistics.median(times)
