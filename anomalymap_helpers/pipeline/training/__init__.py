"""Training, notebook 02's step.

- ``config``: :class:`TrainConfig` and the one resolution of its "by data set" values;
- ``objectives``: each model kind's loss (``restore_loss`` the restore model's own);
- ``loop``: :func:`train`, the loop alone, and :func:`training_step`;
- ``checkpointing``: resume, the best weights, each epoch's checkpoint, early stopping;
- ``log``: what training prints.
"""

from anomalymap_helpers.pipeline.training.config import (
    AUTO_BATCH,
    AUTO_EPOCHS,
    AUTO_IMAGES,
    LR_SCHEDULES,
    RESTORE_IMAGES,
    RESTORE_REPEATS,
    TrainConfig,
    check_positive,
    learning_rate,
    schedule_for,
)
from anomalymap_helpers.pipeline.training.loop import (
    TrainResult,
    generator,
    new_optimizer,
    to_device,
    train,
    training_step,
)
from anomalymap_helpers.pipeline.training.objectives import (
    OBJECTIVES,
    Objective,
    baseline_loss,
    mean_loss,
    objective_for,
    validation_loss,
)
from anomalymap_helpers.pipeline.training.restore_loss import (
    FOCAL_GAMMA,
    RESTORE_VAL_COPIES,
    restore_loss,
    restore_validation,
)
from anomalymap_helpers.pipeline.training.resume import (
    RESUME_KEYS,
    best_epoch,
    check_resume,
    fingerprint,
    save_checkpoint,
    stop_reason,
)

__all__ = [
    "AUTO_BATCH", "AUTO_EPOCHS", "AUTO_IMAGES", "FOCAL_GAMMA", "LR_SCHEDULES", "OBJECTIVES", "RESTORE_IMAGES",
    "RESTORE_REPEATS", "RESTORE_VAL_COPIES", "RESUME_KEYS", "Objective", "TrainConfig", "TrainResult", "baseline_loss",
    "best_epoch", "check_positive", "check_resume", "fingerprint", "generator", "learning_rate", "mean_loss", "new_optimizer",
    "objective_for", "restore_loss", "restore_validation", "save_checkpoint", "schedule_for", "stop_reason",
    "to_device", "train", "training_step", "validation_loss",
]
