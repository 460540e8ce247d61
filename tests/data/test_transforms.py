"""Loading checks, preprocessing geometry and balanced patch sampling."""

import numpy as np
import pytest
import torch
from monai import transforms as mt

from medattn.data.transforms import (
    LoadCased,
    affine_4x4,
    augmentation,
    canonical_spacing,
    preprocessing,
    resolve_orientation,
)
from medattn.errors import DataError
from medattn.io import Geometry, read_image, write_image


def oblique_geometry():
    # a proper rotation (det +1) about an oblique axis, with anisotropic spacing
    axis = np.array([1.0, 2.0, 0.5]) / np.linalg.norm([1.0, 2.0, 0.5])
    a = np.deg2rad(30)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    r = np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k
    return Geometry.from_arrays((0.8, 1.1, 2.5), (-20.0, 13.0, 7.5), r)


def blob_case(tmp_path, geom, shape=(40, 36, 16)):
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).reshape(-1, 3)
    phys = geom.index_to_physical(idx).reshape(*shape, 3)
    centre = geom.index_to_physical(np.array(shape) / 2.0 - 0.5)[0] + np.array([3.0, -2.0, 1.0])
    lab = (np.linalg.norm(phys - centre, axis=-1) < 9.0).astype(np.uint8)
    img = lab * 100.0 + 10.0
    write_image(img.astype(np.float32), tmp_path / "img.nii.gz", geom)
    write_image(lab, tmp_path / "lab.nii.gz", geom)
    return {"image": [str(tmp_path / "img.nii.gz")], "label": str(tmp_path / "lab.nii.gz")}, centre


def physical_centroid(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    idx = np.argwhere(mask > 0.5).mean(axis=0)
    return (affine[:3, :3] @ idx + affine[:3, 3])


def test_preprocessing_keeps_physical_position(tmp_path):
    geom = oblique_geometry()
    case, _ = blob_case(tmp_path, geom)
    out = mt.Compose(preprocessing("RAS", [1.5, 1.5, 1.5], "none"))(case)
    lab = out["label"]
    affine = np.asarray(lab.affine)
    assert np.allclose(np.linalg.norm(affine[:3, :3], axis=0), 1.5, atol=1e-4)
    # the reoriented frame is the closest one to RAS: positive diagonal
    assert all(affine[i, i] > 0 for i in range(3))
    raw = read_image(tmp_path / "lab.nii.gz").array[0]
    assert np.allclose(physical_centroid(raw, affine_4x4(geom)), physical_centroid(lab[0].numpy(), affine),
                       atol=0.3)


def test_canonical_spacing_follows_reorientation():
    # axes stored as (S, R, A) → RAS order puts spacing (y, z, x)
    g = Geometry.from_arrays((1.0, 2.0, 3.0), (0, 0, 0), [[0, -1, 0], [0, 0, -1], [1, 0, 0]])
    assert canonical_spacing(g, "RAS") == (2.0, 3.0, 1.0)
    assert canonical_spacing(g, None) == (1.0, 2.0, 3.0)
    assert resolve_orientation("auto", 3) == "RAS" and resolve_orientation("auto", 2) is None


def test_zscore_and_ct_normalisation(tmp_path):
    geom = Geometry.identity(3)
    arr = np.zeros((8, 8, 8), np.float32)
    arr[2:6, 2:6, 2:6] = np.arange(64, dtype=np.float32).reshape(4, 4, 4)
    write_image(arr, tmp_path / "a.nii.gz", geom)
    out = mt.Compose(preprocessing(None, None, "zscore", zscore_nonzero=True, with_label=False))(
        {"image": [str(tmp_path / "a.nii.gz")]})
    img = out["image"][0].numpy()
    fg = arr != 0
    assert abs(img[fg].mean()) < 1e-5 and abs(img[fg].std() - 1) < 1e-3 and np.all(img[~fg] == 0)
    ct = mt.Compose(preprocessing(None, None, "ct", ct_window=(0, 40), with_label=False))(
        {"image": [str(tmp_path / "a.nii.gz")]})["image"][0].numpy()
    assert ct.min() == 0.0 and ct.max() == 1.0 and np.isclose(ct[2, 2, 3], 1 / 40)


def test_label_grid_mismatch_names_label_file(tmp_path):
    g = Geometry.identity(3)
    write_image(np.zeros((8, 8, 8), np.float32), tmp_path / "i.nii.gz", g)
    write_image(np.zeros((8, 8, 7), np.uint8), tmp_path / "l.nii.gz", g)
    with pytest.raises(DataError) as e:
        LoadCased()({"image": [str(tmp_path / "i.nii.gz")], "label": str(tmp_path / "l.nii.gz")})
    assert str(e.value).startswith(str(tmp_path / "l.nii.gz")) and "does not match image i.nii.gz" in str(e.value)


def test_label_value_outside_classes(tmp_path):
    g = Geometry.identity(3)
    write_image(np.zeros((8, 8, 8), np.float32), tmp_path / "i.nii.gz", g)
    lab = np.zeros((8, 8, 8), np.uint8)
    lab[0, 0, 0] = 5
    write_image(lab, tmp_path / "l.nii.gz", g)
    with pytest.raises(DataError, match=r"l.nii.gz: label value\(s\) \[5\] outside the declared classes \[0, 1, 2\]"):
        LoadCased({0: "bg", 1: "a", 2: "b"})({"image": [str(tmp_path / "i.nii.gz")],
                                              "label": str(tmp_path / "l.nii.gz")})


def test_channels_are_stacked_and_checked(tmp_path):
    g = Geometry.identity(3)
    write_image(np.ones((6, 6, 4), np.float32), tmp_path / "c0.nii.gz", g)
    write_image(2 * np.ones((6, 6, 4), np.float32), tmp_path / "c1.nii.gz", g)
    out = LoadCased()({"image": [str(tmp_path / "c0.nii.gz"), str(tmp_path / "c1.nii.gz")]})
    assert tuple(out["image"].shape) == (2, 6, 6, 4) and float(out["image"][1].mean()) == 2.0
    shifted = Geometry.from_arrays((1, 1, 1), (5, 0, 0), np.eye(3))
    write_image(np.ones((6, 6, 4), np.float32), tmp_path / "c2.nii.gz", shifted)
    with pytest.raises(DataError, match=r"c2\.nii\.gz: channel grid mismatch"):
        LoadCased()({"image": [str(tmp_path / "c0.nii.gz"), str(tmp_path / "c2.nii.gz")]})


def test_positive_patches_contain_foreground(tmp_path):
    g = Geometry.identity(3)
    lab = np.zeros((48, 48, 24), np.uint8)
    lab[40:44, 4:8, 2:6] = 1  # small object in a corner
    write_image(lab.astype(np.float32), tmp_path / "i.nii.gz", g)
    write_image(lab, tmp_path / "l.nii.gz", g)
    pre = preprocessing(None, None, "none")
    pipe = mt.Compose([*pre, *augmentation(3, (16, 16, 8), 6, pos_fraction=1.0, rotate_deg=0, scale=0,
                                           intensity=False)])
    pipe.set_random_state(seed=0)
    samples = pipe({"image": [str(tmp_path / "i.nii.gz")], "label": str(tmp_path / "l.nii.gz")})
    assert len(samples) == 6
    for s in samples:
        assert tuple(s["image"].shape) == (1, 16, 16, 8)
        assert s["label"].sum() > 0 and torch.equal(s["image"] > 0.5, s["label"] > 0.5)
    neg = mt.Compose([*pre, *augmentation(3, (16, 16, 8), 6, pos_fraction=0.0, rotate_deg=0, scale=0,
                                          intensity=False, flip=False)])
    neg.set_random_state(seed=0)
    fg = [float(s["label"].sum()) for s in neg({"image": [str(tmp_path / "i.nii.gz")],
                                                 "label": str(tmp_path / "l.nii.gz")})]
    assert sum(f == 0 for f in fg) >= 4  # centred on background: almost all empty
