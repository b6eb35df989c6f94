"""Notebook 02's helpers: its config, its check of a training history, and its step as a command.

:func:`config_for` builds notebook 02's :class:`~anomalymap_helpers.pipeline.training.TrainConfig`;
:func:`diagnose` says whether the model learned and, if not, why. The training step as a command,
so ``torchrun`` can start it in several processes:

``python -m anomalymap_helpers train --results DIR [-p NAME VALUE]...`` trains the run
folder's model from the splits notebook 01 wrote, with notebook 02's parameters (and
their defaults), exactly as the notebook does. Under
``torchrun --standalone --nproc-per-node N -m anomalymap_helpers train ...`` the N
processes train one model together (see :mod:`anomalymap_helpers.pipeline.training.distributed`).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from anomalymap_helpers import parameters
from anomalymap_helpers.errors import ParameterError
from anomalymap_helpers.files.paths import DEFAULT_RESULTS_DIR, RunFiles, resolve
from anomalymap_helpers.pipeline import training
from anomalymap_helpers.pipeline.training import OBJECTIVES, best_epoch, checkpoint, distributed
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


def config_for(values: Mapping[str, Any], n_train: int, dataset: str = "mnist") -> training.TrainConfig:
    """The :class:`~anomalymap_helpers.pipeline.training.TrainConfig` notebook 02 builds from its parameters,
    resolved for its ``n_train`` training images of ``dataset``."""
    return training.TrainConfig.from_parameters(values).resolved(n_train, dataset)


@dataclass(frozen=True)
class Diagnosis:
    """What notebook 02's check says of a training history (:func:`diagnose`).

    Attributes:
        ok: Whether the model beats the mean image on the validation normals at its best epoch.
        case: ``"learned"``, ``"memorised"`` (the validation loss rose after its lowest while the
            training loss fell), ``"still learning"`` (both still falling at the last epoch) or
            ``"not learning"`` (neither: no better than the mean image, nothing to wait for).
        message: What to tell the user, with what helps.
    """

    ok: bool
    case: str
    message: str


RISE = 0.02  # a validation loss this much above its lowest counts as rising


def diagnose(history: list[dict[str, float]], baseline: float, n_train: int | None = None,
             model: str = "ae") -> Diagnosis:
    """Compare the best epoch's validation loss with ``baseline`` (the mean image's MSE on the
    validation normals) and say why training ended where it did."""
    if not history:
        return Diagnosis(False, "not learning", "no epoch was trained: give epochs >= 1")
    b = best_epoch(history)
    best, last = history[b - 1], history[-1]
    ok = best["val_loss"] < baseline
    objective = OBJECTIVES[model]
    loss, mine, lazy = objective.loss_name, objective.model_name, objective.baseline_name
    head = f"{loss} at the best epoch ({b} of {last['epoch']}): {mine} {best['val_loss']:.5f} vs {lazy} {baseline:.5f}"
    images = f"its {n_train:,} training images" if n_train else "its training images"
    # A model whose inputs are drawn anew every epoch (the restore model's damage) has losses that jump from
    # epoch to epoch and cannot memorise its inputs as an autoencoder does: the memorising case is the others'.
    rising = last["val_loss"] > best["val_loss"] * (1 + RISE) and last["train_loss"] < best["train_loss"]
    if b < last["epoch"] and rising and not objective.drawn_anew:
        case = "memorised"
        why = (f"the model memorised {images}: the validation loss was lowest at epoch {b} and rose to "
               f"{last['val_loss']:.5f} by epoch {last['epoch']} while the training loss fell from "
               f"{best['train_loss']:.5f} to {last['train_loss']:.5f}, so training longer makes it worse; the weights "
               f"of epoch {b} are kept. What helps: more normal images, augmentation (augment='auto' on folders), "
               "a smaller latent_dim")
    elif len(history) == 1:
        case = "still learning"
        why = "one epoch is too few to tell whether it is still learning: train longer (a larger epochs)"
    elif b == last["epoch"] and last["train_loss"] < history[-2]["train_loss"]:
        case = "still learning"
        why = (f"both losses were still falling at the last epoch ({last['epoch']}): the model has not finished "
               "learning; train longer (a larger epochs)")
    elif ok:
        case, why = "learned", f"it beats the {lazy}"
    else:
        case = "not learning"
        why = ("neither loss is falling, and the model does no better than the mean image: try another lr "
               "(lower if the loss jumps, higher if it creeps), or check that the training images are normal ones; "
               "on a textured surface, which an autoencoder often rebuilds no better than its mean, use "
               "model='restore' (the folders' default), which learns what a defect looks like instead")
    if ok and case == "learned":
        return Diagnosis(True, case, f"{head}: {why}")
    prefix = "" if ok else f"The {mine} does no better than the {lazy}. "
    return Diagnosis(ok, case, f"{head}. {prefix}{why[0].upper()}{why[1:]}")


def train_run(params: Mapping[str, Any], results_dir: str | None = None) -> training.TrainResult:
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
            result = training.train(
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


def train_in_processes(values: Mapping[str, Any], nproc: int) -> training.TrainResult:
    """Notebook 02 with ``nproc > 1``: train with torchrun, its output streamed, then load what rank 0 saved.

    Args:
        values: Notebook 02's parameters (what :func:`~anomalymap_helpers.parameters.check_notebook` returns).
        nproc: How many processes.
    """
    from anomalymap_helpers.pipeline.progress import HEADLESS_ENV
    from anomalymap_helpers.pipeline.training.device import resolve_device, resolve_precision

    distributed.check_nproc(nproc, values["device"])
    files = RunFiles.at(values["results_dir"])
    mine = {k: v for k, v in values.items() if k in NAMES and k != "results_dir"}
    distributed.launch(files.root, mine, nproc, env={HEADLESS_ENV: "1"})
    device = resolve_device(values["device"])
    history = checkpoint.read_metadata(files.training_state, "training state")["history"]
    model = checkpoint.load_model(files.model, device=device)  # the best epoch's weights
    stopped = training.stop_reason(history, math.inf, values["patience"]) or "epochs"
    return training.TrainResult(model, history, device, resolve_precision(device, values["amp"], warn=False),
                                best_epoch(history), stopped)
