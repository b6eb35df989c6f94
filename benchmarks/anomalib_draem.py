"""The peer on the same folders: anomalib's DRAEM, trained for a stated time, scored by our metrics.

Runs in a venv of its own, so anomalib never becomes one of the project's dependencies::

    python3 -m venv ../anomalib-venv
    ../anomalib-venv/bin/pip install torch==2.14.1 torchvision==0.29.1 anomalib==2.7.0
    ../anomalib-venv/bin/python benchmarks/anomalib_draem.py --image-dir data/example-textures/{wood,fabric,metal} \\
        --minutes 5 --out results/anomalib-draem

For each category folder (MVTec AD layout) it trains ``anomalib.models.Draem`` (97M parameters) at
the folder's image size on ``train/good`` for at most ``--minutes`` of training (Lightning's
``max_time``; ``--epochs`` caps the epochs too), predicts every test image, and computes the image
ROC-AUC, pixel ROC-AUC and AUPRO with this project's own metrics
(:mod:`anomalymap_helpers.pipeline.evaluation.metrics`, on the same masks), so the figures compare with the
series' ``metrics.json``. DRAEM's paper fills its synthetic anomalies with textures from the DTD
data set, which cannot be downloaded here: an empty folder is given, so anomalib's Perlin
generator fills them with its own noise patterns. No test label chooses anything.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # our metrics, read from the repository


def one_folder(image_dir: Path, out: Path, minutes: float, epochs: int, size: int, seed: int) -> dict:
    import numpy as np
    import torch
    from anomalib.data import Folder
    from anomalib.engine import Engine
    from anomalib.models import Draem
    from lightning.pytorch import seed_everything
    from PIL import Image

    from anomalymap_helpers.pipeline.evaluation import metrics

    seed_everything(seed)
    types = sorted(p.name for p in (image_dir / "test").iterdir() if p.is_dir() and p.name != "good")
    datamodule = Folder(
        name=image_dir.name, root=image_dir, normal_dir="train/good", normal_test_dir="test/good",
        abnormal_dir=[f"test/{t}" for t in types], mask_dir=[f"ground_truth/{t}" for t in types],
        train_batch_size=8, eval_batch_size=32, num_workers=0, val_split_mode="from_train", val_split_ratio=0.1,
        seed=seed,  # 10 % of train/good held out as validation normals, as the series does
    )
    dtd = out / "empty-dtd"  # DRAEM's anomaly source textures: none can be downloaded here
    dtd.mkdir(parents=True, exist_ok=True)
    model = Draem(dtd_dir=dtd, pre_processor=Draem.configure_pre_processor(image_size=(size, size)),
                  visualizer=False)
    engine = Engine(max_epochs=epochs, max_time={"minutes": minutes}, default_root_dir=str(out / "lightning"),
                    accelerator="cpu", devices=1, logger=False)
    t0 = time.perf_counter()
    engine.fit(model=model, datamodule=datamodule)
    train_s = time.perf_counter() - t0
    done_epochs = engine.trainer.current_epoch
    t0 = time.perf_counter()
    batches = engine.predict(model=model, datamodule=datamodule, return_predictions=True)
    predict_s = time.perf_counter() - t0
    paths, scores, maps = [], [], []
    for b in batches:
        paths += [str(p) for p in b.image_path]
        scores.append(b.pred_score.float().cpu().reshape(-1))
        maps.append(b.anomaly_map.float().cpu().reshape(len(b.image_path), 1, size, size))
    scores_t, maps_t = torch.cat(scores).numpy(), torch.cat(maps).numpy()
    masks = []
    for p in map(Path, paths):
        kind = p.parent.name
        mask = image_dir / "ground_truth" / kind / f"{p.stem}_mask.png"
        if kind == "good" or not mask.exists():
            masks.append(np.zeros((1, size, size), dtype=bool))
        else:
            m = Image.open(mask).convert("L").resize((size, size), Image.NEAREST)
            masks.append(np.asarray(m)[None] > 0)
    masks_a = np.stack(masks)
    is_anomaly = np.array([Path(p).parent.name != "good" for p in paths])
    return {
        "folder": image_dir.name, "seed": seed, "images": len(paths),
        "roc_auc": metrics.roc_auc_score(is_anomaly, scores_t),
        "pixel_roc_auc": metrics.pixel_roc_auc(maps_t, masks_a), "aupro": metrics.aupro(maps_t, masks_a),
        "epochs": done_epochs, "train_seconds": train_s, "predict_seconds": predict_s,
        "train_images_per_s": done_epochs * len(datamodule.train_data) / max(train_s, 1e-9),
        "threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-dir", nargs="+", required=True, metavar="DIR")
    parser.add_argument("--minutes", type=float, default=5.0, help="training time per folder (default 5)")
    parser.add_argument("--epochs", type=int, default=700, help="at most this many epochs (DRAEM's paper: 700)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="results/anomalib-draem", metavar="DIR")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    done = out / "draem.json"
    rows = json.loads(done.read_text()) if done.exists() else []
    for image_dir in map(Path, args.image_dir):
        if any(r["folder"] == image_dir.name and r["seed"] == args.seed for r in rows):
            continue
        rows.append(one_folder(image_dir, out / image_dir.name, args.minutes, args.epochs, args.image_size, args.seed))
        done.write_text(json.dumps(rows, indent=2))
        print(rows[-1], flush=True)
    print("\n| folder | image ROC-AUC | pixel ROC-AUC | AUPRO | epochs | training s | images/s |\n|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['folder']} | {r['roc_auc']:.3f} | {r['pixel_roc_auc']:.3f} | {r['aupro']:.3f} | {r['epochs']} | "
              f"{r['train_seconds']:.0f} | {r['train_images_per_s']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
