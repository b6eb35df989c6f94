"""Training that knows when to stop: the best epoch's weights kept, early stopping by patience,
resume exact, notebook 02's check on constructed histories, and the folder augmentations."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from anomalymap_helpers.commands.train import diagnose
from anomalymap_helpers.errors import ParameterError
from anomalymap_helpers.files.paths import RunFiles
from anomalymap_helpers.pipeline import training as train
from anomalymap_helpers.pipeline.models import augment
from anomalymap_helpers.pipeline.training import checkpoint
from anomalymap_helpers.pipeline.training.device import resolve_precision

# 16 images memorised in a few dozen steps: the validation loss turns up and training stops.
SMALL = dict(device="cpu", batch_size=8, lr=3e-3, epochs=40, patience=2, latent_dim=64)


@pytest.fixture(scope="module")
def few(small_normals) -> tuple[torch.Tensor, torch.Tensor]:
    x, v = small_normals
    return x[:16], v[:64]


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def _history(val: list[float], train_loss: list[float]) -> list[dict[str, float]]:
    return [{"epoch": i + 1, "train_loss": t, "val_loss": v} for i, (v, t) in enumerate(zip(val, train_loss, strict=True))]


def test_stopping_by_patience_keeps_the_best_epoch_and_saves_it(few, tmp_path: Path) -> None:
    x, v = few
    files = RunFiles(tmp_path / "run")
    result = train.train(x, v, train.TrainConfig(**SMALL), files=files, progress=False)
    losses = [h["val_loss"] for h in result.history]
    b = int(np.argmin(losses)) + 1
    assert result.stopped == "patience" and result.best_epoch == b and len(losses) == b + 2 < 40
    assert min(losses[b:]) >= losses[b - 1]  # none of the two after it was lower
    # The model returned and the model file are the best epoch's, not the last's.
    mine = _weights(result.model)
    saved = _weights(checkpoint.load_model(files.model))
    assert all(torch.equal(mine[k], saved[k]) for k in mine)
    assert checkpoint.read_metadata(files.model)["epoch"] == b
    assert train.mean_loss(result.model, v, resolve_precision(torch.device("cpu"), True, warn=False)) == pytest.approx(
        losses[b - 1], rel=1e-6)
    meta = json.loads(files.model_config.read_text())
    assert meta["best_epoch"] == b and meta["epochs_completed"] == b + 2
    assert meta["stopped"] == f"no lower validation loss in 2 epochs after epoch {b}"
    with open(files.history, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["best"]) for r in rows] == [int(i + 1 == b) for i in range(len(rows))]


def test_patience_0_runs_every_epoch_and_still_keeps_the_best(few) -> None:
    x, v = few
    result = train.train(x, v, train.TrainConfig(**{**SMALL, "epochs": 8, "patience": 0}), progress=False)
    assert result.stopped == "epochs" and len(result.history) == 8
    assert result.best_epoch == train.best_epoch(result.history)


def test_resume_after_an_interrupt_gives_the_same_best_epoch_and_weights(few, tmp_path: Path) -> None:
    x, v = few
    whole = train.train(x, v, train.TrainConfig(**SMALL), files=RunFiles(tmp_path / "a"), progress=False)
    stop_at = whole.best_epoch + 1  # interrupted after the best epoch, before training stopped

    def interrupt(record: dict[str, float]) -> None:
        if record["epoch"] == stop_at:
            raise KeyboardInterrupt

    part = RunFiles(tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        train.train(x, v, train.TrainConfig(**SMALL), files=part, progress=False, on_epoch=interrupt)
    assert checkpoint.read_metadata(part.model)["epoch"] == whole.best_epoch  # the best, already on disk
    resumed = train.train(x, v, train.TrainConfig(**SMALL), files=part, resume=True, progress=False)
    assert (resumed.best_epoch, resumed.stopped, len(resumed.history)) == (whole.best_epoch, "patience", len(whole.history))
    wa, wb = _weights(whole.model), _weights(resumed.model)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # Resuming a run that already stopped trains nothing more and returns the same best weights.
    again = train.train(x, v, train.TrainConfig(**SMALL), files=part, resume=True, progress=False)
    assert len(again.history) == len(whole.history)
    wc = _weights(again.model)
    assert all(torch.equal(wa[k], wc[k]) for k in wa)


def test_the_check_in_02_names_each_case() -> None:
    memorised = diagnose(_history([0.030, 0.0203, 0.024, 0.0268], [0.025, 0.015, 0.010, 0.007]), 0.02328, 180)
    assert (memorised.ok, memorised.case) == (True, "memorised")
    assert "memorised its 180 training images" in memorised.message and "epoch 2" in memorised.message
    assert "more normal images, augmentation" in memorised.message and "smaller latent_dim" in memorised.message
    worse = diagnose(_history([0.030, 0.0250, 0.026, 0.0268], [0.025, 0.015, 0.010, 0.007]), 0.02328, 180)
    assert (worse.ok, worse.case) == (False, "memorised") and "does no better than the mean image" in worse.message
    assert "train longer" not in worse.message  # the advice the old check gave, the wrong way round
    learning = diagnose(_history([0.050, 0.040, 0.030], [0.060, 0.045, 0.035]), 0.02328)
    assert (learning.ok, learning.case) == (False, "still learning") and "train longer" in learning.message
    stuck = diagnose(_history([0.030, 0.031, 0.0305], [0.030, 0.0301, 0.0302]), 0.02328)
    assert (stuck.ok, stuck.case) == (False, "not learning") and "another lr" in stuck.message
    assert "model='restore'" in stuck.message
    fine = diagnose(_history([0.0081, 0.0052], [0.029, 0.0063]), 0.06777)
    assert fine.ok and fine.case in ("learned", "still learning")
    fine = diagnose(_history([0.0081, 0.0052, 0.0053], [0.029, 0.0063, 0.0062]), 0.06777)
    assert (fine.ok, fine.case) == (True, "learned") and "beats the mean image" in fine.message
    once = diagnose(_history([0.073], [0.118]), 0.069)
    assert (once.ok, once.case) == (False, "still learning") and "One epoch is too few" in once.message
    for d in (memorised, worse, learning, stuck, fine, once):
        print(f"{d.case}: {d.message}")


def test_augmentations_are_seeded_and_do_what_they_say() -> None:
    torch.manual_seed(0)
    x = torch.rand(6, 3, 16, 16)
    gen = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    a = augment.apply(x, augment.draw(augment.AUGMENTATIONS, 6, 16, gen()))
    b = augment.apply(x, augment.draw(augment.AUGMENTATIONS, 6, 16, gen()))
    assert torch.equal(a, b) and not torch.equal(a, x) and float(a.min()) >= 0 and float(a.max()) <= 1
    # Each against NumPy, with the choices set by hand: (flip lr, flip tb, turns, dx, dy, factor).
    d = torch.tensor([[1, 0, 0, 0, 0, 1], [0, 1, 0, 0, 0, 1], [0, 0, 3, 0, 0, 1], [0, 0, 0, 1, -1, 1],
                      [0, 0, 0, 0, 0, 0.9], [1, 1, 1, 0, 0, 1]], dtype=torch.float32)
    out, n = augment.apply(x, d).numpy(), x.numpy()
    np.testing.assert_array_equal(out[0], n[0][..., ::-1])
    np.testing.assert_array_equal(out[1], n[1][:, ::-1])
    np.testing.assert_array_equal(out[2], np.rot90(n[2], 3, axes=(1, 2)))
    mirrored = np.pad(n[3], ((0, 0), (1, 1), (1, 1)), mode="reflect")  # shifted right by 1, up by 1
    np.testing.assert_array_equal(out[3], mirrored[:, 2:18, 0:16])
    np.testing.assert_allclose(out[4], np.clip(n[4] * 0.9, 0, 1), rtol=1e-6)
    np.testing.assert_array_equal(out[5], np.rot90(n[5][:, ::-1, ::-1], 1, axes=(1, 2)))
    # One augmentation off leaves the others' draws as they were.
    only = augment.draw(("flip",), 6, 16, gen())
    every = augment.draw(augment.AUGMENTATIONS, 6, 16, gen())
    assert torch.equal(only[:, :2], every[:, :2]) and bool((only[:, 2:5] == 0).all()) and bool((only[:, 5] == 1).all())


def test_the_augmentation_rule_and_refusals(few) -> None:
    assert augment.for_dataset("auto", "folder") == augment.AUGMENTATIONS
    assert augment.for_dataset("auto", "mnist") == () == augment.for_dataset("auto", "fashion-mnist")
    assert augment.for_dataset("off", "folder") == ()
    assert augment.for_dataset("shift, flip", "mnist") == ("flip", "shift")
    with pytest.raises(ParameterError, match=r"\['mirror'\] are not known; use any of \['flip', 'rot90', 'shift', 'brightness'\]"):
        augment.for_dataset("flip,mirror", "folder")
    with pytest.raises(ParameterError, match="patience=-1"):
        train.TrainConfig(patience=-1)
    # Training with augmentation is seeded: the same run twice gives the same weights.
    x, v = few
    cfg = train.TrainConfig(**{**SMALL, "epochs": 2, "augment": augment.AUGMENTATIONS})
    wa, wb = (_weights(train.train(x, v, cfg, progress=False).model) for _ in range(2))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    plain = _weights(train.train(x, v, train.TrainConfig(**{**SMALL, "epochs": 2}), progress=False).model)
    assert not all(torch.equal(wa[k], plain[k]) for k in wa)
