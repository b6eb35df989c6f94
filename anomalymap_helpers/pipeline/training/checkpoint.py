"""Checkpoints as safetensors: plain tensors and text metadata, never pickle.

``model.safetensors`` holds the autoencoder's weights; its metadata names the
architecture and its shape, so a checkpoint of another model is refused with a
message that names both. ``training_state.safetensors`` holds the weights, the
optimizer state and the epoch reached, so an interrupted run can resume.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from anomalymap_helpers.errors import CheckpointError
from anomalymap_helpers.files import storage
from anomalymap_helpers.pipeline.models import MODEL_NAMES, MODELS, ConvAutoencoder, ModelConfig, build_model

FORMAT = "anomalymap/1"


def _tensors(model: torch.nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    # Tensors are stored contiguous (not channels_last): that is the portable layout.
    return {prefix + k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}


def _save(path: str | os.PathLike[str], tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> Path:
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    with storage.atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return Path(path)


def _model_metadata(model: ConvAutoencoder) -> dict[str, Any]:
    return {"format": FORMAT, "model_config": asdict(model.config)}


def _read(
    path: str | os.PathLike[str], what: str, *, with_tensors: bool = True
) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"no {what} at {p}: run notebook 02_training first")
    try:
        with safe_open(str(p), framework="pt", device="cpu") as fh:
            metadata = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()} if with_tensors else {}  # noqa: SIM118 (not a dict)
    except Exception as exc:  # safetensors raises its own error types for bad headers and short files
        raise CheckpointError(
            f"{p} is not a readable safetensors checkpoint ({exc}): the file is corrupt, truncated or "
            "of another format. Delete it and run notebook 02_training again"
        ) from None
    if metadata.get("format") != FORMAT:
        raise CheckpointError(
            f"{p} is a safetensors file but not an AnomalyMap checkpoint (format "
            f"{metadata.get('format')!r}, expected {FORMAT!r}): train one with notebook 02_training"
        )
    return metadata, tensors


def _config(metadata: dict[str, str], path: Path) -> ModelConfig:
    try:
        raw = json.loads(metadata["model_config"])
        known = {f.name for f in fields(ModelConfig)}
        return ModelConfig(**{k: v for k, v in raw.items() if k in known})
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: its model_config metadata cannot be read ({exc})") from None


def _describe(config: ModelConfig) -> str:
    return f"{config.architecture} with latent_dim={config.latent_dim}, {config.channels}x{config.image_size}x{config.image_size} images"


def _kind(architecture: str) -> str:
    model = ModelConfig(architecture=architecture).model
    name = MODEL_NAMES.get(architecture, architecture)
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name} (model={model!r})"


def _check_architecture(config: ModelConfig, architecture: str, path: Path) -> None:
    """Refuse a checkpoint of the other model (an autoencoder loaded as a VAE, or the reverse)."""
    if config.architecture != architecture:
        wanted = ModelConfig(architecture=architecture).model
        raise CheckpointError(
            f"{path} holds {_kind(config.architecture)}, but this run asks for {_kind(architecture)}: "
            f"give model={config.model!r} to use the checkpoint, or train a new {wanted!r} model with "
            "02_training (resume=False)"
        )


def _check_expected(config: ModelConfig, expected: ModelConfig | None, path: Path) -> None:
    if expected is not None:
        _check_architecture(config, expected.architecture, path)
    if expected is not None and config != expected:
        raise CheckpointError(
            f"{path} holds a {_describe(config)}, but this run asks for a {_describe(expected)}: "
            f"use latent_dim={config.latent_dim} to match the checkpoint, or train a new one with 02_training"
        )


def _build(config: ModelConfig, state: dict[str, torch.Tensor], path: Path) -> ConvAutoencoder:
    model = build_model(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    if expected != found:
        diff = sorted(set(expected.items()) ^ set(found.items()))[:4]
        raise CheckpointError(
            f"{path} claims a {_describe(config)} but its tensors do not fit that model "
            f"(first differences: {diff}): the file was edited or made by other code; train a new one"
        )
    model.load_state_dict(state)
    return model


def save_model(path: str | os.PathLike[str], model: ConvAutoencoder, **metadata: Any) -> Path:
    """Atomically save the model's weights with its config as metadata."""
    return _save(path, _tensors(model), {**_model_metadata(model), **metadata})


def read_metadata(path: str | os.PathLike[str], what: str = "model checkpoint") -> dict[str, Any]:
    """The metadata of a checkpoint, JSON values decoded; its tensors are not read."""
    metadata, _ = _read(path, what, with_tensors=False)
    out: dict[str, Any] = {}
    for k, v in metadata.items():
        try:
            out[k] = json.loads(v)
        except ValueError:
            out[k] = v
    return out


def load_model(
    path: str | os.PathLike[str],
    expected: ModelConfig | None = None,
    device: str | torch.device = "cpu",
    *,
    model: str | None = None,
) -> ConvAutoencoder:
    """Load a model saved by :func:`save_model`, in eval mode: a ConvAutoencoder or a ConvVAE.

    Args:
        path: The ``model.safetensors`` file.
        expected: If given, the checkpoint must be of this config.
        device: Where to put the model.
        model: If given, ``"ae"`` or ``"vae"``: the checkpoint must be of that kind.

    Raises:
        CheckpointError: missing, corrupt, not ours, of another config or of the other model.
    """
    p = Path(path)
    metadata, state = _read(p, "model checkpoint")
    config = _config(metadata, p)
    if model is not None:
        _check_architecture(config, MODELS[model], p)
    _check_expected(config, expected, p)
    return _build(config, state, p).to(device).eval()


def save_training_state(
    path: str | os.PathLike[str],
    model: ConvAutoencoder,
    optimizer: torch.optim.Optimizer,
    *,
    epoch: int,
    history: list[dict[str, float]],
    train_config: dict[str, Any],
    best: ConvAutoencoder | None = None,
) -> Path:
    """Atomically save what :func:`load_training_state` needs to resume after ``epoch``: the last
    epoch's weights and optimizer, and ``best``'s weights (the lowest validation loss so far)."""
    state = optimizer.state_dict()
    tensors = _tensors(model, "model.")
    if best is not None:
        tensors.update(_tensors(best, "best."))
    for index, param_state in state["state"].items():
        for key, value in param_state.items():
            tensors[f"optim.{index}.{key}"] = torch.as_tensor(value).detach().to("cpu").contiguous()
    metadata = {
        **_model_metadata(model),
        "epoch": epoch,
        "history": history,
        "train_config": train_config,
        "param_groups": state["param_groups"],
    }
    return _save(path, tensors, metadata)


def load_training_state(
    path: str | os.PathLike[str],
    model: ConvAutoencoder,
    optimizer: torch.optim.Optimizer,
    best: ConvAutoencoder | None = None,
) -> tuple[int, list[dict[str, float]], dict[str, Any]]:
    """Load a training state into ``model`` and ``optimizer``, and its best weights into ``best``
    (the last epoch's where a state from before early stopping holds none).

    Returns:
        ``(epoch completed, history, train_config)``.

    Raises:
        CheckpointError: corrupt, not ours, or of another model config.
    """
    p = Path(path)
    metadata, tensors = _read(p, "training state")
    _check_expected(_config(metadata, p), model.config, p)
    model_state = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    loaded = _build(model.config, model_state, p)
    model.load_state_dict(loaded.state_dict())
    if best is not None:
        best_state = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")} or model_state
        best.load_state_dict(_build(model.config, best_state, p).state_dict())
    optim_state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            optim_state.setdefault(int(index), {})[name] = value
    try:
        optimizer.load_state_dict({"state": optim_state, "param_groups": json.loads(metadata["param_groups"])})
        _match_param_layout(optimizer)
        epoch = int(metadata["epoch"])
        history = json.loads(metadata["history"])
        train_config = json.loads(metadata["train_config"])
    except (KeyError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{p}: the optimizer state cannot be restored ({exc}); start without resume") from None
    return epoch, history, train_config


def _match_param_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give each per-element state tensor its parameter's strides (e.g. channels_last).

    Checkpoints store tensors contiguous; a fused optimizer walks a parameter and
    its state in memory order, so their layouts must agree.
    """
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                if isinstance(value, torch.Tensor) and value.shape == p.shape and value.stride() != p.stride():
                    optimizer.state[p][key] = torch.empty_like(p, dtype=value.dtype).copy_(value)
