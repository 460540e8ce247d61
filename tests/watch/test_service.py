"""A real ``medattn watch`` subprocess against a temp inbox: bursts, bad files, slow writes, races, kill -9, SIGTERM.

Every test ends with :func:`support.watch.assert_consistent`: nothing lost, duplicated or half-written.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
from support.watch import (
    GEOMETRY,
    assert_consistent,
    manifests,
    sha256,
    stop,
    wait_for,
    watcher,
    write_case,
)

from medattn.io import write_dicom_series
from medattn.watch.ledger import Ledger
from medattn.watch.service import choose_observer


def _drop(staging: Path, inbox: Path) -> None:
    """Move every file of ``staging`` into ``inbox`` at once (as a copy job finishing would)."""
    for p in sorted(staging.iterdir()):
        os.replace(p, inbox / p.name)


def test_burst_of_50_with_corrupt_unsupported_duplicates_and_dicom(tmp_path: Path, watch_checkpoint: Path) -> None:
    inbox, outbox, staging = tmp_path / "in", tmp_path / "out", tmp_path / "staging"
    inbox.mkdir()
    staging.mkdir()
    expected = {}
    for i in range(50):
        f = write_case(staging / f"case_{i:03d}.nii.gz", seed=i)
        expected[f"case_{i:03d}"] = sha256(f)
    (staging / "corrupt.nii.gz").write_bytes(b"\x1f\x8b" + b"not really gzip" * 20)
    (staging / "truncated.nii.gz").write_bytes((staging / "case_000.nii.gz").read_bytes()[:300])
    (staging / "notes.txt").write_text("not an image")
    shutil.copy(staging / "case_007.nii.gz", staging / "copy_of_7.nii.gz")  # same content: not recomputed
    write_case(staging / "same.nrrd", seed=100)  # two inputs named "same": the second gets same__2
    expected_same = {sha256(staging / "same.nrrd")}
    write_case(staging / "same.nii.gz", seed=101)
    expected_same.add(sha256(staging / "same.nii.gz"))
    rng = np.random.default_rng(0)
    mixed = staging / "mixed"  # two series in one folder: split by SeriesInstanceUID
    write_dicom_series((rng.normal(size=(24, 24, 12)) * 100).astype(np.int16), mixed, GEOMETRY)
    write_dicom_series((rng.normal(size=(24, 24, 10)) * 100).astype(np.int16), mixed, GEOMETRY)
    _drop(staging, inbox)

    proc = watcher(inbox, outbox, watch_checkpoint, "--once", "--quiet", "0.3")
    assert proc.wait(timeout=240) == 0

    ledger = Ledger(outbox)
    rows = {r.case_name: r for r in ledger.rows("done")}
    dup = ledger.rows("duplicate")
    ledger.close()
    # two different inputs named "same": one keeps the name, the other becomes same__2; none overwritten
    assert {rows["same"].input_hash, rows["same__2"].input_hash} == expected_same
    assert sorted(p.suffix for p in outbox.glob("same*") if p.suffix != ".json") == [".gz", ".nrrd"]
    assert [r.input_name for r in dup] == ["copy_of_7.nii.gz"]
    assert dup[0].duplicate_of == rows["case_007"].id and dup[0].outputs == rows["case_007"].outputs
    series = [name for name in rows if name.startswith("mixed_")]
    assert len(series) == 2 and len({rows[s].input_hash for s in series}) == 2
    for name in [*series, "same", "same__2"]:
        expected[name] = rows[name].input_hash
    assert_consistent(inbox, outbox, expected, quarantined={"corrupt.nii.gz", "truncated.nii.gz", "notes.txt"},
                      duplicates=1)


def test_slow_writes_marker_same_name_again_and_sigterm_with_two_workers(tmp_path: Path,
                                                                         watch_checkpoint: Path) -> None:
    inbox, outbox, staging = tmp_path / "in", tmp_path / "out", tmp_path / "staging"
    inbox.mkdir()
    staging.mkdir()
    proc = watcher(inbox, outbox, watch_checkpoint, "--workers", "2", "--quiet", "1.0", log=tmp_path / "w.log")
    try:
        wait_for(lambda: (tmp_path / "w.log").read_text().count("watching") == 2, 120, "two workers to start")
        # a file written slowly, in pieces, with pauses shorter than the quiet period: taken only when whole
        data = write_case(staging / "slow.nii.gz", seed=1).read_bytes()
        expected = {"slow": sha256(staging / "slow.nii.gz")}
        with open(inbox / "slow.nii.gz", "wb") as fh:
            for k in range(0, len(data), len(data) // 6 + 1):
                fh.write(data[k: k + len(data) // 6 + 1])
                fh.flush()
                time.sleep(0.4)
        # a .done marker makes a file ready at once
        write_case(inbox / "marked.nii.gz", seed=2)
        expected["marked"] = sha256(inbox / "marked.nii.gz")
        (inbox / "marked.nii.gz.done").touch()
        wait_for(lambda: (outbox / "slow.json").exists() and (outbox / "marked.json").exists(), 60, "two cases")
        # the same name again with other content: a new case, the first result is kept
        write_case(staging / "slow.nii.gz", seed=3)
        expected["slow__2"] = sha256(staging / "slow.nii.gz")
        os.replace(staging / "slow.nii.gz", inbox / "slow.nii.gz")
        for i in range(10):
            write_case(staging / f"b{i:02d}.nii.gz", seed=10 + i)
        burst = {f"b{i:02d}": sha256(staging / f"b{i:02d}.nii.gz") for i in range(10)}
        wait_for(lambda: (outbox / "slow__2.json").exists(), 60, "the second 'slow'")
        _drop(staging, inbox)
        wait_for(lambda: len(manifests(outbox)) >= 5, 60, "the burst to start")
    finally:
        code = stop(proc, signal.SIGTERM, timeout=60)
    assert code == 0
    # stopped gracefully: nothing being processed, unprocessed cases still in the inbox
    ledger = Ledger(outbox)
    assert ledger.counts()["processing"] == 0
    ledger.close()
    assert not any((inbox / ".medattn" / "processing").iterdir())
    left = {p.name for p in inbox.iterdir() if not p.name.startswith(".")}
    finished = {p.stem for p in manifests(outbox)}
    assert left | {f"{c}.nii.gz" for c in finished} >= {f"{b}.nii.gz" for b in burst}
    assert not left & {f"{c}.nii.gz" for c in finished}
    proc = watcher(inbox, outbox, watch_checkpoint, "--once", "--quiet", "0.2")
    assert proc.wait(timeout=120) == 0
    assert_consistent(inbox, outbox, {**expected, **burst})


def test_two_watchers_race_for_the_same_inbox(tmp_path: Path, watch_checkpoint: Path) -> None:
    inbox, outbox, staging = tmp_path / "in", tmp_path / "out", tmp_path / "staging"
    inbox.mkdir()
    staging.mkdir()
    procs = [watcher(inbox, outbox, watch_checkpoint, "--quiet", "0.2", log=tmp_path / f"w{k}.log")
             for k in range(2)]  # two independent services, as on two machines sharing the folder
    try:
        wait_for(lambda: all((tmp_path / f"w{k}.log").exists() and "watching" in (tmp_path / f"w{k}.log").read_text()
                             for k in range(2)), 120, "both watchers to start")
        expected = {f"r{i:02d}": sha256(write_case(staging / f"r{i:02d}.nii.gz", seed=i)) for i in range(30)}
        _drop(staging, inbox)
        wait_for(lambda: len(manifests(outbox)) == 30, 180, "all 30 cases")
    finally:
        codes = [stop(p) for p in procs]
    assert codes == [0, 0]
    ledger = Ledger(outbox)
    workers = {r.worker for r in ledger.rows("done")}
    ledger.close()
    assert len(workers) == 2  # both took part in the race
    assert_consistent(inbox, outbox, expected)


def test_kill_9_during_processing_twice_then_restart(tmp_path: Path, watch_checkpoint: Path) -> None:
    inbox, outbox = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    expected = {f"k{i:02d}": sha256(write_case(inbox / f"k{i:02d}.nii.gz", seed=i)) for i in range(20)}
    for finished in (3, 9):  # kill -9 in the middle of the run, restart, kill again later
        proc = watcher(inbox, outbox, watch_checkpoint, "--quiet", "0.2")
        try:
            wait_for(lambda n=finished: len(manifests(outbox)) >= n, 120, f"{finished} finished cases")
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        # right after the kill: no case is lost, and every case with a manifest has its label map
        claimed = [p.name for p in (inbox / ".medattn" / "processing").rglob("*.nii.gz")]
        waiting = [p.name for p in inbox.glob("*.nii.gz")]
        done = {p.stem for p in manifests(outbox)}
        assert sorted({n[: -len(".nii.gz")] for n in claimed + waiting} | done) == sorted(expected)
        assert len(claimed) <= 1
        for m in manifests(outbox):
            assert (outbox / f"{m.stem}.nii.gz").is_file()
    proc = watcher(inbox, outbox, watch_checkpoint, "--once", "--quiet", "0.2")
    assert proc.wait(timeout=120) == 0
    assert_consistent(inbox, outbox, expected)


def test_auto_observer_is_inotify_on_a_local_folder(tmp_path: Path) -> None:
    assert choose_observer(tmp_path, "auto") == "inotify"
    assert choose_observer(tmp_path, "polling") == "polling"
