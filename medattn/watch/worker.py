"""One watch worker: loads the model once, then turns claimed cases into outputs, ledger rows or quarantine.

For a claimed case the order of steps is chosen so that a crash between any two of them leaves a
state that :meth:`Worker.recover` completes (the claim is adopted, or the ledger row reconciled):

1. hash the input; open a ledger row (the output name is reserved in that transaction);
2. skip it if a done case has the same hash (``duplicate``), unless ``reprocess``;
3. predict (transient errors retried with exponential backoff) and write the label map and manifest
   into this worker's staging folder ``OUTBOX/.medattn/staging/<worker>/``;
4. rename the label map, then the manifest (which marks the case complete) into OUTBOX;
5. remove the input (or move it to the archive folder); 6. close the ledger row.

Bad inputs go to the quarantine folder with ``<name>.error.txt``. The model-specific part is a
*handler*; :class:`SegmentationHandler` serves medattn segmentation checkpoints. Whole-slide MIL
checkpoints do not exist yet: :func:`make_handler` refuses them with a one-line error, and a slide
handler with the same three methods can be added there.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medattn import __version__
from medattn.engine.checkpoint import load_checkpoint
from medattn.engine.infer import (
    InferCase,
    case_manifest,
    failure_message,
    file_sha256,
    group_channel_files,
    write_case_outputs,
)
from medattn.engine.predictor import Predictor
from medattn.errors import CheckpointError, MedattnError
from medattn.io import case_name, prediction_path
from medattn.io.atomic import atomic_write_text
from medattn.io.dicom import is_dicom_file
from medattn.io.image import image_extension, short_reason
from medattn.watch.claims import AREA, ClaimArea, free_name, move
from medattn.watch.completeness import input_hash, split_series
from medattn.watch.ledger import Ledger, Row


class ShutdownNow(BaseException):
    """Raised in the worker on a second SIGTERM/SIGINT: give the current case back and stop."""


@dataclass
class WatchSettings:
    """Everything a worker needs (see ``medattn watch --help`` for the meaning of each)."""

    inbox: Path
    outbox: Path
    checkpoint: Path
    quarantine: Path | None = None
    archive: Path | None = None
    reprocess: bool = False
    retries: int = 3
    backoff: float = 1.0
    device: str = "auto"
    quiet: float = 5.0
    poll: float = 1.0
    observer: str = "auto"
    once: bool = False
    workers: int = 1


def is_transient(exc: BaseException) -> bool:
    """Worth retrying: I/O errors (also behind a DataError, e.g. a failed write), a locked ledger, CUDA OOM."""
    if isinstance(exc, MedattnError):
        return isinstance(exc.__cause__, OSError) and not isinstance(exc.__cause__, FileNotFoundError)
    if isinstance(exc, (sqlite3.OperationalError, TimeoutError)):
        return True
    if isinstance(exc, OSError):
        return not isinstance(exc, (FileNotFoundError, IsADirectoryError, NotADirectoryError))
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


class SegmentationHandler:
    """Segmentation of image files and DICOM series with a medattn checkpoint (model loaded once).

    Args:
        checkpoint: the checkpoint file. device: as for :class:`~medattn.engine.predictor.Predictor`.
    """

    def __init__(self, checkpoint: Path, ckpt: dict[str, Any], device: str = "auto") -> None:
        self.predictor = Predictor(ckpt, device=device)
        p = self.predictor
        self.settings = {**p.settings, "save_probabilities": False}
        self.common = {"medattn": __version__,
                       "checkpoint": {"path": str(checkpoint.resolve()), "sha256": file_sha256(checkpoint)},
                       "model": p.model_name, "labels": {str(k): v for k, v in p.labels.items()},
                       "channels": p.channels, "settings": self.settings, "preprocess": p.preprocess,
                       "device": str(p.device)}

    def problem(self, path: Path) -> str | None:
        """Why ``path`` cannot be a case (unsupported type), or None."""
        if path.is_dir():
            if not any(is_dicom_file(f) for f in path.iterdir() if not f.name.startswith(".")):
                return "not a DICOM series folder (no DICOM files in it)"
            return None
        if image_extension(path) is None and not is_dicom_file(path):
            return "unsupported file type (NIfTI, NRRD, MHA/MHD, DICOM or a DICOM series folder expected)"
        return None

    def base_name(self, path: Path) -> str:
        """The case name of an input (``infer``'s rule: a trailing ``_0000`` is dropped)."""
        return group_channel_files([path], 1)[0][0]

    def run(self, path: Path, case: str, staging: Path, extra: dict[str, Any]) -> list[Path]:
        """Predict ``path`` and write ``<case><ext>`` and ``<case>.json`` into ``staging``.

        Returns the written files, manifest last. ``extra`` is merged into the manifest.
        """
        ext = prediction_path(path, staging).name[len(case_name(path)) :]
        c = InferCase(case, (path,), staging / f"{case}{ext}", staging / "probabilities" / f"{case}.nii.gz",
                      staging / f"{case}.json")
        pred = self.predictor.predict([path])
        manifest = {**case_manifest(c, pred, self.common, False), **extra}
        return write_case_outputs(c, pred, manifest, False)


def make_handler(checkpoint: Path, device: str = "auto") -> SegmentationHandler:
    """The handler for a checkpoint (segmentation today; MIL slide checkpoints are not supported yet)."""
    ckpt = load_checkpoint(checkpoint)
    kind = str(ckpt.get("task") or ckpt.get("kind") or "segmentation")
    if kind != "segmentation":
        raise CheckpointError(f"'{kind}' checkpoints are not supported by medattn watch yet "
                              "(only segmentation)", checkpoint)
    return SegmentationHandler(checkpoint, ckpt, device)


class Worker:
    """Loads the model once, owns a claim-area folder and processes the cases it claims."""

    def __init__(self, settings: WatchSettings, log: Callable[[str], None] = print) -> None:
        self.s = settings
        self.log = log
        self.handler = make_handler(Path(settings.checkpoint), settings.device)
        self.outbox = Path(settings.outbox)
        self.outbox.mkdir(parents=True, exist_ok=True)
        self.quarantine = Path(settings.quarantine or self.outbox / "quarantine")
        self.ledger = Ledger(self.outbox)
        self.ledger.set_meta("inbox", str(Path(settings.inbox).resolve()))
        staging_root = self.outbox / AREA / "staging"
        self.claims = ClaimArea(settings.inbox, scratch_roots=(staging_root,))
        self.staging = staging_root / self.claims.worker
        self.counts = {"done": 0, "duplicate": 0, "quarantined": 0, "returned": 0}

    def close(self) -> None:
        """Release the claim area and the ledger."""
        self.claims.close()
        self.ledger.close()

    # -- recovery -------------------------------------------------------------------------------------
    def recover(self) -> list[Path]:
        """Adopt dead workers' claims and close their ledger rows; returns the claims to finish."""
        adopted, dead = self.claims.recover()
        for old, new in adopted.items():
            row = self.ledger.by_claim(old)
            if row is not None:
                self.ledger.adopt(row.id, self.claims.worker, self.claims.relative(new))
        for row in self.ledger.rows("processing"):
            if row.worker in dead and row.claim not in adopted:
                self._reconcile(row)
        if adopted:
            self.log(f"recovered {len(adopted)} case(s) of {len(dead)} stopped worker(s)")
        return self.claims.claimed()

    def _reconcile(self, row: Row) -> None:
        """A dead worker's row whose input is gone: it had finished all but the ledger update."""
        if self._outputs_complete(row.case_name, row.input_hash):
            self.ledger.finish(row.id, "done", outputs=self._manifest_outputs(row.case_name))
            return
        prev = self.ledger.done_with_hash(row.input_hash or "")
        if prev is not None and prev.id != row.id:
            self.ledger.finish(row.id, "duplicate", outputs=prev.outputs, duplicate_of=prev.id)
            return
        for err in self.quarantine.glob("*.error.txt") if self.quarantine.is_dir() else []:
            if f"ledger id: {row.id}\n" in err.read_text(encoding="utf-8", errors="replace"):
                self.ledger.finish(row.id, "quarantined", error=err.read_text(encoding="utf-8").splitlines()[0])
                return
        self.ledger.finish(row.id, "returned", error="the worker stopped after giving the input back")

    def _manifest_outputs(self, case: str) -> list[str]:
        manifest = json.loads((self.outbox / f"{case}.json").read_text(encoding="utf-8"))
        return [manifest["outputs"]["label"], f"{case}.json"]

    def _outputs_complete(self, case: str, digest: str | None) -> bool:
        try:
            manifest = json.loads((self.outbox / f"{case}.json").read_text(encoding="utf-8"))
            label = self.outbox / manifest["outputs"]["label"]
        except (OSError, ValueError, KeyError, TypeError):
            return False
        same_model = manifest.get("checkpoint") == self.handler.common["checkpoint"]
        return bool(digest) and manifest.get("input_sha256") == digest and same_model and label.is_file()

    # -- processing -----------------------------------------------------------------------------------
    def claim(self, entry: Path) -> Path | None:
        """Claim an inbox entry (None: another worker was faster)."""
        return self.claims.claim(entry)

    def process(self, claimed: Path) -> None:
        """Process a claimed entry (a DICOM folder with several series becomes one case per series)."""
        for part in split_series(claimed) if claimed.is_dir() else [claimed]:
            try:
                self._process_one(part)
            except ShutdownNow:
                shutil.rmtree(self.staging, ignore_errors=True)
                row = self.ledger.by_claim(self.claims.relative(part))
                if part.exists():
                    back = self.claims.return_to_inbox(part)
                    if row is not None:
                        self.ledger.finish(row.id, "returned", error=f"stopped; returned to {back}")
                    self.counts["returned"] += 1
                    self.log(f"returned {part.name} to the inbox")
                elif row is not None:
                    self._reconcile(row)  # stopped between its last two steps
                raise

    def _process_one(self, path: Path) -> None:
        rel = self.claims.relative(path)
        row = self.ledger.by_claim(rel)
        problem = self.handler.problem(path)
        if problem is None:
            try:
                digest = input_hash(path)
            except OSError as e:
                problem = f"cannot read: {e.strerror or short_reason(e)}"
        if problem is not None:
            self._quarantine(path, row, f"{Path(self.s.inbox) / path.name}: {problem}", 1)
            return
        if row is None:
            row = self.ledger.start(path.name, self.handler.base_name(path), digest, self.claims.worker, rel)
        prev = None if self.s.reprocess else self.ledger.done_with_hash(digest)
        if prev is not None and prev.id != row.id:
            self._finalize_input(path)
            self.ledger.finish(row.id, "duplicate", outputs=prev.outputs, duplicate_of=prev.id)
            self.counts["duplicate"] += 1
            self.log(f"duplicate {path.name} (same content as {prev.case_name}; not recomputed)")
            return
        if not self.s.reprocess and self._outputs_complete(row.case_name, digest):  # resumed after a crash
            self._finalize_input(path)
            self.ledger.finish(row.id, "done", outputs=self._manifest_outputs(row.case_name))
            self.counts["done"] += 1
            return
        t0 = time.time()
        extra = {"input_sha256": digest, "input_name": path.name,
                 "inputs": [str((Path(self.s.inbox) / row.input_name).resolve())],
                 "watch": {"worker": self.claims.worker, "ledger_id": row.id}}
        attempts = 0
        while True:
            attempts += 1
            try:
                self.staging.mkdir(parents=True, exist_ok=True)
                written = self.handler.run(path, row.case_name, self.staging, extra)
                break
            except Exception as e:
                if is_transient(e) and attempts <= self.s.retries:
                    delay = self.s.backoff * 2 ** (attempts - 1)
                    self.log(f"retrying {path.name} in {delay:g} s: {short_reason(e)}")
                    time.sleep(delay)
                    continue
                self._quarantine(path, row, failure_message(InferCase(row.case_name, (path,), path, path, path), e),
                                 attempts)
                return
        names = []
        for f in written:  # label first, manifest last: the manifest marks the case complete
            target = self.outbox / f.name
            f.replace(target)
            names.append(target.name)
        self._finalize_input(path)
        self.ledger.finish(row.id, "done", outputs=names, attempts=attempts,
                           timings={"seconds": round(time.time() - t0, 4), "since_claim": round(
                               time.time() - (row.claimed or t0), 4)})
        self.counts["done"] += 1
        self.log(f"done {path.name} → {names[0]}")

    def _finalize_input(self, path: Path) -> None:
        if self.s.archive is not None:
            Path(self.s.archive).mkdir(parents=True, exist_ok=True)
            move(path, free_name(Path(self.s.archive), path.name))
        elif path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()

    def _quarantine(self, path: Path, row: Row | None, message: str, attempts: int) -> None:
        arrived = Path(self.s.inbox) / (row.input_name if row is not None else path.name)
        message = message.replace(str(path), str(arrived)).replace(str(path.resolve()), str(arrived))
        self.quarantine.mkdir(parents=True, exist_ok=True)
        target = free_name(self.quarantine, path.name)
        row_id = row.id if row is not None else self.ledger.record(path.name, "processing", self.claims.worker,
                                                                     claim=self.claims.relative(path))
        atomic_write_text(target.with_name(target.name + ".error.txt"),
                          f"{message}\nledger id: {row_id}\nattempts: {attempts}\n"
                          f"worker: {self.claims.worker}\ntime: {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n")
        move(path, target)
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self.staging)
        self.ledger.finish(row_id, "quarantined", attempts=attempts, error=message, outputs=[target.name])
        self.counts["quarantined"] += 1
        self.log(f"quarantined {path.name}: {message}")
