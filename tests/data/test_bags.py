"""Feature bags: medattn round trip, files in CLAM's and TRIDENT's layouts, and bad bags."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from medattn.data.bags import BAG_ATTRS, read_bag, write_bag
from medattn.errors import DataError

RNG = np.random.default_rng(0)


def _attrs() -> dict:
    return {"patch_size": 256, "level": 1, "magnification": 20.0, "mpp": 0.5, "encoder": "handcrafted",
            "encoder_version": "1.0", "slide_id": "case_7", "patch_size_level0": 512, "missing": None,
            "classes": ["a", "b"], "spacing": [0.5, 0.5]}


def test_round_trip_keeps_values_dtypes_and_attributes(tmp_path):
    feats = RNG.normal(size=(37, 16)).astype(np.float64)  # stored as float32
    coords = RNG.integers(0, 100_000, size=(37, 2)).astype(np.int32)  # stored as int64
    path = write_bag(tmp_path / "sub" / "case_7.h5", feats, coords, _attrs())
    assert path == tmp_path / "sub" / "case_7.h5"
    assert sorted(p.name for p in path.parent.iterdir()) == ["case_7.h5"]  # no temporary file left
    bag = read_bag(path)
    assert bag.features.dtype == np.float32 and bag.coords.dtype == np.int64
    np.testing.assert_array_equal(bag.features, feats.astype(np.float32))
    np.testing.assert_array_equal(bag.coords, coords)
    assert (len(bag), bag.dim, bag.path) == (37, 16, path)
    for key, value in _attrs().items():
        if key not in ("missing", "classes"):
            assert bag.attrs[key] == value, key
    assert "missing" not in bag.attrs and bag.attrs["classes"] == '["a", "b"]'
    assert bag.attrs["layout"] == "medattn" and bag.attrs["medattn_version"]
    with h5py.File(path, "r") as f:  # CLAM/TRIDENT readers look at the attributes of `coords`
        assert set(f.keys()) == {"features", "coords"}
        for key in BAG_ATTRS:
            assert f.attrs[key] == f["coords"].attrs[key]
        assert f["coords"].attrs["patch_size"] == 256 and f["features"].shape == (37, 16)


def test_an_empty_bag_round_trips(tmp_path):
    bag = read_bag(write_bag(tmp_path / "e.h5", np.zeros((0, 8)), np.zeros((0, 2), np.int64), {}))
    assert bag.features.shape == (0, 8) and bag.coords.shape == (0, 2)
    assert bag.attrs["slide_id"] == "e" and all(bag.attrs[k] is None for k in BAG_ATTRS)


@pytest.mark.parametrize("feats, coords, problem", [
    (np.zeros((4, 3, 2)), np.zeros((4, 2)), "features must be"),
    (np.zeros((4, 3)), np.zeros((5, 2)), "coords must be"),
    (np.full((2, 3), np.nan), np.zeros((2, 2)), "NaN"),
])
def test_write_refuses_inconsistent_bags_and_leaves_nothing(tmp_path, feats, coords, problem):
    with pytest.raises(DataError, match=problem) as err:
        write_bag(tmp_path / "x.h5", feats, coords, {})
    assert str(tmp_path / "x.h5") in str(err.value)
    assert list(tmp_path.iterdir()) == []


def _clam_save_hdf5(path: Path, assets: dict, attrs: dict | None, mode: str) -> None:
    """What CLAM's ``utils.file_utils.save_hdf5`` does: resizable chunked datasets, appended per batch."""
    with h5py.File(path, mode) as f:
        for key, val in assets.items():
            if key not in f:
                dset = f.create_dataset(key, shape=val.shape, maxshape=(None, *val.shape[1:]),
                                        chunks=(1, *val.shape[1:]), dtype=val.dtype)
                dset[:] = val
                for k, v in (attrs or {}).get(key, {}).items():
                    dset.attrs[k] = v
            else:
                dset = f[key]
                dset.resize(len(dset) + val.shape[0], axis=0)
                dset[-val.shape[0]:] = val


def test_reads_a_clam_extract_features_fp_file(tmp_path):
    """extract_features_fp.py appends {features, coords} batch by batch with attr_dict=None."""
    path = tmp_path / "TCGA-XX-0001.h5"
    feats = RNG.normal(size=(10, 1024)).astype(np.float32)
    coords = (RNG.integers(0, 50, size=(10, 2)) * 256).astype(np.int32)
    for i, mode in ((0, "w"), (4, "a"), (8, "a")):
        j = min(i + 4, 10)
        _clam_save_hdf5(path, {"features": feats[i:j], "coords": coords[i:j]}, None, mode)
    bag = read_bag(path)
    np.testing.assert_array_equal(bag.features, feats)
    np.testing.assert_array_equal(bag.coords, coords.astype(np.int64))
    assert bag.attrs["layout"] == "clam" and bag.attrs["slide_id"] == "TCGA-XX-0001"
    assert bag.attrs["patch_size"] is None and bag.attrs["encoder"] is None


def test_reads_clam_patch_attributes_and_a_leading_bag_axis(tmp_path):
    """create_patches_fp.py puts patch_size / patch_level / downsample on `coords`; some CLAM-style
    feature files hold features as [1, N, D]."""
    path = tmp_path / "slide_b.h5"
    feats = RNG.normal(size=(1, 6, 512)).astype(np.float32)
    coords = np.arange(12, dtype=np.int64).reshape(6, 2) * 512
    coord_attrs = {"patch_size": 256, "patch_level": 1, "downsample": np.array([2.0, 2.0]),
                   "downsampled_level_dim": np.array([5000, 4000]), "level_dim": np.array([5000, 4000]),
                   "name": "slide_b", "save_path": "/data/patches"}
    _clam_save_hdf5(path, {"features": feats, "coords": coords}, {"coords": coord_attrs}, "w")
    with h5py.File(path, "a") as f:  # the [1, N, D] file has a matching [1, N, 2] coords
        del f["coords"]
        f.create_dataset("coords", data=coords[None])
        for k, v in coord_attrs.items():
            f["coords"].attrs[k] = v
    bag = read_bag(path)
    assert bag.features.shape == (6, 512) and bag.coords.shape == (6, 2)
    np.testing.assert_array_equal(bag.features, feats[0])
    a = bag.attrs
    assert (a["layout"], a["level"], a["patch_size"], a["patch_size_level0"]) == ("clam", 1, 256, 512)
    assert a["downsample"] == [2.0, 2.0] and a["level_dim"] == [5000, 4000] and a["save_path"] == "/data/patches"


def test_reads_a_trident_file(tmp_path):
    """TRIDENT: 2-D features, int coords with the patching attributes on `coords`."""
    path = tmp_path / "S-01_uni_v1.h5"
    feats = RNG.normal(size=(8, 1024)).astype(np.float32)
    coords = np.stack([np.arange(8) * 512, np.zeros(8)], 1).astype(np.int64)
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=feats)
        f.create_dataset("coords", data=coords)
        f["features"].attrs["name"] = "S-01"
        f["features"].attrs["savetodir"] = "/jobs/20x_256px_0px_overlap/features_uni_v1"
        for k, v in {"patch_size": 256, "patch_size_level0": 512, "level0_magnification": 40,
                     "target_magnification": 20, "overlap": 0, "name": "S-01", "level0_width": 90000,
                     "level0_height": 60000, "description": "(x, y) coordinates at level 0"}.items():
            f["coords"].attrs[k] = v
    bag = read_bag(path)
    np.testing.assert_array_equal(bag.features, feats)
    a = bag.attrs
    assert (a["layout"], a["slide_id"], a["magnification"], a["patch_size"], a["patch_size_level0"]) == (
        "trident", "S-01", 20, 256, 512)
    assert a["level0_magnification"] == 40 and a["level"] is None and a["mpp"] is None


def _bad(tmp_path: Path, build) -> Path:
    path = tmp_path / "bad.h5"
    with h5py.File(path, "w") as f:
        build(f)
    return path


def _datasets(features, coords):
    return lambda f: (f.create_dataset("features", data=features), f.create_dataset("coords", data=coords))


@pytest.mark.parametrize("build, problem", [
    (lambda f: f.create_dataset("coords", data=np.zeros((3, 2))), "no 'features' dataset \\(found: coords\\)"),
    (lambda f: f.create_dataset("features", data=np.zeros((3, 4))), "no 'coords' dataset"),
    (_datasets(np.zeros((3, 4)), np.zeros((4, 2))), "3 feature rows but 4 coordinates"),
    (_datasets(np.zeros((3, 4)), np.zeros((3, 3))), r"coords must be \[N, 2\]"),
    (_datasets(np.zeros((2, 3, 4)), np.zeros((3, 2))), r"features must be \[N, D\]"),
    (_datasets(np.array([[1.0, np.nan], [0, 1], [np.inf, 0]]), np.zeros((3, 2))),
     r"NaN or infinite values \(2 of 3 patches\)"),
    (_datasets(np.zeros((2, 3)), np.full((2, 2), 0.5)), "integer pixel positions"),
])
def test_bad_bags_give_one_line_errors_naming_the_file(tmp_path, build, problem):
    path = _bad(tmp_path, build)
    with pytest.raises(DataError, match=problem) as err:
        read_bag(path)
    assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value)


def test_missing_truncated_and_non_hdf5_files(tmp_path):
    with pytest.raises(DataError, match="no such feature bag"):
        read_bag(tmp_path / "nope.h5")
    text = tmp_path / "notes.h5"
    text.write_text("slide_id,label\n")
    with pytest.raises(DataError, match="not a readable HDF5 file"):
        read_bag(text)
    good = write_bag(tmp_path / "good.h5", RNG.normal(size=(2000, 64)), np.zeros((2000, 2), np.int64), {})
    data = good.read_bytes()
    cut = tmp_path / "cut.h5"
    cut.write_bytes(data[: len(data) // 2])  # e.g. a copy interrupted half way
    with pytest.raises(DataError) as err:
        read_bag(cut)
    assert str(err.value).startswith(f"{cut}: ") and "truncated or corrupt" in str(err.value)
