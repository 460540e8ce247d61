"""The watcher loop: notice arrivals, wait until they are complete, claim and process them.

Each worker process runs :func:`run_worker`: it loads the model once, finishes what dead workers left
in the claim area, then loops: scan the inbox (:class:`~medattn.watch.completeness.CompletenessTracker`),
claim each ready entry and process it, and sleep until a filesystem event (inotify through watchdog)
or the poll interval. Polling alone is used on network filesystems (NFS, SMB, …), where inotify does
not see other machines' writes, or when asked (``observer="polling"``).

Signals: the first SIGTERM/SIGINT lets the current case finish and then stops; a second one stops at
once and gives the current case back to the inbox. With ``workers > 1``, :func:`watch` starts that
many worker processes (each loads the model once) and forwards signals to them; a worker whose
parent disappears stops like on SIGTERM.
"""

from __future__ import annotations

import datetime
import logging
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medattn.errors import ConfigError, DataError
from medattn.watch.completeness import CompletenessTracker
from medattn.watch.worker import ShutdownNow, WatchSettings, Worker

OBSERVERS = ("auto", "inotify", "polling")
NETWORK_FILESYSTEMS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "afs", "ceph", "glusterfs", "lustre",
                       "gpfs", "fuse.sshfs", "fuse.s3fs", "fuse.gcsfuse", "davfs", "fuse.rclone")


def filesystem_type(path: Path) -> str:
    """The type of the filesystem holding ``path`` (from /proc/mounts; ``"unknown"`` elsewhere)."""
    target = os.path.realpath(path)
    best, kind = "", "unknown"
    try:
        with open("/proc/mounts", encoding="utf-8") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) < 3:
                    continue
                mount = parts[1].replace("\\040", " ")
                inside = target == mount or target.startswith(mount.rstrip("/") + "/")
                if inside and len(mount) >= len(best):
                    best, kind = mount, parts[2]
    except OSError:
        pass
    return kind


def choose_observer(inbox: Path, observer: str) -> str:
    """``"inotify"`` or ``"polling"``: ``auto`` polls on network filesystems and uses inotify elsewhere."""
    if observer not in OBSERVERS:
        raise ConfigError(f"observer must be one of {', '.join(OBSERVERS)}, got '{observer}'")
    if observer != "auto":
        return observer
    return "polling" if filesystem_type(inbox) in NETWORK_FILESYSTEMS else "inotify"


def _start_inotify(inbox: Path, wake: threading.Event, log: Callable[[str], None]) -> Any:
    try:
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer

        class _Wake(FileSystemEventHandler):
            def on_any_event(self, event: Any) -> None:
                wake.set()

        # watchdog logs a harmless error when a pending event meets observer.stop(); keep stderr clean
        logging.getLogger("watchdog.observers.inotify").setLevel(logging.CRITICAL)
        observer = Observer()
        observer.schedule(_Wake(), str(inbox), recursive=False)
        observer.start()
        return observer
    except Exception as e:  # e.g. the inotify watch limit: polling still finds everything
        log(f"inotify unavailable ({type(e).__name__}: {e}); polling instead")
        return None


def _log_line(worker: str) -> Callable[[str], None]:
    def log(message: str) -> None:
        now = datetime.datetime.now().strftime("%H:%M:%S")
        print(f"{now} [{worker}] {message}", flush=True)
    return log


def run_worker(settings: WatchSettings, log: Callable[[str], None] | None = None,
               child: bool = False) -> dict[str, int]:
    """Run one worker until stopped (or, with ``settings.once``, until the inbox is empty).

    Returns the number of cases done, duplicate, quarantined and returned by this worker.
    """
    state = {"signals": 0}
    parent = os.getppid()

    def on_signal(signum: int, frame: Any) -> None:
        state["signals"] += 1
        if state["signals"] >= 2:
            raise ShutdownNow()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    worker = Worker(settings, log or (lambda m: None))
    say = log or _log_line(worker.claims.worker)
    worker.log = say
    inbox = Path(settings.inbox)
    wake = threading.Event()
    observer = None
    try:
        kind = choose_observer(inbox, settings.observer)
        say(f"watching {inbox} ({kind}), model {worker.handler.predictor.model_name} on "
            f"{worker.handler.predictor.device}")
        for claimed in worker.recover():
            if state["signals"]:
                break
            worker.process(claimed)
        if kind == "inotify":
            observer = _start_inotify(inbox, wake, say)
        tracker = CompletenessTracker(settings.quiet)
        while not state["signals"]:
            ready, waiting = tracker.scan(inbox)
            for entry in ready:
                if state["signals"]:
                    break
                try:
                    claimed = worker.claim(entry)
                except OSError as e:
                    raise DataError(f"cannot claim: {e.strerror or e}", entry) from e
                if claimed is not None:
                    worker.process(claimed)
            if settings.once and not ready and not waiting:
                break
            if child and os.getppid() != parent:
                say("parent process gone; stopping")
                break
            wake.wait(settings.poll)
            wake.clear()
    except ShutdownNow:
        pass
    finally:
        if observer is not None:
            observer.stop()
            observer.join(timeout=5)
        worker.close()
        say(f"stopped: {worker.counts['done']} done, {worker.counts['duplicate']} duplicate, "
            f"{worker.counts['quarantined']} quarantined, {worker.counts['returned']} returned")
    return dict(worker.counts)


def _child(settings: WatchSettings) -> None:
    import torch

    os.setpgrp()  # a terminal's Ctrl-C reaches the parent only, which forwards it once
    # share the cores instead of oversubscribing them (each worker would otherwise take them all)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // settings.workers))
    run_worker(settings, child=True)


def check_settings(s: WatchSettings) -> None:
    """Refuse settings that would lose or loop on data (one-line errors)."""
    inbox = Path(s.inbox)
    if not inbox.is_dir():
        raise DataError("no such folder" if not inbox.exists() else "not a folder", inbox)
    if not Path(s.checkpoint).is_file():
        raise DataError("no such checkpoint file", s.checkpoint)
    if s.workers < 1 or s.retries < 0 or s.quiet < 0 or s.poll <= 0 or s.backoff < 0:
        raise ConfigError("workers must be >= 1, retries, quiet and backoff >= 0, poll > 0")
    choose_observer(inbox, s.observer)
    root = inbox.resolve()
    for name, folder in (("output", s.outbox), ("quarantine", s.quarantine), ("archive", s.archive)):
        if folder is None:
            continue
        f = Path(folder).resolve()
        if f == root or (root in f.parents and not f.relative_to(root).parts[0].startswith(".")):
            raise ConfigError(f"the {name} folder {folder} is inside the inbox {inbox}; its files would be "
                              "taken as new cases")


def watch(settings: WatchSettings) -> dict[str, int]:
    """Watch ``settings.inbox`` with ``settings.workers`` worker processes; returns the summed counts.

    Raises:
        DataError / ConfigError / CheckpointError: bad folders, settings or checkpoint.
    """
    check_settings(settings)
    if settings.workers == 1:
        return run_worker(settings)
    from medattn.engine.checkpoint import load_checkpoint

    load_checkpoint(settings.checkpoint)  # a bad checkpoint fails here with one line, not in N children
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_child, args=(settings,), name=f"medattn-watch-{i}") for i in range(settings.workers)]
    for p in procs:
        p.start()

    def forward(signum: int, frame: Any) -> None:
        for p in procs:
            if p.pid is not None and p.is_alive():
                os.kill(p.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for p in procs:
        p.join()
    failed = [p.exitcode for p in procs if p.exitcode]
    if failed:
        raise DataError(f"{len(failed)} worker process(es) failed (exit status {failed[0]}); see their output")
    return {}
