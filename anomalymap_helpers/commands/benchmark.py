"""Detection benchmark over the two standard protocols, on MNIST or Fashion-MNIST.

``python -m anomalymap_helpers benchmark [--dataset mnist|fashion-mnist]
[--protocol leave-one-out|one-class|both] [--digits 0 1 ...] [--seeds N] [--out DIR] [--quick]``

- *leave-one-out*: train on the nine other classes; the class is the anomaly.
- *one-class*: train on the class alone; the nine others are anomalies.

Each (protocol, class, seed) run trains the autoencoder on the standard training
images of its normal classes, fits every score method on the normal
training and validation images, and scores the 10,000 test images. Every choice
(epochs, method settings, how the ensemble combines) is fixed in advance or
fitted on validation normals; test labels only measure. Finished runs are
appended to ``benchmark.csv`` at once, so an interrupted benchmark resumes
where it stopped.
"""

from __future__ import annotations

import csv
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from anomalymap_helpers.errors import ParameterError
from anomalymap_helpers.files import storage
from anomalymap_helpers.files.paths import resolve

PROTOCOLS = ("leave-one-out", "one-class")
COLUMNS = ["protocol", "digit", "seed", "method", "roc_auc", "average_precision", "recall_at_1pct_fpr", "recall_at_5pct_fpr"]

# Published mean ROC-AUC over the ten classes, one-class protocol.
PUBLISHED_ONE_CLASS = {
    "mnist": {
        "Deep SVDD (Ruff et al. 2018)": 0.948,
        "OCGAN (Perera et al. 2019)": 0.975,
        "GeoTrans (Golan & El-Yaniv 2018)": 0.980,
        "ARNet (Fei et al. 2020)": 0.983,
    },
    "fashion-mnist": {
        "Deep SVDD (Ruff et al. 2018)": 0.892,
        "GeoTrans (Golan & El-Yaniv 2018)": 0.935,
        "ARNet (Fei et al. 2020)": 0.939,
    },
}
DATASETS = tuple(PUBLISHED_ONE_CLASS)


@dataclass(frozen=True)
class Settings:
    """Fixed before any run: epochs per protocol, training batch, kNN and top-k sizes.

    One-class runs see about a ninth of the images, so they get more epochs for a
    similar number of optimizer steps.
    """

    epochs_leave_one_out: int = 5
    epochs_one_class: int = 20
    batch_size: int = 256
    k: int = 2
    topk: int = 10

    def epochs(self, protocol: str) -> int:
        return self.epochs_leave_one_out if protocol == "leave-one-out" else self.epochs_one_class


QUICK = Settings(epochs_leave_one_out=2, epochs_one_class=8)


def classes(protocol: str, digit: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(normal_classes, anomaly_classes)`` of one run."""
    others = tuple(c for c in range(10) if c != digit)
    return (others, (digit,)) if protocol == "leave-one-out" else ((digit,), others)


def _done(path: Path) -> set[tuple[str, int, int]]:
    if not path.exists():
        return set()
    with open(path, newline="") as fh:
        return {(r["protocol"], int(r["digit"]), int(r["seed"])) for r in csv.DictReader(fh)}


def _append(path: Path, rows: list[list[Any]]) -> None:
    """Rewrite the CSV with ``rows`` added (atomically: a kill never leaves half a run)."""
    old: list[list[str]] = []
    if path.exists():
        with open(path, newline="") as fh:
            old = list(csv.reader(fh))[1:]
    storage.write_csv(path, COLUMNS, old + rows)


def one_run(
    images: Any, protocol: str, digit: int, seed: int, settings: Settings, device: str = "auto"
) -> list[list[Any]]:
    """Train, fit the scorers on normals, score the test set; one row per method."""
    from anomalymap_helpers.pipeline import data, scoring, training
    from anomalymap_helpers.pipeline.evaluation import metrics

    normal, anomaly = classes(protocol, digit)
    config = data.SplitConfig(normal, anomaly, seed=seed)
    splits = data.take(images, data.make_splits(images.train_labels, images.test_labels, config), anomaly)
    train_x, val_x, test_x = (splits[k].images for k in ("train", "val", "test"))
    is_anomaly = splits["test"].is_anomaly.numpy()
    cfg = training.TrainConfig(epochs=settings.epochs(protocol), batch_size=settings.batch_size, seed=seed, device=device,
                               patience=0)  # the protocol's epochs, all of them
    model = training.train(train_x, val_x, cfg, progress=False).model
    scorer = scoring.Scorer(model, train_x, val_x, k=settings.k, topk=settings.topk)
    rows = []
    for method, s in scorer.all_scores(scoring.score(model, test_x)).items():
        m = metrics.evaluate(s.numpy(), is_anomaly, threshold=float("inf"))
        rows.append([protocol, digit, seed, method, round(m.roc_auc, 6), round(m.average_precision, 6),
                     round(m.recall_at_1pct_fpr, 6), round(m.recall_at_5pct_fpr, 6)])
    return rows


def key(settings: Settings, quick: bool, dataset: str = "mnist") -> dict[str, Any]:
    """Everything a row of ``benchmark.csv`` depends on, besides its protocol, class and seed."""
    from anomalymap_helpers.pipeline.scoring import METHODS

    return {"dataset": dataset, "quick": quick, **asdict(settings), "methods": list(METHODS), "columns": COLUMNS}


def check_settings(folder: Path, settings: Settings, quick: bool, dataset: str = "mnist") -> dict[str, Any]:
    """The settings to record; refuse to resume a folder whose rows were made with other settings.

    Raises:
        ParameterError: ``folder`` holds rows of other settings (named, with both values).
    """
    wanted = key(settings, quick, dataset)
    saved_path = folder / "settings.json"
    if (folder / "benchmark.csv").exists() and saved_path.exists():
        saved = {"dataset": "mnist", **storage.read_json(saved_path)}  # older folders were MNIST only
        differ = [f"{k}: there {saved.get(k)!r}, now {v!r}" for k, v in wanted.items() if saved.get(k) != v]
        if differ:
            raise ParameterError(
                f"{folder} holds benchmark rows made with other settings ({'; '.join(differ)}): "
                "give another --out, or delete that folder to start over"
            )
    elif (folder / "benchmark.csv").exists():
        raise ParameterError(
            f"{folder}/benchmark.csv has no settings.json beside it, so its rows cannot be matched to these "
            "settings: give another --out, or delete that folder to start over"
        )
    return wanted


def _commit() -> str | None:
    """The git commit of the checkout, where there is one."""
    import subprocess

    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=10
        )
    except OSError:
        return None
    return out.stdout.strip() or None


def record_settings(folder: Path, recorded: dict[str, Any], commit: str | None = None) -> dict[str, Any]:
    """Write ``settings.json``: the settings, the checkout's commit, and every commit that added rows
    (``commits``, oldest first: a benchmark resumed on a later checkout keeps the earlier ones)."""
    path = folder / "settings.json"
    old = storage.read_json(path) if path.exists() else {}
    commits = list(old.get("commits") or ([old["commit"]] if old.get("commit") else []))
    if commit and commit not in commits:
        commits.append(commit)
    settings = {**recorded, "commit": commit, "commits": commits}
    storage.write_json(path, settings)
    return settings


def run_benchmark(
    protocols: tuple[str, ...] = PROTOCOLS,
    digits: tuple[int, ...] = tuple(range(10)),
    seeds: int = 3,
    out: str | os.PathLike[str] = "results/benchmark",
    *,
    quick: bool = False,
    data_dir: str = "data",
    mnist_dir: str | None = None,
    device: str = "auto",
    dataset: str = "mnist",
) -> Path:
    """Run (or resume) the benchmark; print and write the summary. Returns ``benchmark.md``."""
    import contextlib
    import io

    from tqdm.auto import tqdm

    from anomalymap_helpers.pipeline import data

    settings = QUICK if quick else Settings()
    folder = resolve(out)
    csv_path = folder / "benchmark.csv"
    if dataset not in DATASETS:
        raise ParameterError(f"--dataset {dataset}: use one of {list(DATASETS)}")
    recorded = check_settings(folder, settings, quick, dataset)
    images = data.load_dataset(dataset, data_dir=data_dir, mnist_dir=mnist_dir)
    folder.mkdir(parents=True, exist_ok=True)
    record_settings(folder, recorded, _commit())
    todo = [(p, d, s) for p in protocols for d in digits for s in range(seeds)]
    done = _done(csv_path)
    left = [r for r in todo if r not in done]
    print(f"{len(todo)} runs, {len(todo) - len(left)} already in {csv_path}", flush=True)
    t0 = time.perf_counter()
    for protocol, digit, seed in tqdm(left, desc="benchmark runs"):
        with contextlib.redirect_stdout(io.StringIO()):  # keep the bar readable
            rows = one_run(images, protocol, digit, seed, settings, device)
        _append(csv_path, rows)
    minutes = (time.perf_counter() - t0) / 60
    table = summarize(csv_path, protocols, digits, seeds, images.class_names)
    if "one-class" in protocols:
        table += "\n\nPublished one-class means on the same data: " + ", ".join(
            f"{name} {auc:.3f}" for name, auc in PUBLISHED_ONE_CLASS[dataset].items()
        )
    md = folder / "benchmark.md"
    storage.write_text(
        md,
        f"## {dataset}\n\n{table}\n\n{len(left)} runs in {minutes:.1f} min "
        f"({'quick' if quick else 'full'} settings: {settings})\n",
    )
    print(table)
    print(f"{len(left)} runs in {minutes:.1f} min; wrote {csv_path} and {md}")
    return md


def summarize(
    csv_path: Path,
    protocols: tuple[str, ...],
    digits: tuple[int, ...],
    seeds: int,
    class_names: tuple[str, ...] | None = None,
) -> str:
    """Markdown tables: per-class ROC-AUC (mean ± std over seeds) per method, and their mean.

    The default score's column comes first; the others are comparisons.
    """
    import pandas as pd

    from anomalymap_helpers.pipeline.scoring import DEFAULT_METHOD

    frame = pd.read_csv(csv_path)
    frame = frame[frame.protocol.isin(protocols) & frame.digit.isin(digits) & (frame.seed < seeds)]
    out = []
    for protocol in protocols:
        part = frame[frame.protocol == protocol]
        if part.empty:
            continue
        methods = sorted(dict.fromkeys(part.method), key=lambda m: m != DEFAULT_METHOD)
        lines = [f"### {protocol}: ROC-AUC, mean ± sample std (ddof=1) over {part.seed.nunique()} seed(s)", ""]
        lines.append("| class | " + " | ".join(f"{m} (default)" if m == DEFAULT_METHOD else m for m in methods) + " |")
        lines.append("|---|" + "---:|" * len(methods))
        for d in sorted(part.digit.unique()):
            cells = []
            for m in methods:
                v = part[(part.digit == d) & (part.method == m)].roc_auc
                cells.append(f"{v.mean():.3f} ± {_std(v)}")
            name = f"{d} {class_names[d]}" if class_names and not class_names[d].startswith("digit") else str(d)
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        # The mean over digits per seed, then mean ± std of that over seeds.
        per_seed = part.groupby(["method", "seed"]).roc_auc.mean().groupby("method")
        lines.append(
            "| **mean** | "
            + " | ".join(f"**{per_seed.mean()[m]:.3f}** ± {_std(per_seed.get_group(m))}" for m in methods)
            + " |"
        )
        ap = part.groupby("method").average_precision.mean()
        lines.append("| mean AP | " + " | ".join(f"{ap[m]:.3f}" for m in methods) + " |")
        for column, name in (("recall_at_1pct_fpr", "1 %"), ("recall_at_5pct_fpr", "5 %")):
            if column in part:  # recall at that share of the test normals flagged
                recall = part.groupby(["method", "seed"])[column].mean().groupby("method")
                lines.append(
                    f"| mean recall at {name} FPR | "
                    + " | ".join(f"{recall.mean()[m]:.3f} ± {_std(recall.get_group(m))}" for m in methods) + " |"
                )
        out.append("\n".join(lines))
    return "\n\n".join(out)


def _std(values: Any) -> str:
    """The sample standard deviation (ddof=1) to 3 places; a dash for a single seed."""
    return f"{values.std(ddof=1):.3f}" if len(values) > 1 else "—"
