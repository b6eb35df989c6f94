"""How fast does the restore model train, with its head reading the image in cells or pixel by pixel?

Times the restore model's training step (damage drawn, then the series' own
:func:`~anomalymap_helpers.pipeline.training.training_step`: the MSE and focal losses, backward, fused
Adam) on random images of ``--image-size`` (RGB, batch 16, the precision
the series would use on this CPU), median of ``--repeats`` rounds of ``--steps`` steps, twice: with
the head as the model builds it (:func:`~anomalymap_helpers.pipeline.models.head_cell`: 2x2 cells
at 128x128) and with a head of the same widths on every pixel (the model before cells). Prints
images/s of each and the CPU.

    python benchmarks/restore_speed.py --image-size 128
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python benchmarks/NAME.py`: the repository's root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import statistics
import time


def _rate(model, images, precision, steps: int, repeats: int) -> float:
    import torch

    from anomalymap_helpers.pipeline import training as train

    optimizer = train.new_optimizer(model, 1e-3)
    scaler = torch.amp.GradScaler("cpu", enabled=precision.use_grad_scaler)
    batch = train.to_device(images, torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)

    objective = train.objective_for("restore", model, precision)

    def step() -> None:  # the series' step: damage drawn for the batch, then train.training_step
        train.training_step(objective, optimizer, scaler, objective.draw(batch, batch, gen))

    for _ in range(2):  # warm-up: oneDNN picks its kernels
        step()
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        rates.append(steps * len(images) / (time.perf_counter() - t0))
    return statistics.median(rates)


def _main(args: argparse.Namespace) -> int:
    import torch

    from anomalymap_helpers.pipeline.models import ModelConfig, RestoreNet, SegmentationHead, check_image_size
    from anomalymap_helpers.pipeline.training.device import resolve_precision
    from benchmarks.machine import cpu_info

    check_image_size(args.image_size)
    precision = resolve_precision(torch.device("cpu"), warn=False)
    images = torch.rand(16, 3, args.image_size, args.image_size, generator=torch.Generator().manual_seed(1))
    print(f"cpu: {cpu_info()}, {torch.get_num_threads()} threads, {precision.name}")
    rates = {}
    for label in ("cells", "pixels"):
        torch.manual_seed(0)
        model = RestoreNet(ModelConfig(image_size=args.image_size, channels=3))
        if label == "pixels":
            model.head = SegmentationHead(3 * model.config.channels).to(memory_format=torch.channels_last)
        rates[label] = _rate(model.train(), images, precision, args.steps, args.repeats)
        print(f"head on {label} (cell {model.head.cell}): {rates[label]:.1f} training images/s", flush=True)
    print(f"cells / pixels: {rates['cells'] / rates['pixels']:.2f}x")
    return 0


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit status."""
    from benchmarks._entry import run

    parser = argparse.ArgumentParser(prog="python benchmarks/restore_speed.py", description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    return run(parser, _main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
