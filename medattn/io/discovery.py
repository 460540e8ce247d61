"""Finding images in a folder and naming cases and their predictions.

A *case* is one image file or one DICOM series folder; its name is the file name without the image
extension (``a.nii.gz`` → ``a``) or the folder name. Names starting with ``.`` are hidden and also
mark medattn's temporary files (see :mod:`medattn.io.atomic`), so they are never listed.
"""

from __future__ import annotations

import os
from pathlib import Path

from medattn.errors import DataError
from medattn.io.dicom import is_dicom_file
from medattn.io.image import SUPPORTED_EXTENSIONS, image_extension, image_format


def _holds_dicom(folder: Path) -> bool:
    """True when ``folder`` directly contains at least one DICOM file (by name or preamble)."""
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return False
    for entry in entries:
        if entry.name.startswith("."):
            continue
        fmt = image_format(entry)
        if fmt == "dicom" and entry.is_file():
            return True
        if fmt is None and is_dicom_file(entry):
            return True
    return False


def list_images(folder: str | Path) -> list[Path]:
    """Images in ``folder`` (not recursive), sorted by name.

    Lists files with a supported extension (:data:`SUPPORTED_EXTENSIONS`) and sub-folders that
    directly contain DICOM files (each one a DICOM series). Skips names starting with ``.``.

    Raises:
        DataError: ``folder`` does not exist or is not a folder.
    """
    root = Path(folder)
    if not root.is_dir():
        raise DataError("no such folder" if not root.exists() else "not a folder", root)
    found = []
    for entry in sorted(root.iterdir(), key=lambda p: p.name):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            if _holds_dicom(entry):
                found.append(entry)
        elif entry.is_file() and image_extension(entry) is not None:
            found.append(entry)
    return found


def case_name(path: str | Path) -> str:
    """The case name: file name without its image extension, or the folder name for a DICOM folder.

    ``"a.nii.gz"`` → ``"a"``, ``"b.NRRD"`` → ``"b"``, ``"series/"`` → ``"series"``; a name without a
    supported extension is returned whole.
    """
    p = Path(path)
    if p.is_dir():
        return Path(os.path.abspath(p)).name
    ext = image_extension(p)
    return p.name[: len(p.name) - len(ext)] if ext else p.name


def _is_dicom_input(p: Path) -> bool:
    return p.is_dir() or image_format(p) == "dicom" or (image_format(p) is None and is_dicom_file(p))


def prediction_path(input_path: str | Path, out_dir: str | Path, suffix: str = "") -> Path:
    """Where the prediction for ``input_path`` goes: ``out_dir / (case_name + suffix + ext)``.

    ``ext`` is the input's extension, except DICOM inputs (folder or file) → ``.nii.gz`` and JPEG
    inputs → ``.png`` (a label map must be stored losslessly).

    Raises:
        DataError: unsupported input extension, or a name that would leave ``out_dir``, be empty or be
            hidden (``suffix`` with a path separator, ``..`` …).
    """
    p = Path(input_path)
    if _is_dicom_input(p):
        ext = ".nii.gz"
    else:
        ext = image_extension(p)
        if ext is None:
            raise DataError(f"unsupported image extension (supported: {', '.join(SUPPORTED_EXTENSIONS)})", p)
        if image_format(p) == "jpeg":
            ext = ".png"
    name = case_name(p) + suffix + ext
    bad = (not case_name(p) or name.startswith(".") or "\x00" in name
           or any(sep and sep in name for sep in ("/", "\\", os.sep, os.altsep)))
    if bad:
        raise DataError(f"prediction name {name!r} would not be a plain file inside {out_dir}", p)
    return Path(out_dir) / name
