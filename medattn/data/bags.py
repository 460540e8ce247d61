"""Feature bags: one HDF5 file per slide holding the patch features and their level-0 coordinates.

The layout is CLAM's and TRIDENT's, so bags move freely between the tools:

- ``features``: ``[N, D]`` float32, one row per patch;
- ``coords``: ``[N, 2]`` int64, level-0 ``(x, y)`` of each patch's top-left corner;
- attributes :data:`BAG_ATTRS` (``patch_size``, ``level``, ``magnification``, ``mpp``, ``encoder``,
  ``encoder_version``) plus ``slide_id``, ``patch_size_level0`` and ``medattn_version``, written both
  on the file root and on ``coords`` (where CLAM and TRIDENT keep theirs).

:func:`read_bag` also reads what CLAM (``extract_features_fp.py``: ``features`` + ``coords``, the patch
attributes ``patch_size``/``patch_level`` on ``coords`` of the patching file, often none at all on the
feature file) and TRIDENT (``coords`` attributes ``patch_size``, ``patch_size_level0``,
``level0_magnification``, ``target_magnification``, ``name``, ...) wrote, including CLAM-style
``[1, N, D]`` features, and maps their attribute names onto medattn's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from medattn import __version__
from medattn.errors import DataError
from medattn.io.atomic import atomic_path

BAG_ATTRS = ("patch_size", "level", "magnification", "mpp", "encoder", "encoder_version")

#: other tools' attribute names → medattn's (only used where the medattn name is absent)
_ALIASES = {"patch_level": "level", "target_magnification": "magnification", "name": "slide_id",
            "enc_name": "encoder", "model_name": "encoder"}


@dataclass
class Bag:
    """One slide's patch features.

    Attributes:
        features: ``[N, D]`` float32, row ``i`` describes the patch at ``coords[i]``.
        coords: ``[N, 2]`` int64, level-0 ``(x, y)`` top-left corners.
        attrs: :data:`BAG_ATTRS` (None where the file does not say), ``slide_id``, ``layout``
            (``medattn``, ``clam`` or ``trident``) and every other attribute the file had.
        path: the file it was read from.
    """

    features: np.ndarray
    coords: np.ndarray
    attrs: dict[str, Any]
    path: Path | None = None

    def __len__(self) -> int:
        return int(self.features.shape[0])

    @property
    def dim(self) -> int:
        """Feature dimension D."""
        return int(self.features.shape[1])


def _h5_value(value: Any) -> Any:
    """An attribute value h5py can store (None is left out by the caller)."""
    if isinstance(value, (dict, list, tuple)) and not _is_numeric_sequence(value):
        return json.dumps(value)
    if isinstance(value, Path):
        return str(value)
    return value


def _is_numeric_sequence(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) for v in value)


def _py_value(value: Any) -> Any:
    """An attribute read from HDF5 as plain Python (str, int, float, bool, list)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        return [_py_value(v) for v in value.tolist()] if value.ndim else _py_value(value.item())
    if isinstance(value, np.generic):
        return value.item()
    return value


def write_bag(path: str | Path, features: np.ndarray, coords: np.ndarray, attrs: dict[str, Any]) -> Path:
    """Write a bag atomically (a crash leaves the old file or none, never half a bag).

    Args:
        path: the ``.h5`` file to write.
        features: ``[N, D]`` patch features (stored as float32).
        coords: ``[N, 2]`` level-0 ``(x, y)`` top-left corners (stored as int64).
        attrs: attributes, normally :data:`BAG_ATTRS` + ``slide_id`` + ``patch_size_level0``; None
            values are left out, lists/dicts of non-numbers are stored as JSON text.

    Raises:
        DataError: shapes that do not fit together, or non-finite features.
    """
    path = Path(path)
    features = np.asarray(features, dtype=np.float32)
    coords = np.asarray(coords)
    if features.ndim != 2:
        raise DataError(f"features must be [N, D], got shape {features.shape}", path)
    if coords.shape != (features.shape[0], 2):
        raise DataError(f"coords must be [N, 2] with N = {features.shape[0]}, got shape {coords.shape}", path)
    if not np.isfinite(features).all():
        raise DataError("features contain NaN or infinite values", path)
    stored = {k: _h5_value(v) for k, v in {**attrs, "medattn_version": __version__}.items() if v is not None}
    with atomic_path(path, suffix=".h5") as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("features", data=features)
        f.create_dataset("coords", data=coords.astype(np.int64))
        for key, value in stored.items():
            f.attrs[key] = value
            f["coords"].attrs[key] = value
    return path


def _layout(root: dict[str, Any], coords_attrs: dict[str, Any]) -> str:
    if "medattn_version" in root or "medattn_version" in coords_attrs:
        return "medattn"
    if "patch_size_level0" in coords_attrs or "level0_magnification" in coords_attrs:
        return "trident"
    return "clam"


def _normalise_attrs(raw: dict[str, Any], layout: str, path: Path) -> dict[str, Any]:
    attrs = dict(raw)
    for other, ours in _ALIASES.items():
        if other in raw and ours not in attrs:
            attrs[ours] = raw[other]
    if "patch_size_level0" not in attrs and "patch_size" in attrs:
        down = attrs.get("downsample")  # CLAM: (dx, dy) of the patch level
        if layout == "clam" and isinstance(down, list) and down:
            attrs["patch_size_level0"] = round(float(attrs["patch_size"]) * float(down[0]))
        elif layout == "clam" and attrs.get("level") == 0:
            attrs["patch_size_level0"] = attrs["patch_size"]
    for key in BAG_ATTRS:
        attrs.setdefault(key, None)
    attrs.setdefault("slide_id", path.stem)
    attrs["layout"] = layout
    return attrs


def _read_array(f: h5py.File, name: str, path: Path) -> np.ndarray:
    if name not in f or not isinstance(f[name], h5py.Dataset):
        found = ", ".join(sorted(f.keys())) or "nothing"
        raise DataError(f"not a feature bag: no '{name}' dataset (found: {found})", path)
    try:
        arr = f[name][()]
    except (OSError, ValueError, RuntimeError) as e:
        raise DataError(f"cannot read dataset '{name}' (truncated or corrupt file?): {e}", path) from e
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[0] == 1:  # CLAM-style [1, N, D]
        arr = arr[0]
    return arr


def read_bag(path: str | Path) -> Bag:
    """Read a bag written by medattn, CLAM or TRIDENT.

    Returns:
        a :class:`Bag` with ``features`` ``[N, D]`` float32 and ``coords`` ``[N, 2]`` int64.

    Raises:
        DataError: a missing, truncated or non-HDF5 file; no ``features``/``coords`` dataset; shapes
            that do not agree (N mismatch, not 2-D); NaN/inf features; non-integer coordinates.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("no such feature bag", path)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DataError(f"not a readable HDF5 file (truncated or corrupt?): {str(e).splitlines()[0]}", path) from e
    with f:
        features = _read_array(f, "features", path)
        coords = _read_array(f, "coords", path)
        root = {k: _py_value(v) for k, v in f.attrs.items()}
        feat_attrs = {k: _py_value(v) for k, v in f["features"].attrs.items()}
        coords_attrs = {k: _py_value(v) for k, v in f["coords"].attrs.items()}
    if features.ndim != 2:
        raise DataError(f"features must be [N, D] (or [1, N, D]), got shape {features.shape}", path)
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise DataError(f"coords must be [N, 2], got shape {coords.shape}", path)
    if coords.shape[0] != features.shape[0]:
        raise DataError(f"{features.shape[0]} feature rows but {coords.shape[0]} coordinates", path)
    if not np.issubdtype(features.dtype, np.number):
        raise DataError(f"features must be numbers, got dtype {features.dtype}", path)
    features = features.astype(np.float32, copy=False)
    if not np.isfinite(features).all():
        bad = int((~np.isfinite(features)).any(axis=1).sum())
        raise DataError(f"features contain NaN or infinite values ({bad} of {len(features)} patches)", path)
    if not np.issubdtype(coords.dtype, np.integer) and (
            not np.issubdtype(coords.dtype, np.number) or not np.array_equal(coords, np.round(coords))):
        raise DataError(f"coords must be integer pixel positions, got dtype {coords.dtype}", path)
    coords = coords.astype(np.int64, copy=False)
    layout = _layout(root, coords_attrs)
    attrs = _normalise_attrs({**feat_attrs, **coords_attrs, **root}, layout, path)
    return Bag(features=features, coords=coords, attrs=attrs, path=path)
