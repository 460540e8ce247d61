"""Patch grids on real slide files with hand-made masks, checked against a brute-force oracle."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from support.slides import tissue_phantom, write_pyramid

from medattn.config.mil_schema import PatchConfig
from medattn.data.patching import patch_grid, read_patch, tissue_fractions
from medattn.data.tissue import TissueMask
from medattn.errors import DataError
from medattn.io.slide import open_slide


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return tissue_phantom(1536, 2048, seed=2)


@pytest.fixture(scope="module")
def slide(tmp_path_factory, image):
    """2048 x 1536 at 20x (mpp 0.5), levels at downsample 1, 2, 4, 8, 16."""
    s = open_slide(write_pyramid(tmp_path_factory.mktemp("patch") / "s.tif", image, mpp=0.5, min_size=128))
    yield s
    s.close()


@pytest.fixture(scope="module")
def rect_mask() -> TissueMask:
    """Tissue exactly on level-0 x in [512, 1536), y in [256, 1024) (mask pixel = 8 x 8 level-0 px)."""
    m = np.zeros((192, 256), bool)
    m[32:128, 64:192] = True
    return TissueMask(m, (8.0, 8.0), "test")


def _oracle(mask: TissueMask, slide, side: int, stride: int, min_tissue: float) -> set[tuple[int, int]]:
    """Kept corners by brute force: the mask expanded to level-0 pixels and counted per patch."""
    sx, sy = int(mask.downsample[0]), int(mask.downsample[1])
    full = np.kron(mask.mask, np.ones((sy, sx), bool))
    w0, h0 = slide.dimensions
    kept = set()
    for y in range(0, h0 - side + 1, stride):
        for x in range(0, w0 - side + 1, stride):
            frac = full[y: y + side, x: x + side].mean()
            if frac > 0 and frac >= min_tissue:
                kept.add((x, y))
    return kept


@pytest.mark.parametrize(("mag", "size", "level", "read_size", "side0"),
                         [(20, 256, 0, 256, 256), (10, 128, 1, 128, 256), (5, 64, 2, 64, 256)])
def test_tissue_rectangle_gives_the_exact_grid(slide, rect_mask, mag, size, level, read_size, side0):
    grid = patch_grid(slide, rect_mask, PatchConfig(magnification=mag, size=size, min_tissue=0.5))
    assert (grid.level, grid.read_size, grid.patch_size, grid.patch_size_level0) == (level, read_size, size, side0)
    assert grid.magnification == mag and grid.mpp == pytest.approx(0.5 * 20 / mag)
    expected = [(x, y) for y in (256, 512, 768) for x in (512, 768, 1024, 1280)]  # 4 x 3, row-major
    assert grid.coords.dtype == np.int64 and grid.coords.shape == (12, 2)
    assert [tuple(c) for c in grid.coords.tolist()] == expected
    np.testing.assert_array_equal(grid.tissue_fraction, np.ones(12, np.float32))


@pytest.mark.parametrize(("overlap", "min_tissue"), [(0.0, 0.25), (0.5, 0.5), (0.5, 0.75), (0.75, 0.0), (0.25, 1.0)])
def test_overlap_and_min_tissue_match_brute_force(slide, rect_mask, overlap, min_tissue):
    cfg = PatchConfig(magnification=20, size=256, overlap=overlap, min_tissue=min_tissue)
    grid = patch_grid(slide, rect_mask, cfg)
    stride = round(256 * (1 - overlap))
    kept = {tuple(c) for c in grid.coords.tolist()}
    assert kept == _oracle(rect_mask, slide, 256, stride, min_tissue)
    assert len(kept) == len(grid.coords) and (grid.tissue_fraction >= min_tissue).all()
    assert all(x % stride == 0 and y % stride == 0 for x, y in kept)


def test_min_tissue_counts_on_a_half_covered_row(slide):
    # tissue covers level-0 rows [0, 128): patches of 256 at y = 0 are exactly half tissue
    m = np.zeros((192, 256), bool)
    m[:16] = True
    tm = TissueMask(m, (8.0, 8.0), "test")
    assert len(patch_grid(slide, tm, PatchConfig(size=256, min_tissue=0.5))) == 8
    assert len(patch_grid(slide, tm, PatchConfig(size=256, min_tissue=0.51))) == 0
    assert len(patch_grid(slide, tm, PatchConfig(size=256, min_tissue=0.0))) == 8  # never tissue-free
    empty = patch_grid(slide, TissueMask(np.zeros((192, 256), bool), (8.0, 8.0), "test"), PatchConfig())
    assert empty.coords.shape == (0, 2) and empty.tissue_fraction.shape == (0,)


def test_fractions_are_area_exact_on_an_unaligned_mask():
    rng = np.random.default_rng(0)
    mask = TissueMask(rng.random((40, 50)) > 0.5, (3.0, 3.0), "test")
    full = np.kron(mask.mask, np.ones((3, 3))).astype(float)
    coords = np.array([[0, 0], [7, 5], [31, 44], [100, 80], [2, 1]], np.int64)
    fracs = tissue_fractions(mask, coords, 10)
    expected = [full[y: y + 10, x: x + 10].mean() for x, y in coords]
    np.testing.assert_allclose(fracs, expected, atol=1e-6)
    assert tissue_fractions(mask, coords, 1)[1] == full[5, 7]  # smaller than a mask pixel


def test_read_patch_pixels_and_resizing(slide, image, rect_mask):
    grid = patch_grid(slide, rect_mask, PatchConfig(magnification=20, size=256))
    np.testing.assert_array_equal(read_patch(slide, grid, 5), image[512:768, 768:1024])
    # 20x / 3 needs downsample 3: read 384 px from level 1 (downsample 2), resize to 256
    grid3 = patch_grid(slide, rect_mask, PatchConfig(magnification=20 / 3, size=256, min_tissue=0.6))
    assert (grid3.level, grid3.read_size, grid3.patch_size_level0) == (1, 384, 768)
    assert grid3.coords.tolist() == [[768, 0]] and grid3.tissue_fraction[0] == pytest.approx(2 / 3)
    x, y = grid3.coords[0]
    patch = read_patch(slide, grid3, 0)
    assert patch.shape == (256, 256, 3) and patch.dtype == np.uint8
    ref = np.asarray(Image.fromarray(image[y: y + 768, x: x + 768]).resize((256, 256), Image.Resampling.BOX))
    assert np.abs(patch.astype(float) - ref).mean() < 3.0


def test_target_magnification_above_the_slide_is_an_error(slide, rect_mask):
    with pytest.raises(DataError, match=r"s\.tif: patch\.magnification 40 exceeds the slide's magnification 20"):
        patch_grid(slide, rect_mask, PatchConfig(magnification=40))
