"""Worker pieces: which errors are retried, which checkpoints and settings are refused."""

from __future__ import annotations

import errno
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from support.watch import sha256, write_case

from medattn.errors import CheckpointError, ConfigError, DataError
from medattn.io import read_image
from medattn.watch.ledger import Ledger
from medattn.watch.service import check_settings
from medattn.watch.worker import WatchSettings, Worker, is_transient, make_handler


def test_transient_errors_are_io_locks_and_oom_not_bad_data() -> None:
    assert is_transient(OSError(errno.EIO, "I/O error"))
    assert is_transient(sqlite3.OperationalError("database is locked"))
    assert is_transient(RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"))
    write_failed = DataError("cannot write the prediction: No space left on device", "/out/a.nii.gz")
    write_failed.__cause__ = OSError(errno.ENOSPC, "No space left on device")
    assert is_transient(write_failed)
    assert not is_transient(DataError("cannot read image: not a gzip file", "/in/a.nii.gz"))
    assert not is_transient(FileNotFoundError(2, "gone"))
    assert not is_transient(ValueError("bad shape"))


def test_slide_checkpoints_are_refused_for_now(tmp_path: Path, watch_checkpoint: Path) -> None:
    ckpt = torch.load(watch_checkpoint, weights_only=True)
    ckpt["task"] = "mil"
    path = tmp_path / "mil.pt"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="'mil' checkpoints are not supported"):
        make_handler(path)


def test_settings_that_would_loop_or_lose_data_are_refused(tmp_path: Path, watch_checkpoint: Path) -> None:
    inbox = tmp_path / "in"
    inbox.mkdir()
    with pytest.raises(ConfigError, match="inside the inbox"):
        check_settings(WatchSettings(inbox, inbox / "out", watch_checkpoint))
    with pytest.raises(DataError, match="no such folder"):
        check_settings(WatchSettings(tmp_path / "nope", tmp_path / "out", watch_checkpoint))
    with pytest.raises(ConfigError, match="observer"):
        check_settings(WatchSettings(inbox, tmp_path / "out", watch_checkpoint, observer="fsevents"))
    check_settings(WatchSettings(inbox, tmp_path / "out", watch_checkpoint, archive=inbox / ".archive"))


def test_cli_needs_inbox_output_and_checkpoint(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "medattn", "watch", str(tmp_path)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip() == ("medattn: error: medattn watch needs INBOX, -o OUTBOX and --checkpoint "
                                "(or --status OUTBOX)")


def test_worker_archives_dedupes_and_reprocesses_on_request(tmp_path: Path, watch_checkpoint: Path) -> None:
    inbox, outbox, archive = tmp_path / "in", tmp_path / "out", tmp_path / "archive"
    inbox.mkdir()
    settings = WatchSettings(inbox, outbox, watch_checkpoint, archive=archive, device="cpu")
    worker = Worker(settings, log=lambda m: None)
    try:
        first = write_case(inbox / "a.nii.gz", seed=0)
        digest = sha256(first)
        worker.process(worker.claim(first))
        assert sha256(archive / "a.nii.gz") == digest  # the input is kept in the archive, not deleted
        label = read_image(outbox / "a.nii.gz").array
        write_case(inbox / "again.nii.gz", seed=0)  # same content under another name
        worker.process(worker.claim(inbox / "again.nii.gz"))
        assert not (outbox / "again.json").exists() and worker.counts == {**worker.counts, "duplicate": 1}
        worker.s.reprocess = True
        write_case(inbox / "a.nii.gz", seed=0)  # same name and content, recomputation asked for
        worker.process(worker.claim(inbox / "a.nii.gz"))
        assert json.loads((outbox / "a.json").read_text())["watch"]["ledger_id"] == 3  # recomputed by row 3
        assert np.array_equal(read_image(outbox / "a.nii.gz").array, label)
        assert sorted(p.name for p in archive.iterdir()) == ["a.nii.gz", "a__2.nii.gz", "again.nii.gz"]
        (inbox / "b.mha").write_bytes(b"not an image")
        worker.process(worker.claim(inbox / "b.mha"))
        error = (outbox / "quarantine" / "b.mha.error.txt").read_text().splitlines()[0]
        assert error.startswith(f"{inbox / 'b.mha'}: ") and ".medattn" not in error
    finally:
        worker.close()
    ledger = Ledger(outbox)
    rows = [(r.case_name, r.status, r.input_hash == digest) for r in ledger.rows()]
    ledger.close()
    assert rows == [("a", "done", True), ("again", "duplicate", True), ("a", "done", True),
                    ("b", "quarantined", False)]
