"""DICOM: series written by medattn and real series/files shipped with pydicom and pydicom-data."""

from __future__ import annotations

import shutil
from pathlib import Path

import data_store
import numpy as np
import pydicom
import pytest

from medattn.errors import DataError
from medattn.io import Geometry, read_image, write_dicom_series
from medattn.io.dicom import is_dicom_file

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
DICOMDIR_TESTS = PYDICOM_FILES / "dicomdirtests"
DATA_STORE = Path(data_store.__file__).parent / "data"


def _rotation(axis, angle: float) -> np.ndarray:
    """Rodrigues' formula: rotation by ``angle`` radians about ``axis``."""
    k = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle) * kx + (1 - np.cos(angle)) * kx @ kx


OBLIQUE = Geometry.from_arrays((0.7, 0.9, 3.0), (-123.456789, 45.678912, -7.891234),
                               _rotation((1, 2, 3), 0.7))


def _floats(value) -> np.ndarray:
    return np.array([float(v) for v in value])


def _volume() -> np.ndarray:
    return (np.arange(6 * 5 * 4).reshape(6, 5, 4) * 37 - 300).astype(np.int16)  # (X, Y, Z), with negatives


def test_written_series_round_trips_oblique_geometry(tmp_path):
    vol = _volume()
    files = write_dicom_series(vol, tmp_path / "ser", OBLIQUE, series_uid="1.2.826.0.1.3680043.2.9999.1")
    assert [f.parent for f in files] == [tmp_path / "ser"] * 4
    img = read_image(tmp_path / "ser")
    assert img.format == "dicom" and img.header["SeriesInstanceUID"] == "1.2.826.0.1.3680043.2.9999.1"
    assert img.array.shape == (1, 6, 5, 4)
    np.testing.assert_array_equal(img.array[0], vol)
    np.testing.assert_allclose(img.geometry.spacing, (0.7, 0.9, 3.0), atol=1e-4, rtol=0)
    np.testing.assert_allclose(img.geometry.origin, OBLIQUE.origin, atol=1e-4, rtol=0)
    np.testing.assert_allclose(img.geometry.direction_matrix, OBLIQUE.direction_matrix, atol=1e-4, rtol=0)


def test_written_tags_follow_the_dicom_conventions(tmp_path):
    files = write_dicom_series(_volume(), tmp_path / "ser", OBLIQUE, modality="CT")
    rot = _rotation((1, 2, 3), 0.7)
    series = {pydicom.dcmread(f).SeriesInstanceUID for f in files}
    assert len(series) == 1
    for k, f in enumerate(files):
        ds = pydicom.dcmread(f)
        assert ds.Modality == "CT" and int(ds.InstanceNumber) == k + 1
        assert (ds.Rows, ds.Columns) == (5, 6)  # rows = Y, columns = X
        np.testing.assert_allclose(_floats(ds.PixelSpacing), (0.9, 0.7), atol=1e-9)  # [row (y), column (x)]
        np.testing.assert_allclose(_floats(ds.ImageOrientationPatient), [*rot[:, 0], *rot[:, 1]], atol=1e-9)
        expected = np.array(OBLIQUE.origin) + k * 3.0 * rot[:, 2]
        np.testing.assert_allclose(_floats(ds.ImagePositionPatient), expected, atol=1e-6)
        assert float(ds.SliceThickness) == 3.0 and float(ds.SpacingBetweenSlices) == 3.0
        np.testing.assert_array_equal(ds.pixel_array, _volume()[:, :, k].T)


def test_written_series_shares_a_folder_and_is_chosen_by_uid(tmp_path):
    a, b = "1.2.3.4.1", "1.2.3.4.2"
    write_dicom_series(_volume(), tmp_path / "two", OBLIQUE, series_uid=a)
    write_dicom_series(_volume()[::-1] + 1, tmp_path / "two", Geometry.identity(3), series_uid=b)
    assert len(list((tmp_path / "two").iterdir())) == 8  # no temporary folder left behind
    with pytest.raises(DataError) as err:
        read_image(tmp_path / "two")
    assert str(err.value) == (f"{tmp_path / 'two'}: folder holds 2 DICOM series ({a}, {b}); "
                              "pass series_uid= to choose one")
    img = read_image(tmp_path / "two", series_uid=b)
    np.testing.assert_array_equal(img.array[0], _volume()[::-1] + 1)
    assert img.geometry.allclose(Geometry.identity(3), atol=1e-6)


def test_write_dicom_series_refuses_values_outside_int16(tmp_path):
    with pytest.raises(ValueError, match="int16"):
        write_dicom_series(np.full((2, 2, 2), 40000), tmp_path / "s", Geometry.identity(3))
    with pytest.raises(ValueError, match="int16"):
        write_dicom_series(np.zeros((2, 2, 2), np.float32), tmp_path / "s", Geometry.identity(3))
    assert not list(tmp_path.iterdir())


def test_real_ct_series_geometry_matches_its_tags():
    folder = DICOMDIR_TESTS / "98892001" / "CT5N"
    img = read_image(folder)
    slices = sorted((pydicom.dcmread(f) for f in folder.iterdir()),
                    key=lambda ds: float(ds.ImagePositionPatient[2]))
    first = slices[0]
    assert img.array.shape == (1, int(first.Columns), int(first.Rows), len(slices))
    row_spacing, col_spacing = _floats(first.PixelSpacing)
    gaps = np.diff([_floats(ds.ImagePositionPatient) for ds in slices], axis=0)
    np.testing.assert_allclose(img.geometry.spacing, (col_spacing, row_spacing, np.linalg.norm(gaps[0])),
                               atol=1e-6)
    assert img.geometry.spacing[2] == pytest.approx(2.5, abs=1e-6)
    np.testing.assert_allclose(img.geometry.origin, _floats(first.ImagePositionPatient), atol=1e-6)
    np.testing.assert_allclose(img.geometry.direction_matrix[:, :2].T.ravel(),
                               _floats(first.ImageOrientationPatient), atol=1e-6)
    for k, ds in enumerate(slices):  # pixel values: modality LUT applied, x = column
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_array_equal(img.array[0, :, :, k], hu.T)


def test_real_radial_mr_series_is_refused_and_its_slices_read():
    folder = DICOMDIR_TESTS / "98892003" / "MR700"
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in sorted(folder.iterdir())]
    orientations = np.array([_floats(ds.ImageOrientationPatient) for ds in headers])
    assert np.ptp(orientations[:, :3], axis=0).max() > 0.5  # the 7 slices are rotated about one axis
    with pytest.raises(DataError, match="different orientations"):
        read_image(folder)
    for f, ds in zip(sorted(folder.iterdir()), headers):  # each oblique slice, read alone
        img = read_image(f)
        row_spacing, col_spacing = _floats(ds.PixelSpacing)
        assert img.array.shape == (1, int(ds.Columns), int(ds.Rows), 1)
        np.testing.assert_allclose(img.geometry.spacing[:2], (col_spacing, row_spacing), atol=1e-6)
        np.testing.assert_allclose(img.geometry.origin, _floats(ds.ImagePositionPatient), atol=1e-6)
        iop = _floats(ds.ImageOrientationPatient)
        # the file's cosines are rounded to 6 digits; ITK makes them orthonormal (changes ~2e-5)
        np.testing.assert_allclose(img.geometry.direction_matrix[:, :2].T.ravel(), iop, atol=1e-4)
        np.testing.assert_allclose(img.geometry.direction_matrix[:, 2], np.cross(iop[:3], iop[3:]), atol=1e-4)


def test_real_folder_with_three_series():
    folder = DICOMDIR_TESTS / "98892003" / "MR2"
    with pytest.raises(DataError, match=r"folder holds 3 DICOM series \(") as err:
        read_image(folder)
    assert "1.3.6.1.4.1.5962.1.1.0.0.0.1196533885.18148.0.481" in str(err.value)
    img = read_image(folder, series_uid="1.3.6.1.4.1.5962.1.1.0.0.0.1196533885.18148.0.481")
    ds = pydicom.dcmread(folder / "15970")
    assert img.array.shape == (1, int(ds.Columns), int(ds.Rows), 1) and img.path == folder
    np.testing.assert_allclose(img.geometry.origin, _floats(ds.ImagePositionPatient), atol=1e-6)


def test_real_series_with_a_gap_is_refused():
    # 77654033/CT2: slices at z = -99.48, 103.02, 104.27, 105.52 (slices missing in between).
    with pytest.raises(DataError, match="unevenly spaced"):
        read_image(DICOMDIR_TESTS / "77654033" / "CT2")


@pytest.mark.parametrize(("name", "frames"), [("emri_small.dcm", 10), ("liver.dcm", 3)])
def test_real_multiframe_files(name, frames):
    path = DATA_STORE / name
    ds = pydicom.dcmread(path)
    assert int(ds.NumberOfFrames) == frames
    img = read_image(path)
    assert img.format == "dicom"
    assert img.array.shape == (1, int(ds.Columns), int(ds.Rows), frames)
    np.testing.assert_array_equal(img.array[0], ds.pixel_array.transpose(2, 1, 0))  # (F, Y, X) -> (X, Y, F)


def test_extensionless_dicom_is_recognised(tmp_path):
    src = DICOMDIR_TESTS / "98892001" / "CT5N" / "2392"
    assert is_dicom_file(src) and not is_dicom_file(DICOMDIR_TESTS / "README.txt")
    shutil.copy(src, tmp_path / "slice")
    img = read_image(tmp_path / "slice")
    assert img.format == "dicom" and img.array.shape == (1, 16, 16, 1)


def test_folder_without_dicom_files(tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(DataError) as err:
        read_image(tmp_path)
    assert str(err.value) == f"{tmp_path}: no DICOM files (*.dcm, or with the DICM preamble) in this folder"


def _edit_positions(files, shift) -> None:
    """Rewrite each slice's ImagePositionPatient to IPP + shift(k) (a real edit of real files)."""
    for k, f in enumerate(files):
        ds = pydicom.dcmread(f)
        ds.ImagePositionPatient = [f"{v:.6f}" for v in _floats(ds.ImagePositionPatient) + shift(k)]
        ds.save_as(f)


def test_missing_slice_is_refused(tmp_path):
    files = write_dicom_series(np.zeros((3, 3, 5), np.int16), tmp_path / "s", OBLIQUE)
    files[2].unlink()
    with pytest.raises(DataError, match=r"unevenly spaced \(gaps 3 to 6 mm\); missing slices\?"):
        read_image(tmp_path / "s")


def test_gantry_tilt_is_refused(tmp_path):
    files = write_dicom_series(np.zeros((3, 3, 4), np.int16), tmp_path / "s", OBLIQUE)
    _edit_positions(files, lambda k: k * 0.5 * _rotation((1, 2, 3), 0.7)[:, 1])  # 0.5 mm/slice along y
    with pytest.raises(DataError, match=r"drift 1\.5 mm off the slice normal"):
        read_image(tmp_path / "s")


def test_slices_at_one_position_are_refused(tmp_path):
    files = write_dicom_series(np.zeros((3, 3, 3), np.int16), tmp_path / "s", OBLIQUE)
    _edit_positions(files, lambda k: -3.0 * _rotation((1, 2, 3), 0.7)[:, 2] if k == 1 else 0.0)
    with pytest.raises(DataError, match="2 slices share a position"):
        read_image(tmp_path / "s")


def test_small_position_rounding_is_accepted(tmp_path):
    # Scanners print positions with few decimals: +-0.02 mm of noise on 3 mm slices still reads.
    files = write_dicom_series(np.zeros((3, 3, 4), np.int16), tmp_path / "s", OBLIQUE)
    normal = _rotation((1, 2, 3), 0.7)[:, 2]
    _edit_positions(files, lambda k: (0.02, -0.02, 0.02, 0.0)[k] * normal)
    img = read_image(tmp_path / "s")
    assert img.geometry.spacing[2] == pytest.approx(3.0 - 0.02 / 3, abs=1e-5)
    np.testing.assert_allclose(img.geometry.origin, np.array(OBLIQUE.origin) + 0.02 * normal, atol=1e-5)
