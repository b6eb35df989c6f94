"""The autoencoder against the variational autoencoder, on the same split, over seeds.

``python benchmarks/compare_models.py [--seeds 3] [--beta 1.0]`` makes the default
MNIST split (digits 0-8 normal, 9 the anomaly, split seed 0: what notebook 01 makes at its
defaults), then for each seed trains both models with the project's loop and notebook 02's
defaults (``epochs=0``, ``batch_size=0``: 2 epochs of 64 here; ``seed`` seeds the weights, the
shuffling and the VAE's draws) and scores the test split with every method, fitted on normal
images only, as notebook 03 does. It writes ``runs.csv`` (one row per model, seed and method)
and ``summary.json``, and prints mean ± sample std (ddof=1) over the seeds.

Nothing is chosen here: the table is a comparison, the default model stays ``ae``.
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

from anomalymap_helpers.files import storage
from anomalymap_helpers.files.paths import resolve

MODELS = ("ae", "vae")
SHOWN = ("patch-knn", "latent-knn", "mse", "elbo")  # the default score, the old default, the original one, the VAE's own


def _mean_sd(values: list[float], digits: int = 3) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {sd:.{digits}f}"


def compare_models(
    seeds: int = 3,
    out: str = "results/compare-models",
    *,
    beta: float = 1.0,
    mnist_dir: str | None = None,
    max_train: int | None = None,
    max_test: int | None = None,
) -> dict[str, Any]:
    """Train and score both models for each seed on the default split; print, write and return the summary."""
    from anomalymap_helpers.pipeline import data, scoring
    from anomalymap_helpers.pipeline import training as train
    from anomalymap_helpers.pipeline.evaluation import metrics
    from benchmarks.machine import cpu_info

    images = data.load_mnist(mnist_dir=mnist_dir)
    config = data.SplitConfig(max_train=max_train, max_test=max_test)
    splits = data.take(images, data.make_splits(images.train_labels, images.test_labels, config), config.anomaly_classes)
    x, val, test = splits["train"].images, splits["val"].images, splits["test"]
    epochs, batch_size = train.schedule_for(len(x))
    rows: list[dict[str, Any]] = []
    for seed in range(seeds):
        for model in MODELS:
            print(f"seed {seed}: {model} ...", flush=True)
            cfg = train.TrainConfig(epochs, batch_size, seed=seed, model=model, beta=beta, patience=0)
            t0 = time.perf_counter()
            result = train.train(x, val, cfg, progress=False)
            seconds = time.perf_counter() - t0
            scored_val = scoring.score(result.model, val)
            scorer = scoring.Scorer(result.model, x, scored_val)
            test_scores = scorer.all_scores(scoring.score(result.model, test.images))
            for method, s in test_scores.items():
                threshold = metrics.choose_threshold("percentile", scorer.val_scores[method], s)  # 03's default
                m = metrics.evaluate(s, test.is_anomaly, threshold)
                rows.append({
                    "model": model, "seed": seed, "method": method, "roc_auc": m.roc_auc,
                    "average_precision": m.average_precision, "recall_at_5pct_fpr": m.recall_at_5pct_fpr,
                    "val_mse": result.history[-1]["val_loss"], "train_seconds": seconds,
                })
            own = next(r for r in rows[::-1] if r["model"] == model and r["method"] == scoring.DEFAULT_METHOD)
            print(f"  {seconds:.1f} s, val MSE {own['val_mse']:.5f}, {scoring.DEFAULT_METHOD} ROC-AUC {own['roc_auc']:.3f}", flush=True)
    folder = Path(resolve(out))
    keys = ["model", "seed", "method", "roc_auc", "average_precision", "recall_at_5pct_fpr", "val_mse", "train_seconds"]
    storage.write_csv(folder / "runs.csv", keys, ([r[k] for k in keys] for r in rows))
    summary: dict[str, Any] = {
        "cpu": cpu_info(), "torch": torch.__version__, "seeds": seeds, "beta": beta,
        "epochs": epochs, "batch_size": batch_size, "n_train": len(x), "n_test": len(test.images), "rows": rows,
    }
    storage.write_json(folder / "summary.json", summary)
    print(_table(summary))
    return summary


def _table(summary: dict[str, Any]) -> str:
    rows, cpu = summary["rows"], summary["cpu"]
    lines = [
        f"CPU: {cpu['model']}, {cpu['cores']} cores (bf16 {'yes' if cpu['bf16'] else 'no'}); "
        f"{summary['epochs']} epochs of {summary['batch_size']}, beta {summary['beta']}, "
        f"mean ± sample std over {summary['seeds']} seed(s) of the weights, one split",
        "| model | score | ROC-AUC | average precision | recall at 5 % FPR | validation MSE | training s |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for model in MODELS:
        for method in SHOWN:
            mine = [r for r in rows if r["model"] == model and r["method"] == method]
            if not mine:
                continue
            lines.append(
                f"| {model} | {method} | {_mean_sd([r['roc_auc'] for r in mine])} | "
                f"{_mean_sd([r['average_precision'] for r in mine])} | {_mean_sd([r['recall_at_5pct_fpr'] for r in mine])} | "
                f"{_mean_sd([r['val_mse'] for r in mine], 5)} | {statistics.mean(r['train_seconds'] for r in mine):.1f} |"
            )
    return "\n".join(lines)


def _main(args: argparse.Namespace) -> int:
    compare_models(args.seeds, args.out, beta=args.beta, mnist_dir=args.mnist_dir, max_train=args.max_train or None,
                   max_test=args.max_test or None)
    return 0


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit status."""
    from benchmarks._entry import run

    cmp = argparse.ArgumentParser(prog="python benchmarks/compare_models.py", description="the autoencoder against the VAE on the default split: every score, over seeds")
    cmp.add_argument("--seeds", type=int, default=3, help="seeds of the weights (the split stays the default)")
    cmp.add_argument("--beta", type=float, default=1.0, help="the VAE's KL weight")
    cmp.add_argument("--out", default="results/compare-models", metavar="DIR")
    cmp.add_argument("--mnist-dir", default=None)
    cmp.add_argument("--max-train", type=int, default=0, help="cap on normal training images (0: all)")
    cmp.add_argument("--max-test", type=int, default=0, help="cap on test images (0: all)")
    return run(cmp, _main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
