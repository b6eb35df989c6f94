"""The two signals of a folder's detector, alone and together, on run folders the series has trained.

For each run folder (a restore model, e.g. made by ``benchmarks/small_folders.py``), on its own
splits: ``segment`` (the restore model's segmentation: "looks damaged"), ``nearest-patch`` (each
pixel's neighbourhood against the nearest normal training neighbourhood: "unlike any normal",
:mod:`anomalymap_helpers.pipeline.scoring.patch_memory`, fitted on the run's training split), and
``both`` (the ``two-signal`` score, :mod:`anomalymap_helpers.pipeline.scoring.two_signal`): each map
calibrated on the run's validation normals, ``(map - q50) / (q99 - q50)`` of their pixels, the two averaged. Every image score is its map's largest window mean (as ``segment``'s).
Nothing here looks at a test label but to measure: the calibration is the validation normals',
and the combination is fixed in advance (docs/photographs.md, "The rule").

Prints, per signal, per folder and per defect type, the image ROC-AUC / pixel ROC-AUC / AUPRO, and
their mean over folders, and writes them to ``--out`` as JSON.

    python benchmarks/two_signals.py results/photos/restore/now-*-seed0
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python benchmarks/NAME.py`: the repository's root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import json
import statistics
import time

from benchmarks.nearest_patch import COLUMNS, figures  # noqa: E402 - after the path is set

SIGNALS = ("segment", "nearest-patch", "both")


def one_run(run_dir: Path, scales: tuple[int, ...]) -> dict:
    """Each signal's figures on one run folder, overall and per defect type."""
    from anomalymap_helpers.pipeline import scoring
    from anomalymap_helpers.pipeline.scoring.patch_memory import PatchMemory
    from anomalymap_helpers.pipeline.scoring.segment import segment_scores
    from anomalymap_helpers.pipeline.scoring.two_signal import calibration, two_signal_maps
    from anomalymap_helpers.runs.opened import Run

    run = Run.open(run_dir)
    train, val, test = (run.splits[k] for k in ("train", "val", "test"))
    t0 = time.perf_counter()
    seg_val = scoring.score(run.model, val.images).segmentation
    seg_test = scoring.score(run.model, test.images).segmentation
    t1 = time.perf_counter()
    memory = PatchMemory(train.images, scales=scales)
    patch_val, patch_test = memory(val.images), memory(test.images)
    t2 = time.perf_counter()
    cal = {"segment": calibration(seg_val), "nearest-patch": calibration(patch_val)}
    maps = {"segment": seg_test, "nearest-patch": patch_test, "both": two_signal_maps(seg_test, patch_test, cal)}
    out: dict = {"seconds": {"segment": t1 - t0, "nearest-patch": t2 - t1}, "folder": run_dir.name}
    for name, m in maps.items():
        out[name] = figures(segment_scores(m), m, test.labels, test.masks, test.class_names)
    return out


def _main(args: argparse.Namespace) -> int:
    from benchmarks.machine import cpu_info

    scales = tuple(int(s) for s in args.scales.split(","))
    results = []
    for run_dir in map(Path, args.runs):
        r = one_run(run_dir, scales)
        results.append(r)
        print(run_dir.name, {s: {c: round(r[s]["all"][c], 3) for c in COLUMNS} for s in SIGNALS},
              {k: round(v, 1) for k, v in r["seconds"].items()}, flush=True)
    print(f"\nnearest-patch scales {args.scales}; CPU {cpu_info()}\n")
    print("| run | " + " | ".join(SIGNALS) + " |\n|---|" + "---:|" * len(SIGNALS))
    for r in results:
        print(f"| {r['folder']} | " + " | ".join(" / ".join(f"{r[s]['all'][c]:.3f}" for c in COLUMNS) for s in SIGNALS) + " |")
    print("| mean | " + " | ".join(" / ".join(f"{statistics.mean(r[s]['all'][c] for r in results):.3f}" for c in COLUMNS)
                                 for s in SIGNALS) + " |")
    kinds = sorted({k for r in results for k in r["both"] if k != "all"})
    print("\nper defect type, mean over runs: image ROC-AUC / pixel ROC-AUC / AUPRO\n")
    print("| signal | " + " | ".join(kinds) + " |\n|---|" + "---:|" * len(kinds))
    for s in SIGNALS:
        cells = [" / ".join(f"{statistics.mean(r[s][k][c] for r in results if k in r[s]):.2f}" for c in COLUMNS)
                 for k in kinds]
        print(f"| {s} | " + " | ".join(cells) + " |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit status."""
    from benchmarks._entry import run

    parser = argparse.ArgumentParser(prog="python benchmarks/two_signals.py", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run folders of the restore model on category folders")
    parser.add_argument("--scales", default="1,2", help="nearest-patch's poolings (default 1,2)")
    parser.add_argument("--out", default=None, metavar="FILE", help="write the figures here as JSON")
    return run(parser, _main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
