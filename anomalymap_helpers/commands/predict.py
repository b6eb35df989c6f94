"""``python -m anomalymap_helpers predict``: a trained run on new images, into a folder of its own.

``predict --results RUN IMAGES... [--out DIR]`` scores every image file among IMAGES (files, or
folders searched recursively; see :mod:`anomalymap_helpers.runs.predictions`) and writes, into a new
folder (``--out``, refused if it exists and is not empty; by default the first free
``<RUN>/predictions-<k>``, so a second call never mixes its rows with an earlier one's):

- ``predictions.csv``: ``path, score, verdict, threshold, percentile, note``, one row per image;
  ``percentile`` is the share of the run's validation normals that score lower;
- ``flagged/``: for each image called an anomaly, the image, its map over it and, where the score
  has one, its best-matching normal training image;
- ``skipped.csv``: each file that could not be read, and why (only when there are some).

The images are scored a batch at a time (:func:`~anomalymap_helpers.runs.predictions.predict_batches`):
each batch's rows are kept and its flagged images drawn, and its images and maps let go, so memory
stays flat whatever the number of images (``benchmarks/predict_speed.py --memory``). The folder is
built beside its place and renamed into it at the end, so it is never half written.
It prints what it did to images that did not fit the run, each skipped file, and a summary line
(``37 of 500 flagged at threshold 0.0812``). Exit status: 0, or 3 when some files were skipped
(the others are scored), 2 for bad arguments, 1 for a run that is not ready.
"""

from __future__ import annotations

import argparse
from collections import Counter
from contextlib import nullcontext
from pathlib import Path

from anomalymap_helpers.files import storage
from anomalymap_helpers.files.lock import writing
from anomalymap_helpers.files.paths import shown

SKIPPED_EXIT = 3


def free_folder(root: Path, stem: str = "predictions") -> Path:
    """The first ``root/<stem>-<k>`` (k = 1, 2, ...) that does not exist."""
    k = 1
    while (root / f"{stem}-{k}").exists():
        k += 1
    return root / f"{stem}-{k}"


def predict_command(args: argparse.Namespace) -> int:
    """The ``predict`` verb; returns the exit status."""
    from anomalymap_helpers.pipeline.progress import headless, progress_bar
    from anomalymap_helpers.runs.opened import Run
    from anomalymap_helpers.runs.predictions import find_images, predict_batches, summary_line

    run = Run.open(args.results, mnist_dir=args.mnist_dir, device=args.device)
    run.evaluation  # noqa: B018 - refuse a run that 03 has not scored before any image is read
    run.files.require(run.files.model, "02_training")
    paths, ignored = find_images(args.images)  # a missing input is refused here, before any work
    out = Path(args.out) if args.out else free_folder(run.files.root)
    inside = out.resolve().is_relative_to(run.files.root.resolve())
    with writing(run.files.root, "predict") if inside else nullcontext(), storage.new_folder(out) as build:
        plain = headless()
        bar = progress_bar(len(paths), "images", disable=plain)
        done = [0]

        def on_batch(n: int) -> None:
            bar.update(n - done[0])
            done[0] = n
            if plain:
                print(f"scored {n:,} of {len(paths):,} images", flush=True)

        from anomalymap_helpers.pipeline.evaluation import plotting

        train_images = run.splits["train"].images
        rows, notes, flagged, n, p = [], Counter(), 0, 0, None
        # A batch at a time (predict_batches): its rows kept, its flagged images drawn, its images and maps let go.
        for p in predict_batches(run, paths or args.images, batch_size=args.batch_size):  # the files found above
            rows += [[name, f"{float(s):.6g}", "anomaly" if a else "normal", f"{p.threshold:.6g}", f"{float(q):.1f}", note]
                     for name, s, a, q, note in zip(p.names, p.scores, p.anomaly, p.percentiles, p.notes, strict=True)]
            notes.update(note for note in p.notes if note)
            for i in map(int, p.anomaly.nonzero().flatten()):
                storage.save_figure(plotting.prediction_figure(p, i, p.best_match(i, train_images)),
                                    build / "flagged" / f"{n + i:05d}_{Path(p.names[i]).stem}.png", dpi=100)
            flagged, n = flagged + int(p.anomaly.sum()), n + len(p)
            on_batch(n + len(p.skipped))
        bar.close()
        storage.write_csv(build / "predictions.csv", ["path", "score", "verdict", "threshold", "percentile", "note"], rows)
        if p.skipped:
            storage.write_csv(build / "skipped.csv", ["path", "why"], p.skipped)
    if ignored:
        print(f"ignored {len(ignored)} file(s) that are not images (never read): {', '.join(map(shown, ignored[:5]))}"
              + (" ..." if len(ignored) > 5 else ""))
    for note, count in notes.items():
        print(f"{count} image(s): {note}")
    for path, why in p.skipped:
        print(f"skipped {shown(path)}: {why}")
    print(summary_line(flagged, n, p.threshold, p.method, len(p.skipped)))
    print(f"wrote {out}/predictions.csv" + (f" and {flagged} figure(s) in {out}/flagged/" if flagged else ""))
    return SKIPPED_EXIT if p.skipped else 0
