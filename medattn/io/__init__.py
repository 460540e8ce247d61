"""Image input/output with full geometry.

Readers give an :class:`Image` whose array is channel-first ``(C, X, Y[, Z])`` (axis 1 = x index) and
whose :class:`~medattn.io.geometry.Geometry` maps indices to LPS millimetres, for NIfTI, NRRD,
MetaImage, DICOM (files and series folders) and 2-D PNG/TIFF/JPEG alike. Writers are atomic.
"""

from medattn.io.dicom import write_dicom_series
from medattn.io.discovery import case_name, list_images, prediction_path
from medattn.io.geometry import Geometry
from medattn.io.header import read_geometry
from medattn.io.image import SUPPORTED_EXTENSIONS, ArrayFormatError, Image, read_image, write_image

__all__ = [
    "SUPPORTED_EXTENSIONS",
    "ArrayFormatError",
    "Geometry",
    "Image",
    "case_name",
    "list_images",
    "prediction_path",
    "read_geometry",
    "read_image",
    "write_dicom_series",
    "write_image",
]
