"""User-facing errors.

Anything a user can cause (a bad file, a bad config key, an empty dataset) is raised as a
:class:`MedattnError` whose message is one line naming the file and the problem. The CLI prints
that line and exits with status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

from pathlib import Path


class MedattnError(Exception):
    """A problem with the user's input, reported as one line (no traceback)."""

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)


class ConfigError(MedattnError):
    """A config file or override is invalid (unknown key, wrong type, bad value)."""


class DataError(MedattnError):
    """An input image, label or dataset description is missing, corrupt or inconsistent."""


class CheckpointError(MedattnError):
    """A checkpoint is missing, corrupt or incompatible."""


class TrainingError(MedattnError):
    """Training cannot continue (for example a non-finite loss)."""


def find_user_error(exc: BaseException | None) -> MedattnError | None:
    """The first :class:`MedattnError` in ``exc``'s cause/context chain, or None.

    MONAI wraps exceptions raised inside transforms in ``RuntimeError``; this digs the user-facing
    error back out so that it can still be reported as one line.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, MedattnError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None
