"""Claims by rename: exactly one winner across processes; dead workers' claims are adopted."""

from __future__ import annotations

import multiprocessing
import os
import signal
from pathlib import Path

from medattn.watch.claims import ClaimArea, free_name, move


def _claim_all(inbox: str, names: list[str], out: multiprocessing.Queue) -> None:
    area = ClaimArea(inbox)
    got = [n for n in names if area.claim(Path(inbox) / n) is not None]
    out.put((area.worker, got))


def test_racing_processes_claim_every_entry_exactly_once(tmp_path: Path) -> None:
    names = [f"f{i:03d}.nii.gz" for i in range(300)]
    for n in names:
        (tmp_path / n).write_bytes(n.encode())
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_claim_all, args=(str(tmp_path), names, q)) for _ in range(3)]
    for p in procs:
        p.start()
    results = [q.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    claimed = [n for _, got in results for n in got]
    assert sorted(claimed) == names  # each exactly once
    for worker, got in results:  # and the content is where the winner says
        assert sorted(p.name for p in (tmp_path / ".medattn" / "processing" / worker).iterdir()
                      if p.name != ".lock") == sorted(got)


def _claim_and_die(inbox: str) -> None:
    area = ClaimArea(inbox, worker_id="dead-worker")
    area.claim(Path(inbox) / "x.nii.gz")
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_dead_workers_claim_is_adopted_and_a_live_one_is_not(tmp_path: Path) -> None:
    (tmp_path / "x.nii.gz").write_bytes(b"x")
    (tmp_path / "y.nii.gz").write_bytes(b"y")
    p = multiprocessing.get_context("fork").Process(target=_claim_and_die, args=(str(tmp_path),))
    p.start()
    p.join(timeout=60)
    assert p.exitcode == -signal.SIGKILL
    live = ClaimArea(tmp_path)
    live.claim(tmp_path / "y.nii.gz")
    scratch = tmp_path / "scratch"
    (scratch / "dead-worker").mkdir(parents=True)
    (scratch / "dead-worker" / "half.nii.gz").write_bytes(b"half")
    me = ClaimArea(tmp_path, scratch_roots=(scratch,))
    adopted, dead = me.recover()
    assert dead == {"dead-worker"}
    assert adopted == {"dead-worker/x.nii.gz": me.dir / "x.nii.gz"}
    assert (me.dir / "x.nii.gz").read_bytes() == b"x"
    assert (live.dir / "y.nii.gz").read_bytes() == b"y"  # the live worker keeps its claim
    assert not (scratch / "dead-worker").exists()
    assert sorted(d.name for d in me.root.iterdir()) == sorted([me.worker, live.worker])
    back = me.return_to_inbox(me.dir / "x.nii.gz")
    assert back == tmp_path / "x.nii.gz" and back.read_bytes() == b"x"
    live.close()
    me.close()


def test_free_name_and_move(tmp_path: Path) -> None:
    (tmp_path / "a.nii.gz").write_bytes(b"1")
    assert free_name(tmp_path, "a.nii.gz") == tmp_path / "a__2.nii.gz"
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"2")
    moved = move(tmp_path / "d", tmp_path / "e")
    assert (moved / "f").read_bytes() == b"2" and not (tmp_path / "d").exists()
