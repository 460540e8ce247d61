"""``medattn watch``: argument parsing and the command handler."""

from __future__ import annotations

import argparse
from pathlib import Path

from medattn.errors import ConfigError


def cmd_watch(a: argparse.Namespace) -> int:
    if a.status:
        from medattn.watch.status import format_status, watch_status

        print(format_status(watch_status(a.status)))
        return 0
    if not a.inbox or not a.output or not a.checkpoint:
        raise ConfigError("medattn watch needs INBOX, -o OUTBOX and --checkpoint (or --status OUTBOX)")
    from medattn.watch.service import watch
    from medattn.watch.worker import WatchSettings

    settings = WatchSettings(
        inbox=Path(a.inbox), outbox=Path(a.output), checkpoint=Path(a.checkpoint),
        quarantine=Path(a.quarantine) if a.quarantine else None, archive=Path(a.archive) if a.archive else None,
        reprocess=a.reprocess, retries=a.retries, backoff=a.backoff, device=a.device, quiet=a.quiet,
        poll=a.poll, observer=a.observer, once=a.once, workers=a.workers)
    watch(settings)
    return 0


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add the ``watch`` subcommand to ``sub``."""
    w = sub.add_parser("watch", parents=[common], help="watch a folder and segment every case dropped into it",
                       description="Folder-watch inference: cases dropped into INBOX (NIfTI, NRRD, MHA files, "
                       "DICOM series folders) are segmented into OUTBOX once complete; see medattn/watch/.")
    w.add_argument("inbox", nargs="?", help="the folder to watch")
    w.add_argument("-o", "--output", help="output folder (label maps, manifests, ledger.sqlite, quarantine/)")
    w.add_argument("--checkpoint", help="medattn checkpoint (loaded once per worker)")
    w.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    w.add_argument("--once", action="store_true", help="process what is in the inbox, then exit")
    w.add_argument("--status", metavar="OUTBOX", help="summarise the ledger of OUTBOX and exit")
    w.add_argument("--observer", choices=("auto", "inotify", "polling"), default="auto",
                   help="auto: inotify, but polling on network filesystems")
    w.add_argument("--quiet", type=float, default=5.0,
                   help="seconds an input must stay unchanged before it is taken (default 5; a NAME.done "
                   "marker skips the wait)")
    w.add_argument("--poll", type=float, default=1.0, help="scan interval in seconds (default 1)")
    w.add_argument("--quarantine", help="folder for bad inputs (default OUTBOX/quarantine)")
    w.add_argument("--archive", help="move processed inputs here (default: delete them once their outputs exist)")
    w.add_argument("--reprocess", action="store_true", help="recompute inputs whose content was already done")
    w.add_argument("--retries", type=int, default=3, help="retries for transient errors (default 3)")
    w.add_argument("--backoff", type=float, default=1.0, help="first retry delay in seconds, doubled each time")
    w.add_argument("--device", default="auto")
    w.set_defaults(func=cmd_watch)
