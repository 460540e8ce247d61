"""NIfTI reading/writing: oblique geometry round trips, reference headers, dtypes and layouts."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from medattn.io import Geometry, read_image, write_image


def _rotation(axis, angle: float) -> np.ndarray:
    """Rodrigues' formula: rotation by ``angle`` radians about ``axis``."""
    k = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle) * kx + (1 - np.cos(angle)) * kx @ kx


OBLIQUE = Geometry.from_arrays((0.7, 0.9, 3.0), (-123.25, 45.5, 7.125), _rotation((1, 2, 3), 0.7))


def test_rotation_is_oblique_and_proper():
    d = OBLIQUE.direction_matrix
    np.testing.assert_allclose(d.T @ d, np.eye(3), atol=1e-12)
    assert np.linalg.det(d) == pytest.approx(1.0)
    assert np.abs(d).max(axis=0).max() < 0.95  # no axis is (close to) aligned with L, P or S


def test_oblique_anisotropic_round_trip(tmp_path):
    arr = (np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6) * 7 - 300)
    out = write_image(arr, tmp_path / "x.nii.gz", OBLIQUE)
    assert out == tmp_path / "x.nii.gz"
    img = read_image(out)
    assert img.format == "nifti"
    assert img.array.shape == (1, 4, 5, 6) and img.array.dtype == np.int16
    np.testing.assert_array_equal(img.array[0], arr)
    np.testing.assert_allclose(img.geometry.spacing, (0.7, 0.9, 3.0), atol=1e-5)
    np.testing.assert_allclose(img.geometry.origin, (-123.25, 45.5, 7.125), atol=1e-5)
    np.testing.assert_allclose(img.geometry.direction_matrix, OBLIQUE.direction_matrix, atol=1e-5)
    assert img.header["qform_code"] == 1 and img.header["sform_code"] == 1


def test_written_affine_is_the_ras_affine_of_the_geometry(tmp_path):
    # Voxel (1, 2, 3): LPS = origin + R @ (spacing * idx); nibabel's affine maps it to RAS = (-L, -P, S).
    write_image(np.zeros((4, 5, 6), np.float32), tmp_path / "x.nii", OBLIQUE)
    affine = nib.load(tmp_path / "x.nii").affine
    lps = np.array([-123.25, 45.5, 7.125]) + _rotation((1, 2, 3), 0.7) @ np.array([0.7 * 1, 0.9 * 2, 3.0 * 3])
    ras = affine @ [1, 2, 3, 1]
    np.testing.assert_allclose(ras[:3], lps * [-1, -1, 1], atol=1e-4)


def test_reference_header_gives_bit_identical_affine(tmp_path):
    # A "scanner" file with float32-awkward sform, a different qform, scaling and a display range.
    affine = np.eye(4)
    affine[:3, :3] = _rotation((2, 1, -1), 0.3) * [0.8123456, 0.8101234, 2.4987]
    affine[:3, 3] = (91.37, -117.9, -60.01)
    raw = np.arange(3 * 4 * 5, dtype=np.int16).reshape(3, 4, 5)
    src = nib.Nifti1Image(raw, affine)
    src.set_qform(affine, code=1)
    src.set_sform(affine, code=2)
    src.header.set_slope_inter(2.0, -1.0)
    src.header["cal_min"], src.header["cal_max"] = -1.0, 117.0
    nib.save(src, tmp_path / "ct.nii.gz")
    ref = read_image(tmp_path / "ct.nii.gz")
    np.testing.assert_array_equal(ref.array[0], raw * 2.0 - 1.0)  # scaling applied on read

    labels = (raw % 3).astype(np.uint8)
    write_image(labels, tmp_path / "seg.nii.gz", ref.geometry, reference=ref)
    a, b = nib.load(tmp_path / "ct.nii.gz"), nib.load(tmp_path / "seg.nii.gz")
    assert np.array_equal(b.affine, a.affine)
    assert np.array_equal(b.header.get_sform(), a.header.get_sform())
    assert np.array_equal(b.header.get_qform(), a.header.get_qform())
    assert (b.header["sform_code"], b.header["qform_code"]) == (2, 1)
    assert b.get_data_dtype() == np.uint8
    assert b.header["cal_max"] == 0.0
    seg = read_image(tmp_path / "seg.nii.gz")
    assert seg.array.dtype == np.uint8  # reference scaling was not carried over
    np.testing.assert_array_equal(seg.array[0], labels)


def test_reference_on_another_grid_is_not_used(tmp_path):
    src = nib.Nifti1Image(np.zeros((3, 4, 5), np.float32), np.diag([2.0, 2.0, 2.0, 1.0]))
    nib.save(src, tmp_path / "ref.nii")
    ref = read_image(tmp_path / "ref.nii")
    write_image(np.zeros((3, 4, 5), np.uint8), tmp_path / "out.nii", OBLIQUE, reference=ref)
    assert read_image(tmp_path / "out.nii").geometry.allclose(OBLIQUE, atol=1e-5)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32, np.int64])
def test_integer_labels_stay_integer(tmp_path, dtype):
    labels = np.array([[[0, 1], [2, 3]], [[4, 0], [1, 2]]], dtype=dtype)
    write_image(labels, tmp_path / "lab.nii.gz", Geometry.identity(3))
    img = read_image(tmp_path / "lab.nii.gz")
    assert img.array.dtype == dtype
    np.testing.assert_array_equal(img.array[0], labels)


def test_bool_is_stored_as_uint8(tmp_path):
    mask = np.array([[[True, False], [False, True]]])
    write_image(mask, tmp_path / "m.nii.gz", Geometry.identity(3))
    img = read_image(tmp_path / "m.nii.gz")
    assert img.array.dtype == np.uint8
    np.testing.assert_array_equal(img.array[0], [[[1, 0], [0, 1]]])


def test_multichannel_is_a_fourth_dimension(tmp_path):
    arr = np.random.default_rng(0).normal(size=(2, 3, 4, 5)).astype(np.float32)
    write_image(arr, tmp_path / "mc.nii.gz", OBLIQUE)
    assert nib.load(tmp_path / "mc.nii.gz").shape == (3, 4, 5, 2)
    img = read_image(tmp_path / "mc.nii.gz")
    assert img.channels == 2 and img.spatial_shape == (3, 4, 5)
    np.testing.assert_array_equal(img.array, arr)


def test_two_dimensional_nifti(tmp_path):
    geo = Geometry.from_arrays((0.5, 0.25), (10.0, -4.0), [[0.6, -0.8], [0.8, 0.6]])
    arr = np.arange(12, dtype=np.uint16).reshape(3, 4)
    write_image(arr, tmp_path / "s.nii.gz", geo)
    img = read_image(tmp_path / "s.nii.gz")
    assert img.array.shape == (1, 3, 4)
    np.testing.assert_array_equal(img.array[0], arr)
    assert img.geometry.ndim == 2 and img.geometry.allclose(geo, atol=1e-6)


def test_sheared_affine_is_refused(tmp_path):
    from medattn.errors import DataError

    affine = np.array([[1.0, 0.5, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), affine), tmp_path / "shear.nii")
    with pytest.raises(DataError, match="shear"):
        read_image(tmp_path / "shear.nii")


def test_spatial_units_are_converted_to_mm(tmp_path):
    img = nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.diag([500.0, 250.0, 1000.0, 1.0]))
    img.header.set_xyzt_units("micron")
    nib.save(img, tmp_path / "micro.nii")
    np.testing.assert_allclose(read_image(tmp_path / "micro.nii").geometry.spacing, (0.5, 0.25, 1.0))
