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
  [ "$(stat -c %a "/dev/shm/lockfn.$NAME")" = 600 ]
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
