#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv.
#
# torch is resolved first and on its own, so that a CPU-only machine does not download the
# multi-GB CUDA build that a bare `torch` requirement selects:
#   1. a torch already importable by the base interpreter is reused (venv with system site-packages);
#   2. otherwise a torch wheel that pip can find locally (pip's find-links, e.g. /opt/wheels) is used;
#   3. otherwise pip resolves `torch>=2.4` from the configured index as usual.
# Then medattn is installed in editable mode with the `dev` extra.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
STAMP="$VENV/.medattn-installed"

if [ -f "$STAMP" ] && [ "$STAMP" -nt pyproject.toml ] && [ "$STAMP" -nt setup.py ]; then
  exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
  if "$PY" -c "import torch" >/dev/null 2>&1; then
    echo "setup: reusing the torch installed for $PY"
    "$PY" -m venv --system-site-packages "$VENV"
  else
    "$PY" -m venv "$VENV"
  fi
fi
VPY="$VENV/bin/python"
"$VPY" -m pip install -q --upgrade pip >/dev/null 2>&1 || true

if ! "$VPY" -c "import torch" >/dev/null 2>&1; then
  if "$VPY" -m pip install -q --no-index --no-deps torch >/dev/null 2>&1; then
    echo "setup: installed the locally available torch wheel (no CUDA download)"
  else
    echo "setup: no local torch wheel found; pip will resolve torch from the package index"
  fi
fi

"$VPY" -m pip install -q -e ".[dev]"
touch "$STAMP"
echo "setup: environment ready in $VENV (torch $("$VPY" -c 'import torch; print(torch.__version__)'))"
