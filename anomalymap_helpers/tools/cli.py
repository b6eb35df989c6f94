"""The command line: ``python -m anomalymap_helpers run|train|export|time-to-detector|schedule-curve|compare-models|score-selection|precision-report|screenshot|params|example-folder|benchmark|speed|explorer-latency ...``."""

from __future__ import annotations

import argparse
import sys

from anomalymap_helpers.errors import AnomalyMapError


def _run(args: argparse.Namespace) -> int:
    from anomalymap_helpers.tools.runner import read_parameters, run_series

    run_series(read_parameters(args.file or [], args.param or []), args.results,
               kernel_per_notebook=args.kernel_per_notebook)
    return 0


def _train(args: argparse.Namespace) -> int:
    from anomalymap_helpers.tools.runner import read_parameters
    from anomalymap_helpers.tools.training import train_run

    train_run(read_parameters(args.file or [], args.param or []), args.results)
    return 0


def _export(args: argparse.Namespace) -> int:
    from anomalymap_helpers.tools.export import export

    out = export(args.results, args.out, input_type=args.input, mnist_dir=args.mnist_dir)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB): images in, anomaly map and score out; "
          "threshold and names in its metadata")
    if args.check:
        from anomalymap_helpers.runs.opened import Run
        from anomalymap_helpers.tools.export import check_export

        c = check_export(out, Run.open(args.results, mnist_dir=args.mnist_dir, device="cpu"))
        print(
            f"onnxruntime vs PyTorch (fp32) on {c['images']:,} test images: largest score difference "
            f"{c['score_diff']:.1e}, largest map difference {c['map_diff']:.1e}, "
            f"{c['verdict_flips']} verdict(s) changed at the threshold {c['threshold']:.5f}\n"
            f"scoring on the CPU: onnxruntime {c['onnxruntime_images_per_s']:,.0f} images/s, "
            f"PyTorch {c['pytorch_images_per_s']:,.0f} images/s (maps and the run's score, median of 3)"
        )
    return 0


def _time_to_detector(args: argparse.Namespace) -> int:
    from anomalymap_helpers.tools.runner import read_parameters
    from anomalymap_helpers.tools.time_to_detector import run_time_to_detector

    run_time_to_detector(args.results, read_parameters([], args.param or []), args.out, repeats=args.repeats)
    return 0


def _precision_report(args: argparse.Namespace) -> int:
    from anomalymap_helpers.tools.precision import run_precision_report

    run_precision_report(args.results, args.precision, args.out, mnist_dir=args.mnist_dir, device=args.device)
    return 0


def _screenshot(args: argparse.Namespace) -> int:
    from anomalymap_helpers.tools.screenshot import screenshot

    default = "docs/explorer_jupyterlab.png" if args.notebook == "04" else "docs/latent_map_jupyterlab.png"
    out = screenshot(args.results, args.out or default, mnist_dir=args.mnist_dir or "", notebook=args.notebook)
    print(f"wrote {out}")
    return 0


def _schedule_curve(args: argparse.Namespace) -> int:
    from anomalymap_helpers.tools.schedule_curve import run_curve

    run_curve(args.schedule or ["5x256", "1x32"], args.seeds, args.out, every=args.every,
              mnist_dir=args.mnist_dir, figure=args.figure)
    return 0


def _score_selection(args: argparse.Namespace) -> int:
    from anomalymap_helpers.tools.score_selection import run_selection

    protocols = ("leave-one-out", "one-class") if args.protocol == "both" else (args.protocol,)
    run_selection(args.dataset, protocols, tuple(args.digits), args.out)
    return 0


def _compare_models(args: argparse.Namespace) -> int:
    from anomalymap_helpers.tools.model_comparison import compare_models

    compare_models(args.seeds, args.out, beta=args.beta, mnist_dir=args.mnist_dir, max_train=args.max_train or None,
                   max_test=args.max_test or None)
    return 0


def _params(args: argparse.Namespace) -> int:
    from anomalymap_helpers.parameters import markdown_table

    print(markdown_table())
    return 0


def _example_folder(args: argparse.Namespace) -> int:
    from anomalymap_helpers.pipeline.data.example import make_example_folder

    out = make_example_folder(args.out, size=args.size, seed=args.seed, mnist_dir=args.mnist_dir)
    print(f"wrote an example category folder to {out}; try it with:")
    print(f"  python -m anomalymap_helpers run -p dataset folder -p image_dir {out} -p image_size {args.size}")
    return 0


def _speed(args: argparse.Namespace) -> int:
    from anomalymap_helpers.tools.speed import run_speed

    run_speed(
        args.epochs,
        args.out,
        seed=args.seed,
        mnist_dir=args.mnist_dir,
        max_train=args.max_train,
        reference_retains_memory=not args.reference_glibc_defaults,
        image_size=args.image_size,
        channels=args.channels,
        device=args.device,
    )
    return 0


def _benchmark(args: argparse.Namespace) -> int:
    from anomalymap_helpers.tools.benchmark import PROTOCOLS, run_benchmark

    protocols = PROTOCOLS if args.protocol == "both" else (args.protocol,)
    run_benchmark(
        protocols,
        tuple(args.digits),
        args.seeds,
        args.out,
        quick=args.quick,
        mnist_dir=args.mnist_dir,
        device=args.device,
        dataset=args.dataset,
    )
    return 0


def _latency(args: argparse.Namespace) -> int:
    import json

    from anomalymap_helpers.runs import storage
    from anomalymap_helpers.runs.opened import Run
    from anomalymap_helpers.tools.latency import measure_latency

    run = Run.open(args.results, mnist_dir=args.mnist_dir)
    result = {"moves": args.moves, **measure_latency(run.explorer(), args.moves)}
    if args.linked:
        from anomalymap_helpers.tools.latency import measure_linked

        result["linked"] = measure_linked(run.latent_explorer(), args.moves)
    print(json.dumps(result, indent=2))
    storage.write_json(run.files.root / "explorer_latency.json", result)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m anomalymap_helpers", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="execute the five notebooks in order with papermill")
    run.add_argument(
        "-p", "--param", nargs=2, action="append", metavar=("NAME", "VALUE"), help="a parameter (YAML value)"
    )
    run.add_argument("-f", "--file", action="append", metavar="PARAMS.yaml", help="a YAML file of parameters")
    run.add_argument("--results", metavar="DIR", help="the run folder (default results/default)")
    run.add_argument(
        "--kernel-per-notebook",
        action="store_true",
        help="a fresh kernel for each notebook, as in JupyterLab (default: one kernel, cleared between notebooks)",
    )
    run.set_defaults(func=_run)
    tr = sub.add_parser(
        "train",
        help="notebook 02's training step; under `torchrun --nproc-per-node N` in N processes (DDP)",
    )
    tr.add_argument(
        "-p", "--param", nargs=2, action="append", metavar=("NAME", "VALUE"), help="a parameter of notebook 02"
    )
    tr.add_argument("-f", "--file", action="append", metavar="PARAMS.yaml", help="a YAML file of parameters")
    tr.add_argument("--results", metavar="DIR", help="the run folder made by notebook 01 (default results/default)")
    tr.set_defaults(func=_train)
    exp = sub.add_parser("export", help="the run's detector as one ONNX file (map and score; threshold in its metadata)")
    exp.add_argument("--results", default="results/default", metavar="DIR", help="a run folder made by notebooks 01-03")
    exp.add_argument("--out", default=None, metavar="FILE.onnx", help="default <results>/detector.onnx")
    exp.add_argument(
        "--input", choices=["uint8", "float"], default="uint8",
        help="what the model takes: uint8 0-255 (default, as a PNG decodes) or float 0-1",
    )
    exp.add_argument(
        "--check", action="store_true",
        help="then score the run's test images both ways (onnxruntime, PyTorch fp32) and print the differences and speeds",
    )
    exp.add_argument("--mnist-dir", default=None)
    exp.set_defaults(func=_export)
    params = sub.add_parser("params", help="print every notebook parameter as a markdown table")
    params.set_defaults(func=_params)
    example = sub.add_parser(
        "example-folder", help="make a small folder data set (MVTec AD layout, defect masks) from MNIST"
    )
    example.add_argument("--out", default="data/example-folder", metavar="DIR", help="a new folder")
    example.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    example.add_argument("--seed", type=int, default=0)
    example.add_argument("--mnist-dir", default=None, help="local MNIST folder (default: the copy in data/mnist/)")
    example.set_defaults(func=_example_folder)
    speed = sub.add_parser("speed", help="training and scoring throughput against the reference loop")
    speed.add_argument("--epochs", type=int, default=5, help="epochs of each training path (default 5)")
    speed.add_argument("--out", default="results/speed", metavar="DIR", help="where speed.json goes")
    speed.add_argument("--seed", type=int, default=0)
    speed.add_argument("--mnist-dir", default=None, help="local MNIST folder (default $ANOMALYMAP_MNIST_DIR)")
    speed.add_argument("--max-train", type=int, default=None, help="cap on normal training images, for a quick run")
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
    speed.set_defaults(func=_speed)
    bench = sub.add_parser("benchmark", help="ROC-AUC per class over the leave-one-out and one-class protocols")
    bench.add_argument("--dataset", choices=["mnist", "fashion-mnist"], default="mnist")
    bench.add_argument("--protocol", choices=["leave-one-out", "one-class", "both"], default="both")
    bench.add_argument("--digits", type=int, nargs="+", default=list(range(10)), choices=range(10), metavar="D")
    bench.add_argument("--seeds", type=int, default=3, help="seeds per digit (default 3)")
    bench.add_argument("--out", default="results/benchmark", metavar="DIR")
    bench.add_argument("--quick", action="store_true", help="fewer epochs (use with --seeds 1 for minutes)")
    bench.add_argument("--mnist-dir", default=None, help="local MNIST folder (default $ANOMALYMAP_MNIST_DIR)")
    bench.add_argument("--device", default="auto")
    bench.set_defaults(func=_benchmark)
    ttd = sub.add_parser(
        "time-to-detector", help="the whole series at its defaults against the original loop's 5 epochs of training"
    )
    ttd.add_argument("--results", default="results/time-to-detector", metavar="DIR", help="the series' run folder")
    ttd.add_argument("--out", default=None, metavar="DIR", help="where time_to_detector.json goes (default --results)")
    ttd.add_argument("--repeats", type=int, default=1,
                     help="rounds of series then reference; the table gives medians (a shared machine drifts)")
    ttd.add_argument(
        "-p", "--param", nargs=2, action="append", metavar=("NAME", "VALUE"), help="a series parameter (default: none)"
    )
    ttd.set_defaults(func=_time_to_detector)
    curve = sub.add_parser(
        "schedule-curve", help="validation MSE and digit-9 ROC-AUC against images trained on, per training schedule"
    )
    curve.add_argument("--schedule", action="append", metavar="EPOCHSxBATCH",
                       help="a schedule to train (repeatable; default 5x256, the old default, and 1x32, the new)")
    curve.add_argument("--seeds", type=int, default=3)
    curve.add_argument("--every", type=int, default=24_576, help="images between two measurements")
    curve.add_argument("--out", default="results/schedule-curve", metavar="DIR")
    curve.add_argument("--figure", default=None, metavar="PNG", help="where the plot goes (default <out>/schedule_curve.png)")
    curve.add_argument("--mnist-dir", default=None)
    curve.set_defaults(func=_schedule_curve)
    cmp = sub.add_parser(
        "compare-models", help="the autoencoder against the VAE on the default split: every score, over seeds"
    )
    cmp.add_argument("--seeds", type=int, default=3, help="seeds of the weights (the split stays the default)")
    cmp.add_argument("--beta", type=float, default=1.0, help="the VAE's KL weight")
    cmp.add_argument("--out", default="results/compare-models", metavar="DIR")
    cmp.add_argument("--mnist-dir", default=None)
    cmp.add_argument("--max-train", type=int, default=0, help="cap on normal training images (0: all)")
    cmp.add_argument("--max-test", type=int, default=0, help="cap on test images (0: all)")
    cmp.set_defaults(func=_compare_models)
    sel = sub.add_parser(
        "score-selection", help="how the default score was chosen: candidates on a split of the training images"
    )
    sel.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist"])
    sel.add_argument("--protocol", default="both", choices=["leave-one-out", "one-class", "both"])
    sel.add_argument("--digits", type=int, nargs="+", default=list(range(10)), choices=range(10), metavar="CLASS")
    sel.add_argument("--out", default="results/score-selection", metavar="DIR", help="one folder for every data set")
    sel.set_defaults(func=_score_selection)
    prec = sub.add_parser(
        "precision-report", help="the run's scores in fp32 against mixed precision (bf16/fp16) on the same weights"
    )
    prec.add_argument("--results", default="results/default", metavar="DIR", help="a run folder made by notebooks 01-03")
    prec.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp16"],
                      help="the mixed precision (auto: this device's; bf16 is emulated on CPUs without it)")
    prec.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    prec.add_argument("--out", default=None, metavar="DIR", help="where precision_report.json goes (default --results)")
    prec.add_argument("--mnist-dir", default=None)
    prec.set_defaults(func=_precision_report)
    shot = sub.add_parser("screenshot", help="a picture of notebook 04's explorer in JupyterLab (Chromium, Playwright)")
    shot.add_argument("--results", default="results/default", metavar="DIR", help="a run folder made by notebooks 01-03")
    shot.add_argument("--out", default=None, metavar="PNG",
                      help="default docs/explorer_jupyterlab.png (04) or docs/latent_map_jupyterlab.png (05)")
    shot.add_argument("--notebook", default="04", choices=["04", "05"],
                      help="04: the heatmap explorer; 05: the linked latent map with a flagged anomaly clicked")
    shot.add_argument("--mnist-dir", default=None)
    shot.set_defaults(func=_screenshot)
    lat = sub.add_parser("explorer-latency", help="milliseconds from a slider move to the redrawn explorer view")
    lat.add_argument("--results", default="results/default", metavar="DIR", help="a run folder made by notebooks 01-03")
    lat.add_argument("--moves", type=int, default=40)
    lat.add_argument("--linked", action="store_true",
                     help="also time notebook 05's linked map (plotly) against drawing it with ipympl (a run made by 01-05)")
    lat.add_argument("--mnist-dir", default=None)
    lat.set_defaults(func=_latency)
    args = parser.parse_args(argv)
    try:
        from anomalymap_helpers.pipeline.device import cpu_precision_setting

        cpu_precision_setting()  # a bad $ANOMALYMAP_CPU_PRECISION is refused before any work
        return args.func(args)
    except AnomalyMapError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ValueError) else 1

