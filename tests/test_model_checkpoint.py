"""The autoencoder and its checkpoints: shapes, round trips, refusals."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from anomalymap_helpers.errors import CheckpointError
from anomalymap_helpers.pipeline.models import ConvAutoencoder, ModelConfig, ReferenceAutoencoder
from anomalymap_helpers.pipeline.training import checkpoint

# Runs again with the other CPU precision in `make test` (fp32 on a bf16 CPU, emulated bf16 elsewhere).
pytestmark = pytest.mark.precision


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


def _reference_pair(config: ModelConfig | None = None, seed: int = 0) -> tuple[ConvAutoencoder, ReferenceAutoencoder]:
    torch.manual_seed(seed)
    model = ConvAutoencoder(config)
    reference = ConvAutoencoder(config)
    reference.load_state_dict(model.state_dict())
    return model, ReferenceAutoencoder(reference)


def test_model_computes_the_original_layers_function() -> None:
    """The rewritten forward (NHWC Linear, ConvTranspose as matrix products, flipped last conv)
    gives the plain layers' reconstruction, latents and gradients for every parameter."""
    model, reference = _reference_pair()
    x = torch.rand(6, 1, 28, 28) - 0.1  # some negative pixels, so ReLUs and pools have work to do
    out, expected = model(x), reference(x)
    # Precision fp32 (2**-24): the same sums in another order and layout; outputs in [0, 1] and latents
    # of size ~1 agree to 1e-5 relative, the gradients (sums over 6 x 784 pixels that cancel) to 1e-4.
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.encode(x), reference.encoder(x), rtol=1e-5, atol=1e-6)
    ((out - x) ** 2).mean().backward()
    ((expected - x) ** 2).mean().backward()
    grads = dict(reference.named_parameters())
    assert {name for name, _ in model.named_parameters()} == set(grads)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[name].grad, rtol=1e-4, atol=1e-7, msg=name)


def test_model_equals_reference_in_bf16_and_for_other_shapes() -> None:
    """Same function under bf16 autocast, and for another image size, channel count and latent size."""
    model, reference = _reference_pair()
    x = torch.rand(4, 1, 28, 28)
    # Precision bf16 (u = 2**-8): two roundings of the same function, whichever kernels run. Each of
    # the 7 layers rounds its weights and output once (2u relative to the pre-activation's scale, ~1
    # here); through the sigmoid (slope at most 1/4) the outputs in [0, 1] differ by at most about
    # 2 * 7 * 2u / 4 = 0.027 to first order, and 0.02 absolute and relative holds them.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(model(x).float(), reference(x).float(), rtol=0.02, atol=0.02)
    model, reference = _reference_pair(ModelConfig(latent_dim=8, image_size=32, channels=3), seed=1)
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(model(x), reference(x), rtol=1e-5, atol=1e-6)


def test_reference_model_runs_the_original_layers_in_nchw() -> None:
    model, reference = _reference_pair()
    assert reference.encoder[0].weight.is_contiguous()
    names = " ".join(type(m).__name__ for m in reference.encoder)
    assert names == "Conv2d ReLU MaxPool2d Conv2d ReLU MaxPool2d Flatten Linear"


@pytest.mark.parametrize(("size", "channels", "grid"), [(64, 3, 8), (128, 3, 8), (96, 1, 6)])
def test_larger_images_add_blocks_and_keep_the_bottleneck_small(size: int, channels: int, grid: int) -> None:
    """Larger images get extra down/up blocks: the grid stays <= 8x8, the Linear layers small,
    and the fast forward still computes the plain layers' function (values and gradients)."""
    config = ModelConfig(latent_dim=16, image_size=size, channels=channels)
    torch.manual_seed(2)
    model, source = ConvAutoencoder(config), ConvAutoencoder(config)
    source.load_state_dict(model.state_dict())
    reference = ReferenceAutoencoder(source)  # runs source's own parameters
    assert model._grid == grid and model.encoder[7].in_features == 64 * grid * grid
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    x = torch.rand(2, channels, size, size) - 0.1
    out, expected = model(x), reference(x)
    assert out.shape == x.shape
    # Precision fp32, as in test_model_computes_the_original_layers_function.
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    ((out - x) ** 2).mean().backward()
    ((expected - x) ** 2).mean().backward()
    grads = dict(source.named_parameters())
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[name].grad, rtol=1e-4, atol=1e-6, msg=name)


def test_28_pixel_model_has_no_extra_blocks() -> None:
    """At 28x28, 1 channel the model is the original one: the same parameter names as before."""
    names = [n for n, _ in ConvAutoencoder().named_parameters()]
    assert names == [
        "encoder.0.weight", "encoder.0.bias", "encoder.3.weight", "encoder.3.bias", "encoder.7.weight",
        "encoder.7.bias", "decoder_fc.weight", "decoder_fc.bias", "decoder.0.weight", "decoder.0.bias",
        "decoder.2.weight", "decoder.2.bias", "decoder.4.weight", "decoder.4.bias",
    ]


def test_image_size_the_model_cannot_halve_is_refused_with_sizes_it_can() -> None:
    from anomalymap_helpers.errors import ParameterError
    from anomalymap_helpers.pipeline.models import check_image_size

    with pytest.raises(ParameterError, match=r"image_size=100: .*multiple of 16, e.g. 96 or 112"):
        check_image_size(100)
    assert check_image_size(224) == 224


def test_checkpoint_of_another_image_shape_names_both(tmp_path: Path) -> None:
    path = checkpoint.save_model(tmp_path / "model.safetensors", ConvAutoencoder(ModelConfig(16, 64, 3)))
    with pytest.raises(CheckpointError, match=r"3x64x64 images.*1x28x28 images"):
        checkpoint.load_model(path, expected=ModelConfig(16, 28, 1))
