"""DICOM: single files (also multi-frame) and slice series, read and written through SimpleITK (GDCM).

A series folder is read as one 3-D volume ``(C, X, Y, Z)``: x runs along a row (DICOM column index),
y down the columns, z along the slice normal ``row × column``. The slices are sorted by their
position along that normal and the geometry is taken from the tags:

* direction columns = ImageOrientationPatient row and column cosines, and their cross product;
* origin = ImagePositionPatient of the first slice (lowest along the normal);
* spacing = (PixelSpacing[1], PixelSpacing[0], distance between consecutive positions) —
  DICOM PixelSpacing is ``[row spacing, column spacing]`` = ``[y, x]``.

A series that is not a regular grid is refused with a :class:`DataError` instead of being read with a
wrong geometry: slices with different orientations (e.g. radial localisers), several slices at one
position (multi-echo / dynamic series), positions off the normal (gantry tilt) or uneven slice gaps
(missing slices). Pixel values are rescaled (RescaleSlope/Intercept) by GDCM.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medattn.errors import DataError
from medattn.io.geometry import Geometry
from medattn.io.image import Image, short_reason
from medattn.io.sitk_io import from_sitk, to_sitk

_POSITION, _ORIENTATION, _SERIES = "0020|0032", "0020|0037", "0020|000e"
_ORIENTATION_TOL = 1e-4  # direction cosines
_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def is_dicom_file(path: str | Path) -> bool:
    """True for a regular file named ``*.dcm`` or starting with the DICOM preamble (``DICM`` at 128)."""
    p = Path(path)
    if not p.is_file() or p.name.upper() == "DICOMDIR":
        return False
    if p.name.lower().endswith(".dcm"):
        return True
    try:
        with open(p, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def _tags(reader: sitk.ImageFileReader) -> dict[str, str]:
    return {k: reader.GetMetaData(k) for k in reader.GetMetaDataKeys()}


def read_dicom_file(path: str | Path) -> Image:
    """Read one DICOM file (a slice, or a multi-frame object) as ``(C, X, Y, Z)``.

    The geometry is GDCM's (for enhanced multi-frame objects GDCM may not read per-frame positions; a
    DICOM SEG is read as its stack of frames, 1-bit frames as 0/1 uint8).
    ``header`` holds ``SeriesInstanceUID``, ``files`` and the file's ``tags`` (``"gggg|eeee"`` → str).
    """
    p = Path(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(p))
    try:
        img = reader.Execute()
        array, geometry = from_sitk(img)
    except RuntimeError as exc:
        raise DataError(f"cannot read image: {short_reason(exc)}", p) from None
    tags = _tags(reader)
    if tags.get("0028|0100", "").strip() == "1":  # 1-bit (binary SEG) frames: GDCM expands 1 to 255
        array = (array != 0).astype(np.uint8)
    header = {"SeriesInstanceUID": tags.get(_SERIES, "").strip(), "files": [p], "tags": tags}
    return Image(array=array, geometry=geometry, path=p, format="dicom", header=header)


def _series_files(folder: Path, series_uid: str | None) -> tuple[str, list[str]]:
    if not any(is_dicom_file(f) for f in folder.iterdir() if not f.name.startswith(".")):
        raise DataError("no DICOM files (*.dcm, or with the DICM preamble) in this folder", folder)
    try:
        ids = list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    except RuntimeError as exc:
        raise DataError(f"cannot read DICOM folder: {short_reason(exc)}", folder) from None
    if not ids:
        raise DataError("no DICOM series found in this folder", folder)
    if series_uid is None:
        if len(ids) > 1:
            raise DataError(f"folder holds {len(ids)} DICOM series ({', '.join(sorted(ids))}); "
                            "pass series_uid= to choose one", folder)
        series_uid = ids[0]
    elif series_uid not in ids:
        raise DataError(f"no DICOM series {series_uid} in folder (found: {', '.join(sorted(ids))})", folder)
    return series_uid, list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_uid))


def slice_header(file: str, folder: Path) -> sitk.ImageFileReader:
    reader = sitk.ImageFileReader()
    reader.SetFileName(file)
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise DataError(f"cannot read DICOM slice {Path(file).name}: {short_reason(exc)}", folder) from None
    return reader


def series_geometry(headers: list[sitk.ImageFileReader], folder: Path) -> tuple[list[int], Geometry]:
    """Slice order (ascending along the normal) and the volume geometry; DataError if not a regular grid."""
    first = headers[0]
    if any(not h.HasMetaDataKey(_POSITION) or not h.HasMetaDataKey(_ORIENTATION) for h in headers):
        raise DataError("cannot stack slices: some lack ImagePositionPatient/ImageOrientationPatient", folder)
    if any(h.GetSize()[:2] != first.GetSize()[:2] or h.GetSize()[2:] not in ((), (1,)) for h in headers):
        raise DataError("cannot stack slices: they differ in size or are multi-frame", folder)
    directions = np.array([np.reshape(h.GetDirection(), (3, 3)) for h in headers])
    if np.abs(directions[:, :, :2] - directions[0, :, :2]).max() > _ORIENTATION_TOL:
        raise DataError("slices have different orientations (ImageOrientationPatient), so they do not "
                        "form one 3-D volume (radial or localiser series?)", folder)
    direction = directions[0]
    normal = direction[:, 2]
    positions = np.array([h.GetOrigin() for h in headers], dtype=np.float64)
    along = positions @ normal
    order = [int(i) for i in np.argsort(along, kind="stable")]
    positions, along = positions[order], along[order]
    spacing_xy = np.array(first.GetSpacing()[:2], dtype=np.float64)
    n = len(headers)
    gaps = np.diff(along)
    if gaps.min() <= 1e-3:
        raise DataError(f"{int(np.sum(gaps <= 1e-3)) + 1} slices share a position (multi-echo, dynamic or "
                        "duplicated series?)", folder)
    step = (along[-1] - along[0]) / (n - 1)
    uneven = np.abs(along - along[0] - step * np.arange(n)).max()
    if uneven > max(0.1 * step, 1e-2):
        raise DataError(f"slice positions are unevenly spaced (gaps {gaps.min():.4g} to "
                        f"{gaps.max():.4g} mm); missing slices?", folder)
    offsets = positions - positions[0]
    in_plane = np.linalg.norm(offsets - np.outer(offsets @ normal, normal), axis=1).max()
    if in_plane > max(0.1 * spacing_xy.min(), 1e-2):
        raise DataError(f"slice positions drift {in_plane:.4g} mm off the slice normal (gantry tilt?); "
                        "resample the series first", folder)
    return order, Geometry.from_arrays([*spacing_xy, step], positions[0], direction)


def read_dicom_series(folder: str | Path, series_uid: str | None = None) -> Image:
    """Read the DICOM series in ``folder`` (not recursive) as one volume ``(C, X, Y, Z)``.

    Args:
        folder: a folder of DICOM slice files (any file names; non-DICOM files are ignored).
        series_uid: which SeriesInstanceUID to read when the folder holds several.

    Raises:
        DataError: no series, several series without ``series_uid``, or slices that do not form a
            regular grid (see the module docstring).
    """
    folder = Path(folder)
    uid, files = _series_files(folder, series_uid)
    if len(files) == 1:  # one file: a single slice or a multi-frame object
        image = read_dicom_file(files[0])
        image.path = folder
        return image
    headers = [slice_header(f, folder) for f in files]
    order, geometry = series_geometry(headers, folder)
    files = [files[i] for i in order]
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.SetSpacingWarningRelThreshold(1.0)  # spacing was validated above, with a DataError
    try:
        img = reader.Execute()
        array, _ = from_sitk(img)
    except RuntimeError as exc:
        raise DataError(f"cannot read DICOM series {uid}: {short_reason(exc)}", folder) from None
    header = {"SeriesInstanceUID": uid, "files": [Path(f) for f in files], "tags": _tags(headers[order[0]])}
    return Image(array=array, geometry=geometry, path=folder, format="dicom", header=header)


def new_uid() -> str:
    """A fresh DICOM UID under the UUID-derived root ``2.25`` (at most 44 characters)."""
    return f"2.25.{uuid.uuid4().int}"


def write_dicom_series(array: np.ndarray, folder: str | Path, geometry: Geometry, *,
                       series_uid: str | None = None, modality: str = "MR") -> list[Path]:
    """Write a 3-D volume ``(X, Y, Z)`` (or ``(1, X, Y, Z)``) as one DICOM file per z slice.

    Each slice carries ImagePositionPatient, ImageOrientationPatient, PixelSpacing, SliceThickness,
    SpacingBetweenSlices, Study/Series/FrameOfReference UIDs and InstanceNumber (1-based, in z order),
    so that ``read_image(folder)`` gives back the same geometry (oblique included) and pixel values.
    Files are named ``slice_<k>_<hash>.dcm`` (hash from the series UID, so two series can share a
    folder) and appear by rename: into a new ``folder`` all at once, into an existing one file by file.

    Args:
        array: integer voxels that fit int16 (stored as int16).
        folder: output folder (created if missing).
        geometry: 3-D geometry of the volume.
        series_uid: SeriesInstanceUID to use (a fresh one by default).
        modality: DICOM Modality (``"MR"``, ``"CT"`` …).

    Returns:
        The slice files, in z order.
    """
    arr = np.asarray(array)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 3 or geometry.ndim != 3:
        raise ValueError(f"write_dicom_series needs a 3-D volume and geometry, got {arr.shape} and "
                         f"{geometry.ndim}-D")
    if arr.dtype.kind not in "biu" or (arr.size and (arr.min() < -32768 or arr.max() > 32767)):
        raise ValueError(f"write_dicom_series stores int16 voxels; got {arr.dtype} "
                         f"in {arr.min() if arr.size else 0}..{arr.max() if arr.size else 0}")
    series_uid = series_uid or new_uid()
    if len(series_uid) > 64 or not _UID_RE.match(series_uid):
        raise ValueError(f"not a valid DICOM UID: {series_uid!r}")
    volume = to_sitk(arr.astype(np.int16)[None], geometry)
    now = datetime.datetime.now()
    common = {
        "0008|0008": "DERIVED\\SECONDARY", "0008|0060": modality, "0008|103e": "medattn",
        "0008|0020": now.strftime("%Y%m%d"), "0008|0021": now.strftime("%Y%m%d"),
        "0008|0030": now.strftime("%H%M%S"), "0008|0031": now.strftime("%H%M%S"),
        "0010|0010": "", "0010|0020": "", "0020|000d": new_uid(), "0020|000e": series_uid,
        "0020|0052": new_uid(), "0020|0011": "1",
        "0018|0050": f"{geometry.spacing[2]:.10g}", "0018|0088": f"{geometry.spacing[2]:.10g}",
    }
    tag = hashlib.sha1(series_uid.encode()).hexdigest()[:8]
    nz = arr.shape[2]
    names = [f"slice_{k + 1:0{max(4, len(str(nz)))}d}_{tag}.dcm" for k in range(nz)]
    folder = Path(folder)
    new_folder = not folder.exists()
    parent = folder.parent if new_folder else folder
    parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=parent))
    try:
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        for k in range(nz):
            piece = volume[:, :, k: k + 1]  # stays 3-D, so GDCM writes the slice's own position
            for key, value in common.items():
                piece.SetMetaData(key, value)
            piece.SetMetaData("0020|0013", str(k + 1))
            writer.SetFileName(str(tmp_dir / names[k]))
            try:
                writer.Execute(piece)
            except RuntimeError as exc:
                raise DataError(f"cannot write DICOM slice: {short_reason(exc)}", folder) from None
        if new_folder:
            os.replace(tmp_dir, folder)
        else:
            for name in names:
                os.replace(tmp_dir / name, folder / name)
    finally:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(tmp_dir)
    return [folder / name for name in names]
