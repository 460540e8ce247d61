"""Tests for medattn.data.synth: synthetic datasets written to disk and read back."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from monai.data import load_decathlon_datalist

from medattn.data.synth import write_synthetic_dataset
from medattn.errors import ConfigError, DataError
from medattn.io import Geometry, read_image

SMALL_3D = (32, 32, 16)


def _channel_files(root: Path, entry: dict, channels: int, ending: str) -> list[Path]:
    stem = entry["image"][: -len(ending)]
    return [root / f"{stem}_{c:04d}{ending}" for c in range(channels)]


def _image_files(root: Path) -> set[Path]:
    return {p for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs") for p in (root / sub).iterdir()}


def _check_dataset(root: Path, meta: dict, channels: int, ending: str, n_organs: int = 2) -> dict:
    """Every listed file exists, nothing else is there, and each image reads back with the recorded
    geometry on the label's grid. Returns {case name: (channel arrays, label array, geometry)}."""
    listed: set[Path] = set()
    out = {}
    for entry in meta["training"] + meta["test"]:
        images = _channel_files(root, entry, channels, ending)
        label_path = root / entry["label"]
        listed |= {*images, label_path}
        name = label_path.name[: -len(ending)]
        expected = Geometry.from_dict(meta["medattn"]["cases"][name])
        label = read_image(label_path)
        assert label.geometry.allclose(expected, atol=1e-5)
        arrays = []
        for f in images:
            img = read_image(f)
            assert img.array.shape == label.array.shape
            assert img.geometry.allclose(expected, atol=1e-5) and img.geometry.allclose(label.geometry, 1e-6)
            arrays.append(img.array[0])
        lab = label.array[0]
        assert np.unique(lab).tolist() == list(range(n_organs + 1))
        out[name] = (arrays, lab, label.geometry)
    assert {p.resolve() for p in _image_files(root)} == {p.resolve() for p in listed}
    return out


def test_3d_nifti_dataset_layout_keys_and_oblique_geometry(tmp_path: Path) -> None:
    path = write_synthetic_dataset(tmp_path / "ds", n_train=3, n_test=2, shape=SMALL_3D, seed=1)
    assert path == tmp_path / "ds" / "dataset.json"
    meta = json.loads(path.read_text())
    # nnU-Net v2 keys
    assert meta["channel_names"] == {"0": "MRI"} and meta["file_ending"] == ".nii.gz"
    assert meta["labels"] == {"background": 0, "organ_a": 1, "organ_b": 2} and meta["numTraining"] == 3
    # MSD keys
    assert meta["name"] == "medattn-synth-3d" and meta["tensorImageSize"] == "3D"
    assert meta["modality"] == {"0": "MRI"} and meta["numTest"] == 2
    assert meta["training"][0] == {"image": "./imagesTr/case_000.nii.gz",
                                   "label": "./labelsTr/case_000.nii.gz"}
    assert meta["test"][0] == {"image": "./imagesTs/case_003.nii.gz", "label": "./labelsTs/case_003.nii.gz"}
    m = meta["medattn"]
    assert m["generator"] == "medattn.data.synth" and m["seed"] == 1 and m["spacing"] == [0.8, 0.8, 2.0]
    assert (tmp_path / "ds" / "README.txt").read_text().count("\n") == 3
    cases = _check_dataset(tmp_path / "ds", meta, 1, ".nii.gz")
    directions = []
    for arrays, _, geometry in cases.values():
        assert arrays[0].dtype == np.float32 and arrays[0].shape == SMALL_3D
        assert geometry.spacing == pytest.approx((0.8, 0.8, 2.0), abs=1e-5)
        d = geometry.direction_matrix
        assert np.linalg.det(d) == pytest.approx(1.0, abs=1e-4)
        angle = np.degrees(np.arccos((np.trace(d) - 1) / 2))  # rotation angle of the direction
        assert angle == pytest.approx(20.0, abs=2.1)
        assert np.linalg.norm(geometry.origin) > 1.0
        directions.append(d)
    assert not np.allclose(directions[0], directions[1], atol=1e-4)  # cases differ slightly
    assert np.allclose(np.asarray(m["direction"]), directions[0], atol=0.2)
    assert not (tmp_path / "ds").with_name(".ds").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]  # no temporary folder left behind
    mask = os.umask(0o022)
    os.umask(mask)
    assert (tmp_path / "ds").stat().st_mode & 0o777 == 0o777 & ~mask  # not a private temporary folder


def test_monai_reads_the_msd_lists(tmp_path: Path) -> None:
    path = write_synthetic_dataset(tmp_path / "ds", n_train=2, n_test=1, shape=SMALL_3D)
    train = load_decathlon_datalist(str(path), data_list_key="training")
    test = load_decathlon_datalist(str(path), data_list_key="test")
    assert [Path(d["label"]).name for d in train] == ["case_000.nii.gz", "case_001.nii.gz"]
    assert Path(test[0]["image"]).parent.name == "imagesTs"
    assert all(Path(d["label"]).exists() for d in train + test)


def test_same_seed_gives_identical_arrays_and_other_seed_differs(tmp_path: Path) -> None:
    kw = {"n_train": 2, "n_test": 1, "shape": SMALL_3D}
    a = json.loads(write_synthetic_dataset(tmp_path / "a", seed=3, **kw).read_text())
    b = json.loads(write_synthetic_dataset(tmp_path / "b", seed=3, **kw).read_text())
    c = json.loads(write_synthetic_dataset(tmp_path / "c", seed=4, **kw).read_text())
    assert a["medattn"]["cases"] == b["medattn"]["cases"] != c["medattn"]["cases"]
    for sub in ("imagesTr/case_001_0000.nii.gz", "labelsTr/case_001.nii.gz", "imagesTs/case_002_0000.nii.gz"):
        ra, rb, rc = (read_image(tmp_path / r / sub).array for r in "abc")
        assert ra.tobytes() == rb.tobytes()
        assert not np.array_equal(ra, rc)


def test_2d_png_variant(tmp_path: Path) -> None:
    path = write_synthetic_dataset(tmp_path / "ds2", spatial_dims=2, n_train=2, n_test=1, shape=(64, 48))
    meta = json.loads(path.read_text())
    assert meta["file_ending"] == ".png" and meta["name"] == "medattn-synth-2d"
    assert meta["tensorImageSize"] == "2D"
    assert meta["medattn"]["oblique"] is False  # a PNG stores no direction
    cases = _check_dataset(tmp_path / "ds2", meta, 1, ".png")
    lo, hi = meta["medattn"]["png_range"]
    for arrays, label, geometry in cases.values():
        img = arrays[0]
        assert img.dtype == np.uint8 and label.dtype == np.uint8 and img.shape == (64, 48)
        assert geometry.allclose(Geometry.identity(2, (0.8, 0.8)), atol=1e-5)
        # organ 2 (mean ~2.0) is brighter than organ 1 (~1.0) on the 0..255 scale
        m1, m2 = img[label == 1].mean(), img[label == 2].mean()
        assert m1 < m2 and m1 == pytest.approx((1.0 - lo) / (hi - lo) * 255, abs=35)
        assert img.max() > 150
        air = img[:4, :4].mean()  # the corners are outside the body: intensity 0 plus noise
        assert air == pytest.approx(-lo / (hi - lo) * 255, abs=8)


def test_2d_nifti_variant_is_oblique(tmp_path: Path) -> None:
    path = write_synthetic_dataset(tmp_path / "ds", spatial_dims=2, n_train=1, n_test=0, shape=(40, 40),
                                   file_ending=".nii.gz")
    meta = json.loads(path.read_text())
    (arrays, _, geometry), = _check_dataset(tmp_path / "ds", meta, 1, ".nii.gz").values()
    assert arrays[0].dtype == np.float32
    d = geometry.direction_matrix
    assert np.degrees(np.arctan2(d[1, 0], d[0, 0])) == pytest.approx(20.0, abs=2.1)
    assert np.linalg.det(d) == pytest.approx(1.0, abs=1e-5)


def test_two_channels_are_differently_contrasted_copies(tmp_path: Path) -> None:
    path = write_synthetic_dataset(tmp_path / "mc", n_train=2, n_test=0, shape=SMALL_3D, channels=2)
    meta = json.loads(path.read_text())
    assert meta["channel_names"] == meta["modality"] == {"0": "MRI", "1": "MRI_T2"}
    for arrays, label, _ in _check_dataset(tmp_path / "mc", meta, 2, ".nii.gz").values():
        t1, t2 = arrays
        assert t1.dtype == t2.dtype == np.float32
        # channel 0: organ 2 brighter than organ 1; channel 1: the order is reversed (1.6 vs 0.8)
        assert t1[label == 2].mean() > t1[label == 1].mean() + 0.5
        assert t2[label == 1].mean() > t2[label == 2].mean() + 0.4
        assert t2[label == 1].mean() == pytest.approx(1.6, abs=0.3)


def test_nrrd_variant_and_non_oblique(tmp_path: Path) -> None:
    path = write_synthetic_dataset(tmp_path / "nr", n_train=1, n_test=1, shape=SMALL_3D, file_ending=".nrrd",
                                   spacing=(1.0, 0.9, 3.0), n_organs=3)
    meta = json.loads(path.read_text())
    assert meta["labels"]["organ_c"] == 3 and meta["training"][0]["image"].endswith(".nrrd")
    for _, _, geometry in _check_dataset(tmp_path / "nr", meta, 1, ".nrrd", n_organs=3).values():
        assert geometry.spacing == pytest.approx((1.0, 0.9, 3.0), abs=1e-9)
        assert not np.allclose(geometry.direction_matrix, np.eye(3), atol=0.1)
    path = write_synthetic_dataset(tmp_path / "mha", n_train=1, n_test=0, shape=SMALL_3D, file_ending=".mha",
                                   oblique=False)
    meta = json.loads(path.read_text())
    (_, _, geometry), = _check_dataset(tmp_path / "mha", meta, 1, ".mha").values()
    assert np.array_equal(geometry.direction_matrix, np.eye(3)) and meta["medattn"]["oblique"] is False


def test_rewriting_replaces_an_old_dataset_without_stale_cases(tmp_path: Path) -> None:
    write_synthetic_dataset(tmp_path / "ds", n_train=3, n_test=1, shape=SMALL_3D)
    assert (tmp_path / "ds" / "imagesTr" / "case_002_0000.nii.gz").exists()
    path = write_synthetic_dataset(tmp_path / "ds", n_train=1, n_test=1, shape=SMALL_3D)
    meta = json.loads(path.read_text())
    _check_dataset(tmp_path / "ds", meta, 1, ".nii.gz")  # only the listed files remain
    assert sorted(p.name for p in (tmp_path / "ds" / "imagesTs").iterdir()) == ["case_001_0000.nii.gz"]
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


def test_refuses_to_replace_a_foreign_folder(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match=r"mine: folder is not empty and was not written by a medattn synthetic gen"):
        write_synthetic_dataset(mine, n_train=1, n_test=0, shape=SMALL_3D)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"spatial_dims": 4}, "spatial_dims must be 2 or 3"),
    ({"file_ending": ".png"}, "file_ending must be one of"),
    ({"channels": 0}, "channels must be"),
    ({"n_train": 0}, "n_train >= 1"),
    ({"shape": (32, 32)}, "need 3 entries"),
    ({"seed": -1}, "seed must be"),
    ({"noise": -0.1}, "noise must be"),
    ({"n_organs": 9}, "n_organs must be 1..8"),
])
def test_invalid_arguments_raise_config_error(tmp_path: Path, kwargs: dict, match: str) -> None:
    args = {"n_train": 1, "n_test": 0, "shape": SMALL_3D, **kwargs}
    with pytest.raises(ConfigError, match=match):
        write_synthetic_dataset(tmp_path / "bad", **args)
    assert list(tmp_path.iterdir()) == []
