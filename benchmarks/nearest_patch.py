"""The no-learning baseline: each pixel's neighbourhood against its nearest normal training neighbourhood.

``nearest-patch`` (:mod:`anomalymap_helpers.pipeline.scoring.patch_memory`) alone, fitted on every
image of ``train/good`` and scored on ``test/``: nothing is trained. With ``--scales 1`` it is the
raw-pixel baseline of issue 37 (each pixel's 7x7 patch against its nearest training patch). Prints
per folder the image ROC-AUC, pixel ROC-AUC and AUPRO, the same per defect type, the mean over
folders, and the seconds, and writes them to ``--out`` as JSON.

    python benchmarks/nearest_patch.py --image-dir data/example-photos/{stone,bark,grain,slate,leaves-photo}
    python benchmarks/nearest_patch.py --image-dir data/example-photos/stone --scales 1 --patch 7
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

COLUMNS = ("roc_auc", "pixel_roc_auc", "aupro")


def figures(scores, maps, labels, masks, class_names) -> dict:  # noqa: ANN001 - arrays
    """Image ROC-AUC, pixel ROC-AUC and AUPRO of ``scores`` ``(N,)`` and ``maps`` ``(N, 1, H, W)`` over the
    whole test set (``"all"``) and per defect type, each type's images with the normal ones, as notebook
    03's ``per_type.csv`` computes them (:func:`~anomalymap_helpers.pipeline.evaluation.metrics.per_class`)."""
    import numpy as np

    from anomalymap_helpers.pipeline.evaluation.metrics import aupro, per_class, pixel_roc_auc, roc_auc_score

    scores, maps, labels, masks = (np.asarray(a) for a in (scores, maps, labels, masks))
    out = {"all": {"roc_auc": float(roc_auc_score(labels > 0, scores)), "pixel_roc_auc": pixel_roc_auc(maps, masks),
                   "aupro": aupro(maps, masks)}}
    for row in per_class(scores, labels, labels > 0, class_names, float("inf"), maps=maps, masks=masks):
        if row["kind"] == "anomaly":
            out[row["name"]] = {c: row[c] for c in COLUMNS}
    return out


def one_folder(image_dir: Path, image_size: int, patch: int, scales: tuple[int, ...], bank: int) -> dict:
    """The baseline's figures on one category folder: overall and per defect type."""
    from anomalymap_helpers.pipeline.data.folder import load_folder
    from anomalymap_helpers.pipeline.scoring.patch_memory import PatchMemory
    from anomalymap_helpers.pipeline.scoring.segment import segment_scores

    data = load_folder(image_dir, image_size)
    t0 = time.perf_counter()
    memory = PatchMemory(data.train_images.float() / 255, patch=patch, scales=scales, bank=bank)
    maps = memory(data.test_images.float() / 255)
    seconds = time.perf_counter() - t0
    out = figures(segment_scores(maps), maps, data.test_labels, data.test_masks, data.class_names)
    return {**out, "seconds": seconds}


def _main(args: argparse.Namespace) -> int:
    from benchmarks.machine import cpu_info

    scales = tuple(int(s) for s in args.scales.split(","))
    results = {}
    for image_dir in map(Path, args.image_dir):
        results[image_dir.name] = one_folder(image_dir, args.image_size, args.patch, scales, args.bank)
        r = results[image_dir.name]["all"]
        print(image_dir.name, {k: round(v, 4) for k, v in r.items()}, f"{results[image_dir.name]['seconds']:.1f} s",
              flush=True)
    print(f"\nnearest-patch, patch {args.patch}, scales {args.scales}, memory {args.bank} a scale, "
          f"{args.image_size}x{args.image_size}; CPU {cpu_info()}\n")
    print("| folder | image ROC-AUC | pixel ROC-AUC | AUPRO | seconds |\n|---|---:|---:|---:|---:|")
    for name, r in results.items():
        cells = [f"{r['all'][c]:.3f}" for c in COLUMNS]
        print(f"| {name} | {' | '.join(cells)} | {r['seconds']:.1f} |")
    cells = [f"{statistics.mean(r['all'][c] for r in results.values()):.3f}" for c in COLUMNS]
    print(f"| mean | {' | '.join(cells)} | |")
    types = sorted({t for r in results.values() for t in r if t not in ("all", "seconds")})
    print(f"\nper defect type: image ROC-AUC / pixel ROC-AUC / AUPRO\n\n| folder | {' | '.join(types)} |\n"
          f"|---|{'---:|' * len(types)}")
    for name, r in results.items():
        cells = [" / ".join(f"{r[t][c]:.2f}" for c in COLUMNS) if t in r else "-" for t in types]
        print(f"| {name} | {' | '.join(cells)} |")
    means = [" / ".join(f"{statistics.mean(r[t][c] for r in results.values() if t in r):.2f}" for c in COLUMNS)
             for t in types]
    print(f"| mean | {' | '.join(means)} |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit status."""
    from benchmarks._entry import run

    parser = argparse.ArgumentParser(prog="python benchmarks/nearest_patch.py", description=__doc__.splitlines()[0])
    parser.add_argument("--image-dir", nargs="+", required=True, metavar="DIR", help="category folders (MVTec AD layout)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--patch", type=int, default=7, help="the neighbourhood's side in pixels (default 7)")
    parser.add_argument("--scales", default="1,2", help="the poolings compared, comma-separated (default 1,2)")
    parser.add_argument("--bank", type=int, default=16384, help="training neighbourhoods kept a scale (default 16384)")
    parser.add_argument("--out", default=None, metavar="FILE", help="write the figures here as JSON")
    return run(parser, _main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
