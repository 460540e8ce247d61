"""Folder-watch batch inference (``medattn watch``) that never loses or duplicates a case.

=================  ===========================================================================
module             does
=================  ===========================================================================
completeness       when an arrival is complete (quiet period, ``.done`` marker, DICOM checks);
                   splitting a folder by SeriesInstanceUID
claims             atomic claims by rename into ``INBOX/.medattn/processing/<worker>/``;
                   adoption of dead workers' claims (NFS caveats are documented there)
ledger             the SQLite ledger ``OUTBOX/ledger.sqlite``
worker             one worker: model loaded once, outputs, quarantine, retries, dedupe by hash
service            the loop: inotify (watchdog) or polling, signals, ``--once``, several workers
status             ``medattn watch --status OUTBOX``
=================  ===========================================================================
"""

from __future__ import annotations

from typing import Any

__all__ = ["WatchSettings", "watch", "watch_status"]
_HOME = {"WatchSettings": "medattn.watch.worker", "watch": "medattn.watch.service",
         "watch_status": "medattn.watch.status"}


def __getattr__(name: str) -> Any:
    """Lazy exports: ``import medattn.watch.cli`` (done by every ``medattn`` command) must not import torch."""
    if name in _HOME:
        import importlib

        return getattr(importlib.import_module(_HOME[name]), name)
    raise AttributeError(f"module 'medattn.watch' has no attribute {name!r}")
