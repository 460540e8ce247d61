"""read_geometry (header only) agrees with read_image for every format."""

import numpy as np
import pytest

from medattn.errors import DataError
from medattn.io import Geometry, read_geometry, read_image, write_dicom_series, write_image


def oblique():
    a = np.deg2rad(25)
    r = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    tilt = np.array([[1, 0, 0], [0, np.cos(a / 2), -np.sin(a / 2)], [0, np.sin(a / 2), np.cos(a / 2)]])
    return Geometry.from_arrays((0.7, 0.9, 3.0), (10.0, -5.5, 42.0), r @ tilt)


@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"])
def test_header_geometry_matches_full_read(tmp_path, ext):
    g = oblique()
    path = write_image(np.arange(5 * 6 * 7, dtype=np.int16).reshape(5, 6, 7), tmp_path / f"a{ext}", g)
    assert read_geometry(path).allclose(read_image(path).geometry, atol=1e-9)
    assert read_geometry(path).allclose(g, atol=1e-5)


def test_dicom_series_and_png_fall_back_to_full_read(tmp_path):
    g = oblique()
    write_dicom_series(np.zeros((5, 6, 4), np.int16), tmp_path / "series", g)
    assert read_geometry(tmp_path / "series").allclose(g, atol=1e-4)
    png = write_image(np.zeros((5, 6), np.uint8), tmp_path / "p.png", Geometry.identity(2, (0.5, 0.25)))
    assert read_geometry(png).spacing == pytest.approx((0.5, 0.25))


def test_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_geometry(tmp_path / "x.nrrd")
    bad = tmp_path / "bad.mha"
    bad.write_text("not a metaimage")
    with pytest.raises(DataError) as e:
        read_geometry(bad)
    assert str(e.value).startswith(str(bad))
