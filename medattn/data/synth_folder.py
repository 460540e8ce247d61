"""Output folders of the MIL synthetic-data generators: built aside, then swapped in whole.

A generator writes into a hidden temporary folder next to ``out``; only when every file is written is
that folder renamed onto ``out``. An interrupted run therefore leaves the old output (or none), never
a mix. ``out/synth.json`` names the generator and its arguments; an existing ``out`` is replaced only
when it is empty or carries such a file, so a user's own folder is never deleted.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from medattn import __version__
from medattn.errors import DataError
from medattn.io.atomic import atomic_write_json, atomic_write_text, current_umask

__all__ = ["MARKER", "check_replaceable", "staged_folder", "swap_in", "write_csv"]

MARKER = "synth.json"  #: file naming the generator that wrote a folder


def _has_marker(out: Path) -> bool:
    meta = json.loads((out / MARKER).read_text(encoding="utf-8"))
    return isinstance(meta, dict) and str(meta.get("generator", "")).startswith("medattn.")


def check_replaceable(out: Path, ours: Callable[[Path], bool] = _has_marker) -> None:
    """Refuse to replace anything but a missing or empty folder, or one for which ``ours(out)`` holds
    (a folder an earlier run of a medattn generator wrote; an unreadable marker counts as not ours)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise DataError("exists and is not a folder; cannot write synthetic data there", out)
    if not any(out.iterdir()):
        return
    try:
        mine = bool(ours(out))
    except (OSError, ValueError, AttributeError):
        mine = False
    if not mine:
        raise DataError("folder is not empty and was not written by a medattn synthetic generator; refusing "
                        "to replace it (choose another folder or empty it)", out)


def swap_in(tmp: Path, out: Path) -> None:
    """Rename the finished folder ``tmp`` onto ``out``, replacing an old ``out`` (restored on failure)."""
    if not out.exists():
        os.replace(tmp, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
    os.replace(out, old / "previous")
    try:
        os.replace(tmp, out)
    except OSError:
        os.replace(old / "previous", out)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staged_folder(out: str | Path, generator: str, args: dict[str, Any]) -> Iterator[Path]:
    """Yield a temporary folder to fill; on success write ``synth.json`` into it and swap it onto ``out``.

    Raises:
        DataError: ``out`` is a file, or a non-empty folder that no medattn generator wrote.
    """
    out = Path(out)
    check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes it private; the output is an ordinary folder
        yield tmp
        atomic_write_json(tmp / MARKER, {"generator": generator, "medattn_version": __version__, "args": args})
        swap_in(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already after a successful swap


def write_csv(path: str | Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Write a CSV (``header`` then ``rows``) atomically."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())
