"""MONAI transform pipelines: loading with checks, deterministic preprocessing, augmentation.

Data flow for one case (dict with ``image``: list of channel files, optional ``label``)::

    LoadCased         read through medattn.io, check grids/labels → MetaTensors (C, *spatial), RAS affine
    Orientationd      canonical axis order (RAS in 3-D)                    ┐ deterministic: cached,
    Spacingd          resample to the target spacing (labels: nearest)     │ and identical at
    normalisation     z-score over the foreground, or a CT window → [0, 1] ┘ inference time
    ── cache ──
    SpatialPadd, RandCropByPosNegLabeld, flips, rotations, zoom, intensity  (training only)

The preprocessing parameters are stored in every checkpoint, so ``infer`` repeats them exactly.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai import transforms as mt
from monai.data import MetaTensor

from medattn.errors import DataError
from medattn.io import Image, read_image
from medattn.io.geometry import Geometry


def affine_4x4(geometry: Geometry) -> np.ndarray:
    """RAS affine of a 2-D or 3-D geometry as a 4×4 matrix (2-D images sit in the z = 0 plane)."""
    a = geometry.to_affine_ras()
    if geometry.ndim == 3:
        return a
    out = np.eye(4)
    out[:2, :2] = a[:2, :2]
    out[:2, 3] = a[:2, 2]
    return out


def resolve_orientation(orientation: str | None, spatial_dims: int) -> str | None:
    """Axis codes to reorient to ("auto": RAS in 3-D, none in 2-D)."""
    if orientation == "auto":
        return "RAS" if spatial_dims == 3 else None
    if orientation and len(orientation) != spatial_dims:
        raise DataError(f"preprocess.orientation '{orientation}' has {len(orientation)} axes, "
                        f"the images have {spatial_dims}")
    return orientation or None


def canonical_spacing(geometry: Geometry, orientation: str | None) -> tuple[float, ...]:
    """Spacing per axis after reorientation to ``orientation`` (a permutation of the original)."""
    if not orientation:
        return tuple(geometry.spacing)
    ornt = nib.orientations.io_orientation(geometry.to_affine_ras())
    target = nib.orientations.axcodes2ornt(orientation)
    transform = nib.orientations.ornt_transform(ornt, target)
    out = [0.0] * geometry.ndim
    for src_axis, (dst_axis, _flip) in enumerate(transform):
        out[int(dst_axis)] = geometry.spacing[src_axis]
    return tuple(out)


def _grid_problem(a: Image, b: Image) -> str | None:
    if a.spatial_shape != b.spatial_shape:
        return f"shape {b.spatial_shape} differs from {a.spatial_shape}"
    if not a.geometry.allclose(b.geometry, atol=1e-3):
        return "geometry (spacing/origin/direction) differs"
    return None


class LoadCased(mt.MapTransform):
    """Read a case's channels and label through :mod:`medattn.io`, with integrity checks.

    Input dict: ``image`` (list of paths, one per channel; an already read :class:`~medattn.io.Image`
    may stand in for a path), optional ``label`` (path).
    Output: ``image`` MetaTensor float32 (C, *spatial) and ``label`` MetaTensor float32 (1, *spatial),
    both with the RAS affine of the first channel; ``geometry`` (dict) of the original grid.

    Raises:
        DataError: channel or label grid mismatch, a multi-channel label, or a label value outside
            ``labels`` — naming the file.
    """

    def __init__(self, labels: Mapping[int, str] | None = None, image_key: str = "image",
                 label_key: str = "label") -> None:
        super().__init__([image_key, label_key], allow_missing_keys=True)
        self.labels = dict(labels) if labels else None
        self.image_key, self.label_key = image_key, label_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        paths = d[self.image_key]
        paths = [paths] if isinstance(paths, (str, Path, Image)) else list(paths)
        images = [p if isinstance(p, Image) else read_image(p) for p in paths]
        ref = images[0]
        for im in images[1:]:
            problem = _grid_problem(ref, im)
            if problem:
                raise DataError(f"channel grid mismatch with {ref.path.name}: {problem}", im.path)
        array = np.concatenate([np.asarray(im.array, dtype=np.float32) for im in images], axis=0)
        affine = torch.as_tensor(affine_4x4(ref.geometry), dtype=torch.float64)
        meta = {"filename_or_obj": str(ref.path), "original_affine": affine.clone(),
                "spatial_shape": np.asarray(ref.spatial_shape)}
        d[self.image_key] = MetaTensor(torch.from_numpy(array), affine=affine.clone(), meta=dict(meta))
        d["geometry"] = ref.geometry.to_dict()
        if d.get(self.label_key):
            d[self.label_key] = self._load_label(Path(d[self.label_key]), ref, affine, meta)
        return d

    def _load_label(self, path: Path, ref: Image, affine: torch.Tensor, meta: dict) -> MetaTensor:
        lab = read_image(path)
        if lab.channels != 1:
            raise DataError(f"a label must have one channel, found {lab.channels}", path)
        problem = _grid_problem(ref, lab)
        if problem:
            raise DataError(f"label grid does not match image {ref.path.name}: {problem}", path)
        arr = np.asarray(lab.array)
        values = np.unique(arr)
        if not np.all(np.equal(np.mod(values, 1), 0)):
            raise DataError("label contains non-integer values", path)
        if self.labels is not None:
            bad = [int(v) for v in values if int(v) not in self.labels]
            if bad:
                raise DataError(f"label value(s) {bad[:5]} outside the declared classes "
                                f"{sorted(self.labels)}", path)
        return MetaTensor(torch.from_numpy(arr.astype(np.float32)), affine=affine.clone(), meta=dict(meta))


def preprocessing(orientation: str | None, target_spacing: Sequence[float] | None, normalization: str,
                  zscore_nonzero: bool = True, ct_window: Sequence[float] = (-1000.0, 1000.0),
                  labels: Mapping[int, str] | None = None, with_label: bool = True) -> list[mt.Transform]:
    """Deterministic transforms shared by training, validation and inference.

    Args:
        orientation: resolved axis codes (see :func:`resolve_orientation`) or None.
        target_spacing: mm per canonical axis, or None to keep the input spacing.
        normalization: "zscore", "ct" or "none".
    """
    keys = ["image", "label"] if with_label else ["image"]
    modes = ["bilinear", "nearest"] if with_label else ["bilinear"]
    ts: list[mt.Transform] = [LoadCased(labels)]
    if orientation:
        ts.append(mt.Orientationd(keys=keys, axcodes=orientation, labels=None))
    if target_spacing:
        ts.append(mt.Spacingd(keys=keys, pixdim=list(target_spacing), mode=modes, padding_mode="border"))
    if normalization == "zscore":
        ts.append(mt.NormalizeIntensityd(keys="image", nonzero=zscore_nonzero, channel_wise=True))
    elif normalization == "ct":
        lo, hi = ct_window
        ts.append(mt.ScaleIntensityRanged(keys="image", a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True))
    ts.append(mt.EnsureTyped(keys=keys, dtype=torch.float32, track_meta=True))
    return ts


def augmentation(spatial_dims: int, patch_size: Sequence[int], samples_per_volume: int, pos_fraction: float,
                 flip: bool = True, rotate90: bool = False, rotate_deg: float = 15.0, scale: float = 0.1,
                 intensity: bool = True, prob: float = 0.2) -> list[mt.Transform]:
    """Random training transforms applied after the cache: patch crops balanced between foreground
    and background, then flips, rotations, zoom and intensity changes.
    """
    keys = ["image", "label"]
    interp = "trilinear" if spatial_dims == 3 else "bilinear"
    ts: list[mt.Transform] = [
        mt.SpatialPadd(keys=keys, spatial_size=list(patch_size), mode="constant"),
        mt.RandCropByPosNegLabeld(keys=keys, label_key="label", spatial_size=list(patch_size),
                                  pos=pos_fraction, neg=1.0 - pos_fraction, num_samples=samples_per_volume,
                                  image_key=None, allow_smaller=False),
    ]
    if rotate_deg > 0:
        r = math.radians(rotate_deg)
        ts.append(mt.RandRotated(keys=keys, range_x=r, range_y=r if spatial_dims == 3 else 0.0,
                                 range_z=r if spatial_dims == 3 else 0.0, prob=prob,
                                 mode=["bilinear", "nearest"], padding_mode="zeros", keep_size=True))
    if scale > 0:
        ts.append(mt.RandZoomd(keys=keys, min_zoom=1 - scale, max_zoom=1 + scale, prob=prob,
                               mode=[interp, "nearest"], keep_size=True))
    if flip:
        ts.extend(mt.RandFlipd(keys=keys, spatial_axis=a, prob=0.5) for a in range(spatial_dims))
    if rotate90:
        ts.append(mt.RandRotate90d(keys=keys, prob=0.5, spatial_axes=(0, 1)))
    if intensity:
        ts.extend([
            mt.RandScaleIntensityd(keys="image", factors=0.1, prob=prob),
            mt.RandShiftIntensityd(keys="image", offsets=0.1, prob=prob),
            mt.RandGaussianNoised(keys="image", std=0.05, prob=prob),
        ])
    ts.append(mt.EnsureTyped(keys=keys, dtype=torch.float32, track_meta=False))
    return ts
