"""A stage's log: everything it prints goes to the console and to ``RUN_DIR/logs/<stage>.log``."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

__all__ = ["Tee", "stage_log"]


class Tee:
    """Writes to the console stream and to a stage's log file."""

    def __init__(self, stream: TextIO, log: TextIO) -> None:
        self._stream, self._log = stream, log

    def write(self, text: str) -> int:
        self._log.write(text)
        return self._stream.write(text)

    def flush(self) -> None:
        self._log.flush()
        self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextlib.contextmanager
def stage_log(log_path: Path, header: str) -> Iterator[TextIO]:
    """Append ``=== header`` to ``log_path`` and tee ``sys.stdout``/``sys.stderr`` into it; yields the log file."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a", encoding="utf-8") as log:
        log.write(f"\n=== {header}\n")
        log.flush()
        with contextlib.redirect_stdout(Tee(sys.stdout, log)), contextlib.redirect_stderr(Tee(sys.stderr, log)):
            yield log
