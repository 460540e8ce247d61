"""``medattn watch --status``: counts, pending and throughput from a ledger."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from medattn.errors import DataError
from medattn.watch.ledger import Ledger
from medattn.watch.status import format_status, watch_status


def test_status_summarises_the_ledger(tmp_path: Path) -> None:
    inbox, outbox = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    (inbox / "waiting.nii.gz").write_bytes(b"x")
    (inbox / "waiting.nii.gz.done").touch()
    ledger = Ledger(outbox)
    ledger.set_meta("inbox", str(inbox))
    for i in range(3):
        r = ledger.start(f"c{i}.nii.gz", f"c{i}", f"h{i}", "w", f"w/c{i}.nii.gz")
        ledger.finish(r.id, "done")
    ledger.start("busy.nii.gz", "busy", "hb", "w", "w/busy.nii.gz")
    ledger.record("bad.txt", "quarantined", "w", error="unsupported")
    ledger.close()
    s = watch_status(outbox)
    assert (s["done"], s["failed"], s["processing"], s["waiting_in_inbox"], s["pending"]) == (3, 1, 1, 1, 2)
    assert s["cases_per_minute"] > 0 and s["done_last_hour"] == 3
    text = format_status(s)
    assert "done:        3" in text and "pending:     2" in text
    cli = subprocess.run([sys.executable, "-m", "medattn", "watch", "--status", str(outbox)],
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0 and "failed:      1" in cli.stdout


def test_status_of_a_folder_without_ledger(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"ledger\.sqlite"):
        watch_status(tmp_path)
