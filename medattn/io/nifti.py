"""NIfTI (``.nii``, ``.nii.gz``) reading and writing through nibabel.

Array axes are nibabel's voxel index axes (i, j, k), which are also ITK's (x, y, z); the geometry comes
from nibabel's best affine (``img.affine``: sform if set, else qform) via
:meth:`Geometry.from_affine_ras`, converted to mm when the header's spatial unit is metres or microns.
NIfTI stores the affine as float32, so geometry survives a round trip to about 1e-5.

Layouts: 3-D ``(X, Y, Z)`` → ``(1, X, Y, Z)``; 4-D ``(X, Y, Z, C)`` → ``(C, X, Y, Z)``; 5-D
``(X, Y, Z, 1, C)`` (vector intent) → ``(C, X, Y, Z)``; 2-D ``(X, Y)`` → ``(1, X, Y)`` with a 2-D
geometry taken from the x/y part of the affine; RGB datatypes → C = 3 (or 4).
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from medattn.errors import DataError
from medattn.io.atomic import atomic_path
from medattn.io.geometry import Geometry
from medattn.io.image import ArrayFormatError, Image, short_reason

_ORTHO_TOL = 1e-3
_MM_PER_UNIT = {"meter": 1000.0, "mm": 1.0, "micron": 1e-3}  # other/unknown units are taken as mm


def _geometry_from_affine(affine: np.ndarray, ndim: int, path: Path) -> Geometry:
    affine = np.asarray(affine, dtype=np.float64)
    if ndim == 2:
        affine = affine[np.ix_([0, 1, 3], [0, 1, 3])]
    m = affine[:ndim, :ndim]
    if not np.all(np.isfinite(affine)) or np.any(np.linalg.norm(m, axis=0) == 0):
        raise DataError("cannot read image: the affine is singular or not finite", path)
    geometry = Geometry.from_affine_ras(affine)
    d = geometry.direction_matrix
    if not np.allclose(d.T @ d, np.eye(ndim), atol=_ORTHO_TOL):
        raise DataError("cannot read image: the affine has shear (non-orthogonal axes), "
                        "which medattn does not support", path)
    return geometry


def _channel_first(data: np.ndarray, path: Path) -> np.ndarray:
    if data.dtype.names:  # RGB24 / RGBA32 structured voxels
        data = np.stack([data[name] for name in data.dtype.names], axis=-1)
        data = data if data.ndim > 3 else data[..., None, :]
        return np.moveaxis(data, -1, 0)
    if data.ndim in (2, 3):
        return data[None]
    if data.ndim == 4:
        return np.moveaxis(data, 3, 0)
    if data.ndim == 5 and data.shape[3] == 1:
        return np.moveaxis(data[:, :, :, 0, :], 3, 0)
    raise DataError(f"cannot read image: unsupported NIfTI shape {data.shape}", path)


def read_nifti(path: str | Path) -> Image:
    """Read a NIfTI-1/2 file.

    Scaling (scl_slope/scl_inter) is applied; an integer image without scaling keeps its integer
    dtype (labels stay integers).

    Returns:
        :class:`Image` with array ``(C, X, Y[, Z])``, format ``"nifti"`` and the nibabel header.
    """
    p = Path(path)
    try:
        img = nib.load(str(p), mmap=False)
        data = np.asarray(img.dataobj)
    except Exception as exc:
        raise DataError(f"cannot read image: {short_reason(exc)}", p) from None
    spatial_ndim = 2 if data.ndim == 2 else 3
    array = np.ascontiguousarray(_channel_first(data, p))
    affine = np.array(img.affine, dtype=np.float64)
    affine[:3, :] *= _MM_PER_UNIT.get(img.header.get_xyzt_units()[0], 1.0)
    geometry = _geometry_from_affine(affine, spatial_ndim, p)
    return Image(array=array, geometry=geometry, path=p, format="nifti", header=img.header)


def _storable(array: np.ndarray, path: Path) -> np.ndarray:
    if array.dtype == np.bool_:
        return array.astype(np.uint8)
    if array.dtype == np.float16:
        return array.astype(np.float32)
    if array.dtype.kind not in "iufc":
        raise ArrayFormatError(f"NIfTI cannot store {array.dtype} voxels", path)
    return array


def _affine_4x4(geometry: Geometry) -> np.ndarray:
    ras = geometry.to_affine_ras()
    if geometry.ndim == 3:
        return ras
    affine = np.eye(4)
    affine[np.ix_([0, 1, 3], [0, 1, 3])] = ras
    return affine


def _reference_header(reference: Image | None, geometry: Geometry) -> nib.Nifti1Header | None:
    """The reference's header when it is a NIfTI image on the same geometry, else None."""
    if reference is None or reference.format != "nifti":
        return None
    if not isinstance(reference.header, nib.Nifti1Header):  # Nifti2Header subclasses it
        return None
    if not reference.geometry.allclose(geometry, atol=1e-4):
        return None
    return reference.header


def write_nifti(array: np.ndarray, path: str | Path, geometry: Geometry,
                reference: Image | None = None) -> None:
    """Write a channel-first array ``(C, X, Y[, Z])`` as NIfTI, atomically.

    With a NIfTI ``reference`` on the same geometry (within 1e-4) its header is reused: the qform/sform
    (codes and values) are copied bit for bit, the data type is set from ``array`` and intensity
    scaling, display range and intent are reset. Otherwise the affine is ``geometry.to_affine_ras()`` with
    qform and sform codes 1 (scanner). C > 1 is stored as a 4th dimension (3-D images only).
    bool is stored as uint8 and float16 as float32.
    """
    p = Path(path)
    array = _storable(np.asarray(array), p)
    if array.shape[0] == 1:
        data = array[0]
    elif geometry.ndim == 3:
        data = np.moveaxis(array, 0, -1)
    else:
        raise ArrayFormatError("NIfTI cannot store a 2-D multi-channel image; use PNG/TIFF or "
                               "one file per channel", p)
    ref_header = _reference_header(reference, geometry)
    if ref_header is not None:
        header = ref_header.copy()
        header.set_data_dtype(data.dtype)
        header.set_slope_inter(np.nan, np.nan)
        header["cal_min"], header["cal_max"] = 0.0, 0.0
        header.set_intent("none")
        cls = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
        img = cls(data, header.get_best_affine(), header=header)
    else:
        affine = _affine_4x4(geometry)
        header = nib.Nifti1Header()
        header.set_data_dtype(data.dtype)
        header.set_xyzt_units("mm")
        img = nib.Nifti1Image(data, affine, header=header)
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
    with atomic_path(p) as tmp:
        nib.save(img, str(tmp))
