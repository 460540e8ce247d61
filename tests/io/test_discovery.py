"""list_images / case_name / prediction_path on real folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medattn.errors import DataError
from medattn.io import Geometry, case_name, list_images, prediction_path, write_dicom_series, write_image


def _tree(root: Path) -> None:
    g3 = Geometry.identity(3)
    vol = np.zeros((2, 3, 4), np.int16)
    write_image(vol, root / "b.nrrd", g3)
    write_image(vol, root / "a.nii.gz", g3)
    write_image(vol, root / "c.mhd", g3)  # + c.zraw, which is not an image of its own
    write_image(vol, root / ".hidden.nii.gz", g3)
    (root / ".a.k2j3.tmp.nii.gz").write_bytes(b"half-written")
    (root / "notes.txt").write_text("x")
    (root / "D.PNG").write_bytes(b"")  # upper-case extension still counts
    write_dicom_series(vol, root / "series1", g3)
    (root / "empty").mkdir()
    write_image(np.zeros((2, 2), np.uint8), root / "pngs" / "p.png", Geometry.identity(2))


def test_list_images(tmp_path):
    _tree(tmp_path)
    assert list_images(tmp_path) == [tmp_path / n for n in
                                     ("D.PNG", "a.nii.gz", "b.nrrd", "c.mhd", "series1")]


def test_list_images_of_a_missing_folder(tmp_path):
    with pytest.raises(DataError) as err:
        list_images(tmp_path / "nope")
    assert str(err.value) == f"{tmp_path / 'nope'}: no such folder"


@pytest.mark.parametrize(("name", "expected"), [
    ("a.nii.gz", "a"), ("b.nrrd", "b"), ("c.NII.GZ", "c"), ("case_0000.nii", "case_0000"),
    ("x.y.mha", "x.y"), ("img.tiff", "img"), ("slice.dcm", "slice"), ("README", "README"),
])
def test_case_name_of_files(name, expected):
    assert case_name(Path("/data") / name) == expected


def test_case_name_of_a_dicom_folder(tmp_path):
    (tmp_path / "patient7.nii.gz").mkdir()  # a folder keeps its whole name
    assert case_name(tmp_path / "patient7.nii.gz") == "patient7.nii.gz"
    assert case_name(f"{tmp_path}/patient7.nii.gz/") == "patient7.nii.gz"


def test_prediction_path(tmp_path):
    out = tmp_path / "out"
    (tmp_path / "ser").mkdir()
    assert prediction_path(tmp_path / "a.nii.gz", out) == out / "a.nii.gz"
    assert prediction_path(tmp_path / "b.nrrd", out, suffix="_seg") == out / "b_seg.nrrd"
    assert prediction_path(tmp_path / "ser", out) == out / "ser.nii.gz"
    assert prediction_path(tmp_path / "x.dcm", out) == out / "x.nii.gz"
    assert prediction_path(tmp_path / "photo.jpg", out) == out / "photo.png"
    assert prediction_path("../x.nii.gz", out) == out / "x.nii.gz"


@pytest.mark.parametrize(("name", "suffix"), [
    ("a.nii.gz", "/../../evil"), ("a.nii.gz", "\\..\\evil"), ("a.nii.gz", "/x"), (".nii.gz", ""),
])
def test_prediction_path_never_leaves_out_dir(tmp_path, name, suffix):
    with pytest.raises(DataError, match="would not be a plain file inside"):
        prediction_path(tmp_path / name, tmp_path / "out", suffix=suffix)


def test_prediction_path_of_unsupported_input(tmp_path):
    with pytest.raises(DataError, match="unsupported image extension"):
        prediction_path(tmp_path / "a.txt", tmp_path)
