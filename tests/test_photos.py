"""The photograph folders (GIMP patterns, structural defects) and the nearest-patch memory."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from anomalymap_helpers.errors import DataError, ParameterError
from anomalymap_helpers.pipeline.data import photos
from anomalymap_helpers.pipeline.scoring.patch_memory import PatchMemory, nearest_distance
from tests.conftest import require


def write_pattern(path: Path, pixels: np.ndarray, name: bytes = b"test") -> None:
    """A GIMP pattern file written from its specification (devel-docs/pat.txt): five big-endian words,
    the magic, the NUL-terminated name, the pixels."""
    h, w, depth = pixels.shape
    header = 24 + len(name) + 1
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack(">5I", header, 1, w, h, depth) + b"GPAT" + name + b"\0" + pixels.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def patterns(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding every pattern the photograph folders read, as seeded noise of several scales."""
    from scipy import ndimage

    root = tmp_path_factory.mktemp("patterns")
    rng = np.random.default_rng(0)
    for k, name in enumerate([s.pattern for s in photos.SURFACES.values()] + list(photos.FOREIGN)):
        size = 170 if name == photos.SURFACES["leaves-photo"].pattern else 96
        noise = ndimage.gaussian_filter(rng.random((size, size, 3)), (1 + k % 3, 1 + k % 3, 0))
        noise = (noise - noise.min()) / (noise.max() - noise.min()) * 200 + 20
        write_pattern(root / f"{name}.pat", noise)
    return root


def test_a_pattern_is_read_as_its_file_says(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    rgb, grey, rgba = rng.integers(0, 256, (5, 7, 3)), rng.integers(0, 256, (4, 6, 1)), rng.integers(0, 256, (3, 2, 4))
    for name, pixels in (("rgb", rgb), ("grey", grey), ("rgba", rgba)):
        write_pattern(tmp_path / f"{name}.pat", pixels, name=name.encode() * 3)
    assert np.array_equal(photos.read_pattern("rgb", tmp_path), rgb)
    assert np.array_equal(photos.read_pattern("grey", tmp_path), np.repeat(grey, 3, axis=2))
    assert np.array_equal(photos.read_pattern("rgba", tmp_path), rgba[..., :3])


def test_reserved_missing_and_foreign_files_are_refused(tmp_path: Path) -> None:
    for reserved in ("walnut", "Wood/walnut", "greyweave", "drymud"):
        with pytest.raises(ParameterError, match="reserved for independent checks"):
            photos.read_pattern(reserved, tmp_path)
    with pytest.raises(DataError, match="apt install gimp-data"):
        photos.read_pattern("Stone/slate", tmp_path)
    (tmp_path / "png.pat").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    with pytest.raises(DataError, match="not a GIMP pattern"):
        photos.read_pattern("png", tmp_path)
    write_pattern(tmp_path / "short.pat", np.zeros((8, 8, 3)))
    (tmp_path / "short.pat").write_bytes((tmp_path / "short.pat").read_bytes()[:-5])
    with pytest.raises(DataError, match="cut short"):
        photos.read_pattern("short", tmp_path)
    assert not photos.RESERVED & {Path(s.pattern).name for s in photos.SURFACES.values()}
    assert not photos.RESERVED & {Path(p).name for p in photos.FOREIGN}


@pytest.mark.parametrize("kind", photos.DEFECTS)
def test_each_defect_changes_its_region_visibly_and_nothing_else(kind: str, patterns: Path) -> None:
    """Outside its mask a defect leaves the crop as it was, bit for bit, and inside it changes the crop
    by at least VISIBLE grey levels on average."""
    source = photos.read_pattern("Stone/stone33", patterns)
    foreign = [photos.read_pattern(n, patterns) for n in photos.FOREIGN]
    rng = np.random.default_rng(3)
    for _ in range(5):
        c = photos.crop(source, 64, rng, True, (0, 1))
        clean = c.render()
        out, mask = photos._visible(kind, c, rng, foreign)
        assert out.shape == clean.shape and mask.shape == (64, 64) and 4 <= mask.sum() < 64 * 64 * 0.6
        assert np.abs(out - clean)[mask].mean() >= photos.VISIBLE
        assert np.array_equal(out[~mask], clean[~mask])


def test_the_folders_have_the_layout_and_masks(patterns: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from anomalymap_helpers.pipeline.data.folder import load_folder

    monkeypatch.setenv(photos.PATTERNS_ENV, str(patterns))
    out = photos.make_photo_folders(tmp_path / "p", size=48, n_train=6, n_test_good=3, n_defect=2,
                                    surfaces=("slate", "leaves-photo"))
    again = photos.make_photo_folders(tmp_path / "q", size=48, n_train=6, n_test_good=3, n_defect=2,
                                      surfaces=("leaves-photo",))
    for surface in ("slate", "leaves-photo"):
        data = load_folder(out / surface, 48)
        assert data.class_names == ("good", *sorted(photos.DEFECTS))
        assert len(data.train_images) == 6 and len(data.test_images) == 3 + 2 * len(photos.DEFECTS)
        anomalous = data.test_labels > 0
        assert data.test_masks[anomalous].flatten(1).any(1).all() and not data.test_masks[~anomalous].any()
    grey = load_folder(out / "slate", 48).train_images
    assert grey.shape[1] == 1 or torch.equal(grey[:, 0], grey[:, 1])  # a grey surface is grey
    # A folder is the same whichever others are written beside it.
    for path in (out / "leaves-photo").rglob("*.png"):
        assert path.read_bytes() == (again / "leaves-photo" / path.relative_to(out / "leaves-photo")).read_bytes()


def test_the_photograph_is_cut_in_two(patterns: Path) -> None:
    """``leaves-photo``'s training crops read only the left part of the photograph, its test crops the right."""
    source = photos.read_pattern(photos.SURFACES["leaves-photo"].pattern, patterns)
    rng = np.random.default_rng(0)
    w = source.shape[1]
    for columns, inside in (((0, 0.55), lambda x: x < 0.55 * w), ((0.55, 1), lambda x: x >= 0.55 * w)):
        for _ in range(50):
            _, xs = photos.crop(source, 64, rng, False, columns).points()
            assert inside(xs.min()) and inside(xs.max()) and xs.min() >= 0 and xs.max() <= w - 1


def test_bad_requests_are_refused_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(photos.PATTERNS_ENV, str(tmp_path / "none"))
    with pytest.raises(ParameterError, match="surfaces"):
        photos.make_photo_folders(tmp_path / "a", surfaces=("granite2",))
    with pytest.raises(ParameterError, match="defect kinds"):
        photos.make_photo_folders(tmp_path / "a", defects=("dent",))
    with pytest.raises(DataError, match="apt install gimp-data"):
        photos.make_photo_folders(tmp_path / "a")
    assert not (tmp_path / "a").exists()


def test_the_real_patterns_make_a_folder(tmp_path: Path) -> None:
    """On Debian's GIMP patterns themselves (``apt install gimp-data gimp-data-extras``)."""
    if not all((photos.patterns_dir() / f"{s.pattern}.pat").is_file() for s in photos.SURFACES.values()):
        require(f"Debian's GIMP patterns are not in {photos.patterns_dir()} (apt install gimp-data gimp-data-extras)")
    out = photos.make_photo_folders(tmp_path / "p", n_train=2, n_test_good=1, n_defect=1)
    assert sorted(p.name for p in out.iterdir()) == sorted(photos.SURFACES)


# nearest-patch, against a brute-force reference in float64.


def brute_force_map(train: np.ndarray, image: np.ndarray, scale: int, patch: int) -> np.ndarray:
    """Each pixel's distance to the nearest neighbourhood of every training image, by loops over pixels."""
    def pooled(a: np.ndarray) -> np.ndarray:
        c, h, w = a.shape
        return a[:, : h // scale * scale, : w // scale * scale].reshape(c, h // scale, scale, w // scale, scale).mean((2, 4))

    def vectors(a: np.ndarray) -> np.ndarray:
        p = patch // 2
        a = np.pad(pooled(a), ((0, 0), (p, p), (p, p)), mode="reflect")
        h, w = a.shape[1] - 2 * p, a.shape[2] - 2 * p
        return np.array([[a[:, y : y + patch, x : x + patch].ravel() for x in range(w)] for y in range(h)])

    memory = np.concatenate([vectors(t).reshape(-1, image.shape[0] * patch * patch) for t in train])
    mine = vectors(image)
    return np.sqrt(((mine[:, :, None, :] - memory[None, None]) ** 2).sum(-1).min(-1))


def test_nearest_patch_is_the_distance_to_the_nearest_normal_neighbourhood() -> None:
    """Precision: float32 distances against float64 loops, 1e-4 absolute on distances of order 1."""
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(0)
    train, images = torch.rand(3, 2, 16, 16, generator=gen), torch.rand(2, 2, 16, 16, generator=gen)
    memory = PatchMemory(train, patch=3, scales=(1, 2), bank=10_000, calibration=0)  # the whole memory
    assert memory.units == [1.0, 1.0] and [len(m) for m in memory.memories] == [3 * 256, 3 * 64]
    got = memory(images)
    for i in range(len(images)):
        want = [torch.from_numpy(brute_force_map(train.double().numpy(), images[i].double().numpy(), s, 3)) for s in (1, 2)]
        up = F.interpolate(want[1][None, None].float(), size=(16, 16), mode="bilinear", align_corners=False)[0, 0]
        assert torch.allclose(got[i, 0], (want[0].float() + up) / 2, atol=1e-4)
    assert memory(train)[:, :, :, :].amax() < 0.5 * got.mean()  # training images lie in the memory (only scale 2 is off:
    # its upsampling blends neighbours' zeros)


def test_nearest_patch_finds_a_foreign_square_and_calibrates_each_scale() -> None:
    gen = torch.Generator().manual_seed(1)
    stripes = (torch.arange(32)[None, :] % 4 < 2).float().expand(32, 32)
    train = (0.3 + 0.4 * stripes + 0.05 * torch.randn(40, 1, 32, 32, generator=gen)).clamp(0, 1)
    test = (0.3 + 0.4 * stripes + 0.05 * torch.randn(2, 1, 32, 32, generator=gen)).clamp(0, 1)
    test[1, :, 10:18, 12:20] = 0.5 + 0.05 * torch.randn(8, 8, generator=gen)  # stripes gone: a smear
    memory = PatchMemory(train, patch=5, scales=(1, 2), bank=2000, calibration=500)
    maps = memory(test)
    # The units: a normal neighbourhood lies about 1 unit from the memory at every scale.
    held = PatchMemory(train, patch=5, scales=(1, 2), bank=2000, calibration=500, seed=7)
    assert 0.7 < float(maps[0].mean()) < 1.5 and abs(len(held.memories[0]) - 2000) == 0
    inside, outside = maps[1, 0, 11:17, 13:19].mean(), maps[1, 0, :, 24:].mean()
    assert inside > 3 * outside and maps[1].amax() > 2 * maps[0].amax()
    peak = divmod(int(maps[1, 0].argmax()), 32)
    assert 8 <= peak[0] <= 19 and 10 <= peak[1] <= 21


def test_nearest_patch_refuses_what_it_cannot_compare() -> None:
    with pytest.raises(ParameterError, match="N, C, H, W"):
        PatchMemory(torch.rand(8, 8))
    with pytest.raises(ParameterError, match="over 7 pixels"):
        PatchMemory(torch.rand(2, 1, 6, 6))
    memory = PatchMemory(torch.rand(2, 1, 16, 16), scales=(1,))
    with pytest.raises(ParameterError, match="memory is of"):
        memory(torch.rand(1, 1, 20, 20))
    assert nearest_distance(torch.zeros(0, 3), torch.rand(4, 3)).shape == (0,)


def test_example_folder_says_how_to_get_the_photographs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture) -> None:
    from anomalymap_helpers.commands.cli import main

    monkeypatch.setenv(photos.PATTERNS_ENV, str(tmp_path / "none"))
    assert main(["example-folder", "--kind", "photos", "--out", str(tmp_path / "out")]) == 1
    assert "apt install gimp-data gimp-data-extras" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
