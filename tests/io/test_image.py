"""The Image type, read_image/write_image dispatch, cross-format geometry, errors and atomicity."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medattn.errors import DataError
from medattn.io import SUPPORTED_EXTENSIONS, Geometry, Image, read_image, write_dicom_series, write_image


def _rotation(axis, angle: float) -> np.ndarray:
    """Rodrigues' formula: rotation by ``angle`` radians about ``axis``."""
    k = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle) * kx + (1 - np.cos(angle)) * kx @ kx


ROT = _rotation((1, 2, 3), 0.7)
OBLIQUE = Geometry.from_arrays((0.7, 0.9, 3.0), (-20.5, 31.25, 7.125), ROT)


def test_image_properties():
    img = Image(np.zeros((3, 4, 5), np.uint8), Geometry.identity(2), Path("x.png"), "png")
    assert img.spatial_shape == (4, 5) and img.channels == 3
    assert "shape=(3, 4, 5)" in repr(img) and "'png'" in repr(img)
    with pytest.raises(ValueError, match="channel-first"):
        Image(np.zeros((4, 5)), Geometry.identity(2), Path("x.png"), "png")


def test_supported_extensions():
    assert {".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm", ".png", ".tif", ".tiff", ".jpg",
            ".jpeg"} == set(SUPPORTED_EXTENSIONS)


def test_same_voxel_lands_on_the_same_physical_point_in_nifti_and_mha(tmp_path):
    # Voxel (3, 1, 2): LPS = origin + R @ (spacing * index), computed by hand here.
    expected = np.array([-20.5, 31.25, 7.125]) + ROT @ np.array([0.7 * 3, 0.9 * 1, 3.0 * 2])
    arr = np.zeros((4, 5, 6), np.int16)
    arr[3, 1, 2] = 9
    write_image(arr, tmp_path / "v.nii.gz", OBLIQUE)
    write_image(arr, tmp_path / "v.mha", OBLIQUE)
    a, b = read_image(tmp_path / "v.nii.gz"), read_image(tmp_path / "v.mha")
    for img in (a, b):
        idx = np.argwhere(img.array[0] == 9)
        np.testing.assert_array_equal(idx, [[3, 1, 2]])
        np.testing.assert_allclose(img.geometry.index_to_physical(idx)[0], expected, atol=1e-4)
    # and the libraries' own index → world mappings agree (nibabel gives RAS, ITK gives LPS)
    ras = nib.load(tmp_path / "v.nii.gz").affine @ [3, 1, 2, 1]
    lps = sitk.ReadImage(str(tmp_path / "v.mha")).TransformIndexToPhysicalPoint((3, 1, 2))
    np.testing.assert_allclose(ras[:3] * [-1, -1, 1], lps, atol=1e-4)
    np.testing.assert_allclose(lps, expected, atol=1e-9)


def test_spatial_only_and_channel_first_arrays_write_the_same(tmp_path):
    arr = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    write_image(arr, tmp_path / "a.nrrd", OBLIQUE)
    write_image(arr[None], tmp_path / "b.nrrd", OBLIQUE)
    a, b = read_image(tmp_path / "a.nrrd"), read_image(tmp_path / "b.nrrd")
    assert a.array.shape == (1, 2, 3, 4)
    np.testing.assert_array_equal(a.array, b.array)
    with pytest.raises(ValueError, match="does not fit a 3-D geometry"):
        write_image(np.zeros((2, 3)), tmp_path / "c.nrrd", OBLIQUE)


def _one_line_data_error(path, **kwargs) -> str:
    with pytest.raises(DataError) as err:
        read_image(path, **kwargs)
    msg = str(err.value)
    assert msg.startswith(f"{path}: ") and "\n" not in msg
    return msg[len(f"{path}: "):]


def test_missing_file(tmp_path):
    assert _one_line_data_error(tmp_path / "nope.nii.gz") == "no such file"


def test_unsupported_extension(tmp_path):
    (tmp_path / "scan.xyz").write_bytes(b"\x00" * 200)
    msg = _one_line_data_error(tmp_path / "scan.xyz")
    assert msg.startswith("unsupported image extension '.xyz' (supported: .nii.gz, .nii, .nrrd")


@pytest.mark.parametrize(("name", "reason"), [
    ("t.nii.gz", "Compressed file ended before the end-of-stream marker was reached"),
    ("t.nii", "Expected 32000 bytes, got 15824 bytes"),
])
def test_truncated_nifti(tmp_path, name, reason):
    path = tmp_path / name
    write_image(np.random.default_rng(0).normal(size=(20, 20, 20)).astype(np.float32), path, OBLIQUE)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert _one_line_data_error(path).startswith(f"cannot read image: {reason}")


def test_garbage_mha(tmp_path):
    (tmp_path / "g.mha").write_bytes(b"this is not a MetaImage header\x00\x01\x02" * 10)
    assert _one_line_data_error(tmp_path / "g.mha").startswith("cannot read image: ")


def test_empty_folder(tmp_path):
    assert "no DICOM files" in _one_line_data_error(tmp_path)


def test_folder_with_two_series(tmp_path):
    write_dicom_series(np.zeros((2, 2, 2), np.int16), tmp_path, OBLIQUE, series_uid="1.2.3.1")
    write_dicom_series(np.ones((2, 2, 2), np.int16), tmp_path, OBLIQUE, series_uid="1.2.3.2")
    msg = _one_line_data_error(tmp_path)
    assert msg.startswith("folder holds 2 DICOM series (1.2.3.1, 1.2.3.2)")
    msg = _one_line_data_error(tmp_path, series_uid="1.2.3.9")
    assert msg.startswith("no DICOM series 1.2.3.9 in folder")


def test_write_image_does_not_write_dicom(tmp_path):
    with pytest.raises(DataError, match="cannot write DICOM"):
        write_image(np.zeros((2, 2, 2), np.int16), tmp_path / "x.dcm", OBLIQUE)


@pytest.mark.parametrize("name", ["x.nii.gz", "x.nii", "x.mha", "x.nrrd", "x.mhd", "x.nhdr", "x.png",
                                  "x.tif"])
def test_overwrite_is_atomic_and_leaves_no_temporaries(tmp_path, name):
    geo = Geometry.identity(2) if name.endswith((".png", ".tif")) else OBLIQUE
    shape = (3, 4) if geo.ndim == 2 else (3, 4, 5)
    write_image(np.zeros(shape, np.uint8), tmp_path / name, geo)
    before = sorted(p.name for p in tmp_path.iterdir())
    write_image(np.full(shape, 7, np.uint8), tmp_path / name, geo)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert (read_image(tmp_path / name).array == 7).all()


def test_failed_write_keeps_the_old_file(tmp_path):
    write_image(np.full((3, 4), 5, np.uint8), tmp_path / "x.png", Geometry.identity(2))
    with pytest.raises(ValueError):
        write_image(np.full((3, 4), 0.5, np.float32), tmp_path / "x.png", Geometry.identity(2))
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]
    assert (read_image(tmp_path / "x.png").array == 5).all()
