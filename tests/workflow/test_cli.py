"""`medattn run` as a user runs it: one-line errors, dry run, and Ctrl-C (SIGINT) in a real subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from medattn.cli import main


def test_bad_workflow_is_one_line_with_status_2(tmp_path, wf_helpers, capsys):
    tiny_stages, write = wf_helpers
    stages = tiny_stages()
    stages[1]["kind"] = "fit"
    path = write(tmp_path / "bad.yaml", stages)
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert err == (f"medattn: error: {path}: stage 'model': unknown stage kind 'fit' "
                   "(available: synth, train, infer, evaluate, synth_slides, synth_bags, features, explain, "
                   "report)\n")


def test_dry_run_prints_what_would_run_and_why(tmp_path, wf_helpers, capsys):
    tiny_stages, write = wf_helpers
    path = write(tmp_path / "w.yaml", tiny_stages())
    assert main(["run", str(path), "-o", str(tmp_path / "run"), "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == ["[1/4] data (synth): would run — it has no finished output",
                   "[2/4] model (train): would run — stage 'data' that it reads runs first",
                   "[3/4] predictions (infer): would run — stage 'model' that it reads runs first",
                   "[4/4] evaluation (evaluate): would run — stage 'predictions' that it reads runs first",
                   "dry run: 4 stage(s) would run, 0 up to date; nothing written"]
    assert not (tmp_path / "run").exists()


def _default_sigint() -> None:
    # A test run started in the background of a non-interactive shell inherits SIGINT ignored, and
    # Python then never raises KeyboardInterrupt; give the child the disposition a terminal user has.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _medattn(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "2"}
    return subprocess.Popen([sys.executable, "-m", "medattn", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, preexec_fn=_default_sigint)


def test_ctrl_c_during_a_stage_leaves_no_partial_output_and_resumes(tmp_path, wf_helpers):
    tiny_stages, write = wf_helpers
    # synth → train, with enough epochs that the interrupt lands mid-training even on a fast machine
    path = write(tmp_path / "w.yaml", tiny_stages(epochs=30)[:2])
    run = tmp_path / "run"
    proc = _medattn("run", str(path), "-o", str(run), "--no-progress")
    deadline = time.monotonic() + 300
    while not list(run.glob(".model.partial-*/checkpoints/last.pt")):  # training has finished an epoch
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "medattn: interrupted" in err and "Traceback" not in err
    assert not (run / "model").exists()  # no half-written stage output
    assert (run / "data" / "dataset.json").is_file()  # the finished stage is kept
    manifest = json.loads((run / "manifest.json").read_text())
    status = {s["name"]: s["status"] for s in manifest["stages"]}
    assert manifest["status"] == "interrupted" and status == {"data": "ran", "model": "interrupted"}

    proc = _medattn("run", str(path), "-o", str(run), "--no-progress")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "[1/2] data (synth): up to date, skipped" in out
    assert "[2/2] model (train): running — its last attempt did not finish" in out
    assert "resuming the interrupted training" in (run / "logs" / "model.log").read_text()
    rows = (run / "model" / "log.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 30 and not list(run.glob(".model.partial-*"))
