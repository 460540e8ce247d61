"""Geometry from a file's header alone, without reading the voxels.

Used where only spacing matters (the median target spacing over a training set), so that a large
dataset is not read twice. Formats whose geometry is not in one header (DICOM series, whose
geometry comes from all slice positions, and 2-D pictures) fall back to :func:`read_image`.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from medattn.errors import DataError
from medattn.io.geometry import Geometry
from medattn.io.image import image_format, read_image, short_reason

_HEADER_FORMATS = ("nrrd", "mha", "mhd")


def read_geometry(path: str | Path) -> Geometry:
    """The spatial geometry of an image (same result as ``read_image(path).geometry``).

    Raises:
        DataError: missing or unreadable file, naming it.
    """
    from medattn.io.nifti import _MM_PER_UNIT, _geometry_from_affine

    p = Path(path)
    if not p.exists():
        raise DataError("no such file", p)
    fmt = None if p.is_dir() else image_format(p)
    try:
        if fmt == "nifti":
            img = nib.load(str(p))  # lazy: reads the header only
            affine = np.array(img.affine, dtype=np.float64)
            affine[:3, :] *= _MM_PER_UNIT.get(img.header.get_xyzt_units()[0], 1.0)
            return _geometry_from_affine(affine, 2 if len(img.shape) == 2 else 3, p)
        if fmt in _HEADER_FORMATS:
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(p))
            reader.ReadImageInformation()
            return Geometry.from_arrays(reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection())
    except (RuntimeError, OSError, nib.filebasedimages.ImageFileError) as exc:
        raise DataError(f"cannot read image header: {short_reason(exc)}", p) from None
    return read_image(p).geometry
