"""Did a change keep the computation? The smoke chain's result files, digested, for a before/after check.

Runs the five notebooks, as the tests' smoke chain does, on three small runs (the MNIST smoke run,
the autoencoder on the example washer folder, the restore model on a small wood texture folder) and
prints one line per result file (the weights among them): its SHA-256, or, for the files that hold wall-clock times
(``metrics.json``, ``history.csv``, ``model.json``), the SHA-256 of their content without those
times. Run it in two checkouts and compare the lines:

    python benchmarks/chain_digest.py --out /tmp/chain-now > now.txt
    (cd /tmp/before && python benchmarks/chain_digest.py --out /tmp/chain-before) > before.txt
    diff before.txt now.txt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python benchmarks/NAME.py`: the repository's root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import csv
import hashlib
import io
import json
import subprocess
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
# The tests' smoke parameters (tests/conftest.py: SMALL, FOLDER_SMALL, restore_run_dir).
MNIST = {"max_train": 4000, "max_test": 500, "epochs": 1, "batch_size": 32, "tsne_samples": 150, "n_heatmaps": 4}
FOLDER = {"dataset": "folder", "image_size": 32, "model": "ae", "epochs": 25, "n_heatmaps": 4, "tsne_samples": 20}
RESTORE = {"dataset": "folder", "image_size": 32, "model": "auto", "epochs": 6, "n_heatmaps": 2, "tsne_samples": 20}
TIMED = {"finished", "seconds", "images_per_s", "train_seconds", "score_seconds", "seconds_per_image", "device", "wall_seconds"}


def _untimed(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _untimed(v) for k, v in value.items() if k not in TIMED and "seconds" not in k}
    if isinstance(value, list):
        return [_untimed(v) for v in value]
    return value


def digest(path: Path, out: Path) -> str:
    """SHA-256 of ``path``, with wall-clock times left out of JSON files and of CSV columns named for them,
    and the folder ``out`` written as ``OUT``; of a ``.safetensors`` file, its tensors'."""
    if path.suffix == ".safetensors":  # the tensors, by name: the header also holds when they were saved
        from safetensors.torch import load_file

        tensors = load_file(path)
        return hashlib.sha256(b"".join(k.encode() + tensors[k].contiguous().view(-1).view(torch.uint8).numpy().tobytes()
                                       for k in sorted(tensors))).hexdigest()[:16]
    data = path.read_bytes().replace(str(out).encode(), b"OUT")
    if path.suffix == ".json":
        data = json.dumps(_untimed(json.loads(data)), sort_keys=True).encode()
    elif path.suffix == ".csv":
        rows = list(csv.reader(io.StringIO(data.decode())))
        keep = [i for i, name in enumerate(rows[0] if rows else []) if name not in TIMED and "seconds" not in name]
        data = "\n".join(",".join(row[i] for i in keep if i < len(row)) for row in rows).encode()
    return hashlib.sha256(data).hexdigest()[:16]


def series(out: Path, params: dict[str, Any]) -> None:
    args = [sys.executable, "-m", "anomalymap_helpers", "run", "--results", str(out)]
    for name, value in params.items():
        args += ["-p", name, str(value)]
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"the series into {out} failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="a new folder for the runs and their data")
    args = parser.parse_args(argv)
    from anomalymap_helpers.pipeline.data.example import make_example_folder
    from anomalymap_helpers.pipeline.data.idx import EMBEDDED_DIR
    from anomalymap_helpers.pipeline.data.textures import make_texture_folders

    out = args.out
    data = out / "data"
    washers = make_example_folder(out / "example" / "washers", size=32, n_train=160, n_test_good=10, n_defect=6,
                                  data_dir=str(out / "d"), mnist_dir=str(EMBEDDED_DIR))
    wood = make_texture_folders(out / "tex", size=32, n_train=60, n_test_good=8, n_defect=2,
                                materials=("wood",)) / "wood"
    runs = {
        "mnist": {**MNIST, "mnist_dir": EMBEDDED_DIR, "data_dir": data},
        "washers": {**FOLDER, "image_dir": washers, "data_dir": data},
        "restore": {**RESTORE, "image_dir": wood, "data_dir": data},
    }
    for name, params in runs.items():
        series(out / name, params)
        for path in sorted((out / name).rglob("*")):
            if path.suffix in (".json", ".csv", ".safetensors"):
                print(f"{name}/{path.relative_to(out / name)}  {digest(path, out)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
