#!/usr/bin/env bats
# Habits of flock(1), lockpick and `consul lock` users (issue 17): -q silent on busy and
# timeout, -v saying whom a wait waits for, durations with units, a flock-shaped call answered
# with the `run` form, `-n NUMBER` refused or warned about.

load helpers
bats_require_minimum_version 1.5.0

setup() {
  NAME=$(uniq_name)
  T=sem:$NAME
  D=$(mktemp -d /tmp/lockfn-habits.XXXXXX)
  PIDS=()
}

teardown() {
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  "$LOCKFN" gc "sem:$NAME" >/dev/null 2>&1 || true
  rm -rf "$D"
}

# hold_busy TARGET [ARGS...]: a `lockfn run` holding TARGET until release_busy; its pid in
# HOLDER. The command blocks on a fifo, so the release is an event, not a sleep.
hold_busy() {
  local t=$1
  shift
  mkfifo "$D/in-$t"
  "$LOCKFN" run "$@" "$t" -- sh -c "cat '$D/in-$t' >/dev/null" &
  HOLDER=$!
  PIDS+=("$HOLDER")
}
release_busy() { timeout 10 sh -c "echo >'$D/in-$1'"; }

# progress_lines FILE: the -v lines saying whom the wait waits for.
progress_lines() { grep -E '^lockfn: (still )?waiting for ' "$1" || true; }

# --- -q -------------------------------------------------------------------------------

@test "-q: busy try-once, timeout, hold and acquire say nothing; the exit codes stay" {
  hold_busy "$T" --holder holder-text
  wait_for 10 held "$T"
  # Without -q each says why (the control case: the message is what -q removes).
  run --separate-stderr "$LOCKFN" run -n "$T" -- true
  [ "$status" -eq 1 ]
  [[ "$stderr" == *"is busy"* ]]
  run --separate-stderr "$LOCKFN" run -q -n "$T" -- true
  [ "$status" -eq 1 ] && [ -z "$stderr" ] && [ -z "$output" ]
  run --separate-stderr "$LOCKFN" run --quiet -n -E 7 "$T" -- true
  [ "$status" -eq 7 ] && [ -z "$stderr" ]
  run --separate-stderr "$LOCKFN" -q run -w 0.2 "$T" -- true
  [ "$status" -eq 1 ] && [ -z "$stderr" ]
  run --separate-stderr "$LOCKFN" hold -q -n "$T" </dev/null
  [ "$status" -eq 1 ] && [ -z "$stderr" ] && [ -z "$output" ]
  run --separate-stderr "$LOCKFN" acquire -q --persist -w 100ms "$T"
  [ "$status" -eq 1 ] && [ -z "$stderr" ] && [ -z "$output" ]
  run --separate-stderr "$LOCKFN" run -q -n --on-already-locked "true" "$T" -- true
  [ "$status" -eq 1 ] && [ -z "$stderr" ]
  release_busy "$T"
  wait "$HOLDER"
}

@test "-q: other errors are still reported" {
  run --separate-stderr "$LOCKFN" run -q -n 'sem:bad/name' -- true
  [ "$status" -eq 64 ]
  [[ "$stderr" == *"invalid target"* ]]
  run -127 --separate-stderr "$LOCKFN" run -q -n "$T" -- "$D/no-such-command"
  [ "$status" -eq 127 ]
  [[ "$stderr" == *"cannot run"* ]]
  run --separate-stderr "$LOCKFN" -q release "$T"
  [ "$status" -eq 65 ]
  [ -n "$stderr" ]
}

# --- -v -------------------------------------------------------------------------------

@test "-v: while waiting, the holder's pid and host at the set interval; none after acquired" {
  hold_busy "$T" --holder "nightly backup"
  wait_for 10 held "$T"
  st=$("$LOCKFN" status --json "$T")
  pid=$(json 'j["holders"][0]["pid"]' <<<"$st")
  host=$(json 'j["holders"][0]["host"]' <<<"$st")
  [ "$pid" = "$HOLDER" ]
  LOCKFN_PROGRESS_INTERVAL=0.2 "$LOCKFN" run -v -w 30 "$T" -- echo got-it \
    >"$D/out" 2>"$D/err" &
  waiter=$!
  PIDS+=("$waiter")
  wait_for 10 sh -c "[ \$(grep -c 'waiting for' '$D/err') -ge 3 ]"
  release_busy "$T"
  wait "$waiter"
  cat "$D/err"
  [ "$(cat "$D/out")" = got-it ]
  lines=$(grep '^lockfn: waiting for' "$D/err")
  [ "$(wc -l <<<"$lines")" -ge 3 ]
  while read -r l; do
    [[ "$l" == "lockfn: waiting for $T ("*" s): held by pid $pid on $host for "*" s (nightly backup)" ]]
  done <<<"$lines"
  # Order: acquiring, the progress lines, acquired, and no progress line after it.
  first=$(grep -n -m1 'acquiring' "$D/err" | cut -d: -f1)
  acquired=$(grep -n -m1 "acquired $T" "$D/err" | cut -d: -f1)
  last=$(grep -n 'waiting for' "$D/err" | tail -1 | cut -d: -f1)
  [ "$first" -lt "$last" ] && [ "$last" -lt "$acquired" ]
  # At most one line per interval (0.2 s): the waited times they show (to 0.1 s) grow by
  # 0.1 s at least.
  awk -F'[()]' '/waiting for/ { split($2, a, " "); t = a[1]
       if (n++ && t - prev < 0.09) { print "too close: " prev " then " t; bad = 1 }
       prev = t } END { exit bad }' "$D/err"
}

@test "-v: a signal still ends the wait, and no progress line follows the cancel" {
  hold_busy "$T"
  wait_for 10 held "$T"
  LOCKFN_PROGRESS_INTERVAL=0.05 "$LOCKFN" -v run -w 60 "$T" -- touch "$D/ran" 2>"$D/err" &
  waiter=$!
  PIDS+=("$waiter")
  wait_for 10 grep -q 'waiting for' "$D/err"
  t0=$(now)
  kill -TERM "$waiter"
  st=0
  wait "$waiter" || st=$?
  took=$(elapsed "$t0")
  cat "$D/err"
  [ "$st" -eq 143 ]
  # A bound on bad behaviour (a wait that goes on), generous for a loaded machine.
  lt "$took" 2
  [ ! -e "$D/ran" ]
  [[ "$(tail -1 "$D/err")" == "lockfn: waiting for $T canceled by SIGTERM" ]]
  release_busy "$T"
  wait "$HOLDER"
}

@test "-v: by default the first line comes within a second or so, the next 5 s later" {
  hold_busy "$T"
  wait_for 10 held "$T"
  run --separate-stderr env -u LOCKFN_PROGRESS_INTERVAL "$LOCKFN" run -v -w 3 "$T" -- true
  echo "$stderr"
  [ "$status" -eq 1 ]
  [ "$(progress_lines <(echo "$stderr") | wc -l)" -eq 1 ]
  [[ "$stderr" == *"held by pid $HOLDER on "* ]]
  release_busy "$T"
  wait "$HOLDER"
}

@test "-v: a counting lock shows the slots taken and each holder" {
  hold_busy "$T" --limit 2
  h1=$HOLDER
  mkfifo "$D/in2"
  "$LOCKFN" run --limit 2 "$T" -- sh -c "cat '$D/in2' >/dev/null" &
  h2=$!
  PIDS+=("$h2")
  wait_for 10 sh -c "[ \$('$LOCKFN' status --json '$T' | python3 -c 'import json,sys; print(len(json.load(sys.stdin)[\"holders\"]))') = 2 ]"
  run --separate-stderr env LOCKFN_PROGRESS_INTERVAL=0.2 "$LOCKFN" run -v --limit 2 -w 0.7 "$T" -- true
  echo "$stderr"
  [ "$status" -eq 1 ]
  line=$(progress_lines <(echo "$stderr") | head -1)
  [[ "$line" == *"2 of 2 slots taken, held by "* ]]
  [[ "$line" == *"pid $h1 on "* ]] && [[ "$line" == *"pid $h2 on "* ]]
  release_busy "$T"
  timeout 10 sh -c "echo >'$D/in2'"
  wait "$h1" "$h2"
}

@test "-v: ZooKeeper and Consul name the holder from the service's status" {
  for var in ZKHOSTS CONSUL_HTTP_ADDR; do need_server "$var"; done
  for t in "zk:$NAME" "consul:$NAME"; do
    hold_busy "$t" --holder "from-$t"
    wait_for 10 held "$t"
    run --separate-stderr env LOCKFN_PROGRESS_INTERVAL=0.2 "$LOCKFN" run -v -w 1 "$t" -- true
    echo "$stderr"
    [ "$status" -eq 1 ]
    line=$(progress_lines <(echo "$stderr") | head -1)
    [[ "$line" == "lockfn: waiting for $t ("*"held by pid $HOLDER on "*"(from-$t)"* ]]
    release_busy "$t"
    wait "$HOLDER"
  done
}

@test "-v: a service that does not answer status still gets a line every two intervals" {
  python3 "$ROOT/tests/fakes/badservers.py" --serve consul-silent >"$D/fake" &
  PIDS+=("$!")
  wait_for 10 test -s "$D/fake"
  read -r fake <"$D/fake"
  addr=${fake%% *}
  # The status calls may take 30 s; the wait ends after 1.5 s.
  run --separate-stderr env "$addr" LOCKFN_OP_TIMEOUT=30 LOCKFN_PROGRESS_INTERVAL=0.2 \
    "$LOCKFN" run -v -w 1.5 "consul:$NAME" -- true
  echo "$stderr"
  [ "$status" -eq 69 ]
  n=$(grep -c "^lockfn: still waiting for consul:$NAME (.* s); asking who holds it has had no answer for" <<<"$stderr")
  [ "$n" -ge 2 ]
}

@test "-v: a try-once has no progress; a bad LOCKFN_PROGRESS_INTERVAL is refused" {
  hold_busy "$T"
  wait_for 10 held "$T"
  run --separate-stderr env LOCKFN_PROGRESS_INTERVAL=0.05 "$LOCKFN" run -v -n "$T" -- true
  [ "$status" -eq 1 ]
  [ -z "$(progress_lines <(echo "$stderr"))" ]
  for bad in abc 0 0.01 11 20s -1; do
    run --separate-stderr env LOCKFN_PROGRESS_INTERVAL="$bad" "$LOCKFN" run -v -w 1 "$T" -- touch "$D/ran"
    [ "$status" -eq 64 ]
    [[ "$stderr" == *"LOCKFN_PROGRESS_INTERVAL='$bad'"* ]]
  done
  [ ! -e "$D/ran" ]
  release_busy "$T"
  wait "$HOLDER"
}

# --- durations ------------------------------------------------------------------------

@test "durations: 500ms, 0.25s and 0.3 on a busy lock wait that long" {
  hold_busy "$T"
  wait_for 10 held "$T"
  for pair in 500ms:0.500 0.25s:0.250 0.3:0.300; do
    w=${pair%%:*} want=${pair#*:}
    run --separate-stderr "$LOCKFN" run -w "$w" "$T" -- true
    [ "$status" -eq 1 ]
    [[ "$stderr" == *"timed out after $want s"* ]]
  done
  release_busy "$T"
  wait "$HOLDER"
}

@test "durations: units on every option that takes seconds" {
  run "$LOCKFN" run -w 1h --ttl 5m --lock-delay 500ms --grace 1m30s "$T" -- echo ran
  [ "$status" -eq 0 ] && [ "$output" = ran ]
  run "$LOCKFN" run --timeout=30s "$T" -- echo ran
  [ "$status" -eq 0 ] && [ "$output" = ran ]
  run "$LOCKFN" watch --interval 100ms --for 300ms "$T"
  [ "$status" -eq 0 ]
  [[ "$output" == *"$T: free"* ]]
}

@test "durations: anything else is refused with the forms, and nothing runs" {
  for args in "-w 5x" "-w 5min" "-w 1,5" "--ttl 1hour" "--grace abc" "--lock-delay 1e3s" "-w ''"; do
    eval "set -- $args"
    run --separate-stderr "$LOCKFN" run "$@" "$T" -- touch "$D/ran"
    echo "$args: $stderr"
    [ "$status" -eq 64 ]
    [[ "$stderr" == *"500ms, 30s, 5m, 1h"* ]]
    [[ "$stderr" == *"'$2'"* ]]
  done
  # NaN is a number to clap: each option refuses it in one line.
  for opt in -w --ttl --lock-delay --grace; do
    run --separate-stderr "$LOCKFN" run "$opt" nan "$T" -- touch "$D/ran"
    [ "$status" -eq 64 ]
    [[ "$stderr" == *[Nn]a[Nn]* ]] && [ "$(wc -l <<<"$stderr")" -eq 1 ]
  done
  run --separate-stderr "$LOCKFN" watch --interval 2weeks "$T"
  [ "$status" -eq 64 ]
  [[ "$stderr" == *"--interval"*"not a duration"* ]]
  [ ! -e "$D/ran" ]
  free "$T"
}

# --- flock(1)'s shape -----------------------------------------------------------------

@test "a flock-shaped call: an error with the run form as a tip, and the tip works as written" {
  for call in "-n $T touch $D/a" "$T touch $D/a" "-w 5 $T touch $D/a" "-x -w 2s $T -c 'touch $D/a'"; do
    eval "set -- $call"
    run --separate-stderr "$LOCKFN" "$@"
    echo "$call: $stderr"
    [ "$status" -eq 64 ]
    [ ! -e "$D/a" ]
    tip=$(grep -m1 '  tip: ' <<<"$stderr")
    suggested=${tip#*form): }
    [[ "$suggested" == "lockfn run "*"$T "* ]]
    run bash -c "${suggested/lockfn/$LOCKFN}"
    [ "$status" -eq 0 ]
    [ -e "$D/a" ]
    rm "$D/a"
  done
  run --separate-stderr "$LOCKFN" -n "$T" touch "$D/a"
  [[ "$stderr" == *"tip: "*"lockfn run -n $T -- touch $D/a"* ]]
}

@test "a mistyped subcommand gets clap's suggestion, not the run form" {
  run --separate-stderr "$LOCKFN" stauts "$T"
  [ "$status" -eq 64 ]
  [[ "$stderr" == *"similar subcommand exists: 'status'"* ]]
  [[ "$stderr" != *"lockfn run"* ]]
}

# --- -n NUMBER ------------------------------------------------------------------------

@test "-n NUMBER before a target (consul lock's limit): refused, nothing runs, --limit named" {
  for sub in "run -n 3 $T -- touch $D/ran" "run --nonblock 3 $T -- touch $D/ran" \
    "run -w 5 -n 3 mylock -- touch $D/ran" "hold -n 3 $T" "acquire --persist -n 3 $T"; do
    # shellcheck disable=SC2086
    run --separate-stderr "$LOCKFN" $sub </dev/null
    echo "$sub: $stderr"
    [ "$status" -eq 64 ]
    [[ "$stderr" == *"try-once"*"--limit 3"* ]]
  done
  [ ! -e "$D/ran" ]
  free "$T"
  # The form the message gives works.
  run "$LOCKFN" run --limit 3 -n "$T" -- echo ran
  [ "$status" -eq 0 ] && [ "$output" = ran ]
}

@test "-n NUMBER alone: a warning, and the number is the lock's name" {
  num=9$RANDOM$$
  run --separate-stderr env LOCKFN_BACKEND=sem "$LOCKFN" run -n "$num" -- sh -c "'$LOCKFN' status --json sem:$num"
  "$LOCKFN" gc "sem:$num" >/dev/null 2>&1 || true
  echo "$stderr"
  [ "$status" -eq 0 ]
  [[ "$stderr" == "lockfn: warning: -n is try-once"*"'$num' is taken as the lock's name"*"--limit $num"* ]]
  [[ "$output" == *"\"target\":\"sem:$num\",\"service\":\"sem\",\"held\":true"* ]]
}
