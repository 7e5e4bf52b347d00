#!/usr/bin/env bats
# sem: against cjnfuncs' resourcelock (posix_ipc) on the same name, both directions, and the
# semaphore's mode.

load helpers

setup() {
  NAME=$(uniq_name)
  T=sem:$NAME
  RL=${LOCKFN_VENV:-/var/cache/lockfn-tests/venv}/bin/resourcelock
  if [ ! -x "$RL" ]; then
    if [ -n "${LOCKFN_TEST_REQUIRE_SERVERS:-}" ]; then
      echo "resourcelock is missing from the venv ($RL)" >&2
      return 1
    fi
    skip "resourcelock not installed (run tests/run.sh)"
  fi
}

teardown() {
  # Stop what this test started (found by its unique lock name), not bats' own jobs.
  pkill -9 -f "$NAME" 2>/dev/null || true
  "$LOCKFN" gc "sem:$NAME" >/dev/null 2>&1 || true
  rm -f "/dev/shm/sem.$NAME" "/dev/shm/$NAME"
}

@test "resourcelock holds: lockfn is excluded; release --force is resourcelock's unget" {
  run "$RL" "$NAME" get -t 0 -m "held by resourcelock"
  [[ "$output" == *"Returned <True>"* ]]
  run "$LOCKFN" run -n "$T" -- true
  [ "$status" -eq 1 ]
  run "$LOCKFN" status --json "$T"
  [ "$(echo "$output" | json 'j["held"]')" = True ]
  # resourcelock's own info string is untouched by us
  [[ "$(tr -d '\0' < "/dev/shm/$NAME")" == *"held by resourcelock"* ]]
  run "$LOCKFN" release --force "$T"
  [ "$status" -eq 0 ]
  run "$RL" "$NAME" state
  [[ "$output" == *"Currently locked: <False>"* ]]
  run "$LOCKFN" run -n "$T" -- true
  [ "$status" -eq 0 ]
}

@test "lockfn holds: resourcelock is excluded, and gets it after our release" {
  "$LOCKFN" run "$T" -- sleep 100 &
  holder=$!
  wait_for 10 held "$T"
  run "$RL" "$NAME" get -t 0
  [[ "$output" == *"Returned <False>"* ]]
  kill -TERM "$holder"
  wait "$holder" || true
  run "$RL" "$NAME" get -t 0
  [[ "$output" == *"Returned <True>"* ]]
  run "$RL" "$NAME" unget
  run "$RL" "$NAME" state
  [[ "$output" == *"Currently locked: <False>"* ]]
}

@test "the semaphore is created 0600 unless --mode says otherwise" {
  run "$LOCKFN" run -n "$T" -- true
  [ "$(stat -c %a "/dev/shm/sem.$NAME")" = 600 ]
  [ "$(stat -c %a "/dev/shm/lockfn@table.$NAME")" = 600 ]
  "$LOCKFN" gc "sem:$NAME"
  run "$LOCKFN" run -n --mode 660 "$T" -- true
  [ "$(stat -c %a "/dev/shm/sem.$NAME")" = 660 ]
  run "$LOCKFN" run -n --mode 999 "$T" -- true
  [ "$status" -eq 64 ]
}

@test "two waiters after a holder's kill -9: the slot comes back exactly once" {
  "$LOCKFN" run "$T" -- sleep 100 &
  holder=$!
  wait_for 10 held "$T"
  d=$(mktemp -d)
  "$LOCKFN" run -w 20 "$T" -- sh -c "touch $d/a; sleep 0.3" &
  w1=$!
  "$LOCKFN" run -w 20 "$T" -- sh -c "touch $d/b; sleep 0.3" &
  w2=$!
  kill -9 "$holder"
  wait "$w1"
  wait "$w2"
  [ -e "$d/a" ] && [ -e "$d/b" ]
  run "$LOCKFN" status --json "$T"
  [ "$(echo "$output" | json 'j["available"]')" = 1 ]
  rm -rf "$d"
}

@test "another user's 0600 semaphore: permission denied, exit 77, with the reason" {
  command -v setpriv >/dev/null || skip "setpriv (util-linux) missing"
  run "$LOCKFN" run -n "$T" -- true
  [ "$status" -eq 0 ]
  run setpriv --reuid=nobody --regid=nogroup --clear-groups "$LOCKFN" run -n "$T" -- true
  [ "$status" -eq 77 ]
  [[ "$output" == *"Permission denied"*"another user"* ]]
}

# A long-lived resourcelock process: one line on stdin per command (get, unget, quit); prints
# each result. Its object keeps the semaphore open, as a resourcelock user's does.
rl_process() {
  "$(dirname "$RL")/python" -u -c '
import sys
from cjnfuncs.resourcelock import resource_lock
lock = resource_lock(sys.argv[1])
print("ready", flush=True)
for line in sys.stdin:
    cmd = line.strip()
    if cmd == "get":
        print("get", lock.get_lock(timeout=0), flush=True)
    elif cmd == "unget":
        print("unget", lock.unget_lock(), flush=True)
    elif cmd == "quit":
        break
' "$1"
}

sem_value() { "$LOCKFN" status --json "$T" | json 'j["available"]'; }

@test "resourcelock's unget while lockfn holds: never value 2, and lockfn run stops (exit 75)" {
  "$LOCKFN" run "$T" -- sleep 100 &
  holder=$!
  wait_for 10 held "$T"
  run "$RL" "$NAME" unget
  [ "$status" -eq 0 ]
  # The holder learns its slot was given back (a check a second), stops its command, exit 75.
  rc=0
  wait "$holder" || rc=$?
  [ "$rc" -eq 75 ]
  [ "$(sem_value)" = 1 ]
  # Its release posted nothing: one count, one holder at a time.
  "$LOCKFN" run -n "$T" -- sh -c "[ \$(\"$LOCKFN\" status --json '$T' | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"available\"])') = 0 ]"
  [ "$(sem_value)" = 1 ]
}

@test "lockfn release --force beside a resourcelock holder: its later unget cannot make value 2" {
  coproc RLP { rl_process "$NAME"; }
  read -r -t 10 line <&"${RLP[0]}"
  [ "$line" = ready ]
  echo get >&"${RLP[1]}"
  read -r -t 10 line <&"${RLP[0]}"
  [ "$line" = "get True" ]
  # The operator's forced release gives resourcelock's count back; lockfn takes it.
  run "$LOCKFN" release --force "$T"
  [ "$status" -eq 0 ]
  "$LOCKFN" run "$T" -- sleep 100 &
  holder=$!
  wait_for 10 held "$T"
  [ "$(sem_value)" = 0 ]
  # resourcelock still believes it holds: its unget posts (value 0). lockfn takes that count
  # back from its holder, which stops (75); the value never exceeds 1.
  echo unget >&"${RLP[1]}"
  read -r -t 10 line <&"${RLP[0]}"
  [ "$line" = "unget True" ]
  rc=0
  wait "$holder" || rc=$?
  [ "$rc" -eq 75 ]
  [ "$(sem_value)" = 1 ]
  echo quit >&"${RLP[1]}"
}

@test "gc beside an idle resourcelock object keeps the semaphore it uses" {
  coproc RLP { rl_process "$NAME"; }
  read -r -t 10 line <&"${RLP[0]}"
  [ "$line" = ready ]
  run "$LOCKFN" run -n "$T" -- true
  [ "$status" -eq 0 ]
  [ -e "/dev/shm/lockfn@table.$NAME" ]
  ino=$(stat -c %i "/dev/shm/sem.$NAME")
  run "$LOCKFN" gc "$T"
  [ "$status" -eq 0 ]
  # Our idle table is gone; the semaphore resourcelock has open is the one at the name.
  [ ! -e "/dev/shm/lockfn@table.$NAME" ]
  [ "$(stat -c %i "/dev/shm/sem.$NAME")" = "$ino" ]
  # So the two still exclude each other, both ways.
  echo get >&"${RLP[1]}"
  read -r -t 10 line <&"${RLP[0]}"
  [ "$line" = "get True" ]
  run "$LOCKFN" run -n "$T" -- true
  [ "$status" -eq 1 ]
  echo unget >&"${RLP[1]}"
  read -r -t 10 line <&"${RLP[0]}"
  [ "$line" = "unget True" ]
  "$LOCKFN" run "$T" -- sleep 100 &
  holder=$!
  wait_for 10 held "$T"
  echo get >&"${RLP[1]}"
  read -r -t 10 line <&"${RLP[0]}"
  [ "$line" = "get False" ]
  kill -TERM "$holder"
  wait "$holder" || true
  echo quit >&"${RLP[1]}"
}
