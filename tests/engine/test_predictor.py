"""Predictor: one model load, predictions mapped back onto the input's (oblique, anisotropic) grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from support.geometry import rotation as _rotation
from support.models import NearestCentre

from medattn.engine.checkpoint import save_checkpoint
from medattn.engine.predictor import Predictor
from medattn.errors import CheckpointError, ConfigError, DataError
from medattn.io import Geometry, write_image


def payload(spatial_dims: int = 3, centres: list[float] | None = None, steepness: float = 0.001,
            target_spacing: list[float] | None = None, orientation: str | None = "RAS",
            patch: int = 16) -> dict:
    """A checkpoint payload for :class:`NearestCentre` (labels 0..K-1)."""
    centres = centres or [0.0, 100.0]
    kwargs = {"spatial_dims": spatial_dims, "in_channels": 1, "centres": centres, "steepness": steepness}
    model = NearestCentre(**kwargs)
    return {"model": {"name": "test_nearest_centre", "kwargs": kwargs},
            "state_dict": model.state_dict(), "labels": {str(k): f"class{k}" for k in range(len(centres))},
            "channels": ["mr"], "spatial_dims": spatial_dims,
            "preprocess": {"orientation": orientation, "target_spacing": target_spacing,
                           "normalization": "none", "zscore_nonzero": True, "ct_window": [-1000.0, 1000.0]},
            "patch_size": [patch] * spatial_dims,
            "infer": {"overlap": 0.25, "blend": "gaussian", "tta": False, "sw_batch_size": 3}}


OBLIQUE = Geometry.from_arrays((0.9, 1.2, 2.0), (10.0, -20.0, 5.0), _rotation(2, 25) @ _rotation(0, 15))


def ellipsoid_case(shape: tuple[int, ...] = (30, 26, 16), centre_mm: tuple[float, ...] = (10.0, 18.0, 12.0),
                   radii_mm: tuple[float, ...] = (8.0, 7.0, 6.0), geometry: Geometry = OBLIQUE,
                   value: float = 100.0) -> tuple[np.ndarray, np.ndarray]:
    """(image float32, mask bool), both (X, Y, Z): a bright ellipsoid off the image centre."""
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).astype(float)
    mm = idx * np.asarray(geometry.spacing)
    mask = (((mm - np.asarray(centre_mm)) / np.asarray(radii_mm)) ** 2).sum(-1) <= 1.0
    return (mask * value).astype(np.float32), mask


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


@pytest.fixture
def oblique_nifti(tmp_path: Path) -> tuple[Path, np.ndarray]:
    image, mask = ellipsoid_case()
    return write_image(image, tmp_path / "case_0000.nii.gz", OBLIQUE), mask


def test_prediction_is_on_the_input_grid_and_aligned(tmp_path: Path, oblique_nifti) -> None:
    path, mask = oblique_nifti
    ckpt = save_checkpoint(payload(target_spacing=[1.5, 1.5, 1.5]), tmp_path / "model.pt")
    predictor = Predictor(ckpt, device="cpu")
    assert predictor.labels == {0: "class0", 1: "class1"}
    assert predictor.channels == ["mr"] and predictor.spatial_dims == 3
    assert predictor.settings == {"overlap": 0.25, "blend": "gaussian", "tta": False, "sw_batch_size": 3}
    pred = predictor.predict([path])
    assert pred.label.shape == (30, 26, 16) and pred.label.dtype == np.uint8
    assert pred.probabilities.shape == (2, 30, 26, 16) and pred.probabilities.dtype == np.float32
    np.testing.assert_allclose(pred.probabilities.sum(axis=0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(pred.label, pred.probabilities.argmax(axis=0))
    assert dice(pred.label, mask) >= 0.95
    assert pred.reference.path == path and pred.reference.geometry.allclose(OBLIQUE, atol=1e-5)
    assert set(pred.timings) == {"read", "preprocess", "predict", "resample", "total"}
    # the same Predictor serves the next case (model loaded once)
    shifted, shifted_mask = ellipsoid_case(centre_mm=(15.0, 12.0, 18.0))
    second = predictor.predict([write_image(shifted, tmp_path / "other.nii.gz", OBLIQUE)])
    assert dice(second.label, shifted_mask) >= 0.95 and dice(second.label, mask) < 0.9


def test_tta_matches_plain_prediction(oblique_nifti) -> None:
    path, mask = oblique_nifti
    ckpt = payload(target_spacing=[1.4, 1.6, 1.5])
    plain = Predictor(ckpt, device="cpu", tta=False).predict([path])
    flipped = Predictor(ckpt, device="cpu", tta=True, overlap=0.5, blend="constant").predict([path])
    np.testing.assert_allclose(flipped.probabilities, plain.probabilities, atol=1e-5)
    np.testing.assert_array_equal(flipped.label, plain.label)
    assert dice(flipped.label, mask) >= 0.95


def test_settings_overrides_and_validation() -> None:
    ckpt = payload()
    p = Predictor(ckpt, device="cpu", overlap=0.6, blend="constant", tta=True, sw_batch_size=1)
    assert p.settings == {"overlap": 0.6, "blend": "constant", "tta": True, "sw_batch_size": 1}
    del ckpt["infer"]
    assert Predictor(ckpt, device="cpu").settings == {"overlap": 0.5, "blend": "gaussian", "tta": False,
                                                      "sw_batch_size": 2}
    assert Predictor(ckpt, device="auto").device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="overlap"):
        Predictor(ckpt, overlap=1.0)
    with pytest.raises(ConfigError, match="blend"):
        Predictor(ckpt, blend="median")
    with pytest.raises(ConfigError, match="sw_batch_size"):
        Predictor(ckpt, sw_batch_size=0)
    with pytest.raises(ConfigError, match="unknown device 'gpu0'"):
        Predictor(ckpt, device="gpu0")


def test_more_than_256_classes_gives_uint16(tmp_path: Path) -> None:
    values = np.arange(300, dtype=np.float32).reshape(20, 15)  # one class per pixel: label == intensity
    geometry = Geometry.from_arrays((0.5, 0.7), (3.0, 4.0), np.eye(2))
    path = write_image(values, tmp_path / "ramp.nrrd", geometry)
    ckpt = payload(spatial_dims=2, centres=[float(k) for k in range(300)], steepness=4.0, orientation=None,
                   patch=8)
    pred = Predictor(ckpt, device="cpu").predict([path])
    assert pred.label.dtype == np.uint16 and pred.probabilities.shape == (300, 20, 15)
    np.testing.assert_array_equal(pred.label, values.astype(np.uint16))


def test_case_errors_name_the_file(tmp_path: Path, oblique_nifti) -> None:
    path, _ = oblique_nifti
    predictor = Predictor(payload(), device="cpu")
    expected = r"case_0000\.nii\.gz: the model expects 1 channel file\(s\) \(mr\), got 2"
    with pytest.raises(DataError, match=expected):
        predictor.predict([path, path])
    flat = write_image(np.zeros((6, 5), np.float32), tmp_path / "flat.nrrd", Geometry.identity(2))
    with pytest.raises(DataError, match=r"flat\.nrrd: the model is 3-D but the image is 2-D"):
        predictor.predict([flat])
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(DataError, match=r"broken\.nii\.gz: cannot read"):
        predictor.predict([broken])


def test_checkpoint_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"missing\.pt: no such checkpoint file"):
        Predictor(tmp_path / "missing.pt")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(CheckpointError, match=r"foreign\.pt: not a medattn checkpoint"):
        Predictor(foreign)
    bad = payload()
    bad["state_dict"] = {"weight": torch.zeros(2), "centres": torch.zeros(2)}  # 2 input weights, 1 channel
    path = save_checkpoint(bad, tmp_path / "mismatch.pt")
    with pytest.raises(CheckpointError, match=r"mismatch\.pt: weights do not fit model"):
        Predictor(path)
