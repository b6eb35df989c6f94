"""Which schedule and augmentation should a small folder train with? Chosen by validation loss and time.

On development folders (not the ones whose test results are reported: e.g. the texture folders
made with ``example-folder --kind textures --seed 1``), trains the autoencoder with each
candidate setting from notebook 01's split of each folder and prints, per folder and setting,
the best validation MSE (normal images only, unaugmented), the mean image's MSE on the same
images, the best and last epoch and the training seconds. No test image is read.

    python benchmarks/small_schedule.py --image-dir data/dev-textures/{wood,fabric,metal} \\
        --out results/small-schedule
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python benchmarks/NAME.py`: the repository's root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import json
import math
import statistics
import time

# label: (images seen at most, as train.AUTO_IMAGES; batch size; augment value)
CANDIDATES = {
    "10k images, batch 16": (10_000, 16, "off"),
    "10k images, batch 16, augment": (10_000, 16, "auto"),
    "20k images, batch 16": (20_000, 16, "off"),
    "10k images, batch 32": (10_000, 32, "off"),
}


def _main(args: argparse.Namespace) -> int:
    import torch

    from anomalymap_helpers.files.paths import RunFiles
    from anomalymap_helpers.pipeline import data
    from anomalymap_helpers.pipeline import training as train
    from anomalymap_helpers.pipeline.models import augment

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    done_file = out / "small_schedule.json"
    rows = json.loads(done_file.read_text()) if done_file.exists() else []
    done = {(r["folder"], r["setting"], r["seed"]) for r in rows}
    for image_dir in map(Path, args.image_dir):
        files = RunFiles.at(out / f"splits-{image_dir.name}-seed{args.seed}")
        if not files.manifest.exists():
            images = data.load_dataset("folder", image_dir=str(image_dir), image_size=args.image_size)
            config = data.folder_split_config(images.class_names, val_fraction=0.1, seed=args.seed)
            data.write_splits(files, images, config, source=dict(image_dir=str(image_dir)))
        splits, _ = data.load_splits(files)
        x_train, x_val = splits["train"].images, splits["val"].images
        baseline = float(((x_val - x_train.mean(0, keepdim=True)) ** 2).mean())
        for label, (seen, batch, aug) in CANDIDATES.items():
            if (image_dir.name, label, args.seed) in done:
                continue
            epochs = math.ceil(seen / len(x_train))
            config = train.TrainConfig(epochs, batch, seed=args.seed, patience=args.patience,
                                       augment=augment.for_dataset(aug, "folder"))
            t0 = time.perf_counter()
            result = train.train(x_train, x_val, config, progress=False)
            seconds = time.perf_counter() - t0
            b = result.best_epoch
            row = {"folder": image_dir.name, "setting": label, "seed": args.seed, "best_val_loss":
                   result.history[b - 1]["val_loss"], "mean_image": baseline, "best_epoch": b,
                   "epochs": len(result.history), "seconds": seconds, "threads": torch.get_num_threads()}
            rows.append(row)
            done_file.write_text(json.dumps(rows, indent=2))
            print(row, flush=True)
    print("\n| folder | seed | setting | best val MSE | mean image | best / last epoch | training s |\n"
          "|---|---:|---|---:|---:|---|---:|")
    for r in sorted(rows, key=lambda r: (r["folder"], r["seed"])):
        print(f"| {r['folder']} | {r['seed']} | {r['setting']} | {r['best_val_loss']:.5f} | {r['mean_image']:.5f} | "
              f"{r['best_epoch']}/{r['epochs']} | {r['seconds']:.0f} |")
    # The choice: the lowest best validation MSE as a share of the mean image's, over folders and seeds.
    print("\n| setting | best val MSE / mean image's (mean ± std over folders x seeds) | training s (mean) | runs |\n|---|---:|---:|---:|")
    for label in CANDIDATES:
        mine = [r for r in rows if r["setting"] == label]
        if mine:
            ratio = [r["best_val_loss"] / r["mean_image"] for r in mine]
            sd = statistics.stdev(ratio) if len(ratio) > 1 else float("nan")
            print(f"| {label} | {statistics.mean(ratio):.4f} ± {sd:.4f} | "
                  f"{statistics.mean(r['seconds'] for r in mine):.0f} | {len(mine)} |")
    return 0


def main(argv: list[str] | None = None) -> int:
    from benchmarks._entry import run

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-dir", nargs="+", required=True, metavar="DIR", help="development category folders")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--patience", type=int, default=10)
    parser.add_argument("--out", default="results/small-schedule", metavar="DIR")
    return run(parser, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
