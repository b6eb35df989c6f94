"""How fast is ``predict`` on image files, against scoring the same images already in memory?

Writes ``--images`` of the run's test images (repeated where the split has fewer) as PNG files,
then times, median of ``--repeats``:

- ``predict`` on the folder (``Run.predict(folder)``: find, decode in two threads while the
  previous batch is scored, score with the run's Scorer, maps), decode included;
- the same images as one tensor in memory (``Run.predict(tensor)``: the same scoring, no files);

and prints both rates, their ratio, and that the two gave the same scores. The CPU is named.

With ``--memory N,M,...`` it measures instead the ``predict`` command's peak memory (the largest
resident set of its process, from ``wait4``) on N, then M, ... PNG files: flat memory is a peak
that does not grow with the number of images.

    python benchmarks/predict_speed.py --results results/default --images 1000
    python benchmarks/predict_speed.py --results results/default --memory 2000,20000
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python benchmarks/NAME.py`: the repository's root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import statistics
import tempfile
import time


def peak_memory(results: str, counts: list[int], device: str) -> list[tuple[int, float, float]]:
    """``(images, peak resident MB, seconds)`` of the ``predict`` command on each count of PNG files (the
    run's test images, repeated), each in a process of its own."""
    import os
    import subprocess

    from anomalymap_helpers.runs.opened import Run
    from anomalymap_helpers.runs.predictions import write_pngs

    test = Run.open(results).splits["test"].images
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for count in counts:
            folder = Path(tmp) / f"images-{count}"
            write_pngs(test.repeat(-(-count // len(test)), 1, 1, 1)[:count], folder)
            cmd = [sys.executable, "-m", "anomalymap_helpers", "predict", "--results", results, str(folder),
                   "--out", str(Path(tmp) / f"out-{count}"), "--device", device]
            t0 = time.perf_counter()
            child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            _, status, usage = os.wait4(child.pid, 0)
            child.returncode = os.waitstatus_to_exitcode(status)
            if child.returncode not in (0, 3):
                raise RuntimeError(f"predict on {count} images failed ({child.returncode}): {child.stderr.read().decode()[-500:]}")
            out.append((count, usage.ru_maxrss / 1024, time.perf_counter() - t0))  # ru_maxrss: KiB on Linux
    return out


def _main(args: argparse.Namespace) -> int:
    import torch

    if args.memory:
        from benchmarks.machine import cpu_info

        rows = peak_memory(args.results, [int(c) for c in args.memory.split(",")], args.device)
        print(f"CPU: {cpu_info()}\n\n| images | peak memory of predict (MB) | seconds |\n|---:|---:|---:|")
        for count, mb, seconds in rows:
            print(f"| {count:,} | {mb:,.0f} | {seconds:.1f} |")
        return 0

    from anomalymap_helpers.runs.opened import Run
    from anomalymap_helpers.runs.predictions import write_pngs
    from benchmarks.machine import cpu_info

    run = Run.open(args.results, device=args.device)
    test = run.splits["test"].images
    reps = -(-args.images // len(test))
    images = test.repeat(reps, 1, 1, 1)[: args.images]
    run.scorer()  # fitted once, as predict would on its first call: not part of either rate
    with tempfile.TemporaryDirectory() as tmp:
        write_pngs(images, tmp)
        from_files, in_memory = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            p_files = run.predict(tmp, batch_size=args.batch_size)
            from_files.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            p_memory = run.predict((images * 255).round() / 255, batch_size=args.batch_size)
            in_memory.append(time.perf_counter() - t0)
    files_rate = len(images) / statistics.median(from_files)
    memory_rate = len(images) / statistics.median(in_memory)
    same = torch.allclose(p_files.scores, p_memory.scores, rtol=1e-5, atol=1e-6)
    _, c, h, w = images.shape
    print(f"CPU: {cpu_info()}; torch threads {torch.get_num_threads()}")
    print(f"run {args.results}: {len(images):,} images {c}x{h}x{w}, score {p_files.method}, batch {args.batch_size}")
    print(f"predict on PNG files (decode included): {files_rate:,.0f} images/s")
    print(f"the same images in memory:              {memory_rate:,.0f} images/s")
    print(f"files / memory: {files_rate / memory_rate:.0%}; same scores: {same}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from benchmarks._entry import run

    parser = argparse.ArgumentParser(prog="python benchmarks/predict_speed.py", description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="results/default", metavar="DIR", help="a run folder scored by 03")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--memory", default=None, metavar="N,M,...",
                        help="instead: the predict command's peak memory on N, M, ... image files")
    return run(parser, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
