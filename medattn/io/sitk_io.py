"""NRRD, MetaImage and 2-D picture formats through SimpleITK.

SimpleITK arrays are index-reversed: ``sitk.GetArrayFromImage`` gives ``(Z, Y, X[, C])``. This module
converts to and from medattn's channel-first ``(C, X, Y[, Z])``, and carries spacing, origin and
direction as float64 (NRRD and MetaImage store them as text with 17 significant digits, so a round
trip is exact to ~1e-12).

2-D pictures (PNG, TIFF, JPEG) store at most the pixel spacing (PNG ``pHYs``, TIFF resolution); their
origin is 0 and their direction the identity when read, and origin/direction are not stored when
written. PNG holds uint8/uint16 only and JPEG uint8 only (lossy). Detached-header formats (``.mhd`` +
``.zraw``, ``.nhdr`` + ``.raw.gz``) are written to a hidden temporary folder next to the target and moved
into place data-file first, header last, so a reader never sees a header without its data.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medattn.errors import DataError
from medattn.io.atomic import atomic_path
from medattn.io.geometry import Geometry
from medattn.io.image import ArrayFormatError, Image, short_reason

_COMPRESSED = ("nrrd", "mha", "mhd")
_DETACHED = (".mhd", ".nhdr")


def from_sitk(img: sitk.Image) -> tuple[np.ndarray, Geometry]:
    """Convert a SimpleITK image to a channel-first array ``(C, X, Y[, Z])`` and its geometry."""
    arr = sitk.GetArrayFromImage(img)  # (Z, Y, X) or (Z, Y, X, C)
    d = img.GetDimension()
    if img.GetNumberOfComponentsPerPixel() > 1:
        arr = arr.transpose((d, *range(d - 1, -1, -1)))
    else:
        arr = arr.transpose(tuple(range(d - 1, -1, -1)))[None]
    geometry = Geometry.from_arrays(img.GetSpacing(), img.GetOrigin(), img.GetDirection())
    return np.ascontiguousarray(arr), geometry


def to_sitk(array: np.ndarray, geometry: Geometry) -> sitk.Image:
    """Convert a channel-first array ``(C, X, Y[, Z])`` and its geometry to a SimpleITK image.

    C > 1 becomes a vector pixel; spacing, origin and direction are set as float64.
    """
    d = geometry.ndim
    if array.shape[0] == 1:
        zyx = array[0].transpose(tuple(range(d - 1, -1, -1)))
        img = sitk.GetImageFromArray(np.ascontiguousarray(zyx), isVector=False)
    else:
        zyxc = array.transpose((*range(d, 0, -1), 0))
        img = sitk.GetImageFromArray(np.ascontiguousarray(zyxc), isVector=True)
    img.SetSpacing([float(s) for s in geometry.spacing])
    img.SetOrigin([float(o) for o in geometry.origin])
    img.SetDirection([float(v) for v in geometry.direction_matrix.ravel()])
    return img


def _metadata(img: sitk.Image) -> dict[str, str]:
    return {k: img.GetMetaData(k) for k in img.GetMetaDataKeys()}


def read_sitk(path: str | Path, fmt: str) -> Image:
    """Read an NRRD/MetaImage/PNG/TIFF/JPEG file through SimpleITK.

    Args:
        path: the file.
        fmt: the format name to record in :attr:`Image.format` (``"nrrd"``, ``"mha"``, ``"png"`` …).

    Returns:
        :class:`Image` with array ``(C, X, Y[, Z])`` (X = column index for pictures; RGB → C = 3) and
        a dict of the file's metadata strings as ``header``.
    """
    p = Path(path)
    try:
        img = sitk.ReadImage(str(p))
        array, geometry = from_sitk(img)
    except RuntimeError as exc:
        raise DataError(f"cannot read image: {short_reason(exc)}", p) from None
    return Image(array=array, geometry=geometry, path=p, format=fmt, header=_metadata(img))


def _storable(array: np.ndarray, path: Path, fmt: str) -> np.ndarray:
    """Cast to a dtype the format holds, or raise ArrayFormatError."""
    if fmt in ("png", "jpeg"):
        allowed = (np.uint8,) if fmt == "jpeg" else (np.uint8, np.uint16)
        if array.dtype in allowed:
            return array
        top = np.iinfo(allowed[-1]).max
        if array.dtype.kind not in "biu":
            raise ArrayFormatError(f"{fmt.upper()} stores integers 0..{top} only, got {array.dtype}", path)
        if array.size and (array.min() < 0 or array.max() > top):
            raise ArrayFormatError(f"{fmt.upper()} stores integers 0..{top} only, got values "
                                   f"{array.min()}..{array.max()}", path)
        return array.astype(np.uint8 if array.size == 0 or array.max() <= 255 else np.uint16)
    if array.dtype == np.bool_:
        return array.astype(np.uint8)
    if array.dtype == np.float16:
        return array.astype(np.float32)
    if array.dtype.kind not in "iuf":
        raise ArrayFormatError(f"{fmt} cannot store {array.dtype} pixels", path)
    return array


def _write_detached(img: sitk.Image, path: Path, compress: bool) -> None:
    """Write a header + data-file pair so that the header appears last, by rename."""
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        sitk.WriteImage(img, str(tmp_dir / path.name), compress)
        for f in sorted(tmp_dir.iterdir(), key=lambda f: f.name == path.name):  # header last
            os.replace(f, path.parent / f.name)
    finally:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(tmp_dir)


def write_sitk(array: np.ndarray, path: str | Path, geometry: Geometry, fmt: str) -> None:
    """Write a channel-first array ``(C, X, Y[, Z])`` with SimpleITK, atomically.

    NRRD and MetaImage data are zlib-compressed (lossless). For PNG/TIFF/JPEG only the spacing of
    ``geometry`` is stored. Raises ArrayFormatError when the dtype does not fit the format.
    """
    p = Path(path)
    array = _storable(np.asarray(array), p, fmt)
    img = to_sitk(array, geometry)
    compress = fmt in _COMPRESSED
    try:
        if p.name.lower().endswith(_DETACHED):
            p.parent.mkdir(parents=True, exist_ok=True)
            _write_detached(img, p, compress)
        else:
            with atomic_path(p) as tmp:
                sitk.WriteImage(img, str(tmp), compress)
    except RuntimeError as exc:
        raise DataError(f"cannot write image: {short_reason(exc)}", p) from None
