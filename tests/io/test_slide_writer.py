"""Pyramidal TIFFs written by medattn read back as slides with OpenSlide AND tiffslide: levels, mpp,
magnification, pixels (exact with LZW, close with JPEG)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import openslide
import pytest
import tiffslide
from PIL import Image

from medattn.errors import ConfigError, DataError
from medattn.io.slide_writer import pyramid_levels, write_pyramidal_tiff

READERS = {"openslide": openslide, "tiffslide": tiffslide}


def open_with(reader: str, path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tiffslide warns about aliasing its class to OpenSlide
        return READERS[reader].OpenSlide(str(path))


def region(slide, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(slide.read_region(location, level, size).convert("RGB"))


@pytest.fixture(scope="module")
def noise_image() -> np.ndarray:
    """Random RGB noise 1100 × 1500 (odd halvings: 550 → 275 → 138)."""
    return np.random.default_rng(3).integers(0, 256, (1100, 1500, 3), dtype=np.uint8)


def test_pyramid_levels_halve_with_ceiling_until_min_size(noise_image):
    levels = pyramid_levels(noise_image, min_size=256)
    assert [lv.shape for lv in levels] == [(1100, 1500, 3), (550, 750, 3), (275, 375, 3)]
    np.testing.assert_array_equal(levels[1][3, 5], np.round(noise_image[6:8, 10:12].reshape(4, 3).mean(0) + 1e-9))
    odd = pyramid_levels(levels[2], min_size=100)[1]  # 275 × 375 → 138 × 188: the odd edge is replicated
    assert odd.shape == (138, 188, 3)
    np.testing.assert_array_equal(odd[-1, -1], levels[2][-1, -1])
    assert len(pyramid_levels(noise_image, min_size=2000)) == 1


@pytest.mark.parametrize("reader", ["openslide", "tiffslide"])
@pytest.mark.parametrize("magnification", [20.0, None], ids=["aperio", "generic"])
def test_lzw_pyramid_reads_back_exactly(tmp_path, noise_image, reader, magnification):
    path = write_pyramidal_tiff(tmp_path / "s.tif", noise_image, mpp=0.25, magnification=magnification,
                                tile=256, min_size=256, compression="lzw")
    levels = pyramid_levels(noise_image, min_size=256)
    with open_with(reader, path) as slide:
        assert slide.level_count == 3
        assert slide.dimensions == (1500, 1100)
        assert slide.level_dimensions == ((1500, 1100), (750, 550), (375, 275))
        np.testing.assert_allclose(slide.level_downsamples, [1.0, 2.0, 4.0], rtol=0.01)
        props = slide.properties
        assert float(props[READERS[reader].PROPERTY_NAME_MPP_X]) == pytest.approx(0.25)
        assert float(props[READERS[reader].PROPERTY_NAME_MPP_Y]) == pytest.approx(0.25)
        power = props.get(READERS[reader].PROPERTY_NAME_OBJECTIVE_POWER)
        assert (power is None) if magnification is None else float(power) == 20.0
        np.testing.assert_array_equal(region(slide, (0, 0), 0, (1500, 1100)), noise_image)
        # a level-1 read at level-0 location (600, 202) starts at level-1 pixel (300, 101)
        np.testing.assert_array_equal(region(slide, (600, 202), 1, (97, 61)), levels[1][101:162, 300:397])
        np.testing.assert_array_equal(region(slide, (0, 0), 2, (375, 275)), levels[2])


@pytest.mark.parametrize("reader", ["openslide", "tiffslide"])
def test_without_mpp_no_physical_size_is_reported(tmp_path, noise_image, reader):
    path = write_pyramidal_tiff(tmp_path / "s.tif", noise_image[:600, :700], mpp=None, compression="zlib")
    with open_with(reader, path) as slide:
        assert slide.properties.get(READERS[reader].PROPERTY_NAME_MPP_X) is None  # tiffslide: key with None
        assert slide.properties.get(READERS[reader].PROPERTY_NAME_OBJECTIVE_POWER) is None
        assert slide.level_count == 1
        np.testing.assert_array_equal(region(slide, (0, 0), 0, (700, 600)), noise_image[:600, :700])


@pytest.mark.parametrize("reader", ["openslide", "tiffslide"])
def test_jpeg_pyramid_of_a_real_ihc_image_is_close_to_the_source(tmp_path, reader):
    from skimage import data

    ihc = np.asarray(Image.fromarray(data.immunohistochemistry()).resize((1536, 1280), Image.BILINEAR))
    path = write_pyramidal_tiff(tmp_path / "ihc.svs", ihc, mpp=0.5, magnification=20.0)  # default: JPEG
    assert path.stat().st_size < ihc.nbytes / 4  # compressed
    with open_with(reader, path) as slide:
        assert slide.level_dimensions == ((1536, 1280), (768, 640))
        assert float(slide.properties[READERS[reader].PROPERTY_NAME_MPP_X]) == pytest.approx(0.5)
        back = region(slide, (0, 0), 0, (1536, 1280)).astype(float)
        assert np.abs(back - ihc).mean() < 2.0
        np.testing.assert_allclose(back.mean(axis=(0, 1)), ihc.mean(axis=(0, 1)), atol=0.5)
        small = region(slide, (0, 0), 1, (768, 640)).astype(float)
        assert np.abs(small - pyramid_levels(ihc)[1]).mean() < 2.0


def test_bad_input_is_a_one_line_error_and_leaves_the_old_file(tmp_path, noise_image):
    target = tmp_path / "s.tif"
    target.write_bytes(b"old")
    with pytest.raises(DataError, match=r"s\.tif: slide image must be \[H, W, 3\] uint8"):
        write_pyramidal_tiff(target, noise_image[..., 0], mpp=0.5)
    with pytest.raises(DataError, match="uint8"):
        write_pyramidal_tiff(target, noise_image.astype(np.float32), mpp=0.5)
    with pytest.raises(ConfigError, match="unknown compression 'webp'"):
        write_pyramidal_tiff(target, noise_image, mpp=0.5, compression="webp")
    with pytest.raises(ConfigError, match="mpp must be a positive number"):
        write_pyramidal_tiff(target, noise_image, mpp=-1.0)
    with pytest.raises(ConfigError, match="multiple of 16"):
        write_pyramidal_tiff(target, noise_image, mpp=0.5, tile=100)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.tif"]  # no temporary files left


def test_rewrite_replaces_the_file_atomically(tmp_path, noise_image):
    target = write_pyramidal_tiff(tmp_path / "s.tif", noise_image, mpp=0.5, compression="lzw")
    write_pyramidal_tiff(target, noise_image[:512, :512], mpp=1.0, compression="lzw")
    with open_with("openslide", target) as slide:
        assert slide.dimensions == (512, 512)
        assert float(slide.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(1.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.tif"]
