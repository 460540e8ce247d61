"""When is an arrival complete? Quiet periods, ``.done`` markers and DICOM series checks.

An *entry* is a non-hidden name directly in the inbox: an image file or a folder (a DICOM series, or
several series to be split by SeriesInstanceUID). Names starting with ``.`` (medattn's own area
``.medattn``, temporary files of writers that rename into place) and ``*.done`` markers are not
entries. An entry is *ready* when

- a marker exists: ``<name>.done`` next to it, or a file ``.done`` inside the folder; or
- its signature (file: size and mtime; folder: number of files, total size, newest mtime) has not
  changed over this process's own observations for ``quiet`` seconds (own clock: safe against a file
  server whose clock differs), and, for a folder of DICOM files, every series in it has a regular
  grid (same slice size and orientation, evenly spaced positions: no slice missing). A folder whose
  series stays irregular for ``incomplete_timeout`` seconds is handed over anyway, so that the reader's
  error puts it in quarantine instead of leaving it in the inbox for ever.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import SimpleITK as sitk

from medattn.engine.infer import file_sha256
from medattn.errors import DataError
from medattn.io.dicom import is_dicom_file, series_geometry, slice_header

MARKER = ".done"


def is_entry(path: Path) -> bool:
    """True for a name the watcher handles: not hidden, not a ``.done`` marker."""
    return not path.name.startswith(".") and not path.name.endswith(MARKER)


def marker_of(path: Path) -> Path:
    """The ``<name>.done`` marker that declares ``path`` complete."""
    return path.with_name(path.name + MARKER)


def _folder_files(folder: Path) -> list[Path]:
    return sorted((f for f in folder.iterdir() if not f.name.startswith(".") and f.is_file()), key=lambda f: f.name)


def signature(path: Path) -> tuple[int, int, int] | None:
    """(file count, total bytes, newest mtime in ns) of an entry; None when it vanished meanwhile."""
    try:
        if path.is_dir():
            stats = [f.stat() for f in _folder_files(path)]
            return len(stats), sum(s.st_size for s in stats), max((s.st_mtime_ns for s in stats), default=0)
        s = path.stat()
        return 1, s.st_size, s.st_mtime_ns
    except OSError:
        return None


def series_uids(folder: Path) -> list[str]:
    """SeriesInstanceUIDs of the DICOM files directly in ``folder`` (sorted; empty when none)."""
    try:
        return sorted(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    except RuntimeError:
        return []


def series_files(folder: Path, uid: str) -> list[Path]:
    """The files of one series in ``folder``."""
    return [Path(f) for f in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)]


def dicom_problem(folder: Path) -> str | None:
    """Why the DICOM series in ``folder`` do not (yet) form regular volumes, or None when they do."""
    uids = series_uids(folder)
    if not uids:
        return "no DICOM series found"
    for uid in uids:
        files = series_files(folder, uid)
        if len(files) < 2:
            continue
        try:
            series_geometry([slice_header(str(f), folder) for f in files], folder)
        except DataError as e:
            return f"series {uid}: {e}"
    return None


def input_hash(path: Path) -> str:
    """sha256 of a file, or of a folder's non-hidden files (names and contents, in name order)."""
    if not path.is_dir():
        return file_sha256(path)
    h = hashlib.sha256()
    for f in _folder_files(path):
        h.update(f.name.encode() + b"\0" + file_sha256(f).encode())
    return h.hexdigest()


@dataclass
class _Seen:
    signature: tuple[int, int, int]
    stable_since: float


class CompletenessTracker:
    """Remembers what it saw in an inbox and says which entries are complete.

    Args:
        quiet: seconds an entry must stay unchanged (ignored when its ``.done`` marker exists).
        incomplete_timeout: seconds after which a quiet DICOM folder with irregular series is handed
            over anyway (default ``10 * quiet``, at least 30 s).
    """

    def __init__(self, quiet: float = 5.0, incomplete_timeout: float | None = None) -> None:
        self.quiet = float(quiet)
        self.incomplete_timeout = incomplete_timeout if incomplete_timeout is not None else max(30.0, 10 * quiet)
        self._seen: dict[str, _Seen] = {}

    def scan(self, inbox: Path, now: float | None = None) -> tuple[list[Path], int]:
        """(entries ready now in arrival order, number of entries still waiting)."""
        now = time.monotonic() if now is None else now
        try:
            names = sorted(os.listdir(inbox))
        except FileNotFoundError:
            raise DataError("the inbox folder disappeared", inbox) from None
        entries = [inbox / n for n in names if is_entry(inbox / n)]
        ready: list[tuple[float, Path]] = []
        waiting = 0
        present = set()
        for entry in entries:
            sig = signature(entry)
            if sig is None:
                continue
            present.add(entry.name)
            seen = self._seen.get(entry.name)
            if seen is None or seen.signature != sig:
                seen = self._seen[entry.name] = _Seen(sig, now)
            marked = marker_of(entry).exists() or (entry.is_dir() and (entry / MARKER).exists())
            if marked or self._quiet_and_whole(entry, seen, now):
                ready.append((seen.stable_since, entry))
            else:
                waiting += 1
        for gone in set(self._seen) - present:
            del self._seen[gone]
        return [e for _, e in sorted(ready, key=lambda t: (t[0], t[1].name))], waiting

    def _quiet_and_whole(self, entry: Path, seen: _Seen, now: float) -> bool:
        quiet_for = now - seen.stable_since
        if quiet_for < self.quiet:
            return False
        if not entry.is_dir() or quiet_for >= self.incomplete_timeout:
            return True
        files = _folder_files(entry)
        if not any(is_dicom_file(f) for f in files):
            return True  # not DICOM: the worker quarantines it as unsupported
        return dicom_problem(entry) is None


def split_series(folder: Path) -> list[Path]:
    """Split a folder holding several DICOM series into one sibling folder per SeriesInstanceUID.

    The series of ``folder`` (inside the worker's claim area) go to ``<folder>_<8 hex of the UID>``;
    files are moved into a hidden ``.split.*`` folder first and that folder is renamed when complete,
    so a crash never leaves a partial series under a visible name (:func:`undo_partial_splits` puts
    the files of an unfinished split back). Returns the series folders (``[folder]`` when it holds
    at most one series).
    """
    uids = series_uids(folder)
    if len(uids) <= 1:
        return [folder]
    out = []
    for uid in uids:
        tag = hashlib.sha1(uid.encode()).hexdigest()[:8]
        final = folder.with_name(f"{folder.name}_{tag}")
        staging = folder.with_name(f".split.{folder.name}.{tag}")
        staging.mkdir(exist_ok=True)
        for f in series_files(folder, uid):
            os.replace(f, staging / f.name)
        os.replace(staging, final)
        out.append(final)
    if any(folder.iterdir()):
        out.append(folder)  # files outside any series: the worker quarantines what is left
    else:
        with contextlib.suppress(OSError):
            folder.rmdir()
    return out


def undo_partial_splits(area: Path) -> None:
    """Move the files of unfinished ``.split.<name>.<tag>`` folders in ``area`` back into ``<name>``."""
    for staging in sorted(area.glob(".split.*")):
        name = staging.name[len(".split."):].rsplit(".", 1)[0]
        target = area / name
        target.mkdir(exist_ok=True)
        for f in staging.iterdir():
            os.replace(f, target / f.name)
        staging.rmdir()
