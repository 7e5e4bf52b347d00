#!/usr/bin/env bats
# bats_require_minimum_version 1.5.0 is needed for `run -N`.
# The lockfn command on the sem: backend (POSIX semaphores): exclusion, limits, crashes,
# timeouts, cancel, signals, exit codes, status, persistent locks, gc.

load helpers
bats_require_minimum_version 1.5.0

setup() {
  NAME=$(uniq_name)
  T=sem:$NAME
  D=$(mktemp -d /tmp/lockfn-bats.XXXXXX)
}

teardown() {
  # Stop anything a test left running, then clean its semaphore.
  # Stop what this test started (found by its unique lock name), not bats' own jobs.
  pkill -9 -f "$NAME" 2>/dev/null || true
  "$LOCKFN" gc "sem:$NAME" >/dev/null 2>&1 || true
  rm -rf "$D"
}

@test "mutual exclusion: 8 processes x 200 iterations, exactly 1600, no overlap" {
  run "$ROOT/tests/lib/exclusion.sh" "$T" 8 200
  echo "$output"
  [ "$status" -eq 0 ]
  [[ "$output" == *"counter 1600, violations 0"* ]]
}

@test "limit 3: never more than 3 inside, and 3 get in together" {
  cat >"$D/slot.sh" <<'SH'
#!/bin/bash
d=$1
touch "$d/in.$$"
# Barrier: stay until 3 are inside (bounded), recording how many we see.
for i in $(seq 250); do
  n=$(ls "$d" | grep -c '^in\.')
  echo "$n" >>"$d/seen"
  [ "$n" -ge 3 ] && break
  sleep 0.02
done
rm -f "$d/in.$$"
SH
  chmod +x "$D/slot.sh"
  pids=()
  for i in 1 2 3 4 5 6; do
    "$LOCKFN" run --limit 3 -w 30 "$T" -- "$D/slot.sh" "$D" &
    pids+=($!)
  done
  # (never a bare `wait`: bats' own timeout watchdog is a background job too)
  for p in "${pids[@]}"; do wait "$p"; done
  max=$(sort -n "$D/seen" | tail -1)
  echo "max inside: $max"
  [ "$max" -eq 3 ]
  # limit is recorded; a mismatched limit is refused
  run "$LOCKFN" run --limit 2 -n "$T" -- true
  [ "$status" -eq 64 ]
  [[ "$output" == *"limit 3"* ]]
}

@test "kill -9 of a holder: a waiter gets the lock within 1 s, and the command dies too" {
  "$LOCKFN" run "$T" -- sleep 100 &
  holder=$!
  wait_for 10 held "$T"
  wait_for 5 pgrep -P "$holder" sleep
  child=$(pgrep -P "$holder" sleep)
  "$LOCKFN" run -w 20 "$T" -- sh -c 'date +%s.%N > "$0"' "$D/acquired" &
  waiter=$!
  t0=$(now)
  kill -9 "$holder"
  wait "$waiter"
  t1=$(cat "$D/acquired")
  took=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", b-a}')
  echo "takeover after kill -9: $took s"
  lt "$took" 1.0
  # parent-death signal: the holder's command did not outlive it
  wait_for 5 sh -c "! kill -0 $child"
}

@test "kill -9 of a waiter leaves the count intact" {
  "$LOCKFN" run "$T" -- sleep 100 &
  holder=$!
  wait_for 10 held "$T"
  "$LOCKFN" -v run "$T" -- true 2>"$D/waiter.log" &
  waiter=$!
  wait_for 10 grep -q acquiring "$D/waiter.log"
  kill -9 "$waiter"
  kill -TERM "$holder"
  wait "$holder" || true
  run "$LOCKFN" status --json "$T"
  [ "$status" -eq 0 ]
  [ "$(echo "$output" | json 'j["available"]')" = 1 ]
  [ "$(echo "$output" | json 'j["held"]')" = False ]
  run "$LOCKFN" run -n "$T" -- true
  [ "$status" -eq 0 ]
}

@test "try-once, timeout, -E and waiting forever" {
  "$LOCKFN" run "$T" -- sleep 100 &
  holder=$!
  wait_for 10 held "$T"
  run "$LOCKFN" run -n "$T" -- true
  [ "$status" -eq 1 ]
  [[ "$output" == *"busy"*"held by pid $holder"* ]]
  run "$LOCKFN" run -n -E 7 "$T" -- true
  [ "$status" -eq 7 ]
  t0=$(now)
  run "$LOCKFN" run -w 0.5 "$T" -- true
  took=$(elapsed "$t0")
  echo "timed out after $took s"
  [ "$status" -eq 1 ]
  [[ "$output" == *"timed out after 0.500 s"* ]]
  lt 0.49 "$took"
  lt "$took" 3
  # forever: succeeds once the holder is gone
  "$LOCKFN" run "$T" -- touch "$D/forever" &
  waiter=$!
  kill -TERM "$holder"
  wait "$waiter"
  [ -e "$D/forever" ]
}

@test "the command's exit code, LOCKFN_TOKEN and LOCKFN_TARGET" {
  run "$LOCKFN" run "$T" -- sh -c 'echo "$LOCKFN_TARGET $LOCKFN_TOKEN"; exit 42'
  [ "$status" -eq 42 ]
  [[ "$output" == "$T "[0-9]* ]]
  first=${output#* }
  run "$LOCKFN" run "$T" -- sh -c 'echo "$LOCKFN_TOKEN"'
  [ "$output" -gt "$first" ]
  run "$LOCKFN" run "$T" -- sh -c 'kill -TERM $$'
  [ "$status" -eq 143 ]
  run "$LOCKFN" run -c 'exit 5' "$T"
  [ "$status" -eq 5 ]
}

@test "signals sent to lockfn run are forwarded to the command" {
  "$LOCKFN" run "$T" -- bash -c 'trap "echo got-term > $0; exit 42" TERM; for i in $(seq 1000); do sleep 0.01; done' "$D/term" &
  pid=$!
  wait_for 10 held "$T"
  wait_for 5 pgrep -P "$pid" bash
  kill -TERM "$pid"
  st=0
  wait "$pid" || st=$?
  [ "$st" -eq 42 ]
  [ "$(cat "$D/term")" = got-term ]
  run "$LOCKFN" run -n "$T" -- true
  [ "$status" -eq 0 ]
}

@test "SIGINT ends a wait at once, exit 130, nothing taken" {
  "$LOCKFN" run "$T" -- sleep 100 &
  holder=$!
  wait_for 10 held "$T"
  # As from a terminal's Ctrl-C: a background job of a non-interactive shell starts with
  # SIGINT ignored, which lockfn respects (as flock(1) does), so give it the default back.
  env --default-signal=INT "$LOCKFN" -v run "$T" -- touch "$D/ran" 2>"$D/waiter.log" &
  waiter=$!
  wait_for 10 grep -q acquiring "$D/waiter.log"
  t0=$(now)
  kill -INT "$waiter"
  st=0
  wait "$waiter" || st=$?
  took=$(elapsed "$t0")
  echo "cancel took $took s"
  [ "$st" -eq 130 ]
  lt "$took" 2 # a bound on bad behaviour (a wait that goes on), not a speed figure
  [ ! -e "$D/ran" ]
  grep -q "canceled by SIGINT" "$D/waiter.log"
  kill -TERM "$holder"
  wait "$holder" || true
  run "$LOCKFN" status --json "$T"
  [ "$(echo "$output" | json 'j["available"]')" = 1 ]
}

@test "status --json describes the holder" {
  "$LOCKFN" run --holder "nightly backup" "$T" -- sleep 100 &
  holder=$!
  wait_for 10 held "$T"
  run "$LOCKFN" status --json "$T"
  [ "$status" -eq 0 ]
  echo "$output" | python3 -c '
import json, sys, os, socket
j = json.load(sys.stdin)
assert j["target"] == sys.argv[1] and j["service"] == "sem" and j["held"] is True, j
assert j["limit"] == 1 and j["available"] == 0, j
(h,) = j["holders"]
assert h["pid"] == int(sys.argv[2]) and h["holder"] == "nightly backup", h
assert h["host"] == socket.gethostname() and h["state"] == "alive", h
assert h["token"] > 0 and h["start_time"] > 0 and len(h["boot_id"]) == 36, h
' "$T" "$holder"
  run "$LOCKFN" status "$T"
  [[ "$output" == *"held"*"pid $holder"*"nightly backup"* ]]
  run "$LOCKFN" list --json "sem:$NAME"
  [ "$(echo "$output" | json 'len(j)')" = 1 ]
  kill -TERM "$holder"
  wait "$holder" || true
  run "$LOCKFN" status --check "$T"
  [ "$status" -eq 1 ]
  [[ "$output" == *"free"* ]]
}

@test "exit codes: invalid input 64, not held 65, command not found 127, help 0" {
  run "$LOCKFN" run sem:../x -- true
  [ "$status" -eq 64 ]
  [[ "$output" == *"invalid target"* ]]
  run "$LOCKFN" run "sem:$(printf 'a%.0s' $(seq 201))" -- true
  [ "$status" -eq 64 ]
  run "$LOCKFN" run "$T"
  [ "$status" -eq 64 ]
  run "$LOCKFN" run --bogus "$T" -- true
  [ "$status" -eq 64 ]
  run "$LOCKFN" run -w -3 "$T" -- true
  [ "$status" -eq 64 ]
  run "$LOCKFN" release "$T"
  [ "$status" -eq 65 ]
  run -127 "$LOCKFN" run "$T" -- /nonexistent/command
  run "$LOCKFN" run -n "$T" -- true
  [ "$status" -eq 0 ]
  run "$LOCKFN" --help
  [ "$status" -eq 0 ]
  [[ "$output" == *"Exit codes:"*"75"*"lock lost"* ]]
  run "$LOCKFN" run --help
  [ "$status" -eq 0 ]
  [[ "$output" == *"LOCKFN_TOKEN"* ]]
}

@test "acquire --persist outlives the command; release ends it" {
  run "$LOCKFN" acquire "$T"
  [ "$status" -eq 64 ]
  run --separate-stderr "$LOCKFN" acquire --persist --holder manual "$T"
  [ "$status" -eq 0 ]
  [[ "$output" =~ ^[0-9]+$ ]]
  run "$LOCKFN" status --json "$T"
  [ "$(echo "$output" | json 'j["holders"][0]["persist"]')" = True ]
  # the acquiring process is gone, yet the lock stays (never "recovered")
  run "$LOCKFN" run -n "$T" -- true
  [ "$status" -eq 1 ]
  run "$LOCKFN" gc "sem:$NAME"
  run "$LOCKFN" run -n "$T" -- true
  [ "$status" -eq 1 ]
  run "$LOCKFN" update "$T"
  [ "$status" -eq 0 ]
  run "$LOCKFN" release "$T"
  [ "$status" -eq 0 ]
  run "$LOCKFN" run -n "$T" -- true
  [ "$status" -eq 0 ]
  run "$LOCKFN" release "$T"
  [ "$status" -eq 65 ]
  run "$LOCKFN" update "$T"
  [ "$status" -eq 65 ]
}

@test "release --force takes the slot; the running holder learns it lost the lock and stops" {
  "$LOCKFN" run --grace 2 "$T" -- sleep 100 &
  holder=$!
  wait_for 10 held "$T"
  run "$LOCKFN" release "$T"
  [ "$status" -eq 65 ]
  run "$LOCKFN" release --force "$T"
  [ "$status" -eq 0 ]
  st=0
  wait "$holder" || st=$?
  [ "$st" -eq 75 ]
  run "$LOCKFN" run -n "$T" -- true
  [ "$status" -eq 0 ]
}

@test "gc recovers a dead holder's slot and removes idle semaphores" {
  "$LOCKFN" run "$T" -- sleep 100 &
  holder=$!
  wait_for 10 held "$T"
  kill -9 "$holder"
  wait "$holder" || true
  [ -e "/dev/shm/sem.$NAME" ]
  run "$LOCKFN" status --json "$T"
  [ "$(echo "$output" | json 'j["holders"][0]["state"]')" = dead ]
  run "$LOCKFN" gc --json "sem:$NAME"
  [ "$status" -eq 0 ]
  [ "$(echo "$output" | json 'j["removed"]')" -ge 2 ]
  [ ! -e "/dev/shm/sem.$NAME" ]
  [ ! -e "/dev/shm/lockfn@table.$NAME" ]
  run "$LOCKFN" gc bogus
  [ "$status" -eq 64 ]
}

@test "sem: with an empty name is named after the command line" {
  "$LOCKFN" run sem: -- sleep 100 &
  holder=$!
  wait_for 10 sh -c "'$LOCKFN' list --json sem:cmd- | grep -q '\"pid\":$holder,'"
  run "$LOCKFN" -v run -w 0.2 sem: -- sleep 100
  [ "$status" -eq 1 ]
  [[ "$output" == *"named after the command line: sem:cmd-"* ]]
  run "$LOCKFN" run -n sem: -- true
  [ "$status" -eq 0 ]
  kill -TERM "$holder"
  wait "$holder" || true
}

@test "--on-before-lock and --on-already-locked hooks" {
  "$LOCKFN" run "$T" -- sleep 100 &
  holder=$!
  wait_for 10 held "$T"
  run "$LOCKFN" run -n --on-before-lock "echo before >> $D/hooks" --on-already-locked 'echo "locked $LOCKFN_TARGET" >> '"$D/hooks" "$T" -- true
  [ "$status" -eq 1 ]
  [ "$(cat "$D/hooks")" = "before
locked $T" ]
  kill -TERM "$holder"
  wait "$holder" || true
}

@test "watch prints each change" {
  "$LOCKFN" watch --json --count 3 --interval 0.05 --for 20 "$T" >"$D/watch" &
  w=$!
  wait_for 10 test -s "$D/watch"
  "$LOCKFN" run "$T" -- sh -c "until [ \$(wc -l < $D/watch) -ge 2 ]; do sleep 0.02; done" &
  wait "$!"
  wait "$w"
  [ "$(json 'j["held"]' < <(sed -n 1p "$D/watch"))" = False ]
  [ "$(json 'j["held"]' < <(sed -n 2p "$D/watch"))" = True ]
  [ "$(json 'j["held"]' < <(sed -n 3p "$D/watch"))" = False ]
}

@test "hold: JSON line, update and release over stdin, release on stdin EOF" {
  coproc H { "$LOCKFN" hold "$T"; }
  read -r -t 10 line <&"${H[0]}"
  [ "$(echo "$line" | json 'j["target"]')" = "$T" ]
  held "$T"
  echo update >&"${H[1]}"
  read -r -t 10 line <&"${H[0]}"
  [ "$line" = '{"updated":true}' ]
  hpid=$H_PID
  exec {H[1]}>&-
  # (bash unsets H_PID once the coprocess is gone: keep the pid, and wait for the event)
  wait_for 10 sh -c "! kill -0 $hpid"
  free "$T"
}

@test "hold: a release line followed at once by the end of input is answered" {
  # The end of stdin raises SIGHUP; the request that came before it is read first.
  for i in 1 2 3 4 5 6 7 8 9 10; do
    out=$(printf 'release\n' | "$LOCKFN" hold "$T")
    echo "$out" | tail -n 1 | grep -q '"released":true'
  done
  run "$LOCKFN" status --json "$T"
  [ "$(echo "$output" | json 'j["available"]')" = 1 ]
}

@test "hold: a wait ends when stdin closes (the shell died), taking nothing" {
  "$LOCKFN" run "$T" -- sleep 100 &
  holder=$!
  wait_for 10 held "$T"
  mkfifo "$D/stdin"
  "$LOCKFN" -v hold "$T" <"$D/stdin" 2>"$D/hold.log" &
  hold=$!
  exec {w}>"$D/stdin"
  wait_for 10 grep -q acquiring "$D/hold.log"
  exec {w}>&-
  st=0
  wait "$hold" || st=$?
  [ "$st" = 129 ]
  grep -q "canceled by SIGHUP" "$D/hold.log"
  kill -TERM "$holder"
  wait "$holder" || true
  run "$LOCKFN" status --json "$T"
  [ "$(echo "$output" | json 'j["available"]')" = 1 ]
}

@test "a semaphore file planted by another user is refused (exit 77), never a SIGBUS" {
  command -v setpriv >/dev/null || skip "setpriv (util-linux) missing"
  [ "$(id -u)" = 0 ] || skip "needs root to act as another user"
  setpriv --reuid=nobody --regid=nogroup --clear-groups sh -c ": > /dev/shm/sem.$NAME; chmod 666 /dev/shm/sem.$NAME"
  run "$LOCKFN" run -n "$T" -- true
  echo "$output"
  [ "$status" -eq 77 ]
  [[ "$output" == *"/dev/shm/sem.$NAME"*"belongs to uid $(id -u nobody)"* ]]
  # A host process of the library: an error too, not a signal.
  run env PYTHONPATH="$ROOT/bindings/python" LOCKFN_LIBRARY="$(dirname "$LOCKFN")/liblockfn.so" \
    python3 -c "
import lockfn
try:
    lockfn.Lock('$T', timeout=0).acquire()
except lockfn.LockPermissionError as e:
    print('refused:', e)
"
  echo "$output"
  [ "$status" -eq 0 ]
  [[ "$output" == *"refused:"*"/dev/shm/sem.$NAME"* ]]
  # Our own empty file: the wrong size, exit 64, and status says the same.
  rm -f "/dev/shm/sem.$NAME"
  : >"/dev/shm/sem.$NAME"
  run "$LOCKFN" status "$T"
  [ "$status" -eq 64 ]
  [[ "$output" == *"/dev/shm/sem.$NAME is 0 bytes"* ]]
  rm -f "/dev/shm/sem.$NAME"
  run "$LOCKFN" run -n "$T" -- true
  [ "$status" -eq 0 ]
}

@test "a huge sparse table file is an error naming it; gc leaves it and still works" {
  truncate -s 200G "/dev/shm/lockfn@table.$NAME"
  run "$LOCKFN" run -n "$T" -- true
  echo "$output"
  [ "$status" -eq 64 ]
  [[ "$output" == *"/dev/shm/lockfn@table.$NAME is 214748364800 bytes"* ]]
  run "$LOCKFN" status "$T"
  [ "$status" -eq 64 ]
  run "$LOCKFN" gc sem
  [ "$status" -eq 0 ]
  run "$LOCKFN" gc "$T"
  [ "$status" -eq 0 ]
  [ -e "/dev/shm/lockfn@table.$NAME" ]
  rm -f "/dev/shm/lockfn@table.$NAME"
  run "$LOCKFN" run -n "$T" -- true
  [ "$status" -eq 0 ]
}
