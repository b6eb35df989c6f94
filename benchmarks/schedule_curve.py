"""Learning curves of training schedules: validation MSE and digit-9 ROC-AUC against images trained on.

``python benchmarks/schedule_curve.py [--schedule EPOCHSxBATCH]... [--seeds 3]`` trains the
default model on the default MNIST split (digits 0-8 normal) once per schedule and seed, with
the project's loop, and every ``--every`` images measures the validation MSE (normals only)
and the digit-9 ROC-AUC of ``latent-knn`` (the default score when the schedule was chosen). It writes ``curve.csv`` and
``summary.json``, prints a table (mean ± sample std over seeds at the end of each schedule,
with its training seconds, evaluation time excluded) and draws ``schedule_curve.png``.

The curve is a report: which schedule becomes the default is decided by the validation MSE
and the time, never by the ROC-AUC (a test label).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python benchmarks/NAME.py`: the repository's root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import statistics
import time
from typing import Any

import torch

from anomalymap_helpers.errors import ParameterError
from anomalymap_helpers.files import storage
from anomalymap_helpers.files.paths import resolve


def parse_schedule(text: str) -> tuple[int, int]:
    """``"5x256"`` -> ``(5, 256)``: epochs and batch size."""
    epochs, _, batch = text.lower().partition("x")
    if not (epochs.isdigit() and batch.isdigit() and int(epochs) > 0 and int(batch) > 0):
        raise ParameterError(f"--schedule {text!r}: use EPOCHSxBATCH, e.g. 5x256")
    return int(epochs), int(batch)


def _mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {sd:.4f}" if values[0] < 0.1 else f"{statistics.mean(values):.3f} ± {sd:.3f}"


def run_curve(
    schedules: list[str],
    seeds: int = 3,
    out: str = "results/schedule-curve",
    *,
    every: int = 24_576,
    mnist_dir: str | None = None,
    figure: str | None = None,
    max_train: int | None = None,
    max_test: int | None = None,
) -> dict[str, Any]:
    """Train each schedule for each seed, measuring as it goes; print, write and plot the curves
    (``max_train``, ``max_test``: the split's caps, as :class:`~anomalymap_helpers.pipeline.data.SplitConfig`'s;
    the command line uses the whole of MNIST)."""
    from anomalymap_helpers.pipeline import data
    from anomalymap_helpers.pipeline import training as train
    from benchmarks.machine import cpu_info

    plans = [(s, *parse_schedule(s)) for s in schedules]
    images = data.load_mnist(mnist_dir=mnist_dir)
    rows: list[dict[str, Any]] = []
    finals: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in plans}
    for seed in range(seeds):
        config = data.SplitConfig(seed=seed, max_train=max_train, max_test=max_test)
        splits = data.take(images, data.make_splits(images.train_labels, images.test_labels, config), config.anomaly_classes)
        x, val, test = splits["train"].images, splits["val"].images, splits["test"]
        y = test.is_anomaly.numpy()
        for name, epochs, batch in plans:
            probe = _Probe(name, seed, every, epochs * len(x), x, val, test.images, y)
            print(f"seed {seed}: {name} ...", flush=True)
            t0 = time.perf_counter()
            cfg = train.TrainConfig(epochs=epochs, batch_size=batch, seed=seed, patience=0)
            train.train(x, val, cfg, progress=False, on_step=probe)
            seconds = time.perf_counter() - t0 - probe.spent
            rows += probe.rows
            last = rows[-1]
            finals[name].append({"seconds": seconds, "val_mse": last["val_mse"], "roc_auc": last["roc_auc"]})
            print(f"  {seconds:.1f} s, val MSE {last['val_mse']:.5f}, digit-9 ROC-AUC {last['roc_auc']:.3f}", flush=True)
    folder = Path(resolve(out))
    storage.write_csv(folder / "curve.csv", ["schedule", "seed", "images", "val_mse", "roc_auc"],
                      ([r[k] for k in ("schedule", "seed", "images", "val_mse", "roc_auc")] for r in rows))
    summary = {
        "cpu": cpu_info(),
        "torch": torch.__version__,
        "seeds": seeds,
        "every": every,
        "schedules": {name: finals[name] for name, _, _ in plans},
    }
    storage.write_json(folder / "summary.json", summary)
    lines = [
        f"CPU: {summary['cpu']['model']}, {summary['cpu']['cores']} cores (bf16 {'yes' if summary['cpu']['bf16'] else 'no'})",
        f"| schedule (epochs x batch) | training s | validation MSE | digit-9 ROC-AUC (latent-knn) | over {seeds} seed(s) |",
        "|---|---:|---:|---:|---|",
    ]
    for name, _, _ in plans:
        f = finals[name]
        lines.append(
            f"| {name} | {statistics.mean(r['seconds'] for r in f):.1f} | {_mean_sd([r['val_mse'] for r in f])} | "
            f"{_mean_sd([r['roc_auc'] for r in f])} | mean ± sample std |"
        )
    print("\n".join(lines))
    storage.save_figure(_plot(rows, [p[0] for p in plans]), Path(resolve(figure)) if figure else folder / "schedule_curve.png")
    return summary


class _Probe:
    """Called after every training step; measures the model every ``every`` images and at the end."""

    def __init__(self, name: str, seed: int, every: int, last: int, *data: Any) -> None:
        self.name, self.seed, self.every, self.last = name, seed, every, last
        self.train_x, self.val, self.test_x, self.y = data
        self.next, self.spent, self.rows = every, 0.0, []

    def __call__(self, seen: int, model: Any) -> None:
        if seen < self.next and seen != self.last:
            return
        from anomalymap_helpers.pipeline import scoring
        from anomalymap_helpers.pipeline import training as train
        from anomalymap_helpers.pipeline.evaluation import metrics

        t0 = time.perf_counter()
        device = next(model.parameters()).device
        val_mse = train.mean_loss(model, train.to_device(self.val, device), scoring.inference_precision(device))
        reference, queries = scoring.encode(model, self.train_x), scoring.encode(model, self.test_x)
        auc = float(metrics.roc_auc_score(self.y, scoring.knn_distances(reference, queries).numpy()))
        self.rows.append({"schedule": self.name, "seed": self.seed, "images": seen, "val_mse": val_mse, "roc_auc": auc})
        while self.next <= seen:
            self.next += self.every
        self.spent += time.perf_counter() - t0


def _plot(rows: list[dict[str, Any]], names: list[str]) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.8))
    axes = fig.subplots(1, 2)
    for name in names:
        points: dict[int, list[dict[str, Any]]] = {}
        for r in rows:
            if r["schedule"] == name:
                points.setdefault(r["images"], []).append(r)
        xs = sorted(points)
        for ax, key in zip(axes, ("val_mse", "roc_auc"), strict=True):
            ax.plot([x / 1000 for x in xs], [statistics.mean(p[key] for p in points[x]) for x in xs], marker="o", label=name)
    axes[0].set(xlabel="images trained on (thousands)", ylabel="validation MSE (normals)", yscale="log")
    axes[1].set(xlabel="images trained on (thousands)", ylabel="digit-9 ROC-AUC (latent-knn)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(title="epochs x batch")
    fig.suptitle("Learning curves on MNIST (digits 0-8 normal), mean over seeds")
    fig.tight_layout()
    return fig


def _main(args: argparse.Namespace) -> int:
    run_curve(args.schedule or ["5x256", "1x32"], args.seeds, args.out, every=args.every,
              mnist_dir=args.mnist_dir, figure=args.figure)
    return 0


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit status."""
    from benchmarks._entry import run

    curve = argparse.ArgumentParser(prog="python benchmarks/schedule_curve.py", description="validation MSE and digit-9 ROC-AUC against images trained on, per training schedule")
    curve.add_argument("--schedule", action="append", metavar="EPOCHSxBATCH",
                       help="a schedule to train (repeatable; default 5x256, the old default, and 1x32, the new)")
    curve.add_argument("--seeds", type=int, default=3)
    curve.add_argument("--every", type=int, default=24_576, help="images between two measurements")
    curve.add_argument("--out", default="results/schedule-curve", metavar="DIR")
    curve.add_argument("--figure", default=None, metavar="PNG", help="where the plot goes (default <out>/schedule_curve.png)")
    curve.add_argument("--mnist-dir", default=None)
    return run(curve, _main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
