"""Run a test module again in a fresh process with ``TRITON_INTERPRET=1``.

The Triton interpreter is chosen when triton is imported, so kernel tests cannot switch it on inside an
already running pytest. A module marks its kernel tests with :data:`interpreted` and calls
:func:`run_module_under_interpreter` from one ordinary test.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
interpreted = pytest.mark.skipif(not INTERPRETED, reason="runs in test_triton_kernels_under_the_interpreter")
not_interpreted = pytest.mark.skipif(INTERPRETED, reason="this is the interpreter run")


def run_module_under_interpreter(module_file: str, select: str, min_passed: int, timeout: int = 400) -> None:
    """Run ``pytest -k select`` on ``module_file`` with TRITON_INTERPRET=1 and require ``min_passed``
    tests to pass with none skipped or failed."""
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(Path(module_file).resolve()),
         "-k", select], env=env, capture_output=True, text=True, timeout=timeout)
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert "skipped" not in summary and "failed" not in summary, summary
    assert int(re.search(r"(\d+) passed", summary).group(1)) >= min_passed, summary
