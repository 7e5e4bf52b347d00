#!/usr/bin/env bash
# Free TCP port helper for the test servers.  Source it and call the functions,
# or run it: `tests/lib/ports.sh [N]` prints N (default 1) free ports, one a line.
#
#   free_port           print one free port
#   free_ports N        print N distinct free ports, one a line
#   port_is_free PORT   exit 0 if nothing uses PORT (any state, any address)
#
# Ports are drawn at random from 20000-32767, below the kernel's ephemeral
# range (so outgoing connections never take them), must not appear in `ss`
# (listening or connected, any address), and are reserved for a while with an
# atomic mkdir under LOCKFN_PORT_DIR (default /tmp/lockfn-test-ports), so two
# servers started at the same moment never get the same port.  Reservations
# older than 10 minutes are reclaimed; by then the server has bound its port.
# Everything is bounded: at most 200 candidates are tried per port.

# Sourced, it must not change the caller's shell options (a sourced `set -e` once made a test
# suite's EXIT trap fail on a harmless `kill` of a gone process): strict mode only when run.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  set -euo pipefail
fi

LOCKFN_PORT_DIR=${LOCKFN_PORT_DIR:-/tmp/lockfn-test-ports}
LOCKFN_PORT_MIN=${LOCKFN_PORT_MIN:-20000}
LOCKFN_PORT_MAX=${LOCKFN_PORT_MAX:-32767}

port_is_free() {
  local port=$1
  if command -v ss >/dev/null 2>&1; then
    # any socket (listening or not, tcp or udp) whose local port is $port
    if ss -Htuan "sport = :$port" 2>/dev/null | grep -q .; then
      return 1
    fi
    return 0
  fi
  # fallback without ss: try to connect on loopback; a refusal means free
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    return 1
  fi
  return 0
}

_port_reserve() {
  local port=$1
  mkdir -p "$LOCKFN_PORT_DIR" 2>/dev/null || true
  # reclaim old reservations (bounded: one find over one directory)
  find "$LOCKFN_PORT_DIR" -mindepth 1 -maxdepth 1 -mmin +10 -exec rm -rf {} + 2>/dev/null || true
  mkdir "$LOCKFN_PORT_DIR/$port" 2>/dev/null
}

free_port() {
  local span=$((LOCKFN_PORT_MAX - LOCKFN_PORT_MIN + 1)) i port
  for ((i = 0; i < 200; i++)); do
    port=$((LOCKFN_PORT_MIN + (RANDOM * 32768 + RANDOM) % span))
    if port_is_free "$port" && _port_reserve "$port"; then
      echo "$port"
      return 0
    fi
  done
  echo "ports.sh: no free port found in $LOCKFN_PORT_MIN-$LOCKFN_PORT_MAX after 200 tries" >&2
  return 1
}

free_ports() {
  local n=${1:-1} i
  for ((i = 0; i < n; i++)); do
    free_port || return 1
  done
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  free_ports "${1:-1}"
fi
