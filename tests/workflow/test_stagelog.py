"""A stage's output goes to the console and to its log file, appended per attempt."""

from __future__ import annotations

import sys

from medattn.workflow.stagelog import stage_log


def test_stage_log_tees_stdout_and_stderr(tmp_path, capsys):
    log = tmp_path / "logs" / "x.log"
    with stage_log(log, "attempt 1"):
        print("hello")
        print("oops", file=sys.stderr)
    with stage_log(log, "attempt 2"):
        print("again")
    captured = capsys.readouterr()
    assert captured.out == "hello\nagain\n" and captured.err == "oops\n"
    assert log.read_text() == "\n=== attempt 1\nhello\noops\n\n=== attempt 2\nagain\n"
