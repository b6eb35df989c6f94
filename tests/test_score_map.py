"""``latent-knn``'s own map (``scoring.LatentKnnMaps``) against a brute-force reference, and where it is shown."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from anomalymap_helpers.pipeline import scoring
from anomalymap_helpers.pipeline.evaluation import plotting
from anomalymap_helpers.pipeline.explorer import Explorer, render
from anomalymap_helpers.pipeline.models import ConvAutoencoder, ConvVAE, ModelConfig
from tests.conftest import assert_close

# Runs again with the other CPU precision in `make test` (fp32 on a bf16 CPU, emulated bf16 elsewhere).
pytestmark = pytest.mark.precision


def _setup(model_type: type = ConvAutoencoder, size: int = 28) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = model_type(ModelConfig(latent_dim=16, image_size=size)).eval()
    train = torch.rand(40, 1, size, size)
    return model, train, scoring.encode(model, train)


@pytest.mark.parametrize(("model_type", "size"), [(ConvAutoencoder, 28), (ConvVAE, 28), (ConvAutoencoder, 64)])
def test_parts_add_up_to_the_distance_to_each_neighbour(model_type: type, size: int, precision: str) -> None:
    """Per neighbour, the locations' parts plus the bias part equal |z/|z| - z_n/|z_n||, i.e.
    sqrt(2 * cosine distance), with the neighbours found by brute force over the reference. The
    parts are fp32 recomputations; where the reference set was encoded in bf16 (a bf16 run's),
    they add up to its distances to bf16's tolerance."""
    model, train, reference = _setup(model_type, size)
    maps = scoring.LatentKnnMaps(model, train, reference, k=3)
    queries = torch.rand(5, 1, size, size)
    parts, bias, neighbours = maps.parts(queries)
    with torch.no_grad():
        z = model.encode(queries)
    cosine = 1 - F.cosine_similarity(z[:, None, :], reference[None], dim=2)  # (5, 40)
    expected = cosine.argsort(dim=1)[:, :3]
    assert torch.equal(neighbours, expected)
    distance = cosine.gather(1, expected)
    assert_close(parts.sum((2, 3)) + bias, (2 * distance).sqrt(), precision, what="parts + bias")
    assert parts.shape[2:] == (model._grid, model._grid)
    # The score the map explains is latent-knn's own: the same cosines, fp32 (1e-5 relative holds the reordered sums).
    torch.testing.assert_close(distance.mean(1), scoring.knn_distances(reference, z, 3), rtol=1e-5, atol=1e-6)


def test_a_training_image_has_an_empty_map_and_others_an_upsampled_one() -> None:
    model, train, reference = _setup()
    maps = scoring.LatentKnnMaps(model, train, reference, k=1)
    own = maps(train[:3])
    assert own.shape == (3, 1, 28, 28) and float(own.abs().max()) < 1e-5  # its nearest normal is itself
    queries = torch.rand(2, 1, 28, 28)
    other = maps(queries)
    assert other.shape == (2, 1, 28, 28) and float(other.min()) >= 0 and float(other.max()) > 0
    parts, _, _ = maps.parts(queries)
    grid = parts.mean(1, keepdim=True).clamp_min(0).numpy()  # (2, 1, 7, 7): the positive part
    # Bilinear upsampling by hand (half-pixel centres, edges clamped), against F.interpolate's.
    centres = (np.arange(28) + 0.5) * 7 / 28 - 0.5
    lo = np.clip(np.floor(centres).astype(int), 0, 6)
    hi = np.clip(lo + 1, 0, 6)
    w = np.clip(centres - lo, 0, 1)
    rows = grid[..., lo, :] * (1 - w)[:, None] + grid[..., hi, :] * w[:, None]
    by_hand = rows[..., lo] * (1 - w) + rows[..., hi] * w
    np.testing.assert_allclose(other.numpy(), by_hand, rtol=1e-5, atol=1e-7)
    with pytest.raises(Exception, match="40 training images but 39 reference latents"):
        scoring.LatentKnnMaps(model, train, reference[:-1])


def test_the_explorer_shows_the_score_map_beside_the_reconstruction_error() -> None:
    model, train, reference = _setup()
    test = torch.rand(6, 1, 28, 28)
    scored = scoring.score(model, test)
    maps = scoring.LatentKnnMaps(model, train, reference)
    calls = []

    def one(i: int) -> np.ndarray:
        calls.append(i)
        return maps(test[i : i + 1])[0, 0].numpy()

    labels = torch.tensor([0, 9, 0, 9, 0, 9])
    ex = Explorer(scored, labels, labels == 9, 0.5, score_name="latent-knn", score_maps=one)
    fig = render.figure(ex, 1)
    images = [ax for ax in fig.axes if ax.images]
    assert len(images) == 4 and len(fig.axes) == 4 + 2  # four panels and two colour bars
    assert images[3].get_title() == "latent-knn map"
    np.testing.assert_allclose(images[3].images[0].get_array(), maps(test[1:2])[0, 0].numpy(), rtol=1e-6)
    labels_of_bars = [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()]
    assert any(label.startswith("|x - x̂|") for label in labels_of_bars)
    assert any(label.startswith("latent-knn") for label in labels_of_bars)
    ex.png(1)
    assert calls == [1]  # computed once, then kept
    plain = Explorer(scored, labels, labels == 9, 0.5)
    assert len([ax for ax in render.figure(plain, 1).axes if ax.images]) == 3 and len(render.figure(plain, 1).axes) == 4


def test_triptychs_add_a_column_for_the_score_map() -> None:
    images = np.random.default_rng(0).random((2, 1, 28, 28))
    fig = plotting.triptychs(images, images, images, score_maps=images, score_name="latent-knn")
    assert len([ax for ax in fig.axes if ax.images]) == 2 * 4 and len(fig.axes) == 2 * 4 + 2 * 2
    plain = plotting.triptychs(images, images, images)
    assert len([ax for ax in plain.axes if ax.images]) == 2 * 3 and len(plain.axes) == 2 * 3 + 2


def test_the_explorer_shows_the_normal_that_patch_knns_map_compares_against() -> None:
    model, train, reference = _setup()
    test = torch.rand(4, 1, 28, 28)
    patch = scoring.PatchKnn(model, train, reference, k=5)
    grids, matches = patch.grids(test)
    maps, explained = patch.explain(test)
    assert torch.equal(explained, matches)
    labels = torch.tensor([0, 9, 0, 9])

    def nearest(i: int) -> tuple[torch.Tensor, str]:
        m = int(patch.explain(test[i : i + 1])[1][0])
        return train[m], f"training #{m}"

    ex = Explorer(scoring.score(model, test), labels, labels == 9, 0.5, score_name="patch-knn",
                  score_maps=lambda i: maps[i, 0].numpy(), nearest=nearest)
    for i in (1, 2):
        panels = [ax for ax in render.figure(ex, i).axes if ax.images]
        assert len(panels) == 5
        m = int(matches[i])
        assert panels[3].get_title() == f"best match: training #{m}"
        np.testing.assert_array_equal(panels[3].images[0].get_array(), train[m, 0].numpy())
        assert panels[4].get_title() == "patch-knn map"
        # The map drawn is the best match's: its largest cell is the image's score.
        np.testing.assert_allclose(panels[4].images[0].get_array(), maps[i, 0].numpy())
        assert float(grids[i].max()) == pytest.approx(float(patch.scores(test[i : i + 1])[0]))


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("with_map", ["none", "map", "map and best match"])
def test_the_reused_view_draws_what_a_new_figure_draws(channels: int, with_map: str) -> None:
    """png() keeps one figure and swaps its contents; each view must equal a figure made afresh:
    other images, a mask then none, the global scale, another threshold."""
    import io

    from PIL import Image

    torch.manual_seed(1)
    model = ConvAutoencoder(ModelConfig(latent_dim=8, channels=channels)).eval()
    test = torch.rand(5, channels, 28, 28)
    masks = torch.zeros(5, 1, 28, 28)
    masks[1, :, 5:12, 8:20] = 1
    masks[3, :, 15:25, 2:9] = 1
    train = torch.rand(12, channels, 28, 28)
    if with_map == "map and best match":
        patch = scoring.PatchKnn(model, train, k=3)
        one = lambda i: patch(test[i : i + 1])[0, 0].numpy()  # noqa: E731
        nearest = lambda i: (train[int(patch.grids(test[i : i + 1])[1][0])], f"training #{i}")  # noqa: E731
    else:
        maps = scoring.LatentKnnMaps(model, train, scoring.encode(model, train))
        one = (lambda i: maps(test[i : i + 1])[0, 0].numpy()) if with_map == "map" else None
        nearest = None
    labels = torch.tensor([0, 1, 0, 1, 0])
    ex = Explorer(scoring.score(model, test), labels, labels == 1, 0.3, masks=masks, score_maps=one, nearest=nearest)

    def fresh(i: int, threshold: float | None = None, scale: str | None = None) -> np.ndarray:
        buf = io.BytesIO()
        render.figure(ex, i, threshold, scale).savefig(buf, format="png", dpi=90)
        return np.asarray(Image.open(buf))

    for i, threshold, scale in [(0, None, None), (1, None, None), (2, 0.01, "global"), (3, None, "per-image"), (4, 9.0, None)]:
        reused = np.asarray(Image.open(io.BytesIO(render.png(ex, i, threshold, scale))))
        np.testing.assert_array_equal(reused, fresh(i, threshold, scale), err_msg=f"image {i}")
