"""The autoencoder and its checkpoints: shapes, round trips, refusals."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from anomalymap_helpers import checkpoint
from anomalymap_helpers.errors import CheckpointError
from anomalymap_helpers.model import ConvAutoencoder, ModelConfig


def test_shapes_and_range() -> None:
    model = ConvAutoencoder(ModelConfig(latent_dim=16))
    x = torch.rand(4, 1, 28, 28)
    z = model.encode(x)
    assert z.shape == (4, 16)
    out = model.decode(z)
    assert out.shape == x.shape
    assert out.min() >= 0 and out.max() <= 1
    torch.testing.assert_close(model(x), out)


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = ConvAutoencoder(ModelConfig(latent_dim=8)).eval()
    path = checkpoint.save_model(tmp_path / "model.safetensors", model, epoch=3)
    loaded = checkpoint.load_model(path)
    x = torch.rand(5, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert loaded.config == model.config
    assert checkpoint.read_metadata(path)["epoch"] == 3


def test_checkpoint_of_another_latent_dim_names_both(tmp_path: Path) -> None:
    path = checkpoint.save_model(tmp_path / "model.safetensors", ConvAutoencoder(ModelConfig(latent_dim=32)))
    with pytest.raises(CheckpointError, match=r"latent_dim=32.*latent_dim=64"):
        checkpoint.load_model(path, expected=ModelConfig(latent_dim=64))


def test_truncated_checkpoint_gives_a_clear_error(tmp_path: Path) -> None:
    path = checkpoint.save_model(tmp_path / "model.safetensors", ConvAutoencoder())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt, truncated"):
        checkpoint.load_model(path)


def test_missing_checkpoint_names_the_step(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="run notebook 02_training"):
        checkpoint.load_model(tmp_path / "nothing.safetensors")


class _RunsCode:
    """Unpickling this calls Path.touch(marker): code run on load."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (Path.touch, (self.marker,))


def test_pickle_checkpoint_is_refused_and_its_code_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "model.safetensors"
    path.write_bytes(pickle.dumps({"state_dict": _RunsCode(marker)}))
    # The payload works: plain unpickling would run it.
    pickle.loads(pickle.dumps(_RunsCode(tmp_path / "proof")))
    assert (tmp_path / "proof").exists()
    with pytest.raises(CheckpointError):
        checkpoint.load_model(path)
    assert not marker.exists()


def test_torch_save_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    torch.save(ConvAutoencoder().state_dict(), path)
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        checkpoint.load_model(path)


def test_foreign_safetensors_file_is_refused(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    save_file({"w": torch.zeros(3)}, str(path))
    with pytest.raises(CheckpointError, match="not an AnomalyMap checkpoint"):
        checkpoint.load_model(path)


def test_encoder_equals_the_conv_relu_maxpool_order() -> None:
    """MaxPool-then-ReLU is an exact rewrite of the original Conv-ReLU-MaxPool blocks."""
    torch.manual_seed(0)
    model = ConvAutoencoder()
    e = model.encoder
    original = torch.nn.Sequential(
        e[0], torch.nn.ReLU(), torch.nn.MaxPool2d(2), e[3], torch.nn.ReLU(), torch.nn.MaxPool2d(2), e[6], e[7]
    )
    x = torch.rand(6, 1, 28, 28) - 0.3
    a, b = model.encode(x), original(x)
    assert torch.equal(a, b)
    ga = torch.autograd.grad(a.square().sum(), e[0].weight)[0]
    gb = torch.autograd.grad(original(x).square().sum(), e[0].weight)[0]
    torch.testing.assert_close(ga, gb, rtol=0, atol=0)


def test_speed_reference_model_is_the_same_function() -> None:
    from anomalymap_helpers.speed import original_model

    torch.manual_seed(0)
    model = ConvAutoencoder()
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        expected = model(x)
        reference = original_model(model)
        assert reference.encoder[0].weight.is_contiguous()
        torch.testing.assert_close(reference(x), expected)
