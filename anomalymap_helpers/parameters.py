"""Every notebook parameter, declared once.

Each :class:`Parameter` says its type, default, meaning, which notebooks take it and
what values it allows. From this one table:

- the runner refuses an unknown name or a bad value before notebook 01 runs
  (:func:`validate`), and hands each value to the notebooks that take it;
- each notebook checks its own values in its first cell (:func:`check_notebook`), so a
  notebook run alone in JupyterLab refuses them too;
- ``python -m anomalymap_helpers params`` prints the README's parameter table;
- the tests check that every notebook's ``parameters`` cell (what ``papermill
  --help-notebook`` shows) and the README agree with it.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from anomalymap_helpers.errors import ParameterError


def _positive_int(name: str, value: int, low: int = 1) -> None:
    if value < low:
        raise ParameterError(f"{name}={value!r}: use a whole number of at least {low}")


def _auto_or_not_negative(name: str, value: float) -> None:
    if value < 0 and value != -1:
        raise ParameterError(f"{name}={value!r}: use -1 (automatic), 0 (none) or a number above 0")


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise ParameterError(f"{name}={value!r}: use a number above 0")


def _augment(name: str, value: str) -> None:
    from anomalymap_helpers.pipeline.models.augment import for_dataset

    for_dataset(value, "folder")  # refuses what it does not know: one place knows the words


def _one_of(choices: Callable[[], Iterable[str]]) -> Callable[[str, Any], None]:
    def check(name: str, value: Any) -> None:
        allowed = list(choices())
        if value not in allowed:
            raise ParameterError(f"{name}={value!r}: use one of {allowed}")

    return check


def writable_folder(name: str, value: str) -> None:
    """Refuse a folder that cannot be made or written, without leaving anything behind.

    The nearest existing folder at or above ``value`` must take a new subfolder.
    """
    from anomalymap_helpers.files.paths import resolve

    path = resolve(value)
    if path.exists() and not path.is_dir():
        raise ParameterError(f"{name}={value!r} is a file, not a folder: give a folder path")
    existing = path
    while not existing.exists():
        existing = existing.parent
    try:
        Path(tempfile.mkdtemp(prefix=".anomalymap-check-", dir=existing)).rmdir()
    except OSError as exc:
        raise ParameterError(
            f"{name}={value!r}: cannot write there ({exc.strerror or exc} in {existing}): "
            "choose a folder you can write to"
        ) from None


def _mnist_dir(name: str, value: str) -> None:
    if value:
        from anomalymap_helpers.pipeline.data import check_mnist_dir

        check_mnist_dir(value)


def _fashion_dir(name: str, value: str) -> None:
    if value:
        from anomalymap_helpers.pipeline.data import FASHION_MNIST, check_source_dir

        check_source_dir(FASHION_MNIST, value)


def _image_dir(name: str, value: str) -> None:
    if value:
        from anomalymap_helpers.pipeline.data import folder

        folder.scan(value)  # the layout and the pairing of masks; 01 reads the images


def _compare_run(name: str, value: str) -> None:
    if value:
        from anomalymap_helpers.files.paths import RunFiles

        files = RunFiles.at(value)
        if not files.comparison.is_file():
            raise ParameterError(
                f"{name}={value!r}: no {files.comparison.name} there; give a run folder that 03_evaluation has "
                "scored (e.g. one made by the series with -p model vae), or \"\""
            )


def _datasets() -> tuple[str, ...]:
    from anomalymap_helpers.pipeline.data import DATASETS

    return DATASETS


def _device(name: str, value: str) -> None:
    from anomalymap_helpers.pipeline.training.device import resolve_device

    resolve_device(value)


def _score_methods() -> tuple[str, ...]:
    from anomalymap_helpers.pipeline.scoring import REGISTRY

    return ("auto", *REGISTRY)


def _models() -> tuple[str, ...]:
    from anomalymap_helpers.pipeline.models import MODELS

    return ("auto", *MODELS)


def _scales() -> tuple[str, ...]:
    from anomalymap_helpers.pipeline.evaluation.plotting import SCALES

    return SCALES


def _percentile(name: str, value: float) -> None:
    from anomalymap_helpers.pipeline.evaluation.metrics import check_percentile

    check_percentile(value)


def _threshold_rules() -> tuple[str, ...]:
    from anomalymap_helpers.pipeline.evaluation.metrics import THRESHOLD_RULES

    return THRESHOLD_RULES


def _fpr(name: str, value: float) -> None:
    from anomalymap_helpers.pipeline.evaluation.metrics import check_fpr

    check_fpr(value)


@dataclass(frozen=True)
class Parameter:
    """One notebook parameter.

    Attributes:
        name: As in the notebooks' ``parameters`` cells and the package's keyword arguments.
        type: ``int``, ``float``, ``str``, ``bool`` or ``list``.
        default: The value the notebooks declare.
        help: The comment beside it in the ``parameters`` cell.
        notebooks: The numbers of the notebooks that take it, e.g. ``("02",)``.
        check: Called with ``(name, value)`` once the type is right; raises ParameterError.
        allowed: What values are allowed, in words (the README's table).
    """

    name: str
    type: type
    default: Any
    help: str
    notebooks: tuple[str, ...]
    allowed: str
    check: Callable[[str, Any], None] | None = None


ALL = ("01", "02", "03", "04", "05")

PARAMETERS: tuple[Parameter, ...] = (
    Parameter(
        "results_dir", str, "results/default", "run folder that every notebook reads and writes",
        ALL, "a folder you can write to", writable_folder,
    ),
    Parameter(
        "data_dir", str, "data", "folder of the unpacked MNIST files (MNIST/raw/)",
        ALL, "a folder you can write to", writable_folder,
    ),
    Parameter(
        "mnist_dir", str, "", "local folder of the 4 MNIST files; \"\": $ANOMALYMAP_MNIST_DIR, else data/mnist/",
        ALL, "\"\" or a folder holding the four official files", _mnist_dir,
    ),
    Parameter(
        "dataset", str, "mnist", "data set: \"mnist\", \"fashion-mnist\" or \"folder\" (your images, MVTec AD layout)",
        ("01",), "`mnist`, `fashion-mnist`, `folder`", _one_of(_datasets),
    ),
    Parameter(
        "fashion_dir", str, "", "local folder of the 4 Fashion-MNIST files; \"\": $ANOMALYMAP_FASHION_DIR, else Debian's",
        ("01",), "\"\" or a folder holding the four official files", _fashion_dir,
    ),
    Parameter(
        "image_dir", str, "", "dataset \"folder\": the category folder (train/good, test/<type>, ground_truth)",
        ("01",), "\"\" or a folder in the MVTec AD layout", _image_dir,
    ),
    Parameter(
        "image_size", int, 0, "side the images are resized to; 0: 28 for MNIST/Fashion; for folders, the images' own side if they share one of at most 128, else 128",
        ("01",), "0, 28 for MNIST/Fashion; a size the model halves to <= 8 (e.g. 64, 128) for folders",
        lambda n, v: _positive_int(n, v, 0),
    ),
    Parameter(
        "normal_classes", list, list(range(9)), "classes the model learns as normal (MNIST, Fashion)",
        ("01",), "a list of classes 0-9, none also an anomaly; folders: `good`",
    ),
    Parameter(
        "anomaly_classes", list, [9], "classes that are anomalies in the test set (MNIST, Fashion)", ("01",),
        "a list of classes 0-9; folders: every defect type",
    ),
    Parameter(
        "val_fraction", float, 0.1, "share of normal training images held out for validation",
        ("01",), "between 0 and 1",
    ),
    Parameter(
        "seed", int, 0, "seed of splits, weights, shuffling, samples and t-SNE",
        ("01", "02", "04", "05"), "0 or more",
        lambda n, v: _positive_int(n, v, 0),
    ),
    Parameter(
        "max_train", int, 0, "cap on normal training images (0: all)", ("01",), "0, or 2 or more",
    ),
    Parameter("max_test", int, 0, "cap on test images (0: all)", ("01",), "0, or 2 or more"),
    Parameter(
        "epochs", int, 0, "most passes over the normal training images; 0: 2, more on small sets (20,000 images seen)",
        ("02",), "0 (by data set) or more", lambda n, v: _positive_int(n, v, 0),
    ),
    Parameter(
        "batch_size", int, 0, "images per optimizer step; 0: 64, smaller on sets under 1,024 images",
        ("02",), "0 (by data set) or more", lambda n, v: _positive_int(n, v, 0),
    ),
    Parameter("lr", float, 0.001, "Adam learning rate", ("02",), "above 0", _positive),
    Parameter("latent_dim", int, 64, "size of the bottleneck vector", ("02",), "1 or more", _positive_int),
    Parameter(
        "model", str, "auto", "auto: restore for folders, ae for MNIST/Fashion; ae: autoencoder; vae: variational; restore: learns synthetic damage, segments it",
        ("02",), "`auto`, `ae`, `vae`, `restore`", _one_of(_models),
    ),
    Parameter(
        "beta", float, 1.0, "model \"vae\": weight of the KL term in the training loss", ("02",), "above 0", _positive,
    ),
    Parameter(
        "device", str, "auto", "\"auto\" (CUDA if available), \"cpu\", \"cuda\" or \"cuda:N\"",
        ("02", "03", "04", "05"), "`auto`, `cpu`, `cuda`, `cuda:N` (a GPU this machine has)", _device,
    ),
    Parameter(
        "amp", bool, True, "mixed precision: fp16 on CUDA, bf16 on CPUs that support it",
        ("02",), "`True` or `False`",
    ),
    Parameter(
        "nproc", int, 1, "training processes (torchrun, DistributedDataParallel): CPU cores or GPUs to use",
        ("02",), "1 to the CPU cores (CPU) or GPUs (CUDA) this machine has", _positive_int,
    ),
    Parameter(
        "patience", int, 10, "stop once the validation loss has not fallen for this many epochs (0: never); the best epoch's weights are kept",
        ("02",), "0 or more", lambda n, v: _positive_int(n, v, 0),
    ),
    Parameter(
        "augment", str, "off", "training augmentations: off; auto (flip, rot90, shift, brightness for folders, none for MNIST/Fashion); or a list",
        ("02",), "`off`, `auto`, or some of `flip,rot90,shift,brightness`", _augment,
    ),
    Parameter(
        "resume", bool, False, "continue from the last completed epoch's checkpoint",
        ("02",), "`True` or `False`; the other training settings must match the checkpoint's",
    ),
    Parameter(
        "score_method", str, "auto", "per-image score; auto: model restore two-signal on folders (else segment), else topk for folders, patch-knn for MNIST/Fashion",
        ("03",), "`auto`, `mse`, `topk`, `ssim`, `latent-knn`, `patch-knn`, `ensemble`; `elbo` with model vae; `segment` with model restore; on folders `nearest-patch`, and `two-signal` with model restore", _one_of(_score_methods),
    ),
    Parameter(
        "map_blur", float, -1.0, "Gaussian blur (sigma, pixels) of the anomaly maps; -1: 0 for MNIST/Fashion, size/32 for folders",
        ("03",), "-1 (by data set), 0 (none) or above", _auto_or_not_negative,
    ),
    Parameter(
        "compare_run", str, "", "another run folder on the same split (e.g. with model vae): scores side by side",
        ("03",), "\"\" or a run folder scored by 03 on the same split", _compare_run,
    ),
    Parameter(
        "threshold_percentile", float, 99.0, "percentile of validation normals' scores used as the threshold",
        ("03",), "strictly between 0 and 100", _percentile,
    ),
    Parameter(
        "threshold_rule", str, "percentile", "how the threshold is set: \"percentile\", \"otsu\" or \"fpr\" (see the notebook)",
        ("03",), "`percentile`, `otsu`, `fpr`", _one_of(_threshold_rules),
    ),
    Parameter(
        "target_fpr", float, 0.01, "rule \"fpr\": share of validation normals allowed above the threshold",
        ("03",), "strictly between 0 and 1", _fpr,
    ),
    Parameter("n_heatmaps", int, 8, "triptychs saved to heatmaps/ in the run folder", ("04",), "1 or more", _positive_int),
    Parameter(
        "heatmap_scale", str, "per-image", "colour scale of the maps: \"per-image\" or \"global\"",
        ("04",), "`per-image`, `global`", _one_of(_scales),
    ),
    Parameter(
        "predict_images", str, "", "image files or a folder to score with this run, as predict does (\"\": six test images saved as PNG)",
        ("04",), "\"\" or a file or folder", None,
    ),
    Parameter(
        "tsne_samples", int, 500, "cap on test images per kind (normal, anomaly) in the t-SNE",
        ("05",), "2 or more", lambda n, v: _positive_int(n, v, 2),
    ),
    Parameter("perplexity", float, 30.0, "t-SNE perplexity", ("05",), "above 0", _positive),
)

BY_NAME: dict[str, Parameter] = {p.name: p for p in PARAMETERS}
NOTEBOOK_NAMES = {
    "01": "01_data",
    "02": "02_training",
    "03": "03_evaluation",
    "04": "04_explorer",
    "05": "05_latent",
}


def for_notebook(number: str) -> list[Parameter]:
    """The parameters notebook ``number`` (``"01"`` ... ``"05"``) takes, in declaration order."""
    return [p for p in PARAMETERS if number in p.notebooks]


def _check_type(p: Parameter, value: Any) -> Any:
    """``value`` if it is of ``p``'s type (an int passes for a float), else a ParameterError."""
    ok = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
        str: lambda v: isinstance(v, str),
        list: lambda v: isinstance(v, list),
    }[p.type](value)
    if not ok:
        raise ParameterError(
            f"{p.name}={value!r} ({type(value).__name__}): {p.name} takes a {p.type.__name__} ({p.allowed}), "
            f"e.g. -p {p.name} {_yaml(p.default)}"
        )
    return float(value) if p.type is float else value


def _yaml(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"' if value == "" or " " in value else value
    return str(value)


def _config_checks(values: Mapping[str, Any], given: Iterable[str]) -> None:
    """Check the values that only make sense together (the split's classes, the training config)."""
    from anomalymap_helpers.pipeline.data import SplitConfig
    from anomalymap_helpers.pipeline.data.sources import check_dataset
    from anomalymap_helpers.pipeline.training import TrainConfig

    dataset = values.get("dataset", "mnist")
    if "dataset" in values:
        check_dataset(dataset, values.get("image_dir"), values.get("image_size", 0))
    if dataset == "folder":
        changed = [n for n in ("normal_classes", "anomaly_classes") if values.get(n, BY_NAME[n].default) != BY_NAME[n].default]
        if changed:
            raise ParameterError(
                f'dataset="folder" takes its classes from the folders (test/good is normal, every other test/<type> '
                f"an anomaly): leave {' and '.join(changed)} unset"
            )
        values = {**values, "normal_classes": [0], "anomaly_classes": [1]}
    if values.get("nproc", 1) != 1:
        from anomalymap_helpers.pipeline.training.distributed import check_nproc

        check_nproc(values["nproc"], values.get("device", "auto"))
    names = [f.name for f in fields(SplitConfig)]
    if set(names) & set(given) - {"seed"}:
        SplitConfig(**{n: values[n] for n in names if n in values})
    if {f.name for f in fields(TrainConfig)} & set(given) - {"seed"}:  # as notebook 02 resolves it, epochs and
        # batch_size aside (by data set, the split is not made yet)
        TrainConfig.from_parameters(values).resolved(None, dataset)


def validate(params: Mapping[str, Any], names: Iterable[str] | None = None) -> dict[str, Any]:
    """Check ``params`` against the declarations; return every value of ``names``, defaults filled in.

    Args:
        params: Values by parameter name, as given by the user.
        names: The parameters in play (default: all of them).

    Raises:
        ParameterError: an unknown name, or a value of the wrong type or out of range;
            the message names the parameter, the value and what is allowed.
    """
    in_play = list(names) if names is not None else list(BY_NAME)
    unknown = sorted(set(params) - set(in_play))
    if unknown:
        raise ParameterError(f"unknown parameter(s) {unknown}: the notebooks take {sorted(in_play)}")
    values = {n: params.get(n, BY_NAME[n].default) for n in in_play}
    for name in in_play:
        p = BY_NAME[name]
        values[name] = _check_type(p, values[name])
        if p.check is not None:
            p.check(name, values[name])
    _config_checks(values, in_play)
    return values


def check_notebook(number: str, namespace: Mapping[str, Any]) -> dict[str, Any]:
    """Check a notebook's own parameters, read from its namespace (``globals()``), before it works.

    Returns:
        The notebook's parameters by name.
    """
    mine = [p.name for p in for_notebook(number)]
    return validate({n: namespace[n] for n in mine}, mine)


def markdown_table() -> str:
    """The README's parameter table."""
    lines = ["| parameter | default | notebooks | allowed | meaning |", "|---|---|---|---|---|"]
    for p in PARAMETERS:
        where = "all" if p.notebooks == ALL else ", ".join(p.notebooks)
        default = f'"{p.default}"' if isinstance(p.default, str) else repr(p.default)
        lines.append(f"| `{p.name}` | `{default}` | {where} | {p.allowed} | {p.help} |")
    return "\n".join(lines)

