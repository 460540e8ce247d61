"""Helpers for the ``medattn watch`` tests: small cases, a watcher subprocess, and the invariant checks."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from medattn.io import Geometry, read_image, write_image
from medattn.watch.ledger import Ledger

GEOMETRY = Geometry.from_arrays((1.5, 1.5, 3.0), (0.0, 0.0, 0.0), np.eye(3))
SHAPE = (24, 24, 12)


def write_case(path: Path, seed: int) -> Path:
    """A small random float image (24×24×12) written atomically; returns ``path``."""
    rng = np.random.default_rng(seed)
    return write_image(rng.normal(size=SHAPE).astype(np.float32), path, GEOMETRY)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def watcher(inbox: Path, outbox: Path, checkpoint: Path, *extra: str, log: Path | None = None) -> subprocess.Popen:
    """Start ``medattn watch`` as a real subprocess (output to ``log``)."""
    cmd = [sys.executable, "-m", "medattn", "watch", str(inbox), "-o", str(outbox), "--checkpoint",
           str(checkpoint), "--device", "cpu", "--poll", "0.1", *extra]
    out = open(log or outbox.parent / f"watch-{time.monotonic_ns()}.log", "ab")  # noqa: SIM115
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
    proc.send_signal(sig)
    return proc.wait(timeout=timeout)


def manifests(outbox: Path) -> list[Path]:
    return sorted(p for p in outbox.glob("*.json"))


def assert_consistent(inbox: Path, outbox: Path, expected: dict[str, str], quarantined: set[str] = frozenset(),
                      duplicates: int = 0) -> None:
    """Nothing lost, duplicated or half-written.

    Args:
        expected: output case name → sha256 of the input it must come from.
        quarantined: names expected in the quarantine folder (each with an error file).
        duplicates: number of inputs expected to be recognised as duplicates.
    """
    leftovers = [p.name for p in inbox.iterdir() if not p.name.startswith(".")]
    assert leftovers == [], f"inputs left in the inbox: {leftovers}"
    processing = inbox / ".medattn" / "processing"
    claims = [p for p in processing.rglob("*") if p.is_file() and p.name != ".lock"] if processing.exists() else []
    assert claims == [], f"claims left behind: {claims}"
    hidden = [p.name for p in outbox.iterdir() if p.name.startswith(".") and p.name != ".medattn"]
    assert hidden == [], f"temporary files in the outbox: {hidden}"
    staging = [p for p in (outbox / ".medattn").rglob("*") if p.is_file()] if (outbox / ".medattn").exists() else []
    assert staging == [], f"staged outputs left behind: {staging}"
    assert sorted(p.stem for p in manifests(outbox)) == sorted(expected)
    labels = sorted(p.name for p in outbox.iterdir() if p.is_file() and p.suffix != ".json"
                    and not p.name.startswith(("ledger.sqlite", ".")))
    named = sorted(json.loads((outbox / f"{c}.json").read_text())["outputs"]["label"] for c in expected)
    assert labels == named, "label maps differ from the expected cases"
    for case, digest in expected.items():
        m = json.loads((outbox / f"{case}.json").read_text())
        assert m["case"] == case and m["input_sha256"] == digest, case
        label = read_image(outbox / m["outputs"]["label"])
        assert label.array.shape[1:] == tuple(m["input_shape"]), case
        assert set(np.unique(label.array)) <= {0, 1, 2}, case
    q = outbox / "quarantine"
    found = {p.name for p in q.iterdir() if not p.name.endswith(".error.txt")} if q.exists() else set()
    assert found == set(quarantined), f"quarantine holds {found}"
    for name in found:
        assert (q / f"{name}.error.txt").read_text().strip(), name
    ledger = Ledger(outbox)
    try:
        counts = ledger.counts()
        done = ledger.rows("done")
    finally:
        ledger.close()
    assert counts["processing"] == 0, counts
    assert sorted(r.case_name for r in done) == sorted(expected), "one done ledger row per case"
    assert {r.case_name: r.input_hash for r in done} == expected
    assert counts["quarantined"] == len(quarantined) and counts["duplicate"] == duplicates, counts
