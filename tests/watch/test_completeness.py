"""Completeness: quiet periods on this process's clock, .done markers, DICOM checks, series splitting."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from support.watch import GEOMETRY, write_case

from medattn.io import read_image, write_dicom_series
from medattn.watch.completeness import (
    CompletenessTracker,
    dicom_problem,
    input_hash,
    split_series,
    undo_partial_splits,
)


def test_a_file_is_ready_only_after_a_quiet_period_without_changes(tmp_path: Path) -> None:
    f = tmp_path / "a.nii.gz"
    f.write_bytes(b"x" * 10)
    t = CompletenessTracker(quiet=2.0)
    assert t.scan(tmp_path, now=100.0) == ([], 1)
    assert t.scan(tmp_path, now=101.9) == ([], 1)
    with open(f, "ab") as fh:  # still growing: the clock starts again
        fh.write(b"y")
    assert t.scan(tmp_path, now=102.5) == ([], 1)
    assert t.scan(tmp_path, now=104.0) == ([], 1)
    assert t.scan(tmp_path, now=104.6) == ([f], 0)


def test_done_marker_hidden_files_and_markers_themselves(tmp_path: Path) -> None:
    (tmp_path / "b.nrrd").write_bytes(b"x")
    (tmp_path / "b.nrrd.done").touch()
    (tmp_path / ".partial.nii.gz").write_bytes(b"x")  # a writer's temporary name: never an entry
    (tmp_path / "c.mha").write_bytes(b"x")
    ready, waiting = CompletenessTracker(quiet=60.0).scan(tmp_path, now=0.0)
    assert ready == [tmp_path / "b.nrrd"] and waiting == 1


def test_dicom_folder_waits_for_a_regular_series_then_times_out(tmp_path: Path) -> None:
    series = tmp_path / "s"
    files = write_dicom_series(np.zeros((8, 8, 6), np.int16), series, GEOMETRY)
    assert dicom_problem(series) is None
    files[2].unlink()  # a missing slice: uneven positions
    assert "unevenly spaced" in (dicom_problem(series) or "")
    t = CompletenessTracker(quiet=1.0, incomplete_timeout=10.0)
    assert t.scan(tmp_path, now=0.0) == ([], 1)
    assert t.scan(tmp_path, now=5.0) == ([], 1)  # quiet, but not whole yet
    assert t.scan(tmp_path, now=10.5) == ([series], 0)  # handed over: the reader will quarantine it


def test_split_series_by_uid_and_undo_a_crashed_split(tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    write_dicom_series(np.full((8, 8, 5), 7, np.int16), folder, GEOMETRY, series_uid="1.2.3")
    write_dicom_series(np.full((8, 8, 4), 9, np.int16), folder, GEOMETRY, series_uid="1.2.4")
    digest = input_hash(folder)
    parts = split_series(folder)
    assert len(parts) == 2 and not folder.exists()
    shapes = sorted(read_image(p).array.shape[-1] for p in parts)
    assert shapes == [4, 5]
    # a crash in the middle of a split: files in a hidden .split folder go back to the original folder
    staging = tmp_path / ".split.mixed.abcd1234"
    os.replace(parts[0], staging)
    for p in parts[1].iterdir():
        (tmp_path / "mixed").mkdir(exist_ok=True)
        os.replace(p, tmp_path / "mixed" / p.name)
    parts[1].rmdir()
    undo_partial_splits(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mixed"]
    assert input_hash(tmp_path / "mixed") == digest


def test_input_hash_of_files(tmp_path: Path) -> None:
    a = write_case(tmp_path / "a.nii.gz", seed=0)
    b = tmp_path / "b.nii.gz"
    b.write_bytes(a.read_bytes())
    assert input_hash(a) == input_hash(b) != input_hash(write_case(tmp_path / "c.nii.gz", seed=1))
