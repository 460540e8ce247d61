"""NRRD / MetaImage / PNG / TIFF / JPEG through SimpleITK: geometry, axis order, dtypes."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import tifffile
from PIL import Image as PILImage

from medattn.errors import DataError
from medattn.io import ArrayFormatError, Geometry, read_image, write_image


def _rotation(axis, angle: float) -> np.ndarray:
    """Rodrigues' formula: rotation by ``angle`` radians about ``axis``."""
    k = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle) * kx + (1 - np.cos(angle)) * kx @ kx


OBLIQUE = Geometry.from_arrays((0.7, 0.9, 3.0), (-123.456789012345, 45.6789, 7.1), _rotation((1, 2, 3), 0.7))


@pytest.mark.parametrize(("ext", "fmt"),
                         [(".nrrd", "nrrd"), (".nhdr", "nrrd"), (".mha", "mha"), (".mhd", "mhd")])
@pytest.mark.parametrize("dtype", [np.int16, np.float32])
def test_oblique_round_trip_is_exact(tmp_path, ext, fmt, dtype):
    arr = (np.random.default_rng(1).normal(size=(4, 5, 6)) * 100).astype(dtype)
    write_image(arr, tmp_path / f"x{ext}", OBLIQUE)
    img = read_image(tmp_path / f"x{ext}")
    assert img.format == fmt
    assert img.array.shape == (1, 4, 5, 6) and img.array.dtype == dtype
    np.testing.assert_array_equal(img.array[0], arr)
    np.testing.assert_allclose(img.geometry.spacing, (0.7, 0.9, 3.0), atol=1e-9, rtol=0)
    np.testing.assert_allclose(img.geometry.origin, (-123.456789012345, 45.6789, 7.1), atol=1e-9, rtol=0)
    np.testing.assert_allclose(img.geometry.direction_matrix, OBLIQUE.direction_matrix, atol=1e-9, rtol=0)


def test_axis_order_matches_itk_index(tmp_path):
    # array[0, x, y, z] must be ITK's pixel at index (x, y, z).
    arr = np.zeros((4, 5, 6), np.int16)
    arr[3, 1, 2] = 77
    write_image(arr, tmp_path / "x.mha", OBLIQUE)
    itk = sitk.ReadImage(str(tmp_path / "x.mha"))
    assert itk.GetSize() == (4, 5, 6)
    assert itk.GetPixel(3, 1, 2) == 77


def test_multichannel_is_a_vector_pixel(tmp_path):
    arr = np.arange(3 * 4 * 5 * 2, dtype=np.float32).reshape(3, 4, 5, 2)
    write_image(arr, tmp_path / "v.nrrd", Geometry.identity(3))
    itk = sitk.ReadImage(str(tmp_path / "v.nrrd"))
    assert itk.GetNumberOfComponentsPerPixel() == 3 and itk.GetSize() == (4, 5, 2)
    assert itk.GetPixel(1, 2, 1) == (arr[0, 1, 2, 1], arr[1, 1, 2, 1], arr[2, 1, 2, 1])
    np.testing.assert_array_equal(read_image(tmp_path / "v.nrrd").array, arr)


def test_mhd_writes_header_and_data_and_no_temporaries(tmp_path):
    write_image(np.ones((2, 3, 4), np.uint8), tmp_path / "c.mhd", Geometry.identity(3))
    write_image(np.full((2, 3, 4), 5, np.uint8), tmp_path / "c.mhd", Geometry.identity(3))  # overwrite
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.mhd", "c.zraw"]
    assert "ElementDataFile = c.zraw" in (tmp_path / "c.mhd").read_text()
    assert (read_image(tmp_path / "c.mhd").array == 5).all()


@pytest.mark.parametrize("ext", [".png", ".tif"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_grayscale_picture_round_trip(tmp_path, ext, dtype):
    arr = (np.arange(4 * 3).reshape(4, 3) * (20 if dtype == np.uint8 else 5000)).astype(dtype)  # (X=4, Y=3)
    write_image(arr, tmp_path / f"g{ext}", Geometry.identity(2))
    img = read_image(tmp_path / f"g{ext}")
    assert img.array.shape == (1, 4, 3) and img.array.dtype == dtype
    np.testing.assert_array_equal(img.array[0], arr)
    assert img.geometry.origin == (0.0, 0.0)
    np.testing.assert_array_equal(img.geometry.direction_matrix, np.eye(2))


@pytest.mark.parametrize("ext", [".png", ".tiff"])
def test_rgb_round_trip(tmp_path, ext):
    arr = np.random.default_rng(2).integers(0, 256, size=(3, 5, 4)).astype(np.uint8)  # (C, X, Y)
    write_image(arr, tmp_path / f"c{ext}", Geometry.identity(2))
    img = read_image(tmp_path / f"c{ext}")
    assert img.channels == 3 and img.spatial_shape == (5, 4)
    np.testing.assert_array_equal(img.array, arr)


def test_x_is_the_column_index_png(tmp_path):
    # Independent reader: PIL gives (rows, cols, channels) = (Y, X, C).
    arr = np.zeros((3, 5, 4), np.uint8)  # (C, X=5, Y=4)
    arr[:, 4, 1] = (10, 20, 30)  # column 4, row 1
    write_image(arr, tmp_path / "c.png", Geometry.identity(2))
    pixels = np.asarray(PILImage.open(tmp_path / "c.png"))
    assert pixels.shape == (4, 5, 3)
    assert tuple(pixels[1, 4]) == (10, 20, 30)
    assert pixels.sum() == 60
    # ...and reading a file written by another library gives the same axes.
    rows_cols = np.zeros((4, 5), np.uint16)
    rows_cols[3, 0] = 4242  # row 3, column 0
    tifffile.imwrite(tmp_path / "t.tif", rows_cols)
    img = read_image(tmp_path / "t.tif")
    assert img.array.shape == (1, 5, 4) and img.array[0, 0, 3] == 4242


def test_png_keeps_spacing(tmp_path):
    write_image(np.zeros((3, 2), np.uint8), tmp_path / "s.png", Geometry.identity(2, spacing=(0.5, 0.25)))
    assert read_image(tmp_path / "s.png").geometry.spacing == (0.5, 0.25)


def test_png_refuses_floats_and_negative_values(tmp_path):
    with pytest.raises(ArrayFormatError, match="PNG stores integers"):
        write_image(np.ones((3, 2), np.float32), tmp_path / "f.png", Geometry.identity(2))
    with pytest.raises(ValueError, match=r"-1\.\.2"):
        write_image(np.array([[-1, 2]]), tmp_path / "n.png", Geometry.identity(2))
    assert not list(tmp_path.iterdir())


def test_png_casts_small_integer_labels(tmp_path):
    labels = np.array([[0, 1], [2, 300]], dtype=np.int64)
    write_image(labels, tmp_path / "l.png", Geometry.identity(2))
    img = read_image(tmp_path / "l.png")
    assert img.array.dtype == np.uint16
    np.testing.assert_array_equal(img.array[0], labels)


def test_jpeg_reads_with_the_right_shape(tmp_path):
    arr = np.full((6, 4), 128, np.uint8)
    write_image(arr, tmp_path / "j.jpg", Geometry.identity(2))
    img = read_image(tmp_path / "j.jpg")
    assert img.format == "jpeg" and img.array.shape == (1, 6, 4)
    assert np.abs(img.array.astype(int) - 128).max() <= 2  # lossy, but a flat image stays flat


def test_garbage_metaimage_is_a_one_line_data_error(tmp_path):
    bad = tmp_path / "bad.mha"
    bad.write_bytes(b"ObjectType = Image\nNDims = 3\nDimSize = 10 10 10\nElementType = MET_SHORT\n"
                    b"ElementDataFile = LOCAL\n" + b"\x00" * 17)
    with pytest.raises(DataError) as err:
        read_image(bad)
    msg = str(err.value)
    assert msg.startswith(f"{bad}: cannot read image: ") and "\n" not in msg
