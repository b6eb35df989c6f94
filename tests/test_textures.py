"""The hard example folders: procedural materials with defects whose masks are exactly the changed pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomalymap_helpers.errors import ParameterError
from anomalymap_helpers.pipeline.data import textures
from anomalymap_helpers.pipeline.data.folder import load_folder


@pytest.mark.parametrize("mat", textures.MATERIALS)
@pytest.mark.parametrize("kind", textures.DEFECTS)
def test_each_defect_changes_exactly_its_mask(mat: str, kind: str) -> None:
    rng = np.random.default_rng(3)
    clean = textures.material(mat, 64, rng)
    damaged, mask = textures.defect(clean, kind, mat, rng)
    changed = (np.round(damaged) != np.round(clean)).any(-1)
    assert np.array_equal(mask, changed) and 0.002 < mask.mean() < 0.2, (mask.mean(), kind)
    assert float(np.abs(damaged - clean)[mask].mean()) > 8  # visible: several grey levels on average


def test_materials_are_seeded_varied_and_textured() -> None:
    a = textures.material("wood", 64, np.random.default_rng(0))
    assert np.array_equal(a, textures.material("wood", 64, np.random.default_rng(0)))
    b = textures.material("wood", 64, np.random.default_rng(1))
    assert np.abs(a - b).mean() > 10  # another patch of the material
    for mat in textures.MATERIALS:
        img = textures.material(mat, 64, np.random.default_rng(0))
        assert img.shape == (64, 64, 3) and img.min() >= 0 and img.max() <= 255 and img.std() > 8, mat
    with pytest.raises(ParameterError, match="material 'glass'"):
        textures.material("glass", 64, np.random.default_rng(0))


def test_the_folders_load_as_a_folder_data_set(tmp_path: Path) -> None:
    out = textures.make_texture_folders(tmp_path / "tex", size=32, n_train=6, n_test_good=3, n_defect=2,
                                        materials=("fabric",))
    images = load_folder(out / "fabric", image_size=32)
    assert sorted(images.class_names) == sorted(["good", *textures.DEFECTS])
    assert len(images.train_images) == 6 and len(images.test_images) == 3 + 2 * len(textures.DEFECTS)
    mask = np.asarray(Image.open(out / "fabric" / "ground_truth" / "hole" / "000_mask.png"))
    assert set(np.unique(mask)) == {0, 255}
    with pytest.raises(ParameterError, match="already exists"):
        textures.make_texture_folders(out, size=32, n_train=1, n_test_good=1, n_defect=1)
