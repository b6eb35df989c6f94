"""Training and scoring throughput: the project's paths against the original design's loop.

The harness (``speed_harness``) runs the two paths in processes that take turns, ``speed_workers``
holds the two paths, ``speed_profile`` times one training step's parts and ``speed_report`` prints
the table.

    python benchmarks/speed.py [--epochs N] [--out DIR] [--device cuda]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python benchmarks/NAME.py`: the repository's root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _main(args: argparse.Namespace) -> int:
    from benchmarks.speed_harness import run_speed

    run_speed(
        args.epochs,
        args.out,
        seed=args.seed,
        mnist_dir=args.mnist_dir,
        max_train=args.max_train,
        max_test=args.max_test,
        reference_retains_memory=not args.reference_glibc_defaults,
        image_size=args.image_size,
        channels=args.channels,
        device=args.device,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit status."""
    from benchmarks._entry import run

    speed = argparse.ArgumentParser(prog="python benchmarks/speed.py", description="training and scoring throughput against the reference loop")
    speed.add_argument("--epochs", type=int, default=5, help="epochs of each training path (default 5)")
    speed.add_argument("--out", default="results/speed", metavar="DIR", help="where speed.json goes")
    speed.add_argument("--seed", type=int, default=0)
    speed.add_argument("--mnist-dir", default=None, help="local MNIST folder (default $ANOMALYMAP_MNIST_DIR)")
    speed.add_argument("--max-train", type=int, default=None, help="cap on normal training images, for a quick run")
    speed.add_argument("--max-test", type=int, default=None, help="cap on test images scored, for a quick run")
    speed.add_argument("--image-size", type=int, default=28, help="image side (MNIST scaled up; default 28)")
    speed.add_argument("--channels", type=int, default=1, choices=(1, 3), help="1 grayscale or 3 colour")
    speed.add_argument(
        "--device", default="auto", help="where both loops train and score: auto (CUDA if any), cpu, cuda, cuda:N"
    )
    speed.add_argument(
        "--reference-glibc-defaults",
        action="store_true",
        help="run the reference loop without keeping freed memory (its speed then varies between runs)",
    )
    return run(speed, _main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
