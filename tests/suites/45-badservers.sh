#!/usr/bin/env bash
# lockfn against misbehaving ZooKeeper and Consul servers (issue 12): fakes on 127.0.0.1 that
# are silent, answer pings only, negotiate a huge session timeout, trickle a huge frame or a
# body, send garbage, never end their headers, redirect elsewhere, or answer 50 MB. Each
# `run -w 2` ends within 3 s, `run -n` within 2.5 s, `status` within 3 s, exit 69 with a
# one-line message, peak RSS under 64 MB, and no request (so no token) reaches the address
# a redirect names. No real server needed. Prints `N passed, N failed` last.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
LOCKFN=${LOCKFN:-$ROOT/target/debug/lockfn}
if python3 "$ROOT/tests/fakes/badservers.py" "$LOCKFN"; then
  echo "1 passed, 0 failed"
else
  echo "0 passed, 1 failed"
  exit 1
fi
