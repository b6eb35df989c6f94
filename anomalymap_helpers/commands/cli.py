"""The command line: ``python -m anomalymap_helpers run|train|export|benchmark|params|example-folder ...``.

The product's verbs only; the measuring instruments are scripts in ``benchmarks/``.
"""

from __future__ import annotations

import argparse
import sys

from anomalymap_helpers.errors import AnomalyMapError


def _run(args: argparse.Namespace) -> int:
    from anomalymap_helpers.commands.run import read_parameters, run_series

    run_series(read_parameters(args.file or [], args.param or []), args.results,
               kernel_per_notebook=args.kernel_per_notebook)
    return 0


def _train(args: argparse.Namespace) -> int:
    from anomalymap_helpers.commands.run import read_parameters
    from anomalymap_helpers.commands.train import train_run

    train_run(read_parameters(args.file or [], args.param or []), args.results)
    return 0


def _export(args: argparse.Namespace) -> int:
    from anomalymap_helpers.commands.export import export

    out = export(args.results, args.out, input_type=args.input, mnist_dir=args.mnist_dir)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB): images in, anomaly map and score out; "
          "threshold and names in its metadata")
    if args.check:
        from anomalymap_helpers.commands.export import check_export
        from anomalymap_helpers.runs.opened import Run

        c = check_export(out, Run.open(args.results, mnist_dir=args.mnist_dir, device="cpu"))
        print(
            f"onnxruntime vs PyTorch (fp32) on {c['images']:,} test images: largest score difference "
            f"{c['score_diff']:.1e}, largest map difference {c['map_diff']:.1e}, "
            + (f"segmentation {c['score_map_diff']:.1e}, " if "score_map_diff" in c else "") +
            f"{c['verdict_flips']} verdict(s) changed at the threshold {c['threshold']:.5f}\n"
            f"scoring on the CPU: onnxruntime {c['onnxruntime_images_per_s']:,.0f} images/s, "
            f"PyTorch {c['pytorch_images_per_s']:,.0f} images/s (maps and the run's score, median of 3)"
        )
    return 0


def _predict(args: argparse.Namespace) -> int:
    from anomalymap_helpers.commands.predict import predict_command

    return predict_command(args)


def _params(args: argparse.Namespace) -> int:
    from anomalymap_helpers.parameters import markdown_table

    print(markdown_table())
    return 0


def _example_folder(args: argparse.Namespace) -> int:
    if args.kind == "photos":
        from anomalymap_helpers.pipeline.data.photos import DEFAULT_OUT, SURFACES, make_photo_folders

        out = make_photo_folders(args.out or DEFAULT_OUT, size=args.size, seed=args.seed)
        print(f"wrote {len(SURFACES)} photograph category folders to {out} ({', '.join(SURFACES)}); try one with:")
        print(f"  python -m anomalymap_helpers run -p dataset folder -p image_dir {out}/stone -p image_size {args.size}")
        return 0
    if args.kind == "textures":
        from anomalymap_helpers.pipeline.data.textures import DEFAULT_OUT, MATERIALS, make_texture_folders

        out = make_texture_folders(args.out or DEFAULT_OUT, size=args.size, seed=args.seed)
        print(f"wrote {len(MATERIALS)} texture category folders to {out} ({', '.join(MATERIALS)}); try one with:")
        print(f"  python -m anomalymap_helpers run -p dataset folder -p image_dir {out}/wood -p image_size {args.size}")
        return 0
    from anomalymap_helpers.pipeline.data.example import DEFAULT_OUT as WASHERS
    from anomalymap_helpers.pipeline.data.example import make_example_folder

    out = make_example_folder(args.out or WASHERS, size=args.size, seed=args.seed, mnist_dir=args.mnist_dir)
    print(f"wrote an example category folder to {out}; try it with:")
    print(f"  python -m anomalymap_helpers run -p dataset folder -p image_dir {out} -p image_size {args.size}")
    return 0


def _benchmark(args: argparse.Namespace) -> int:
    from anomalymap_helpers.commands.benchmark import PROTOCOLS, run_benchmark

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


def parser() -> argparse.ArgumentParser:
    """The command line: one subcommand each, with its function as ``func``."""
    parser = argparse.ArgumentParser(
        prog="python -m anomalymap_helpers",
        description="AnomalyMap: run the five notebooks, train, export a detector, benchmark. "
        "The measuring instruments are scripts in benchmarks/ (python benchmarks/NAME.py --help).",
    )
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
    pred = sub.add_parser(
        "predict", help="score new images (files or folders) with a trained run: predictions.csv, flagged figures"
    )
    pred.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders of them (searched recursively)")
    pred.add_argument("--results", default="results/default", metavar="DIR", help="a run folder made by notebooks 01-03")
    pred.add_argument("--out", default=None, metavar="DIR",
                      help="a new folder for the predictions (default: the first free <results>/predictions-<k>)")
    pred.add_argument("--batch-size", type=int, default=256, help="images decoded and scored together")
    pred.add_argument("--device", default="auto")
    pred.add_argument("--mnist-dir", default=None)
    pred.set_defaults(func=_predict)
    params = sub.add_parser("params", help="print every notebook parameter as a markdown table")
    params.set_defaults(func=_params)
    example = sub.add_parser(
        "example-folder", help="make example folder data sets (MVTec AD layout, defect masks): washers, textures or photos"
    )
    example.add_argument("--kind", choices=["washers", "textures", "photos"], default="washers",
                         help="washers: MNIST zeros with drawn marks (easy); textures: wood, fabric and brushed metal "
                              "with scratches, cracks, stains, cut-ins, holes and discolouration (hard); photos: "
                              "real photographs (GIMP's patterns: apt install gimp-data gimp-data-extras) with "
                              "warps, folds, smears, displaced and foreign pieces besides painted marks (hardest)")
    example.add_argument("--out", default=None, metavar="DIR",
                         help="a new folder (default data/example-folder, data/example-textures or data/example-photos)")
    example.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    example.add_argument("--seed", type=int, default=0)
    example.add_argument("--mnist-dir", default=None, help="local MNIST folder (default: the copy in data/mnist/)")
    example.set_defaults(func=_example_folder)
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
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = parser().parse_args(argv)
    try:
        from anomalymap_helpers.pipeline.training.device import cpu_precision_setting

        cpu_precision_setting()  # a bad $ANOMALYMAP_CPU_PRECISION is refused before any work
        return args.func(args)
    except AnomalyMapError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ValueError) else 1

