"""Explainability for segmentation models: Attention U-Net gate maps and occlusion sensitivity.

Both are computed on the preprocessed grid the :class:`~medattn.engine.predictor.Predictor` uses
(``Predictor.prepare``: reoriented, resampled, normalised), where the model actually looks:

* **prediction**: the Predictor's own sliding-window probabilities on that grid, arg-maxed;
* **gate maps**: one whole-image forward pass with ``model(x, return_gates=True)`` (Attention U-Net
  only); the gate of decoder level l (``1 / 2**l`` resolution) is upsampled (linear) to the grid;
* **occlusion sensitivity** (MONAI's :class:`monai.visualize.OcclusionSensitivity`): the model is
  wrapped so that its "class scores" are the mean class probabilities over the predicted structure;
  the map is ``baseline score - occluded score`` of the target class, so positive = the region
  supports the prediction. Cost: one whole-image forward per occluder position, set by
  ``mask_size`` and ``overlap`` (keep ``mask_size`` large on CPU).

Slices are shown through the predicted structure's centre (axial, coronal, sagittal in 3-D, assuming
the RAS axes the default preprocessing produces), with the prediction's contour on top.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medattn.errors import ConfigError, DataError
from medattn.io.atomic import atomic_path

if TYPE_CHECKING:  # the report builder reads explanations without loading MONAI
    from medattn.engine.predictor import Predictor

__all__ = ["SegmentationExplanation", "explain_case", "load_explanation", "save_explanation", "slice_overlays_png"]


@dataclass
class SegmentationExplanation:
    """One case's explanation on the preprocessed grid ``S`` = (X, Y[, Z]).

    Attributes:
        image: ``[*S]`` float32, the first input channel after preprocessing.
        label: ``[*S]`` uint8/uint16 predicted class per voxel.
        gates: ``[G, *S]`` float32 gate maps in [0, 1], decoder level 0 (finest) first (G = 0 for models
            without attention gates).
        occlusion: ``[*S]`` float32 occlusion sensitivity of the target class (empty array if skipped).
        target: the class explained; centre: voxel index of the structure's centre.
        labels: ``{class index: name}``; timings: seconds per step.
    """

    image: np.ndarray
    label: np.ndarray
    gates: np.ndarray
    occlusion: np.ndarray
    target: int
    centre: tuple[int, ...]
    labels: dict[int, str]
    timings: dict[str, float] = field(default_factory=dict)


class _RegionScores(nn.Module):
    """``x [B, C, *S]`` → mean softmax probability per class over ``region [*S]``: ``[B, K]``."""

    def __init__(self, model: nn.Module, region: torch.Tensor) -> None:
        super().__init__()
        self.model, self.region = model, region.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(self.model(x), dim=1)
        w = self.region.to(probs.dtype)
        return (probs * w).flatten(2).sum(-1) / w.sum().clamp_min(1.0)


def _centre(mask: np.ndarray) -> tuple[int, ...]:
    if not mask.any():
        return tuple(int(s // 2) for s in mask.shape)
    return tuple(round(float(c.mean())) for c in np.nonzero(mask))


def explain_case(predictor: Predictor, image_paths: Sequence[str | Path], target: int | None = None,
                 gates: bool = True, occlusion: bool = True, mask_size: int | Sequence[int] = 16,
                 overlap: float = 0.25, n_batch: int = 8) -> SegmentationExplanation:
    """Prediction, gate maps and occlusion sensitivity of one case (see the module docstring).

    Args:
        predictor: a loaded segmentation model.
        image_paths: the case's channel files (as for :meth:`Predictor.predict`).
        target: class to explain (default: the most frequent predicted foreground class, else 1).
        mask_size, overlap: occluder box side (voxels) and overlap of occluder positions in [0, 1).
        n_batch: occluded images per forward pass.

    Raises:
        ConfigError: bad target / occlusion settings; DataError: the case cannot be read.
    """
    from medattn.engine.sliding import sliding_window_probabilities

    if not 0.0 <= overlap < 1.0:
        raise ConfigError(f"occlusion overlap must be in [0, 1), got {overlap}")
    sizes = [int(mask_size)] * predictor.spatial_dims if isinstance(mask_size, int) else [int(m) for m in mask_size]
    if len(sizes) != predictor.spatial_dims or min(sizes) < 1:
        raise ConfigError(f"occlusion mask size must be {predictor.spatial_dims} positive integers, got {mask_size}")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    case = predictor.prepare(image_paths)
    x = case.image.unsqueeze(0).to(predictor.device)
    s = predictor.settings
    probs = sliding_window_probabilities(predictor.model, x, predictor.patch_size, overlap=s["overlap"],
                                         blend=s["blend"], sw_batch_size=s["sw_batch_size"])[0]
    label = torch.argmax(probs, 0)
    n_classes = probs.shape[0]
    if target is None:
        counts = torch.bincount(label.flatten(), minlength=n_classes)[1:]
        target = int(torch.argmax(counts)) + 1 if n_classes > 1 and int(counts.sum()) > 0 else min(1, n_classes - 1)
    if not 0 <= target < n_classes:
        raise ConfigError(f"target class {target} is not one of the model's classes 0..{n_classes - 1}")
    timings["predict"] = time.perf_counter() - t0
    spatial = tuple(x.shape[2:])
    gate_maps = np.zeros((0, *spatial), np.float32)
    if gates:
        t1 = time.perf_counter()
        try:
            with torch.no_grad():
                out = predictor.model(x, return_gates=True)
        except TypeError:
            out = None  # not an attention-gated model: no gate maps
        if isinstance(out, tuple) and len(out) == 2:
            mode = "trilinear" if len(spatial) == 3 else "bilinear"
            ups = [F.interpolate(g.float(), size=spatial, mode=mode, align_corners=False)[0, 0] for g in out[1]]
            gate_maps = torch.stack(ups).clamp(0, 1).cpu().numpy().astype(np.float32) if ups else gate_maps
        timings["gates"] = time.perf_counter() - t1
    occ = np.zeros((0,), np.float32)
    if occlusion:
        from monai.visualize import OcclusionSensitivity

        t1 = time.perf_counter()
        region = label == target
        if not bool(region.any()):
            region = torch.ones_like(region)  # nothing predicted: explain the class score over the image
        scorer = _RegionScores(predictor.model, region).eval()
        with torch.no_grad():
            base = scorer(x)[0, target]
            occ_sens = OcclusionSensitivity(scorer, mask_size=[min(m, n) for m, n in zip(sizes, spatial)],
                                            n_batch=n_batch, verbose=False, overlap=overlap, activate=False)
            with warnings.catch_warnings():  # MONAI's own indexing deprecation warnings
                warnings.simplefilter("ignore", UserWarning)
                occ_map, _ = occ_sens(x)
        occ = (base - occ_map[0, target]).float().cpu().numpy().astype(np.float32)
        timings["occlusion"] = time.perf_counter() - t1
    image = case.image[0].cpu().numpy().astype(np.float32)
    label_np = label.cpu().numpy().astype(np.uint8 if n_classes <= 256 else np.uint16)
    return SegmentationExplanation(image, label_np, gate_maps, occ, int(target), _centre(label_np == target),
                                   dict(predictor.labels), timings)


def save_explanation(expl: SegmentationExplanation, path: str | Path) -> Path:
    """Write ``expl`` as a compressed ``.npz`` (atomically; loads without pickle)."""
    import json

    path = Path(path)
    meta = {"target": expl.target, "centre": list(expl.centre), "labels": {str(k): v for k, v in expl.labels.items()},
            "timings": expl.timings}
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, image=expl.image, label=expl.label, gates=expl.gates.astype(np.float16),
                            occlusion=expl.occlusion, meta=np.array(json.dumps(meta)))
    return path


def load_explanation(path: str | Path) -> SegmentationExplanation:
    """Read a file written by :func:`save_explanation` (DataError naming it when missing or corrupt)."""
    import json
    import zipfile

    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            return SegmentationExplanation(z["image"], z["label"], z["gates"].astype(np.float32), z["occlusion"],
                                           int(meta["target"]), tuple(meta["centre"]),
                                           {int(k): str(v) for k, v in meta["labels"].items()}, meta.get("timings", {}))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
        raise DataError(f"not a segmentation explanation file: {e}", path) from e


def _views(volume: np.ndarray, centre: tuple[int, ...]) -> list[tuple[str, np.ndarray]]:
    if volume.ndim == 2:
        return [("image plane", volume)]
    x, y, z = centre
    return [(f"axial (z={z})", volume[:, :, z]), (f"coronal (y={y})", volume[:, y, :]),
            (f"sagittal (x={x})", volume[x, :, :])]


def slice_overlays_png(expl: SegmentationExplanation, maps: Sequence[tuple[str, np.ndarray]],
                       cmap: str = "jet", alpha: float = 0.45, symmetric: bool = False) -> bytes:
    """One row per ``(name, map [*S])`` (a row of the bare image first), one column per view.

    Each panel shows the image slice in grey, the map in ``cmap`` (``alpha`` opacity) and the
    contour of the predicted target class in white. ``symmetric``: colour range ±max|map| (for signed
    maps such as occlusion sensitivity, with a diverging ``cmap``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medattn.explain.plots import figure_to_png

    rows = [("image + prediction", None), *maps]
    n_cols = len(_views(expl.image, expl.centre))
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(3.2 * n_cols, 3.0 * len(rows)), squeeze=False)
    pred = (expl.label == expl.target).astype(np.float32)
    lo, hi = np.percentile(expl.image, [1, 99]) if expl.image.size else (0.0, 1.0)
    for r, (name, volume) in enumerate(rows):
        images = _views(expl.image, expl.centre)
        contours = _views(pred, expl.centre)
        overlays = _views(volume, expl.centre) if volume is not None else [None] * n_cols
        vmin, vmax = (float(np.min(volume)), float(np.max(volume))) if volume is not None else (0.0, 1.0)
        if symmetric:
            vmin, vmax = -max(abs(vmin), abs(vmax)), max(abs(vmin), abs(vmax))
        for c, ((view, img), (_, cont), ov) in enumerate(zip(images, contours, overlays)):
            ax = axes[r, c]
            ax.imshow(img.T, cmap="gray", origin="lower", vmin=lo, vmax=hi if hi > lo else lo + 1)
            if ov is not None:
                im = ax.imshow(ov[1].T, cmap=cmap, origin="lower", alpha=alpha, vmin=vmin,
                               vmax=vmax if vmax > vmin else vmin + 1e-6)
                if c == n_cols - 1:
                    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
            if cont.any():
                ax.contour(cont.T, levels=[0.5], colors="white", linewidths=1.0, origin="lower")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{name}: {view}" if c == 0 else view, fontsize=8)
    fig.tight_layout()
    return figure_to_png(fig)
