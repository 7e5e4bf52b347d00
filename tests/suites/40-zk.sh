#!/usr/bin/env bash
# The lockfn CLI on ZooKeeper (ZKHOSTS): mutual exclusion 8 x 200 with `lockfn run`, exit
# codes, persistent locks (acquire --persist / update / release), loss stopping the command,
# gc of a dead persistent waiter, an unreachable ensemble, and a kazoo Lock against
# `lockfn run`. Prints `N passed, N failed` last; exits non-zero on any failure.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
# now, since, wait_for, json, fail
# shellcheck source=tests/lib/suite.sh
. "$ROOT/tests/lib/suite.sh"
LOCKFN=${LOCKFN:-$ROOT/target/debug/lockfn}
export LOCKFN
PY=${LOCKFN_VENV:-/var/cache/lockfn-tests/venv}/bin/python

if [[ -z ${ZKHOSTS:-} ]]; then
  if [[ ${LOCKFN_TEST_REQUIRE_SERVERS:-} == 1 ]]; then
    echo "ZKHOSTS is not set but LOCKFN_TEST_REQUIRE_SERVERS=1"
    echo "0 passed, 1 failed"
    exit 1
  fi
  echo "skipped: ZKHOSTS is not set"
  echo "0 passed, 0 failed"
  exit 0
fi
export ZKHOSTS

PASS=0 FAIL=0
TMP=$(mktemp -d /tmp/lockfn-zk-suite.XXXXXX)
BG=()
cleanup() {
  local p
  for p in "${BG[@]}"; do kill "$p" 2>/dev/null; done
  rm -rf "$TMP"
}
trap cleanup EXIT

ok() { PASS=$((PASS + 1)); echo "ok - $*"; }
bad() { FAIL=$((FAIL + 1)); echo "FAIL - $*"; }
# check NAME CMD...: CMD must succeed
check() {
  local name=$1
  shift
  if "$@"; then ok "$name"; else bad "$name"; fi
}
# code WANT NAME CMD...: CMD must exit WANT
code() {
  local want=$1 name=$2 rc
  shift 2
  "$@" >"$TMP/out" 2>"$TMP/err"
  rc=$?
  if [[ $rc == "$want" ]]; then ok "$name (exit $rc)"; else
    bad "$name: exit $rc, want $want: $(head -c 300 "$TMP/err")"
  fi
}
name() { echo "suite-$$-$1-$RANDOM"; }
held() { "$LOCKFN" status --check "$1"; }

# --- mutual exclusion through the CLI
check "exclusion 8 x 200 with lockfn run on zk:" \
  "$ROOT/tests/lib/exclusion.sh" "zk:$(name excl)" 8 200

# --- exit codes
T=zk:$(name codes)
"$LOCKFN" run "$T" -- sleep 30 &
BG+=($!)
HOLDER=$!
if wait_for 10 held "$T"; then ok "holder is visible in status"; else bad "holder never held $T"; fi
code 1 "run -n on a held lock" "$LOCKFN" run -n "$T" -- true
code 7 "run -n -E 7 on a held lock" "$LOCKFN" run -n -E 7 "$T" -- true
t0=$(now)
code 1 "run -w 0.5 times out" "$LOCKFN" run -w 0.5 "$T" -- true
s=$(since "$t0")
if awk -v s="$s" 'BEGIN{exit !(s >= 0.5 && s < 4)}'; then ok "timeout took $s s"; else bad "timeout took $s s"; fi
pid=$("$LOCKFN" status --json "$T" | json 'j["holders"][0]["pid"]')
if [[ $pid == "$HOLDER" ]]; then ok "status --json names the holder pid"; else bad "status pid $pid, want $HOLDER"; fi
code 65 "release of a lock held by a running process (no --force)" "$LOCKFN" release "$T"
kill "$HOLDER"
wait "$HOLDER" 2>/dev/null
if wait_for 10 bash -c "! '$LOCKFN' status --check '$T'"; then ok "free after the holder ended"; else bad "still held"; fi
code 0 "run on the free lock" "$LOCKFN" run -n "$T" -- true
code 64 "invalid zk name" "$LOCKFN" run -n "zk:a//b" -- true

# --- unreachable ensemble: 69 within the timeout, hosts named
t0=$(now)
code 69 "unreachable ensemble" "$LOCKFN" run -w 1 "zk://127.0.0.1:1/x" -- true
s=$(since "$t0")
if grep -q "127.0.0.1:1" "$TMP/err"; then ok "message names the hosts"; else bad "hosts missing: $(cat "$TMP/err")"; fi
if awk -v s="$s" 'BEGIN{exit !(s < 4)}'; then ok "unavailable after $s s"; else bad "unavailable took $s s"; fi

# --- persistent locks
T=zk:$(name persist)
code 0 "acquire --persist" "$LOCKFN" acquire --persist -n "$T"
code 1 "persistent lock excludes run" "$LOCKFN" run -n "$T" -- true
if [[ $("$LOCKFN" status --json "$T" | json 'j["holders"][0].get("persist", False)') == True ]]; then
  ok "status shows persist"
else bad "status lacks persist"; fi
code 0 "update of a persistent lock" "$LOCKFN" update "$T"
code 0 "release of our persistent lock" "$LOCKFN" release "$T"
code 65 "second release: not held" "$LOCKFN" release "$T"
code 0 "free again" "$LOCKFN" run -n "$T" -- true

# --- gc removes a dead persistent waiter, keeps the granted persistent lock
T=zk:$(name gc)
"$LOCKFN" acquire --persist -n "$T" >/dev/null 2>&1
"$LOCKFN" acquire --persist -w 60 "$T" >/dev/null 2>&1 &
W=$!
BG+=("$W")
if wait_for 10 bash -c "[[ \$('$LOCKFN' status --json '$T' | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"details\"][\"waiting\"])') == 1 ]]"; then
  ok "persistent waiter queued"
else bad "persistent waiter never queued"; fi
kill -9 "$W"
wait "$W" 2>/dev/null
removed=$("$LOCKFN" gc --json "zk:${T#zk:}" 2>/dev/null)
if [[ $("$LOCKFN" status --json "$T" | json 'j["details"]["waiting"]') == 0 ]]; then
  ok "gc removed the dead waiter ($removed)"
else bad "dead persistent waiter still queued after gc ($removed)"; fi
code 1 "the persistent holder survives gc" "$LOCKFN" run -n "$T" -- true
code 0 "release it" "$LOCKFN" release "$T"

# --- a lost lock stops the command: 75
T=zk:$(name lost)
"$LOCKFN" run "$T" -- sleep 60 &
R=$!
BG+=("$R")
wait_for 10 held "$T" || bad "run never held $T"
t0=$(now)
code 0 "release --force of a running holder" "$LOCKFN" release --force "$T"
wait "$R"
rc=$?
if [[ $rc == 75 ]]; then ok "lockfn run exits 75 when the lock is lost ($(since "$t0") s)"; else
  bad "lockfn run exited $rc after losing the lock, want 75"
fi

# --- kazoo holds, lockfn run waits, and the other way round
if [[ -x $PY ]]; then
  N=$(name kazoo)
  T=zk:$N
  mkfifo "$TMP/kin"
  "$PY" "$ROOT/tests/zk/kazoo_hold.py" "$ZKHOSTS" "/lockfn/$N" lock 1 10 <"$TMP/kin" >"$TMP/kout" &
  K=$!
  BG+=("$K")
  exec 9>"$TMP/kin"
  if wait_for 20 grep -q held "$TMP/kout"; then ok "kazoo holds /lockfn/$N"; else bad "kazoo never held"; fi
  code 1 "lockfn run -n while kazoo holds" "$LOCKFN" run -n "$T" -- true
  if grep -q kazoo-test "$TMP/err"; then ok "busy message shows kazoo's identifier"; else bad "no identifier: $(cat "$TMP/err")"; fi
  exec 9>&-
  wait "$K"
  code 0 "lockfn run after kazoo released" "$LOCKFN" run -w 10 "$T" -- true
  "$LOCKFN" run "$T" -- sleep 1.5 &
  R=$!
  wait_for 10 held "$T"
  code 1 "kazoo try-once while lockfn run holds" "$PY" "$ROOT/tests/zk/kazoo_hold.py" "$ZKHOSTS" "/lockfn/$N" lock 1 0 </dev/null
  wait "$R"
else
  bad "no Python venv with kazoo at $PY"
fi

echo "$PASS passed, $FAIL failed"
((FAIL == 0))
