"""How much mixed precision changes the scores: the same weights in fp32 and in bf16/fp16.

``python benchmarks/precision_report.py --results DIR [--precision auto|bf16|fp16]``
scores the run's validation and test images twice on the same weights, through the whole
path of notebook 03's score (reconstructions, latents, the kNN reference set encoded in
that precision), once in fp32 and once under autocast, and reports the largest score
difference, the rank correlation of the two, both ROC-AUCs and how many test verdicts
differ at the run's threshold. ``auto`` is what the scoring paths use on this device
(fp16 on CUDA, bf16 on a CPU with native bf16); on a CPU without it, bf16 is emulated:
the figures are right, the time is not representative.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python benchmarks/NAME.py`: the repository's root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import time
from typing import Any

from anomalymap_helpers.errors import ParameterError
from anomalymap_helpers.pipeline.evaluation.metrics import compare_scores

PRECISIONS = ("auto", "bf16", "fp16")


def precision_report(run: Any, precision: str = "auto") -> dict[str, Any]:
    """Score ``run`` (a :class:`~anomalymap_helpers.runs.opened.Run`) in fp32 and in ``precision``."""
    import torch

    from anomalymap_helpers.pipeline import scoring
    from anomalymap_helpers.pipeline.evaluation import metrics
    from anomalymap_helpers.pipeline.training.device import Precision, cpu_supports_bf16, inference_precision

    if precision not in PRECISIONS:
        raise ParameterError(f"precision={precision!r}: use one of {list(PRECISIONS)}")
    device = run.device
    if precision == "auto":
        mixed = inference_precision(device)
        if mixed.name == "fp32":  # no native mixed precision here: bf16 emulated on the CPU
            mixed = Precision("bf16", "cpu") if device.type == "cpu" else Precision("fp16", device.type)
    else:
        if precision == "fp16" and device.type != "cuda":
            raise ParameterError("precision='fp16' needs a CUDA device: use bf16 on the CPU")
        mixed = Precision(precision, device.type)
    ev = run.evaluation
    method, blur, threshold = ev["score"], float(ev.get("map_blur", 0.0)), float(ev["threshold"])
    model, splits = run.model, run.splits
    is_anomaly = splits["test"].is_anomaly.numpy()
    out: dict[str, Any] = {
        "device": str(device),
        "precision": mixed.name,
        "native": device.type == "cuda" or (mixed.name == "bf16" and cpu_supports_bf16()),
        "score": method,
        "threshold": threshold,
        "test_images": int(len(is_anomaly)),
    }
    scores, seconds = {}, {}
    for p in (Precision("fp32", device.type), mixed):
        t0 = time.perf_counter()
        reference = scoring.encode(model, splits["train"].images, precision=p)
        val = scoring.score(model, splits["val"].images, blur=blur, precision=p)
        test = scoring.score(model, splits["test"].images, blur=blur, precision=p)
        scorer = scoring.Scorer(model, splits["train"].images, val, reference=reference, blur=blur, precision=p,
                                dataset=run.dataset)
        scores[p.name] = scorer.all_scores(test)[method].numpy()
        seconds[p.name] = time.perf_counter() - t0
        out[f"roc_auc_{p.name}"] = metrics.roc_auc_score(is_anomaly, scores[p.name])
        del reference, val, test
        if device.type == "cuda":
            torch.cuda.empty_cache()
    out.update(compare_scores(scores["fp32"], scores[mixed.name], threshold))
    out["seconds"] = seconds
    return out


def format_report(r: dict[str, Any]) -> str:
    """The report as lines for the terminal or a notebook."""
    mixed = r["precision"]
    how = "native" if r["native"] else "emulated: this CPU has no native bf16, so its time says nothing"
    return "\n".join([
        f"{r['score']} on {r['test_images']:,} test images, fp32 against {mixed} ({how}) on {r['device']}, same weights:",
        f"  largest score difference {r['largest_difference']:.2e} "
        f"({r['largest_difference_in_std']:.2e} of the fp32 scores' standard deviation)",
        f"  rank correlation (Spearman) {r['spearman']:.6f}",
        f"  verdicts that differ at the threshold {r['threshold']:.5f}: {r['verdict_flips']}",
        f"  ROC-AUC fp32 {r['roc_auc_fp32']:.4f}, {mixed} {r[f'roc_auc_{mixed}']:.4f}",
        f"  seconds (reference set, validation and test): fp32 {r['seconds']['fp32']:.1f}, {mixed} {r['seconds'][mixed]:.1f}",
    ])


def run_precision_report(results: str, precision: str = "auto", out: str | None = None, **open_kwargs: Any) -> dict[str, Any]:
    """Open the run, report, print, and write ``precision_report.json`` (into ``out``, default the run folder)."""
    from anomalymap_helpers.files import storage
    from anomalymap_helpers.files.paths import resolve
    from anomalymap_helpers.runs.opened import Run

    if precision not in PRECISIONS:
        raise ParameterError(f"precision={precision!r}: use one of {list(PRECISIONS)}")
    run = Run.open(results, **open_kwargs)
    run.evaluation  # noqa: B018 - a run without notebook 03 is refused here, before any work
    report = precision_report(run, precision)
    print(format_report(report))
    path = storage.write_json(Path(resolve(out) if out else run.files.root) / "precision_report.json", report)
    print(f"wrote {path}")
    return report


def _main(args: argparse.Namespace) -> int:
    run_precision_report(args.results, args.precision, args.out, mnist_dir=args.mnist_dir, device=args.device)
    return 0


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit status."""
    from benchmarks._entry import run

    prec = argparse.ArgumentParser(prog="python benchmarks/precision_report.py", description="the run's scores in fp32 against mixed precision (bf16/fp16) on the same weights")
    prec.add_argument("--results", default="results/default", metavar="DIR", help="a run folder made by notebooks 01-03")
    prec.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp16"],
                      help="the mixed precision (auto: this device's; bf16 is emulated on CPUs without it)")
    prec.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    prec.add_argument("--out", default=None, metavar="DIR", help="where precision_report.json goes (default --results)")
    prec.add_argument("--mnist-dir", default=None)
    return run(prec, _main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
