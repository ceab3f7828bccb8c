#!/usr/bin/env bash
# The first README command: from a fresh clone to a running system.
# Creates .venv, installs viraltrace, and runs `viraltrace up` (one process,
# embedded defaults). Arguments go to `viraltrace up` (--host, --port, --data-dir).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python_bin=$(command -v python3.11 || command -v python3)
  "$python_bin" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || { echo "viraltrace needs Python >= 3.11" >&2; exit 1; }
  "$python_bin" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e .
exec .venv/bin/viraltrace up "$@"
