#!/usr/bin/env bash
# The first README command: from a fresh clone to a running system.
# Creates .venv, installs viraltrace, and runs `viraltrace up` (one process,
# embedded defaults). Arguments go to `viraltrace up` (--host, --port, --data-dir).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh
ensure_venv
exec .venv/bin/viraltrace up "$@"
