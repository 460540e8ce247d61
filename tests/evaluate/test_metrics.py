"""Hand-computed checks of medattn.evaluate.metrics, plus a cross-check against MONAI."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance, compute_surface_dice
from scipy import ndimage

from medattn.evaluate.metrics import (
    METRICS,
    binary_metrics,
    dice,
    grid_diagonal,
    hd95,
    iou,
    nsd,
    segmentation_metrics,
    surface,
    surface_distances,
)


def _bars() -> tuple[np.ndarray, np.ndarray]:
    """pred = x in [1, 4), ref = x in [2, 6) on a (10, 1) grid: every voxel is a surface voxel."""
    pred = np.zeros((10, 1), bool)
    ref = np.zeros((10, 1), bool)
    pred[1:4] = True
    ref[2:6] = True
    return pred, ref


def test_dice_iou_bars_and_cubes() -> None:
    pred, ref = _bars()  # |P| = 3, |R| = 4, |P∩R| = 2, |P∪R| = 5
    assert dice(pred, ref) == pytest.approx(4 / 7)
    assert iou(pred, ref) == pytest.approx(2 / 5)
    a = np.zeros((9, 9, 9), bool)
    b = np.zeros((9, 9, 9), bool)
    a[2:6, 2:6, 2:6] = True  # 64 voxels
    b[3:7, 3:7, 3:7] = True  # 64 voxels, overlap 3^3 = 27
    assert dice(a, b) == pytest.approx(54 / 128)
    assert iou(a, b) == pytest.approx(27 / 101)


def test_surface_uses_face_connectivity_and_border_is_background() -> None:
    cube = np.zeros((8, 8, 8), bool)
    cube[2:6, 2:6, 2:6] = True
    assert int(surface(cube).sum()) == 64 - 8  # the 2x2x2 core is interior
    square = np.zeros((5, 5), bool)
    square[1:4, 1:4] = True
    square[1, 1] = False  # with 8-connectivity the centre would become a surface voxel
    s = surface(square)
    assert int(s.sum()) == 7 and not s[2, 2]
    full = np.ones((3, 3), bool)  # outside the array counts as background
    assert int(surface(full).sum()) == 8 and not surface(full)[1, 1]


def test_bars_surface_distances_hd95_and_nsd_by_hand() -> None:
    pred, ref = _bars()
    spacing = (2.0, 1.0)
    d_pred, d_ref = surface_distances(pred, ref, spacing)
    np.testing.assert_allclose(d_pred, [2.0, 0.0, 0.0])  # x = 1, 2, 3 -> nearest ref x = 2
    np.testing.assert_allclose(d_ref, [0.0, 0.0, 2.0, 4.0])  # x = 2..5 -> nearest pred x = 3
    # directed 95th percentiles: [0,0,2] -> rank 1.9 -> 1.8; [0,0,2,4] -> rank 2.85 -> 2 + 0.85*2 = 3.7
    assert hd95(pred, ref, spacing) == pytest.approx(3.7)
    assert nsd(pred, ref, spacing, tolerance=1.0) == pytest.approx(4 / 7)
    assert nsd(pred, ref, spacing, tolerance=2.0) == pytest.approx(6 / 7)  # "<= tau" counts
    assert nsd(pred, ref, spacing, tolerance=4.0) == pytest.approx(1.0)


@pytest.mark.parametrize("k", [1, 3])
def test_shifted_planes_hd95_is_shift_times_spacing(k: int) -> None:
    spacing = (2.5, 0.7, 1.3)
    pred = np.zeros((8, 5, 4), bool)
    ref = np.zeros((8, 5, 4), bool)
    pred[2] = True
    ref[2 + k] = True
    m = binary_metrics(pred, ref, spacing, nsd_tolerance=k * 2.5 - 0.01)
    assert m["hd95"] == pytest.approx(k * 2.5, abs=1e-12)
    assert m["dice"] == 0.0 and m["iou"] == 0.0
    assert m["nsd"] == 0.0  # tolerance just below the shift
    assert nsd(pred, ref, spacing, tolerance=k * 2.5) == pytest.approx(1.0)
    assert m["ref_voxels"] == 20 and m["pred_voxels"] == 20
    # the same shift along the last axis measures in that axis' spacing
    last = hd95(np.moveaxis(pred, 0, 2), np.moveaxis(ref, 0, 2), (0.7, 1.3, 2.5))
    assert last == pytest.approx(k * 2.5, abs=1e-12)


def test_single_voxel_cases() -> None:
    a = np.zeros((4, 4, 4), bool)
    a[1, 1, 1] = True
    m = binary_metrics(a, a, (1.0, 2.0, 2.0), nsd_tolerance=0.0)
    assert m == {"dice": 1.0, "iou": 1.0, "hd95": 0.0, "nsd": 1.0, "ref_voxels": 1, "pred_voxels": 1}
    b = np.zeros((4, 4, 4), bool)
    b[2, 2, 2] = True  # offset (1, 1, 1) voxels = (1, 2, 2) mm -> distance 3 mm
    assert hd95(a, b, (1.0, 2.0, 2.0)) == pytest.approx(3.0)
    assert nsd(a, b, (1.0, 2.0, 2.0), tolerance=2.99) == 0.0
    assert nsd(a, b, (1.0, 2.0, 2.0), tolerance=3.0) == 1.0


def test_empty_convention() -> None:
    empty = np.zeros((4, 5, 6), bool)
    some = empty.copy()
    some[1:3, 1:3, 1:3] = True
    spacing = (1.0, 2.0, 3.0)
    both = binary_metrics(empty, empty, spacing)
    assert both == {"dice": 1.0, "iou": 1.0, "hd95": 0.0, "nsd": 1.0, "ref_voxels": 0, "pred_voxels": 0}
    diag = math.sqrt(3**2 + 8**2 + 15**2)  # (n - 1) * spacing per axis
    assert grid_diagonal(empty.shape, spacing) == pytest.approx(diag)
    missed = binary_metrics(empty, some, spacing)  # prediction empty
    assert missed == {"dice": 0.0, "iou": 0.0, "hd95": pytest.approx(diag), "nsd": 0.0,
                      "ref_voxels": 8, "pred_voxels": 0}
    spurious = binary_metrics(some, empty, spacing)  # reference empty
    assert spurious["hd95"] == pytest.approx(diag) and spurious["dice"] == 0.0 and spurious["nsd"] == 0.0
    assert spurious["ref_voxels"] == 0 and spurious["pred_voxels"] == 8
    assert dice(empty, empty) == 1.0 and iou(empty, empty) == 1.0
    with pytest.raises(ValueError, match="non-empty"):
        surface_distances(empty, some, spacing)


def _blobs(seed: int, shape: tuple[int, ...] = (24, 20, 16)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ref = ndimage.gaussian_filter(rng.standard_normal(shape), 2.0) > 0.05
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), 1.0) * 0.15
    pred = ndimage.gaussian_filter(ref.astype(float), 1.5) + noise > 0.5
    return pred, ref


def test_spacing_scaling() -> None:
    pred, ref = _blobs(0)
    sp = (1.0, 1.5, 2.5)
    m1 = binary_metrics(pred, ref, sp, nsd_tolerance=2.2)
    m2 = binary_metrics(pred, ref, tuple(2 * s for s in sp), nsd_tolerance=4.4)
    assert m1["hd95"] > 0
    assert m2["hd95"] == pytest.approx(2 * m1["hd95"], rel=1e-12)
    assert m2["nsd"] == pytest.approx(m1["nsd"], abs=1e-12)
    assert m2["dice"] == m1["dice"]


def _one_hot(mask: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(mask)
    return torch.stack([~t, t]).unsqueeze(0).float()  # (B=1, C=2, X, Y, Z)


@pytest.mark.parametrize("seed", [0, 1])
def test_cross_check_against_monai(seed: int) -> None:
    pred, ref = _blobs(seed)
    sp = (1.0, 1.5, 2.5)
    tau = 2.2  # not equal to any voxel-centre distance on this grid (no float32 tie issues)
    m = binary_metrics(pred, ref, sp, nsd_tolerance=tau)
    yp, y = _one_hot(pred), _one_hot(ref)
    assert m["dice"] == pytest.approx(float(compute_dice(yp, y, include_background=False)[0, 0]), abs=1e-6)
    monai_nsd = float(compute_surface_dice(yp, y, [tau], spacing=list(sp))[0, 0])
    assert m["nsd"] == pytest.approx(monai_nsd, abs=1e-6)
    # MONAI's hd95 = max of the two directed 95th percentiles of the very same distance sets
    d_pred, d_ref = surface_distances(pred, ref, sp)
    directed = (float(np.percentile(d_pred, 95)), float(np.percentile(d_ref, 95)))
    monai_hd95 = float(compute_hausdorff_distance(yp, y, percentile=95, spacing=list(sp))[0, 0])
    assert max(directed) == pytest.approx(monai_hd95, abs=1e-4)
    assert m["hd95"] == pytest.approx(monai_hd95, abs=1e-4)


def test_hd95_matches_monai_on_hand_case() -> None:
    pred, ref = _bars()
    yp, y = _one_hot(pred), _one_hot(ref)
    # directed 95th percentiles: [2,0,0] -> 1.8 and [0,0,2,4] -> 3.7; MONAI takes the max
    monai = float(compute_hausdorff_distance(yp, y, percentile=95, spacing=[2.0, 1.0])[0, 0])
    assert monai == pytest.approx(3.7, abs=1e-5)
    assert hd95(pred, ref, (2.0, 1.0)) == pytest.approx(monai, abs=1e-5)


def test_segmentation_metrics_per_class() -> None:
    pred = np.zeros((10, 1), np.int64)
    ref = np.zeros((10, 1), np.int64)
    pred[1:4] = 1
    ref[2:6] = 1
    pred[8] = 2  # class 2 only predicted
    ref[9] = 3  # class 3 only in the reference
    out = segmentation_metrics(pred, ref, (2.0, 1.0), {0: "background", 1: "a", 2: "b", 3: "c", 4: "d"})
    assert list(out) == ["a", "b", "c", "d"]
    assert out["a"]["dice"] == pytest.approx(4 / 7) and out["a"]["hd95"] == pytest.approx(3.7)
    assert out["a"]["nsd"] == pytest.approx(4 / 7)
    diag = math.hypot(9 * 2.0, 0.0)
    assert out["b"] == {"dice": 0.0, "iou": 0.0, "hd95": pytest.approx(diag), "nsd": 0.0,
                        "ref_voxels": 0, "pred_voxels": 1}
    assert out["c"]["hd95"] == pytest.approx(diag) and out["c"]["ref_voxels"] == 1
    assert out["d"] == {"dice": 1.0, "iou": 1.0, "hd95": 0.0, "nsd": 1.0, "ref_voxels": 0, "pred_voxels": 0}
    assert set(METRICS) <= set(out["a"])


def test_input_validation() -> None:
    a = np.zeros((4, 4), bool)
    with pytest.raises(ValueError, match="same shape"):
        binary_metrics(a, np.zeros((4, 5), bool), (1.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        binary_metrics(a, a, (1.0,))
    with pytest.raises(ValueError, match="spacing"):
        binary_metrics(a, a, (1.0, 0.0))
    with pytest.raises(ValueError, match="tolerance"):
        binary_metrics(a, a, (1.0, 1.0), nsd_tolerance=-1.0)
