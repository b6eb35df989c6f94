"""How often does a two-process torchrun training end with a failed worker? (``exit_worker``'s figure.)

Trains one epoch of a small MNIST slice in two gloo processes ``--runs`` times, with ``--load`` busy
processes beside it (the failure shows under load), and prints each failure's last lines and the count.

    .venv/bin/python benchmarks/torchrun_exits.py --runs 60 --load 2
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from anomalymap_helpers.commands.run import run_series
from anomalymap_helpers.pipeline.training import distributed

ROOT = Path(__file__).resolve().parents[1]


def busy() -> None:
    while True:
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=60)
    ap.add_argument("--load", type=int, default=2, help="busy processes beside the training")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="torchrun-exits-"))
    sources = {"mnist_dir": str(ROOT / "data" / "mnist"), "data_dir": str(work / "data")}
    splits = work / "splits"
    run_series({"max_train": 72, "max_test": 20, **sources}, splits,
               notebooks=[ROOT / "notebooks" / "01_data.ipynb"], echo=lambda _: None)
    params = {**sources, "epochs": 1, "batch_size": 128, "device": "cpu", "amp": False}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ANOMALYMAP_HEADLESS": "1", "PYTHONFAULTHANDLER": "1"}
    load = [multiprocessing.Process(target=busy, daemon=True) for _ in range(args.load)]
    for p in load:
        p.start()
    failed, t0 = 0, time.perf_counter()
    try:
        for i in range(args.runs):
            out = work / f"run{i}"
            out.mkdir()
            for name in ("splits.json", "splits.safetensors"):
                shutil.copy(splits / name, out / name)
            proc = subprocess.run(distributed.command(out, params, 2), cwd=ROOT, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                failed += 1
                print(f"run {i + 1}: status {proc.returncode}\n{(proc.stdout + proc.stderr)[-1500:]}", flush=True)
            shutil.rmtree(out)
    finally:
        for p in load:
            p.terminate()
        shutil.rmtree(work, ignore_errors=True)
    print(f"{failed} of {args.runs} two-process runs failed ({args.load} busy processes beside; "
          f"{time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
