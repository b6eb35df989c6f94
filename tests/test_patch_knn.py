"""``patch-knn``, the default score (``scoring.PatchKnn``), against a brute-force reference written
from its definition with NumPy loops and the plain (unfused) encoder layers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anomalymap_helpers.errors import ParameterError
from anomalymap_helpers.pipeline import scoring
from anomalymap_helpers.pipeline.models import ConvAutoencoder, ConvVAE, ModelConfig
from tests.conftest import BF16_STEP, TOLERANCE, assert_close

# Runs again with the other CPU precision in `make test` (fp32 on a bf16 CPU, emulated bf16 elsewhere).
pytestmark = pytest.mark.precision


def _setup(model_type: type = ConvAutoencoder, size: int = 28, channels: int = 1) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = model_type(ModelConfig(latent_dim=16, image_size=size, channels=channels)).eval()
    return model, torch.rand(30, channels, size, size)


def _plain_features(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    """The last feature map ``(N, 64, g, g)`` through the layers one by one (NCHW, no fusing)."""
    h = x.float().contiguous()
    with torch.no_grad():
        for layer in [*model.encoder[:6], *model.down]:
            h = layer(h)
    return h.double().numpy()


def _brute_force(
    model: torch.nn.Module, train: torch.Tensor, queries: torch.Tensor, smooth: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(cosine (M, N), maps (M, N, g, g))`` by the definition in float64, one image, training image,
    cell and window at a time: each query's latent cosine distance to every training image, and its
    map against every training image (the score takes the ``k`` latent-nearest and the lowest peak)."""
    with torch.no_grad():
        zt, zq = model.encode(train).double().numpy(), model.encode(queries).double().numpy()
    ft, fq = _plain_features(model, train), _plain_features(model, queries)
    g, r = ft.shape[-1], smooth // 2
    cosine = np.empty((len(queries), len(train)))
    maps = np.empty((len(queries), len(train), g, g))
    for m in range(len(queries)):
        mine = fq[m] / np.linalg.norm(fq[m])
        for n in range(len(train)):
            cosine[m, n] = 1 - zq[m] @ zt[n] / (np.linalg.norm(zq[m]) * np.linalg.norm(zt[n]))
            theirs = ft[n] / np.linalg.norm(ft[n])
            cells = np.sqrt(((mine - theirs) ** 2).sum(0))  # (g, g): same cell, one normal
            for i in range(g):
                for j in range(g):
                    maps[m, n, i, j] = cells[max(i - r, 0) : i + r + 1, max(j - r, 0) : j + r + 1].mean()  # edges left out
    return cosine, maps


@pytest.mark.parametrize(
    ("model_type", "size", "channels", "k", "smooth"),
    [(ConvAutoencoder, 28, 1, 3, 3), (ConvVAE, 28, 1, 1, 3), (ConvAutoencoder, 64, 3, 4, 1), (ConvAutoencoder, 28, 1, 5, 5)],
)
def test_grids_and_scores_equal_a_brute_force_reference(
    model_type: type, size: int, channels: int, k: int, smooth: int, precision: str
) -> None:
    """In fp32 the same neighbours, best match and maps as the float64 reference; in bf16 autocast
    the maps within bf16's tolerance, and neighbours and best match the reference's up to ties
    that bf16's rounding can reorder."""
    model, train = _setup(model_type, size, channels)
    queries = torch.rand(7, channels, size, size)
    patch = scoring.PatchKnn(model, train, k=k, smooth=smooth)
    cosine, every = _brute_force(model, train, queries, smooth)
    maps, neighbours = patch.neighbour_maps(queries, chunk=3)  # chunks smaller than the queries
    assert maps.shape == (7, k, model._grid, model._grid) and neighbours.shape == (7, k)
    grids, found = patch.grids(queries)
    rows = np.arange(len(queries))
    near = np.argsort(cosine, axis=1, kind="stable")[:, :k]
    peaks = every.reshape(*every.shape[:2], -1).max(2)  # (M, N): each map's peak
    if precision == "fp32":
        np.testing.assert_array_equal(neighbours.numpy(), near)
        np.testing.assert_array_equal(found.numpy(), near[rows, peaks[rows[:, None], near].argmin(1)])
    else:  # a neighbour no farther than the k-th nearest, a best match no worse than the best, up to rounding
        rtol, atol = TOLERANCE["bf16"]
        kth = cosine[rows, near[:, -1]]
        assert bool((cosine[rows[:, None], neighbours.numpy()] <= kth[:, None] * (1 + rtol) + atol).all())
        best = peaks[rows[:, None], neighbours.numpy()].min(1)
        assert bool((peaks[rows, found.numpy()] <= best * (1 + rtol) + atol * best).all())
    scale = float(every.max())
    assert_close(maps.numpy(), every[rows[:, None], neighbours.numpy()], precision, scale, "each neighbour's map")
    assert_close(grids.numpy(), every[rows, found.numpy()], precision, scale, "the best match's map")
    # The image score is the map's largest cell.
    assert_close(patch.scores(queries).numpy(), peaks[rows, found.numpy()], precision, scale, "the scores")


def test_the_scorer_and_the_run_map_agree_with_the_score() -> None:
    model, train = _setup()
    val, test = torch.rand(6, 1, 28, 28), torch.rand(5, 1, 28, 28)
    scorer = scoring.Scorer(model, train, val, k=3)
    patch = scoring.PatchKnn(model, train, scoring.encode(model, train))
    everything = scorer.all_scores(scoring.score(model, test))
    scores = everything["patch-knn"]
    torch.testing.assert_close(scores, patch.scores(test))
    torch.testing.assert_close(scorer.val_scores["patch-knn"], patch.scores(val))
    # The scorer searches the reference once for both kNN scores; latent-knn's are its own k's.
    torch.testing.assert_close(everything["latent-knn"], scoring.knn_distances(scorer.reference, scoring.encode(model, test), 3))
    with pytest.raises(ParameterError, match="neighbours of shape"):
        patch.scores(test, neighbours=torch.zeros(5, 2, dtype=torch.long))
    maps = patch(test)
    assert maps.shape == (5, 1, 28, 28) and float(maps.min()) >= 0
    # The upsampled picture's peak is at most the score (bilinear weights are convex) and near it.
    peaks = maps.flatten(1).amax(1)
    assert bool((peaks <= scores + 1e-6).all()) and bool((peaks >= 0.5 * scores).all())


def test_a_training_image_matches_itself_everywhere() -> None:
    model, train = _setup()
    patch = scoring.PatchKnn(model, train, k=3)
    own, matches = patch.grids(train[:4])
    assert float(own.abs().max()) < 1e-6  # its best match is itself, cell by cell
    assert matches.tolist() == [0, 1, 2, 3]
    assert float(patch.scores(torch.rand(3, 1, 28, 28)).min()) > 0.01


def test_brightness_alone_does_not_move_the_map(precision: str) -> None:
    """Each feature map is divided by its length, so an image whose features are all scaled (a
    uniformly fainter copy, through the ReLU encoder with zero biases) matches its original: to
    fp32's rounding, and in bf16 to its rounding of the two copies' features (a few steps of a
    cell's share of the unit-length map)."""
    model, train = _setup()
    with torch.no_grad():
        for layer in [*model.encoder[:6], *model.down]:
            if hasattr(layer, "bias") and layer.bias is not None:
                layer.bias.zero_()
    patch = scoring.PatchKnn(model, train, k=1)
    faint, _ = patch.grids(0.4 * train[:3])
    cell = 1 / model._grid  # a cell's length in a unit-length map of g * g equal cells
    assert float(faint.abs().max()) < (1e-5 if precision == "fp32" else 4 * BF16_STEP * cell)
    assert float(patch.grids(train[3:6] + 0.2)[0].abs().max()) > 4 * BF16_STEP * cell  # an offset does move it


def test_refusals_name_what_to_give() -> None:
    model, train = _setup()
    with pytest.raises(ParameterError, match="30 training images but 29 reference latents"):
        scoring.PatchKnn(model, train, scoring.encode(model, train)[:-1])
    with pytest.raises(ParameterError, match=r"needs the training images \(N, C, H, W\)"):
        scoring.PatchKnn(model, scoring.encode(model, train))
    with pytest.raises(ParameterError, match="give their cached latents as reference="):
        scoring.Scorer(model, scoring.encode(model, train), torch.rand(4, 1, 28, 28))
