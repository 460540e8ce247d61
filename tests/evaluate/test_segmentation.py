"""Folder evaluation on real NIfTI / NRRD files with hand-computed metrics.

Every mask is a slab ``x in [a, b)`` over the full (Y, Z) = (3, 2) extent, so every mask voxel is a
surface voxel (each touches the z border) and each surface distance is ``|x - x'| * 2.0 mm``.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medattn.errors import DataError
from medattn.evaluate import evaluate_folders, format_summary_table
from medattn.io.geometry import Geometry

SHAPE = (10, 3, 2)
GEOM = Geometry.from_arrays((2.0, 1.0, 1.5), (10.0, -5.0, 3.0), np.eye(3))
DIAG = math.sqrt((9 * 2.0) ** 2 + (2 * 1.0) ** 2 + (1 * 1.5) ** 2)  # grid diagonal in mm


def _labels(*slabs: tuple[int, int, int]) -> np.ndarray:
    """(X, Y, Z) uint8 label map with ``value`` on x in [start, stop) for each (value, start, stop)."""
    arr = np.zeros(SHAPE, np.uint8)
    for value, start, stop in slabs:
        arr[start:stop] = value
    return arr


def _write_nifti(path: Path, arr: np.ndarray, geom: Geometry = GEOM) -> Path:
    nib.save(nib.Nifti1Image(arr, geom.to_affine_ras()), str(path))
    return path


def _write_nrrd(path: Path, arr: np.ndarray, geom: Geometry = GEOM) -> Path:
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr.transpose(2, 1, 0)))  # sitk wants (Z, Y, X)
    img.SetSpacing(geom.spacing)
    img.SetOrigin(geom.origin)
    img.SetDirection(tuple(geom.direction_matrix.ravel()))
    sitk.WriteImage(img, str(path))
    return path


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    pred.mkdir()
    ref.mkdir()
    # case_001: class 1 perfect; class 2 predicted on x = 6, 7 of 6, 7, 8
    _write_nifti(ref / "case_001.nii.gz", _labels((1, 1, 4), (2, 6, 9)))
    _write_nifti(pred / "case_001.nii.gz", _labels((1, 1, 4), (2, 6, 8)))
    # case_002: class 1 shifted by one voxel (2 mm); class 2 absent in ref, predicted on x = 8
    _write_nifti(ref / "case_002.nii.gz", _labels((1, 2, 5)))
    _write_nifti(pred / "case_002.nii.gz", _labels((1, 3, 6), (2, 8, 9)))
    # case_003 (NRRD reference, NIfTI prediction): class 1 missed; class 2 perfect
    _write_nrrd(ref / "case_003.nrrd", _labels((1, 0, 2), (2, 5, 7)))
    _write_nifti(pred / "case_003.nii.gz", _labels((2, 5, 7)))
    return pred, ref


# Hand-computed per case (dice, iou, hd95, nsd@1mm, ref_voxels, pred_voxels); see the fixture.
# case_001/2: 18 ref, 12 pred voxels, overlap 12; distances 24 x 0 mm and 6 x 2 mm -> hd95 2, nsd 24/30.
# case_002/1: 18 and 18, overlap 12; distances 24 x 0 and 12 x 2 mm -> hd95 2, nsd 24/36.
EXPECTED = {
    ("case_001", 1): (1.0, 1.0, 0.0, 1.0, 18, 18),
    ("case_001", 2): (24 / 30, 12 / 18, 2.0, 24 / 30, 18, 12),
    ("case_002", 1): (24 / 36, 12 / 24, 2.0, 24 / 36, 18, 18),
    ("case_002", 2): (0.0, 0.0, DIAG, 0.0, 0, 6),
    ("case_003", 1): (0.0, 0.0, DIAG, 0.0, 12, 0),
    ("case_003", 2): (1.0, 1.0, 0.0, 1.0, 12, 12),
}
METRIC_COLUMNS = ("dice", "iou", "hd95", "nsd")


def _check_summary(summary: dict, names: dict[int, str]) -> None:
    assert summary["cases"] == 3 and summary["nsd_tolerance_mm"] == 1.0
    assert summary["labels"] == {str(k): v for k, v in names.items()}
    assert list(summary["per_class"]) == list(names.values())
    for value, name in names.items():
        for i, metric in enumerate(METRIC_COLUMNS):
            vals = [EXPECTED[(c, value)][i] for c in ("case_001", "case_002", "case_003")]
            stats = summary["per_class"][name][metric]
            assert stats["n"] == 3
            assert stats["mean"] == pytest.approx(sum(vals) / 3)
            assert stats["std"] == pytest.approx(float(np.std(vals)))
    assert summary["mean"]["dice"] == pytest.approx(((1 + 2 / 3 + 0) / 3 + (0.8 + 0 + 1) / 3) / 2)
    assert summary["mean"]["hd95"] == pytest.approx(((0 + 2 + DIAG) / 3 + (2 + DIAG + 0) / 3) / 2)


def test_evaluate_folders_csv_and_summary(folders: tuple[Path, Path], tmp_path: Path) -> None:
    pred, ref = folders
    out = tmp_path / "out"
    names = {1: "liver", 2: "tumour"}
    summary = evaluate_folders(pred, ref, out, labels={0: "background", **names})
    _check_summary(summary, names)
    assert json.loads((out / "summary.json").read_text()) == summary
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    header = ["case", "class", "label", "dice", "iou", "hd95", "nsd", "ref_voxels", "pred_voxels"]
    assert list(rows[0]) == header
    assert [(r["case"], r["class"]) for r in rows] == [
        (c, n) for c in ("case_001", "case_002", "case_003") for n in ("liver", "tumour")
    ]
    for r in rows:
        exp = EXPECTED[(r["case"], int(r["label"]))]
        got = [float(r[k]) for k in METRIC_COLUMNS]
        assert got == pytest.approx(list(exp[:4]), abs=1e-9)
        assert (int(r["ref_voxels"]), int(r["pred_voxels"])) == exp[4:]
    assert sorted(p.name for p in out.iterdir()) == ["metrics.csv", "summary.json"]  # no temp files left


def test_labels_inferred_from_references_and_workers(folders: tuple[Path, Path], tmp_path: Path) -> None:
    pred, ref = folders
    serial = evaluate_folders(pred, ref, tmp_path / "a")
    _check_summary(serial, {1: "label_1", 2: "label_2"})
    parallel = evaluate_folders(pred, ref, tmp_path / "b", num_workers=2)
    assert parallel == serial
    assert (tmp_path / "a" / "metrics.csv").read_text() == (tmp_path / "b" / "metrics.csv").read_text()


def test_nsd_tolerance_is_applied(folders: tuple[Path, Path], tmp_path: Path) -> None:
    pred, ref = folders
    summary = evaluate_folders(pred, ref, tmp_path / "out", labels={1: "a", 2: "b"}, nsd_tolerance=2.0)
    # every 2 mm distance is now within tolerance: class 1 nsd = (1 + 1 + 0) / 3
    assert summary["per_class"]["a"]["nsd"]["mean"] == pytest.approx(2 / 3)
    assert summary["nsd_tolerance_mm"] == 2.0


def test_format_summary_table(folders: tuple[Path, Path], tmp_path: Path) -> None:
    pred, ref = folders
    table = format_summary_table(evaluate_folders(pred, ref, tmp_path / "out", labels={1: "a", 2: "b"}))
    lines = table.splitlines()
    assert lines[0].split() == ["class", "Dice", "IoU", "HD95", "mm", "NSD@1mm"]
    assert lines[2].split() == ["a", "0.5556", "0.5000", f"{(2 + DIAG) / 3:.2f}", "0.5556"]
    assert lines[3].split() == ["b", "0.6000", f"{(2 / 3 + 1) / 3:.4f}", f"{(2 + DIAG) / 3:.2f}", "0.6000"]
    assert lines[-1].split()[0] == "mean" and lines[-1].split()[1] == f"{(5 / 9 + 0.6) / 2:.4f}"
    assert len({len(line) for line in lines}) == 1  # aligned: every line has the same width


def test_missing_partner_files(folders: tuple[Path, Path], tmp_path: Path) -> None:
    pred, ref = folders
    _write_nifti(pred / "case_004.nii.gz", _labels((1, 0, 1)))
    with pytest.raises(DataError, match=r"no reference .* case_004\.nii\.gz"):
        evaluate_folders(pred, ref, tmp_path / "out")
    (pred / "case_004.nii.gz").unlink()
    for i in range(10, 17):
        _write_nifti(ref / f"case_{i:03d}.nii.gz", _labels((1, 0, 1)))
    with pytest.raises(DataError) as err:
        evaluate_folders(pred, ref, tmp_path / "out")
    msg = str(err.value)
    assert "no prediction" in msg and "case_010.nii.gz, case_011.nii.gz" in msg and "and 2 more" in msg
    assert "case_016" not in msg and "\n" not in msg
    assert not (tmp_path / "out").exists()


def test_grid_mismatch_names_both_files(folders: tuple[Path, Path], tmp_path: Path) -> None:
    pred, ref = folders
    moved = Geometry.from_arrays((2.0, 1.0, 1.5), (10.0, -5.0, 3.5), np.eye(3))
    _write_nifti(pred / "case_002.nii.gz", _labels((1, 3, 6)), moved)
    with pytest.raises(DataError, match=r"case_002\.nii\.gz.*origin") as err:
        evaluate_folders(pred, ref, tmp_path / "out")
    assert str(ref / "case_002.nii.gz") in str(err.value) and str(pred / "case_002.nii.gz") in str(err.value)
    _write_nifti(pred / "case_002.nii.gz", np.zeros((10, 3, 3), np.uint8))
    with pytest.raises(DataError, match=r"shape \(10, 3, 3\).*\(10, 3, 2\)"):
        evaluate_folders(pred, ref, tmp_path / "out")


def test_label_value_outside_labels(folders: tuple[Path, Path], tmp_path: Path) -> None:
    pred, ref = folders
    _write_nrrd(ref / "case_003.nrrd", _labels((1, 0, 2), (5, 5, 7)))
    with pytest.raises(DataError, match=r"case_003\.nrrd.*label value 5"):
        evaluate_folders(pred, ref, tmp_path / "out", labels={1: "a", 2: "b"})
    # inferred labels: a prediction value that no reference contains is an error too
    _write_nrrd(ref / "case_003.nrrd", _labels((1, 0, 2), (2, 5, 7)))
    _write_nifti(pred / "case_001.nii.gz", _labels((1, 1, 4), (3, 6, 8)))
    with pytest.raises(DataError, match=r"pred.case_001\.nii\.gz.*label value 3"):
        evaluate_folders(pred, ref, tmp_path / "out")
