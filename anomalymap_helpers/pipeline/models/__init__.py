"""The models of notebook 02, with what they are trained on.

- ``networks``: the model kinds (:class:`ConvAutoencoder`, :class:`ConvVAE`, :class:`RestoreNet`, made of
  an autoencoder and a :class:`SegmentationHead`), each answering :meth:`~ConvAutoencoder.infer`;
- ``damage``: the synthetic defects the restore model learns to find;
- ``augment``: the augmentations that keep a normal image normal.

A new model kind is a class in ``networks`` (:func:`register`) and its objective in
:mod:`~anomalymap_helpers.pipeline.training.objectives`.
"""

from anomalymap_helpers.pipeline.models.networks import (
    ARCHITECTURE,
    AUTO_MODELS,
    HEAD_SIDE,
    HEAD_WIDTHS,
    MAX_GRID,
    MODEL_CLASSES,
    MODEL_NAMES,
    MODELS,
    RESTORE_ARCHITECTURE,
    VAE_ARCHITECTURE,
    ConvAutoencoder,
    ConvVAE,
    Inference,
    Model,
    ModelConfig,
    ReferenceAutoencoder,
    RestoreNet,
    SegmentationHead,
    build_model,
    check_image_size,
    check_model,
    depth_for,
    head_cell,
    kl_divergence,
    outputs_of,
    register,
    resolve_model,
)

__all__ = [
    "ARCHITECTURE", "AUTO_MODELS", "HEAD_SIDE", "HEAD_WIDTHS", "MAX_GRID", "MODELS", "MODEL_CLASSES", "MODEL_NAMES",
    "RESTORE_ARCHITECTURE", "VAE_ARCHITECTURE", "ConvAutoencoder", "ConvVAE", "Inference", "Model", "ModelConfig",
    "ReferenceAutoencoder", "RestoreNet", "SegmentationHead", "build_model", "check_image_size", "check_model",
    "depth_for", "head_cell", "kl_divergence", "outputs_of", "register", "resolve_model",
]
