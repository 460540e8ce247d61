"""Atomic claims: a worker takes a case by renaming it into its own folder of the claim area.

Layout (inside the inbox, so that every rename stays on one filesystem)::

    INBOX/.medattn/processing/<worker id>/        one folder per live worker
    INBOX/.medattn/processing/<worker id>/.lock   flock()ed by the worker for as long as it lives
    INBOX/.medattn/processing/<worker id>/<name>  a claimed case

``rename(2)`` within one filesystem is atomic: of several workers renaming the same entry, exactly
one succeeds and the others get ``ENOENT``. The worker id (``host-pid-random``) is unique, so the
targets never collide, on one machine or on several machines sharing the folder.

A worker that dies (crash, ``kill -9``, power loss) releases its lock with its process. At start
every worker calls :meth:`ClaimArea.recover`: folders whose lock it can take belong to dead workers,
and their claims are *adopted* (renamed into the new worker's folder) so that the new worker
finishes them; nothing stays behind and nothing is processed twice.

NFS caveats: ``rename`` is atomic on the server, but a client that retransmits a rename whose reply
was lost may report ``ENOENT`` for a rename that succeeded; :meth:`ClaimArea.claim` therefore checks
for its own target before concluding that another worker won. ``flock`` is mapped to POSIX byte-range
locks on NFS (Linux ≥ 2.6.12); these need NFSv4 or a working NLM lock manager, and a crashed client's
locks are freed only when its lease expires (NFSv4: about 90 s), so recovery of a dead machine's
claims waits for that. Use ``--observer polling`` on network mounts (inotify does not see other
machines' writes).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import shutil
import socket
from pathlib import Path

from medattn.watch.completeness import MARKER, marker_of, undo_partial_splits

AREA = ".medattn"
LOCK = ".lock"


def new_worker_id() -> str:
    """A worker id unique across processes and machines: ``<host>-<pid>-<8 random hex>``."""
    host = "".join(c if c.isalnum() or c in "-_" else "_" for c in socket.gethostname())[:40] or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(4)}"


def free_name(folder: Path, name: str) -> Path:
    """``folder/name``, or ``folder/<stem>__<k><ext>`` for the first k that does not exist yet."""
    target = folder / name
    k = 2
    while target.exists() or target.is_symlink():
        stem, dot, ext = name.partition(".")
        target = folder / f"{stem}__{k}{dot}{ext}"
        k += 1
    return target


def move(src: Path, dst: Path) -> Path:
    """Move a file or folder: rename, or (across filesystems) copy to a hidden name, rename, delete."""
    try:
        os.replace(src, dst)
        return dst
    except OSError as e:
        if e.errno != 18:  # EXDEV: another filesystem
            raise
    tmp = dst.with_name(f".{dst.name}.{secrets.token_hex(4)}.tmp")
    if src.is_dir():
        shutil.copytree(src, tmp)
    else:
        shutil.copy2(src, tmp)
    os.replace(tmp, dst)
    if src.is_dir():
        shutil.rmtree(src)
    else:
        src.unlink()
    return dst


class ClaimArea:
    """This worker's folder of the claim area of ``inbox``, locked for the worker's lifetime.

    Args:
        inbox: the watched folder.
        worker_id: defaults to :func:`new_worker_id`.
        scratch_roots: folders holding per-worker scratch folders (``<root>/<worker id>``), removed
            with a dead worker's claims (e.g. the output staging folder).
    """

    def __init__(self, inbox: str | Path, worker_id: str | None = None,
                 scratch_roots: tuple[Path, ...] = ()) -> None:
        self.inbox = Path(inbox)
        self.root = self.inbox / AREA / "processing"
        self.worker = worker_id or new_worker_id()
        self.dir = self.root / self.worker
        self.scratch_roots = tuple(Path(r) for r in scratch_roots)
        self.root.mkdir(parents=True, exist_ok=True)
        # lock first, then appear: recovery never sees a live worker's folder without its lock held
        tmp = self.root / f".new-{self.worker}"
        tmp.mkdir()
        self._lock = open(tmp / LOCK, "a")  # noqa: SIM115 - held for the worker's lifetime
        fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(tmp, self.dir)

    def relative(self, path: Path) -> str:
        """A claimed path as stored in the ledger: ``<worker id>/<name>``."""
        return f"{path.parent.name}/{path.name}"

    def claim(self, entry: Path) -> Path | None:
        """Rename ``entry`` into this worker's folder; None when another worker took it first."""
        target = self.dir / entry.name
        try:
            os.rename(entry, target)
        except FileNotFoundError:
            if not target.exists():  # NFS: a retransmitted rename can report ENOENT after success
                return None
        with contextlib.suppress(FileNotFoundError):
            marker_of(entry).unlink()
        with contextlib.suppress(FileNotFoundError):
            (target / MARKER).unlink() if target.is_dir() else None
        return target

    def claimed(self) -> list[Path]:
        """This worker's claimed entries, by name."""
        return sorted((p for p in self.dir.iterdir() if not p.name.startswith(".")), key=lambda p: p.name)

    def return_to_inbox(self, path: Path) -> Path:
        """Give a claimed entry back to the inbox (under a free name); returns its new path."""
        return move(path, free_name(self.inbox, path.name))

    def recover(self) -> tuple[dict[str, Path], set[str]]:
        """Adopt the claims of dead workers.

        Returns ``({old relative claim: new path}, ids of the dead workers found)``. Also removes dead
        workers' scratch folders (half-written outputs) and their folders.
        """
        adopted: dict[str, Path] = {}
        dead: set[str] = set()
        for other in sorted(self.root.iterdir()):
            if other == self.dir or not other.is_dir() or other.name.startswith("."):
                continue
            try:
                fh = open(other / LOCK, "a")  # noqa: SIM115
            except OSError:
                continue
            with fh:
                try:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    continue  # alive
                dead.add(other.name)
                undo_partial_splits(other)
                for entry in sorted(other.iterdir()):
                    if entry.name.startswith("."):
                        continue
                    target = free_name(self.dir, entry.name)
                    os.rename(entry, target)
                    adopted[f"{other.name}/{entry.name}"] = target
                for root in self.scratch_roots:
                    shutil.rmtree(root / other.name, ignore_errors=True)
                with contextlib.suppress(OSError):
                    (other / LOCK).unlink()
                with contextlib.suppress(OSError):
                    other.rmdir()
        return adopted, dead

    def close(self) -> None:
        """Release the lock and remove this worker's folder if nothing is left in it."""
        for root in self.scratch_roots:
            shutil.rmtree(root / self.worker, ignore_errors=True)
        if not self.claimed():
            with contextlib.suppress(OSError):
                (self.dir / LOCK).unlink()
            with contextlib.suppress(OSError):
                self.dir.rmdir()
        self._lock.close()
