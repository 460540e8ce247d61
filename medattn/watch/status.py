"""``medattn watch --status OUTBOX``: a summary of the ledger (done, failed, pending, throughput)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from medattn.errors import DataError
from medattn.watch.completeness import is_entry
from medattn.watch.ledger import LEDGER_FILE, Ledger


def watch_status(outbox: str | Path, now: float | None = None) -> dict[str, Any]:
    """Counts per status, cases waiting in the inbox, throughput and mean claim→output seconds.

    Raises:
        DataError: ``outbox`` has no ledger (``medattn watch`` never wrote there).
    """
    outbox = Path(outbox)
    if not (outbox / LEDGER_FILE).is_file():
        raise DataError(f"no {LEDGER_FILE} here (not an output folder of medattn watch)", outbox)
    ledger = Ledger(outbox)
    try:
        counts = ledger.counts()
        stats = ledger.stats()
        inbox = ledger.meta("inbox")
        recent = [r for r in ledger.rows("done") if r.finished and r.finished >= (now or time.time()) - 3600]
    finally:
        ledger.close()
    waiting = None
    if inbox and os.path.isdir(inbox):
        waiting = sum(1 for n in os.listdir(inbox) if is_entry(Path(inbox) / n))
    span = None
    if stats["done"] and stats["last_finished"] and stats["first_claimed"]:
        span = max(stats["last_finished"] - stats["first_claimed"], 1e-6)
    return {
        "outbox": str(outbox), "inbox": inbox, **counts,
        "failed": counts["quarantined"],
        "pending": counts["processing"] + (waiting or 0), "waiting_in_inbox": waiting,
        "cases_per_minute": round(60.0 * stats["done"] / span, 2) if span else None,
        "done_last_hour": len(recent),
        "mean_seconds_claim_to_output": round(stats["mean_seconds"], 3) if stats["mean_seconds"] else None,
    }


def format_status(s: dict[str, Any]) -> str:
    """The status as a few aligned lines."""
    lines = [f"outbox:      {s['outbox']}", f"inbox:       {s['inbox'] or '(unknown)'}",
             f"done:        {s['done']}  (duplicates skipped: {s['duplicate']})",
             f"failed:      {s['failed']}  (quarantined)",
             f"pending:     {s['pending']}  ({s['processing']} processing, "
             f"{s['waiting_in_inbox'] if s['waiting_in_inbox'] is not None else '?'} waiting in the inbox)",
             f"returned:    {s['returned']}  (given back on shutdown)"]
    if s["cases_per_minute"] is not None:
        lines.append(f"throughput:  {s['cases_per_minute']} cases/min overall, {s['done_last_hour']} in the last "
                     f"hour; {s['mean_seconds_claim_to_output']} s per case from claim to output")
    return "\n".join(lines)
