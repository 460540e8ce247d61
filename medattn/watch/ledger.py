"""The SQLite ledger of ``medattn watch``: one row per case, in ``OUTBOX/ledger.sqlite``.

Columns: ``id``, ``case_name`` (the output name), ``input_name`` (the name as it arrived),
``input_hash`` (sha256 of the file, or of a DICOM series' files in name order), ``status``,
``worker``, ``claim`` (path of the claimed input, relative to the claim area), ``attempts``,
``claimed`` / ``finished`` (Unix seconds), ``outputs`` (JSON list of file names in OUTBOX),
``timings`` (JSON), ``error`` (one line) and ``duplicate_of`` (row id).

Statuses: ``processing`` (claimed, not finished), ``done``, ``duplicate`` (same input hash as a done
case: not recomputed), ``quarantined`` (bad input, moved to the quarantine folder), ``returned``
(given back to the inbox on shutdown). Every write is one short ``BEGIN IMMEDIATE`` transaction,
so several worker processes can share the ledger; the choice of an output name happens inside such
a transaction, which is what keeps two workers from writing the same output.

SQLite locking relies on POSIX file locks; on NFS these work only where the server supports them
(NFSv4, or NFSv3 with a working lock manager). With workers on several machines, put OUTBOX on a
filesystem with working locks, or give every machine its own OUTBOX.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LEDGER_FILE = "ledger.sqlite"
STATUSES = ("processing", "done", "duplicate", "quarantined", "returned")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cases (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    case_name TEXT NOT NULL,
    input_name TEXT NOT NULL,
    input_hash TEXT,
    status TEXT NOT NULL,
    worker TEXT,
    claim TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    claimed REAL,
    finished REAL,
    outputs TEXT,
    timings TEXT,
    error TEXT,
    duplicate_of INTEGER
);
CREATE INDEX IF NOT EXISTS cases_hash ON cases (input_hash, status);
CREATE INDEX IF NOT EXISTS cases_name ON cases (case_name, status);
CREATE INDEX IF NOT EXISTS cases_claim ON cases (claim, status);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
"""


@dataclass
class Row:
    """One ledger row (see the module docstring for the fields)."""

    id: int
    case_name: str
    input_name: str
    input_hash: str | None
    status: str
    worker: str | None
    claim: str | None
    attempts: int
    claimed: float | None
    finished: float | None
    outputs: list[str]
    timings: dict[str, float]
    error: str | None
    duplicate_of: int | None


def _row(r: sqlite3.Row) -> Row:
    d = dict(r)
    d["outputs"] = json.loads(d["outputs"]) if d["outputs"] else []
    d["timings"] = json.loads(d["timings"]) if d["timings"] else {}
    return Row(**d)


class Ledger:
    """Open (and create) the ledger of ``outbox``.

    Args:
        outbox: the output folder; the ledger is ``outbox / LEDGER_FILE``.
        timeout: seconds to wait for another process's lock before failing.
    """

    def __init__(self, outbox: str | Path, timeout: float = 60.0) -> None:
        self.path = Path(outbox) / LEDGER_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), timeout=timeout, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the connection."""
        self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` … ``COMMIT`` (rolled back on an exception)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def set_meta(self, key: str, value: str) -> None:
        """Store a setting (e.g. the inbox path) for ``medattn watch --status``."""
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def meta(self, key: str) -> str | None:
        """A stored setting, or None."""
        r = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if r is None else str(r[0])

    def by_claim(self, claim: str) -> Row | None:
        """The open (``processing``) row of a claimed input, if any."""
        r = self._db.execute("SELECT * FROM cases WHERE claim = ? AND status = 'processing' ORDER BY id DESC",
                             (claim,)).fetchone()
        return None if r is None else _row(r)

    def done_with_hash(self, input_hash: str) -> Row | None:
        """The first ``done`` row with this input hash, if any."""
        r = self._db.execute("SELECT * FROM cases WHERE input_hash = ? AND status = 'done' ORDER BY id",
                             (input_hash,)).fetchone()
        return None if r is None else _row(r)

    def start(self, input_name: str, base_name: str, input_hash: str, worker: str, claim: str) -> Row:
        """Insert a ``processing`` row with a free output name (one transaction).

        The output name is ``base_name`` unless a done or processing case of *another* input hash
        holds it; then ``base_name__2``, ``base_name__3`` … (a second, different file with the same
        name never overwrites the first one's result).
        """
        with self.transaction() as db:
            n = 1
            while True:
                name = base_name if n == 1 else f"{base_name}__{n}"
                taken = db.execute("SELECT 1 FROM cases WHERE case_name = ? AND status IN ('done', 'processing') "
                                   "AND (input_hash IS NOT ? OR status = 'processing') LIMIT 1",
                                   (name, input_hash)).fetchone()
                if taken is None:
                    break
                n += 1
            cur = db.execute("INSERT INTO cases (case_name, input_name, input_hash, status, worker, claim, claimed) "
                             "VALUES (?, ?, ?, 'processing', ?, ?, ?)",
                             (name, input_name, input_hash, worker, claim, time.time()))
            r = db.execute("SELECT * FROM cases WHERE id = ?", (cur.lastrowid,)).fetchone()
        return _row(r)

    def adopt(self, row_id: int, worker: str, claim: str) -> None:
        """Move an open row to a new worker and claim path (recovery after a crash)."""
        with self.transaction() as db:
            db.execute("UPDATE cases SET worker = ?, claim = ? WHERE id = ?", (worker, claim, row_id))

    def finish(self, row_id: int, status: str, *, outputs: list[str] | None = None, attempts: int | None = None,
               timings: dict[str, float] | None = None, error: str | None = None,
               duplicate_of: int | None = None) -> None:
        """Close a row with its final ``status`` and details."""
        if status not in STATUSES or status == "processing":
            raise ValueError(f"not a final status: {status!r}")
        with self.transaction() as db:
            db.execute("UPDATE cases SET status = ?, finished = ?, outputs = ?, attempts = COALESCE(?, attempts), "
                       "timings = ?, error = ?, duplicate_of = ? WHERE id = ?",
                       (status, time.time(), json.dumps(outputs or []), attempts,
                        json.dumps(timings or {}), error, duplicate_of, row_id))

    def record(self, input_name: str, status: str, worker: str, error: str | None = None,
               input_hash: str | None = None, claim: str | None = None) -> int:
        """Insert a row directly with ``status`` (an input quarantined before it got a processing row)."""
        with self.transaction() as db:
            now = time.time()
            cur = db.execute("INSERT INTO cases (case_name, input_name, input_hash, status, worker, claim, claimed, "
                             "finished, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                             (input_name, input_name, input_hash, status, worker, claim, now, now, error))
        return int(cur.lastrowid or 0)

    def rows(self, status: str | None = None) -> list[Row]:
        """All rows (optionally of one status), oldest first."""
        if status is None:
            found = self._db.execute("SELECT * FROM cases ORDER BY id").fetchall()
        else:
            found = self._db.execute("SELECT * FROM cases WHERE status = ? ORDER BY id", (status,)).fetchall()
        return [_row(r) for r in found]

    def counts(self) -> dict[str, int]:
        """Rows per status (every status present, 0 when none)."""
        out = dict.fromkeys(STATUSES, 0)
        for status, n in self._db.execute("SELECT status, COUNT(*) FROM cases GROUP BY status"):
            out[str(status)] = int(n)
        return out

    def stats(self) -> dict[str, Any]:
        """First claim, last finish and mean seconds per done case (None when nothing is done)."""
        r = self._db.execute("SELECT MIN(claimed), MAX(finished), AVG(finished - claimed), COUNT(*) FROM cases "
                             "WHERE status = 'done'").fetchone()
        return {"first_claimed": r[0], "last_finished": r[1], "mean_seconds": r[2], "done": r[3]}
