"""Time to a trained detector: the whole series at its defaults against the original loop's training alone.

``python benchmarks/time_to_detector.py [--results DIR] [-p NAME VALUE]...`` measures,
in one run on one machine:

1. AnomalyMap's five notebooks at their defaults (or the ``-p`` parameters), through the
   runner, timed end to end (each notebook's seconds too), and the default score's digit-9
   ROC-AUC from notebook 03;
2. the original design's loop (fp32, a DataLoader over a TensorDataset, batch 256, Adam 1e-3)
   training its 5 epochs on the same split (the one notebook 01 wrote), timed, then its
   ROC-AUC by the original per-image MSE and by ``latent-knn`` on its latents;

and prints both with their ratio (series / reference training) and the CPU, and writes
``time_to_detector.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python benchmarks/NAME.py`: the repository's root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import time
from typing import Any

import torch

from anomalymap_helpers.files import storage
from anomalymap_helpers.files.paths import resolve

REFERENCE_EPOCHS = 5


def reference_training(splits: dict[str, Any], epochs: int = REFERENCE_EPOCHS, seed: int = 0) -> dict[str, Any]:
    """Train the original design's loop on ``splits``; its seconds, validation MSE and ROC-AUCs."""
    from anomalymap_helpers.pipeline import scoring
    from anomalymap_helpers.pipeline.evaluation import metrics
    from anomalymap_helpers.pipeline.training.device import retain_freed_memory
    from benchmarks.speed_workers import ReferenceLoop

    retain_freed_memory()  # as the speed benchmark runs it: its speed then does not vary between runs
    x, test = splits["train"].images, splits["test"]
    loop = ReferenceLoop(x, seed)
    t0 = time.perf_counter()
    for _ in range(epochs):
        loop.epoch()
    seconds = time.perf_counter() - t0
    recon = loop.apply(test.images)
    latents = {"train": loop.apply(x, encode=True), "test": loop.apply(test.images, encode=True)}
    val = loop.apply(splits["val"].images)
    y = test.is_anomaly.numpy()
    return {
        "epochs": epochs,
        "train_images": len(x),
        "seconds": seconds,
        "val_loss": float(((val - splits["val"].images) ** 2).mean()),
        "roc_auc_mse": float(metrics.roc_auc_score(y, scoring.mse_scores(test.images, recon).numpy())),
        "roc_auc_default": float(
            metrics.roc_auc_score(y, scoring.knn_distances(latents["train"], latents["test"]).numpy())
        ),
    }


def run_time_to_detector(
    results: str = "results/time-to-detector",
    params: dict[str, Any] | None = None,
    out: str | None = None,
    repeats: int = 1,
) -> dict[str, Any]:
    """Measure both (``repeats`` times, in turn), print the table, write ``time_to_detector.json``.

    With ``repeats`` > 1 the series and the reference loop alternate, and the table gives
    the medians and the ratio of the medians (a shared machine's speed drifts by tens of
    percent within minutes; alternating exposes both to the same drift). ``out`` defaults
    to ``results``.
    """
    import statistics

    from anomalymap_helpers.commands.run import run_series
    from anomalymap_helpers.errors import ParameterError
    from anomalymap_helpers.files.paths import RunFiles
    from anomalymap_helpers.pipeline import data
    from benchmarks.machine import cpu_info

    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ParameterError(f"repeats={repeats!r}: use a whole number of at least 1")
    params = dict(params or {})
    results_dir = resolve(results)
    rounds = []
    for r in range(repeats):
        tag = f"[{r + 1}/{repeats}] " if repeats > 1 else ""
        print(f"{tag}1/2 AnomalyMap's series" + (f" with {params}" if params else " at its defaults") + " ...", flush=True)
        t0 = time.perf_counter()
        runs = run_series(params, results_dir, echo=lambda line: None)
        series_s = time.perf_counter() - t0
        print(f"    {series_s:.1f} s", flush=True)
        print(f"{tag}2/2 the original loop, {REFERENCE_EPOCHS} epochs on the same split ...", flush=True)
        splits, manifest = data.load_splits(
            RunFiles.at(results_dir), data_dir=params.get("data_dir", "data"), mnist_dir=params.get("mnist_dir") or None
        )
        reference = reference_training(splits, seed=manifest["config"]["seed"])
        print(f"    {reference['seconds']:.1f} s", flush=True)
        rounds.append({
            "series_seconds": series_s,
            "reference_seconds": reference["seconds"],
            "ratio": series_s / reference["seconds"],
            "notebook_seconds": {run.name: run.seconds for run in runs},
        })
    median = statistics.median
    reference["seconds"] = median(r["reference_seconds"] for r in rounds)
    series_s = median(r["series_seconds"] for r in rounds)
    evaluation = storage.read_json(results_dir / "metrics.json")
    model = storage.read_json(results_dir / "model.json")
    report = {
        "cpu": cpu_info(),
        "torch": torch.__version__,
        "reference": reference,
        "series_seconds": series_s,
        "notebook_seconds": {name: median(r["notebook_seconds"][name] for r in rounds) for name in rounds[0]["notebook_seconds"]},
        "series_epochs": model["train"]["epochs"],
        "series_val_loss": model["final_val_loss"],
        "series_score": evaluation["score"],
        "series_roc_auc": evaluation["roc_auc"],
        "ratio": series_s / reference["seconds"],
        "repeats": rounds,
        "params": params,
    }
    path = storage.write_json(Path(out and resolve(out) or results_dir) / "time_to_detector.json", report)
    print(format_table(report))
    print(f"wrote {path}")
    return report


def format_table(r: dict[str, Any]) -> str:
    cpu = r["cpu"]
    flags = ", ".join(f"{name} {'yes' if cpu.get(name) else 'no'}" for name in ("avx512", "bf16", "amx"))
    ref = r["reference"]
    notebooks = " · ".join(f"{name[:2]} {s:.1f} s" for name, s in r["notebook_seconds"].items())
    rounds = r.get("repeats", [])
    each = f" (each round: {', '.join(format(x['ratio'], '.2f') for x in rounds)})" if len(rounds) > 1 else ""
    rows = [
        ("CPU", f"{cpu['model']}, {cpu['cores']} cores ({flags})", ""),
        ("what is timed", f"training alone, {ref['epochs']} epochs", f"the five notebooks ({r['series_epochs']} epochs)"),
        ("seconds" + (f" (median of {len(r['repeats'])})" if len(r.get("repeats", [])) > 1 else ""),
         f"{ref['seconds']:.1f}", f"{r['series_seconds']:.1f} ({notebooks})"),
        ("ratio (series / reference training)", "1.00", f"{r['ratio']:.2f}{each}"),
        ("validation MSE", f"{ref['val_loss']:.5f}", f"{r['series_val_loss']:.5f}"),
        ("ROC-AUC: latent-knn (original loop), the default score (series)", f"{ref['roc_auc_default']:.3f}", f"{r['series_roc_auc']:.3f} ({r['series_score']})"),
        ("ROC-AUC, per-image MSE (the original score)", f"{ref['roc_auc_mse']:.3f}", ""),
    ]
    lines = ["| | original loop | AnomalyMap series |", "|---|---:|---:|"]
    return "\n".join(lines + [f"| {a} | {b} | {c} |" for a, b, c in rows])


def _main(args: argparse.Namespace) -> int:
    from anomalymap_helpers.commands.run import read_parameters

    run_time_to_detector(args.results, read_parameters([], args.param or []), args.out, repeats=args.repeats)
    return 0


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit status."""
    from benchmarks._entry import run

    ttd = argparse.ArgumentParser(prog="python benchmarks/time_to_detector.py", description="the whole series at its defaults against the original loop's 5 epochs of training")
    ttd.add_argument("--results", default="results/time-to-detector", metavar="DIR", help="the series' run folder")
    ttd.add_argument("--out", default=None, metavar="DIR", help="where time_to_detector.json goes (default --results)")
    ttd.add_argument("--repeats", type=int, default=1,
                     help="rounds of series then reference; the table gives medians (a shared machine drifts)")
    ttd.add_argument(
        "-p", "--param", nargs=2, action="append", metavar=("NAME", "VALUE"), help="a series parameter (default: none)"
    )
    return run(ttd, _main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
