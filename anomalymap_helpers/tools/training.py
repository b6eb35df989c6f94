"""Notebook 02's training step as a command, so ``torchrun`` can start it in several processes.

``python -m anomalymap_helpers train --results DIR [-p NAME VALUE]...`` trains the run
folder's model from the splits notebook 01 wrote, with notebook 02's parameters (and
their defaults), exactly as the notebook does. Under
``torchrun --standalone --nproc-per-node N -m anomalymap_helpers train ...`` the N
processes train one model together (see :mod:`anomalymap_helpers.pipeline.distributed`).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from typing import Any

from anomalymap_helpers import parameters
from anomalymap_helpers.errors import ParameterError
from anomalymap_helpers.files.paths import DEFAULT_RESULTS_DIR, RunFiles, resolve
from anomalymap_helpers.pipeline import checkpoint, distributed, train
from anomalymap_helpers.runs import report

# Notebook 02's parameters the command takes; nproc is torchrun's --nproc-per-node.
NAMES = tuple(p.name for p in parameters.for_notebook("02") if p.name != "nproc")


def check_params(params: Mapping[str, Any], results_dir: str | None = None) -> dict[str, Any]:
    """Notebook 02's parameters (defaults filled in, ``results_dir`` resolved), checked before any work."""
    params = dict(params)
    if "nproc" in params:
        raise ParameterError(
            "the train command takes no nproc: start it with "
            "`torchrun --standalone --nproc-per-node N -m anomalymap_helpers train ...`, "
            "or run notebook 02 (or the series) with -p nproc N"
        )
    params["results_dir"] = str(resolve(results_dir or params.get("results_dir") or DEFAULT_RESULTS_DIR))
    return parameters.validate(params, NAMES)


def config_for(values: Mapping[str, Any], n_train: int, dataset: str = "mnist") -> train.TrainConfig:
    """The :class:`~anomalymap_helpers.pipeline.train.TrainConfig` notebook 02 builds from its parameters."""
    from anomalymap_helpers.pipeline import augment
    from anomalymap_helpers.pipeline.model import resolve_model

    model = resolve_model(values["model"], dataset)
    epochs, batch_size = train.schedule_for(n_train, values["epochs"], values["batch_size"], model)
    return train.TrainConfig(
        epochs, batch_size, values["lr"], values["latent_dim"], values["seed"], values["device"], values["amp"],
        model=model, beta=values["beta"], patience=values["patience"],
        augment=augment.for_dataset(values["augment"], dataset),
    )


def train_run(params: Mapping[str, Any], results_dir: str | None = None) -> train.TrainResult:
    """Train the run folder's model with notebook 02's parameters; in torchrun's processes, together.

    Raises:
        ParameterError: a bad parameter, or a batch smaller than the number of processes.
        MissingInputError: notebook 01 has not written the splits.
    """
    from anomalymap_helpers.pipeline import data

    values = check_params(params, results_dir)
    with distributed.process_group(values["device"]) as (world, _):
        try:
            files = RunFiles.at(values["results_dir"])
            splits, manifest = data.load_splits(files, data_dir=values["data_dir"], mnist_dir=values["mnist_dir"])
            config = config_for(values, len(splits["train"]), manifest.get("dataset", "mnist"))
            if config.batch_size < world.size:
                raise ParameterError(
                    f"batch_size={config.batch_size} is smaller than the {world.size} processes: "
                    f"each needs a share of every batch; use batch_size >= {world.size} or fewer processes"
                )
            result = train.train(
                splits["train"].images, splits["val"].images, config, files=files, resume=values["resume"]
            )
            if world.main:
                report.record(
                    files, "02_training", seed=config.seed, device=str(result.device),
                    precision=result.precision.name, epochs=config.epochs, batch_size=config.batch_size,
                    lr=config.lr, latent_dim=config.latent_dim, model=config.model, beta=config.beta,
                    processes=world.size,
                )
        except Exception as exc:
            if world.size > 1:  # torchrun ends the others; say which rank failed and why
                print(distributed.rank_failed(exc), file=sys.stderr, flush=True)
            raise
    return result


def train_in_processes(values: Mapping[str, Any], nproc: int) -> train.TrainResult:
    """Notebook 02 with ``nproc > 1``: train with torchrun, its output streamed, then load what rank 0 saved.

    Args:
        values: Notebook 02's parameters (what :func:`~anomalymap_helpers.parameters.check_notebook` returns).
        nproc: How many processes.
    """
    from anomalymap_helpers.pipeline.device import resolve_device, resolve_precision
    from anomalymap_helpers.pipeline.progress import HEADLESS_ENV

    distributed.check_nproc(nproc, values["device"])
    files = RunFiles.at(values["results_dir"])
    mine = {k: v for k, v in values.items() if k in NAMES and k != "results_dir"}
    distributed.launch(files.root, mine, nproc, env={HEADLESS_ENV: "1"})
    device = resolve_device(values["device"])
    history = checkpoint.read_metadata(files.training_state, "training state")["history"]
    model = checkpoint.load_model(files.model, device=device)  # the best epoch's weights
    stopped = train.stop_reason(history, math.inf, values["patience"]) or "epochs"
    return train.TrainResult(model, history, device, resolve_precision(device, values["amp"], warn=False),
                             train.best_epoch(history), stopped)
