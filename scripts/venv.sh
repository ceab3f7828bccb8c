# Sourced by scripts/up.sh and scripts/test.sh: creates .venv with Python >= 3.11
# when it is missing, and installs the project into it with the extras given
# as arguments (e.g. `ensure_venv test`).
ensure_venv() {
  if [ ! -x .venv/bin/python ]; then
    local python_bin
    python_bin=$(command -v python3.11 || command -v python3)
    "$python_bin" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
      || { echo "viraltrace needs Python >= 3.11" >&2; exit 1; }
    "$python_bin" -m venv .venv
  fi
  local target="."
  if [ $# -gt 0 ]; then target=".[$(IFS=,; echo "$*")]"; fi
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install -q --disable-pip-version-check -e "$target"
}
