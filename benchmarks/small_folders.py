"""Does training stop where it should on a small folder, and what does that do to the results?

Runs the whole series with its defaults (nothing but ``dataset folder``, ``image_dir`` and
``image_size``, or a ``--variant``'s parameters besides) on each category folder and seed, in one or more checkouts of the project (e.g.
this one against an older commit in a ``git worktree``), and prints per checkout and folder the
image ROC-AUC, pixel ROC-AUC, AUPRO, the best and last epoch and the training seconds, as mean ±
sample std over the seeds. A stopped benchmark resumes: a run folder with its ``metrics.json``
is read, not run again, and a run that failed (its log, no ``metrics.json``) is reported, not
retried (delete its folder and log to retry).

    python benchmarks/small_folders.py --image-dir data/example-textures/{wood,fabric,metal} \\
        --checkout now=. --checkout before=/tmp/before --seeds 3 --out results/small-folders
    python benchmarks/small_folders.py --image-dir data/dev-textures/{wood,fabric,metal} \\
        --variant ae model=ae --variant restore model=restore --seeds 3 --out results/dev-models
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python benchmarks/NAME.py`: the repository's root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import csv
import json
import statistics
import subprocess
import time
from typing import Any

COLUMNS = ("roc_auc", "pixel_roc_auc", "aupro", "best_epoch", "epochs", "train_seconds", "images_per_s")


def one_run(checkout: Path, image_dir: Path, seed: int, image_size: int, out: Path, data_dir: Path,
            params: dict[str, str] | None = None) -> dict[str, Any]:
    """The series in ``checkout`` on ``image_dir`` with ``seed`` (and ``params``) into ``out`` (kept if already done)."""
    metrics = out / "metrics.json"
    log = out.parent / f"{out.name}.log"
    if not metrics.exists() and log.exists():  # failed before: read, not retried (delete the folder to retry)
        tail = log.read_text().strip().splitlines()[-3:]
        return {"failed": " | ".join(tail), "seconds": 0.0}
    if not metrics.exists():
        cmd = [sys.executable, "-m", "anomalymap_helpers", "run", "--results", str(out), "-p", "dataset", "folder",
               "-p", "image_dir", str(image_dir), "-p", "image_size", str(image_size), "-p", "seed", str(seed),
               "-p", "data_dir", str(data_dir)]
        for name, value in (params or {}).items():
            cmd += ["-p", name, value]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=checkout, capture_output=True, text=True)
        (out.parent / f"{out.name}.log").write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
            return {"failed": " | ".join(tail), "seconds": time.perf_counter() - t0}
    if not metrics.exists():
        return {"failed": f"no metrics.json in {out}", "seconds": 0.0}
    m = json.loads(metrics.read_text())
    model = json.loads((out / "model.json").read_text())
    with open(out / "training_history.csv", newline="") as fh:
        history = list(csv.DictReader(fh))
    best = model.get("best_epoch") or len(history)  # an older checkout keeps its last epoch
    return {
        "roc_auc": m["roc_auc"], "pixel_roc_auc": m["pixel_roc_auc"], "aupro": m["aupro"],
        "best_epoch": best, "epochs": len(history), "train_seconds": sum(float(h["seconds"]) for h in history),
        "images_per_s": sum(float(h["images_per_s"]) * float(h["seconds"]) for h in history)
        / max(sum(float(h["seconds"]) for h in history), 1e-9),  # images trained per second of training
    }


def summary(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.3f}" if values else "-"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def _main(args: argparse.Namespace) -> int:
    out = Path(args.out).resolve()  # the series of another checkout runs in that folder
    out.mkdir(parents=True, exist_ok=True)
    checkouts = {label: (checkout, {}) for label, checkout in (c.split("=", 1) for c in args.checkout or [])}
    for label, settings in args.variant or []:  # in this checkout, with some parameters set
        checkouts[label] = (".", dict(kv.split("=", 1) for kv in settings.split(",") if kv))
    checkouts = checkouts or {"now": (".", {})}
    rows = []
    for label, (checkout, params) in checkouts.items():
        for image_dir in map(Path, args.image_dir):
            for seed in range(args.seeds):
                run = out / f"{label}-{image_dir.name}-seed{seed}"
                r = one_run(Path(checkout).resolve(), image_dir.resolve(), seed, args.image_size, run, out / "data",
                            params)
                rows.append({"checkout": label, "folder": image_dir.name, "seed": seed, **r})
                print(label, image_dir.name, seed, {k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()},
                      flush=True)
    (out / "small_folders.json").write_text(json.dumps(rows, indent=2))
    print(f"\n| checkout | folder | {' | '.join(COLUMNS)} |\n|---|---|{'---:|' * len(COLUMNS)}")
    for label in checkouts:
        for image_dir in map(Path, args.image_dir):
            got = [r for r in rows if r["checkout"] == label and r["folder"] == image_dir.name and "failed" not in r]
            failed = sum(1 for r in rows if r["checkout"] == label and r["folder"] == image_dir.name and "failed" in r)
            cells = [summary([float(r[c]) for r in got]) for c in COLUMNS]
            note = f" ({failed} failed)" if failed else ""
            print(f"| {label} | {image_dir.name}{note} | {' | '.join(cells)} |")
        got = [r for r in rows if r["checkout"] == label and "failed" not in r]
        means = []
        for c in COLUMNS[:3]:  # the mean over folders of each seed, then mean ± std over seeds
            per_seed = [statistics.mean(float(r[c]) for r in got if r["seed"] == s) for s in range(args.seeds)
                        if any(r["seed"] == s for r in got)]
            means.append(summary(per_seed))
        print(f"| {label} | mean of folders | {' | '.join(means)} | | | | |")
    for label in args.per_type or []:
        per_type(out, label, [Path(d).name for d in args.image_dir], args.seeds)
    return 0


def per_type(out: Path, label: str, folders: list[str], seeds: int) -> None:
    """Print, for one checkout or variant, each defect type's image ROC-AUC / pixel ROC-AUC / AUPRO per
    folder, the mean over the seeds whose notebook 03 wrote ``per_type.csv``."""
    rows: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    for folder in folders:
        for seed in range(seeds):
            path = out / f"{label}-{folder}-seed{seed}" / "per_type.csv"
            if path.exists():
                with open(path, newline="") as fh:
                    for r in csv.DictReader(fh):
                        if r["kind"] == "anomaly" and "pixel_roc_auc" in r:
                            rows.setdefault((folder, r["name"]), []).append(
                                (float(r["roc_auc"]), float(r["pixel_roc_auc"]), float(r["aupro"])))
    types = sorted({t for _, t in rows})
    print(f"\n{label}: image ROC-AUC / pixel ROC-AUC / AUPRO per defect type, mean over seeds\n")
    print(f"| folder | {' | '.join(types)} |\n|---|{'---:|' * len(types)}")
    for folder in folders:
        cells = []
        for t in types:
            v = rows.get((folder, t), [])
            cells.append(" / ".join(f"{statistics.mean(x[j] for x in v):.{2 if j == 0 else 3}f}" for j in range(3))
                         if v else "-")
        print(f"| {folder} | {' | '.join(cells)} |")


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit status."""
    from benchmarks._entry import run

    parser = argparse.ArgumentParser(prog="python benchmarks/small_folders.py", description=__doc__.splitlines()[0])
    parser.add_argument("--image-dir", nargs="+", required=True, metavar="DIR", help="category folders (MVTec AD layout)")
    parser.add_argument("--checkout", action="append", metavar="LABEL=DIR",
                        help="a checkout to run the series in (repeatable; default now=.)")
    parser.add_argument("--variant", nargs=2, action="append", metavar=("LABEL", "NAME=VALUE,..."),
                        help="a run of this checkout with some parameters set, e.g. restore model=restore (repeatable)")
    parser.add_argument("--per-type", action="append", metavar="LABEL",
                        help="then each defect type's figures for this checkout or variant (repeatable)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--out", default="results/small-folders", metavar="DIR")
    return run(parser, _main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
