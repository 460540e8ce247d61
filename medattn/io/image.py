"""The in-memory image (:class:`Image`) and the format-dispatching :func:`read_image` / :func:`write_image`.

Array convention, for every format: ``Image.array`` is channel-first, ``(C, X, Y[, Z])``; axis 1 is the
x index (the fastest-varying index in the file: the column of a 2-D picture), and
``Image.geometry`` (see :mod:`medattn.io.geometry`) maps spatial indices to LPS millimetres.

The format is chosen by the file extension (case-insensitive, see :data:`SUPPORTED_EXTENSIONS`); a
folder is read as a DICOM series, and a file without an extension is read as DICOM when it carries
the DICOM preamble. The readers and writers themselves live in :mod:`medattn.io.nifti`,
:mod:`medattn.io.sitk_io` and :mod:`medattn.io.dicom`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medattn.errors import DataError
from medattn.io.geometry import Geometry

#: Extension → format name (matched longest first, case-insensitively, by :func:`image_extension`).
_FORMATS: dict[str, str] = {
    ".nii.gz": "nifti", ".nii": "nifti",
    ".nrrd": "nrrd", ".nhdr": "nrrd",
    ".mha": "mha", ".mhd": "mhd",
    ".dcm": "dicom",
    ".png": "png", ".tiff": "tiff", ".tif": "tiff", ".jpeg": "jpeg", ".jpg": "jpeg",
}

#: Every file extension :func:`read_image` accepts (lower case, with the dot). Folders are DICOM series.
SUPPORTED_EXTENSIONS: tuple[str, ...] = tuple(_FORMATS)

#: Formats that :func:`write_image` can produce.
_WRITABLE = ("nifti", "nrrd", "mha", "mhd", "png", "tiff", "jpeg")


_ITK_PREFIX = re.compile(r"^(?:(?:sitk::ERROR|itk::ERROR|ITK ERROR):\s*)?(?:\w+\(0x[0-9a-fA-F]+\):\s*)?")


class ArrayFormatError(DataError, ValueError):
    """The array cannot be stored in the requested file format (e.g. float pixels in a PNG)."""


@dataclass(eq=False)
class Image:
    """An image array with its spatial geometry and provenance.

    Attributes:
        array: channel-first array ``(C, X, Y[, Z])``; C = 1 for scalar images, 3 for RGB.
        geometry: spatial geometry; ``geometry.ndim == array.ndim - 1``.
        path: the file (or DICOM folder) it was read from.
        format: ``"nifti" | "nrrd" | "mha" | "mhd" | "dicom" | "png" | "tiff" | "jpeg"``.
        header: reader-specific extra information: the nibabel header for NIfTI, a dict of
            metadata strings for SimpleITK formats, a dict with ``SeriesInstanceUID``, ``files`` and
            ``tags`` (first slice) for DICOM. Optional.
    """

    array: np.ndarray
    geometry: Geometry
    path: Path
    format: str
    header: Any = None

    def __post_init__(self) -> None:
        if self.array.ndim != self.geometry.ndim + 1:
            raise ValueError(f"array of shape {self.array.shape} is not channel-first for a "
                             f"{self.geometry.ndim}-D geometry")
        self.path = Path(self.path)

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """``(X, Y[, Z])``: the array shape without the channel axis."""
        return tuple(int(s) for s in self.array.shape[1:])

    @property
    def channels(self) -> int:
        """Number of channels C (1 for scalar images)."""
        return int(self.array.shape[0])

    def __repr__(self) -> str:
        return (f"Image(shape={self.array.shape}, dtype={self.array.dtype}, format={self.format!r}, "
                f"spacing={self.geometry.spacing}, path={str(self.path)!r})")


def image_extension(path: str | Path) -> str | None:
    """The supported extension ``path`` ends with, lower case (``".nii.gz"``), or None."""
    name = Path(path).name.lower()
    return next((e for e in sorted(_FORMATS, key=len, reverse=True) if name.endswith(e)), None)


def image_format(path: str | Path) -> str | None:
    """The format name for ``path``'s extension (``"nifti"`` …), or None when unsupported."""
    ext = image_extension(path)
    return None if ext is None else _FORMATS[ext]


def _unsupported(path: Path) -> DataError:
    suffix = "".join(path.suffixes[-2:]) if path.name.lower().endswith(".gz") else path.suffix
    return DataError(f"unsupported image extension '{suffix or '(none)'}' (supported: "
                     f"{', '.join(SUPPORTED_EXTENSIONS)}, or a DICOM series folder)", path)


def short_reason(exc: BaseException, limit: int = 160) -> str:
    """One short line describing ``exc`` (SimpleITK's multi-line messages reduced to their last line)."""
    message = str(exc)
    lines = []
    for line in message.splitlines():
        line = _ITK_PREFIX.sub("", line.strip())
        if line and not line.startswith(("Exception thrown in", "Reason:")):  # ITK's errno text is stale
            lines.append(line)
    if not lines:
        text = type(exc).__name__
    elif "Exception thrown in SimpleITK" in message:
        text = lines[-1]
    else:
        text = " ".join(lines)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def channel_first(array: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Return ``array`` as ``(C, *spatial)``: a spatial-only array (ndim == geometry.ndim) gets C = 1."""
    array = np.asarray(array)
    if array.ndim == geometry.ndim:
        return array[None]
    if array.ndim == geometry.ndim + 1:
        return array
    raise ValueError(f"array of shape {array.shape} does not fit a {geometry.ndim}-D geometry "
                     f"(expected (C, *spatial) or spatial only)")


def read_image(path: str | Path, series_uid: str | None = None) -> Image:
    """Read an image file, or a DICOM series folder, with its full geometry.

    Args:
        path: an image file (extension from :data:`SUPPORTED_EXTENSIONS`; an extension-less DICOM file
            is recognised by its preamble) or a folder holding one DICOM series.
        series_uid: for a folder holding several DICOM series, the SeriesInstanceUID to read.
            Ignored for files.

    Returns:
        :class:`Image` with a channel-first array ``(C, X, Y[, Z])``.

    Raises:
        DataError: missing path, unsupported extension, corrupt file, empty folder, ambiguous or
            irregular DICOM series. The message is one line starting with the path.
    """
    from medattn.io import dicom, nifti, sitk_io

    p = Path(path)
    if not p.exists():
        raise DataError("no such file", p)
    if p.is_dir():
        return dicom.read_dicom_series(p, series_uid=series_uid)
    fmt = image_format(p)
    if fmt is None:
        if dicom.is_dicom_file(p):
            return dicom.read_dicom_file(p)
        raise _unsupported(p)
    if fmt == "nifti":
        return nifti.read_nifti(p)
    if fmt == "dicom":
        return dicom.read_dicom_file(p)
    return sitk_io.read_sitk(p, fmt)


def write_image(array: np.ndarray, path: str | Path, geometry: Geometry,
                reference: Image | None = None) -> Path:
    """Write ``array`` with ``geometry`` to ``path`` atomically; the format comes from the extension.

    Args:
        array: ``(C, *spatial)`` or spatial only (``array.ndim == geometry.ndim``); axis order as in
            :class:`Image` (x first).
        path: destination; ``.nii(.gz)``, ``.nrrd``/``.nhdr``, ``.mha``/``.mhd``, ``.png``, ``.tif(f)``,
            ``.jp(e)g``. DICOM is not a target (see :func:`medattn.io.dicom.write_dicom_series`).
        geometry: spatial geometry of the array.
        reference: for NIfTI output, a NIfTI :class:`Image` on the same grid whose header (and thus
            affine, bit for bit) is reused; ignored otherwise.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        DataError: unsupported or non-writable extension.
        ArrayFormatError: (a DataError and a ValueError) the dtype/channels cannot be stored in that format.
        ValueError: the array shape does not fit ``geometry``.
    """
    from medattn.io import nifti, sitk_io

    p = Path(path)
    fmt = image_format(p)
    if fmt is None:
        raise _unsupported(p)
    if fmt not in _WRITABLE:
        raise DataError("write_image cannot write DICOM; write a .nii.gz (or use write_dicom_series)", p)
    arr = channel_first(array, geometry)
    if fmt == "nifti":
        nifti.write_nifti(arr, p, geometry, reference=reference)
    else:
        sitk_io.write_sitk(arr, p, geometry, fmt)
    return p
