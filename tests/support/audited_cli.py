"""Run the ``medattn`` command line while recording what this process writes under a folder.

``python audited_cli.py WATCHED RECORDS medattn-arguments...`` (also as a ``torchrun`` script). A Python
audit hook sees every ``open`` for writing, ``mkdir``, rename and removal; those under ``WATCHED`` are
written at exit to ``RECORDS/rank<RANK>.json``. It only observes: the command runs unchanged.
"""

from __future__ import annotations

import atexit
import json
import os
import runpy
import sys

WATCHED = os.path.realpath(sys.argv[1])
RECORDS = sys.argv[2]
events: list[list[str]] = []
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _inside(path) -> str | None:
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not isinstance(path, str | os.PathLike):
        return None
    real = os.path.realpath(os.fspath(path))
    return real if real == WATCHED or real.startswith(WATCHED + os.sep) else None


def _hook(event: str, args: tuple) -> None:
    if event == "open":
        path, mode, flags = args
        writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or \
            (isinstance(flags, int) and bool(flags & _WRITE_FLAGS))
        if writes and (p := _inside(path)):
            events.append(["write", p])
    elif event in ("os.rename", "os.mkdir", "os.remove", "os.rmdir"):
        p = _inside(args[1] if event == "os.rename" else args[0])  # rename: the destination
        if p:
            events.append([event, p])


def _save() -> None:
    os.makedirs(RECORDS, exist_ok=True)
    with open(os.path.join(RECORDS, f"rank{os.environ.get('RANK', '0')}.json"), "w") as fh:
        json.dump(events, fh)


atexit.register(_save)
sys.addaudithook(_hook)
sys.argv = ["medattn", *sys.argv[3:]]
runpy.run_module("medattn", run_name="__main__")
