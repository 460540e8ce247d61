"""Spacing-aware overlap and surface metrics for one class of a segmentation.

All functions take boolean masks of shape ``(X, Y)`` or ``(X, Y, Z)`` (array axis ``i`` = image
index ``i``, as in :mod:`medattn.io.geometry`) and ``spacing``, the voxel size in mm per array axis.
``pred`` is the prediction, ``ref`` the reference (ground truth); both must have the same shape.

Definitions
-----------
- **dice** = 2|P∩R| / (|P| + |R|);  **iou** = |P∩R| / |P∪R| (voxel counts).
- **surface** of a mask: the mask voxels that have at least one *face* neighbour (6-connectivity in
  3-D, 4 in 2-D) outside the mask, i.e. ``mask & ~binary_erosion(mask, face structure)``. Voxels
  outside the array count as background, so a mask touching the image border has a surface there.
  This is the boundary used by MONAI's ``get_mask_edges`` (without sub-voxels).
- **surface distances**: for each surface voxel of one mask, the Euclidean distance in mm (voxel
  centre to voxel centre, anisotropic ``spacing``) to the nearest surface voxel of the other mask,
  from ``scipy.ndimage.distance_transform_edt(~surface, sampling=spacing)``.
- **hd95**: the larger of the two *directed* 95th percentiles (linear interpolation,
  ``numpy.percentile``) of the pred→ref and ref→pred surface distances, as MONAI's
  ``compute_hausdorff_distance(percentile=95)`` and DeepMind's ``compute_robust_hausdorff`` define
  it, so numbers are comparable with theirs. (medpy's ``hd95`` instead takes the percentile of the
  pooled distances, which is never larger on real surfaces.)
- **nsd** (normalized surface Dice, Nikolov et al. 2021) at tolerance ``tau`` mm:
  ``(#{pred surface voxels with distance <= tau} + #{ref surface voxels with distance <= tau})
  / (#pred surface voxels + #ref surface voxels)``. This is the *voxel-surface approximation*
  (each boundary voxel weighs 1), as in MONAI's ``compute_surface_dice(use_subvoxels=False)``, not
  DeepMind's mesh surfel areas.

Empty convention
----------------
- reference and prediction both empty: dice = iou = nsd = 1, hd95 = 0 (a perfect "absent" call);
- exactly one of them empty: dice = iou = nsd = 0 and hd95 = the grid diagonal
  ``sqrt(sum(((n_i - 1) * spacing_i) ** 2))`` mm, the largest distance between two voxel centres of
  this grid (so the worst possible value, and means over cases stay finite).
:func:`binary_metrics` also reports ``ref_voxels`` and ``pred_voxels`` so that such cases can be
filtered out afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage

METRICS: tuple[str, ...] = ("dice", "iou", "hd95", "nsd")
"""The metric names, in report order."""


def _check(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float] | None = None) -> tuple[float, ...]:
    if pred.shape != ref.shape:
        raise ValueError(f"pred and ref must have the same shape, got {pred.shape} and {ref.shape}")
    if pred.ndim not in (2, 3):
        raise ValueError(f"masks must be 2-D or 3-D (X, Y[, Z]), got shape {pred.shape}")
    if spacing is None:
        return (1.0,) * pred.ndim
    sp = tuple(float(s) for s in spacing)
    if len(sp) != pred.ndim or not all(s > 0 and math.isfinite(s) for s in sp):
        raise ValueError(f"spacing must be {pred.ndim} positive numbers (mm per axis), got {tuple(spacing)}")
    return sp


def grid_diagonal(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """Largest distance in mm between two voxel centres of a grid: ``sqrt(sum(((n - 1) * s) ** 2))``."""
    return float(math.sqrt(sum(((n - 1) * s) ** 2 for n, s in zip(shape, spacing, strict=True))))


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice coefficient of two boolean masks of equal shape; 1.0 when both are empty."""
    pred, ref = np.asarray(pred, bool), np.asarray(ref, bool)
    _check(pred, ref)
    total = int(pred.sum()) + int(ref.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(pred, ref).sum()) / total


def iou(pred: np.ndarray, ref: np.ndarray) -> float:
    """Intersection over union (Jaccard) of two boolean masks; 1.0 when both are empty."""
    pred, ref = np.asarray(pred, bool), np.asarray(ref, bool)
    _check(pred, ref)
    union = int(np.logical_or(pred, ref).sum())
    return 1.0 if union == 0 else int(np.logical_and(pred, ref).sum()) / union


def surface(mask: np.ndarray) -> np.ndarray:
    """Boundary voxels of a boolean mask (face connectivity; outside the array is background).

    Returns a boolean array of the same shape as ``mask``.
    """
    mask = np.asarray(mask, bool)
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def surface_distances(
    pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances in mm between two non-empty boolean masks.

    Returns ``(pred_to_ref, ref_to_pred)``: 1-D float64 arrays with one entry per surface voxel of
    ``pred`` (distance to the nearest ``ref`` surface voxel), respectively of ``ref``. The work is
    done on the bounding box of ``pred | ref`` grown by one voxel (clipped to the array), which gives
    exactly the full-array result because every surface voxel lies inside that box.
    """
    pred, ref = np.asarray(pred, bool), np.asarray(ref, bool)
    sp = _check(pred, ref, spacing)
    if not pred.any() or not ref.any():
        raise ValueError("surface distances need two non-empty masks")
    box = ndimage.find_objects(np.logical_or(pred, ref).astype(np.uint8))[0]
    box = tuple(slice(max(s.start - 1, 0), min(s.stop + 1, n)) for s, n in zip(box, pred.shape))
    s_pred, s_ref = surface(pred[box]), surface(ref[box])
    to_ref = ndimage.distance_transform_edt(~s_ref, sampling=sp)
    to_pred = ndimage.distance_transform_edt(~s_pred, sampling=sp)
    return to_ref[s_pred].astype(np.float64), to_pred[s_ref].astype(np.float64)


def _hd95(d_pred: np.ndarray, d_ref: np.ndarray) -> float:
    # MONAI / DeepMind surface-distance definition: the larger of the two directed 95th percentiles.
    return float(max(np.percentile(d_pred, 95), np.percentile(d_ref, 95)))


def _nsd(d_pred: np.ndarray, d_ref: np.ndarray, tolerance: float) -> float:
    hits = int((d_pred <= tolerance).sum()) + int((d_ref <= tolerance).sum())
    return hits / (d_pred.size + d_ref.size)


def _check_tolerance(tolerance: float) -> float:
    tolerance = float(tolerance)
    if not (tolerance >= 0 and math.isfinite(tolerance)):
        raise ValueError(f"nsd tolerance must be a finite number >= 0 mm, got {tolerance}")
    return tolerance


def binary_metrics(
    pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], nsd_tolerance: float = 1.0
) -> dict[str, float]:
    """All metrics of one class at once (surfaces and distances computed once).

    Args:
        pred, ref: boolean masks of shape (X, Y[, Z]).
        spacing: mm per array axis.
        nsd_tolerance: NSD tolerance tau in mm (distances ``<= tau`` count as hits).

    Returns:
        ``{"dice", "iou", "hd95", "nsd", "ref_voxels", "pred_voxels"}``; hd95 in mm, voxel counts
        as ints. Empty masks follow the module's empty convention.
    """
    pred, ref = np.asarray(pred, bool), np.asarray(ref, bool)
    sp = _check(pred, ref, spacing)
    tol = _check_tolerance(nsd_tolerance)
    n_pred, n_ref = int(pred.sum()), int(ref.sum())
    counts = {"ref_voxels": n_ref, "pred_voxels": n_pred}
    if n_pred == 0 and n_ref == 0:
        return {"dice": 1.0, "iou": 1.0, "hd95": 0.0, "nsd": 1.0, **counts}
    if n_pred == 0 or n_ref == 0:
        return {"dice": 0.0, "iou": 0.0, "hd95": grid_diagonal(pred.shape, sp), "nsd": 0.0, **counts}
    inter = int(np.logical_and(pred, ref).sum())
    d_pred, d_ref = surface_distances(pred, ref, sp)
    return {
        "dice": 2.0 * inter / (n_pred + n_ref),
        "iou": inter / (n_pred + n_ref - inter),
        "hd95": _hd95(d_pred, d_ref),
        "nsd": _nsd(d_pred, d_ref, tol),
        **counts,
    }


def hd95(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> float:
    """Max of the two directed 95th-percentile surface distances in mm (see module docstring)."""
    return float(binary_metrics(pred, ref, spacing)["hd95"])


def nsd(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], tolerance: float = 1.0) -> float:
    """Normalized surface Dice at ``tolerance`` mm, voxel-surface approximation (see module docstring)."""
    return float(binary_metrics(pred, ref, spacing, tolerance)["nsd"])


def segmentation_metrics(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float],
    labels: Mapping[int, str],
    nsd_tolerance: float = 1.0,
) -> dict[str, dict[str, float]]:
    """Per-class metrics of two integer label maps.

    Args:
        pred, ref: integer label maps of shape (X, Y[, Z]) (0 = background).
        spacing: mm per array axis.
        labels: label value -> class name; value 0 (background) is skipped if present.
        nsd_tolerance: NSD tolerance in mm.

    Returns:
        ``{class name: binary_metrics(pred == value, ref == value)}`` in the order of ``labels``.
        Values present in the maps but not in ``labels`` are ignored here (the folder evaluation
        rejects them).
    """
    pred, ref = np.asarray(pred), np.asarray(ref)
    _check(pred, ref, spacing)
    return {
        str(name): binary_metrics(pred == value, ref == value, spacing, nsd_tolerance)
        for value, name in labels.items()
        if int(value) != 0
    }
