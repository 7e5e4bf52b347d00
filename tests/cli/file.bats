#!/usr/bin/env bats
# The file: service: flock(2) on a file, the lock flock(1) takes — both exclude each other,
# --shared is `flock -s`, and status names flock(1)'s holder from /proc/locks.

load helpers
bats_require_minimum_version 1.5.0

setup() {
  D=$(mktemp -d /tmp/lockfn-file.XXXXXX)
}

teardown() {
  # Stop what this test started (found by its directory), not bats' own jobs.
  pkill -9 -f "$D" 2>/dev/null || true
  rm -rf "$D"
}

@test "mutual exclusion: 8 processes x 200, lockfn and flock(1) mixed, no overlap" {
  PEER="flock $D/lock" run "$ROOT/tests/lib/exclusion.sh" "file:$D/lock" 8 200
  echo "$output"
  [ "$status" -eq 0 ]
  [[ "$output" == *"counter 1600, violations 0"* ]]
}

@test "flock(1) holds: lockfn waits, is refused with -n, and status names flock's pid" {
  # -o: only flock itself holds the lock (its command does not inherit it).
  flock -o "$D/x" sleep 60 &
  fpid=$!
  wait_for 10 held "file:$D/x"
  run -1 "$LOCKFN" run -n "file:$D/x" -- true
  [[ "$output" == *"busy"*"pid $fpid"* ]]
  run -0 "$LOCKFN" status --json "file:$D/x"
  [ "$(echo "$output" | json 'j["holders"][0]["pid"]')" -eq "$fpid" ]
  [ "$(echo "$output" | json 'j["service"]')" = file ]
  kill "$fpid"
  run -0 "$LOCKFN" run -w 10 "file:$D/x" -- echo got-it
  [[ "$output" == *got-it* ]]
}

@test "lockfn holds: flock -n is refused until lockfn ends" {
  "$LOCKFN" run "file:$D/y" -- sleep 60 &
  lpid=$!
  wait_for 10 held "file:$D/y"
  run -1 flock -n "$D/y" true
  kill "$lpid"
  wait "$lpid" || true
  run -0 flock -w 10 "$D/y" true
}

@test "--shared is flock -s: readers together, a writer excluded" {
  flock -s "$D/s" sleep 60 &
  wait_for 10 held "file:$D/s"
  run -0 "$LOCKFN" run -n --shared "file:$D/s" -- flock -n -s "$D/s" echo three-readers
  [[ "$output" == *three-readers* ]]
  run -1 "$LOCKFN" run -n "file:$D/s" -- true
  "$LOCKFN" run --shared "file:$D/r" -- sleep 60 &
  wait_for 10 held "file:$D/r"
  run -0 flock -n -s "$D/r" true
  run -1 flock -n "$D/r" true
}

@test "a missing file is created; a FIFO, a device or a relative path is refused at once" {
  run -0 "$LOCKFN" run -n "file:$D/new" -- true
  [ -f "$D/new" ]
  mkfifo "$D/fifo"
  run -64 timeout 5 "$LOCKFN" run -n "file:$D/fifo" -- true
  [[ "$output" == *"FIFO"* ]]
  run -64 "$LOCKFN" run -n "file:/dev/null" -- true
  [[ "$output" == *"device"* ]]
  run -64 "$LOCKFN" run -n "file:relative/x" -- true
  [[ "$output" == *"absolute path"* ]]
  run -64 "$LOCKFN" acquire --persist "file:$D/p"
  [[ "$output" == *"cannot persist"* ]]
}

@test "a directory can be locked, as with flock(1)" {
  mkdir "$D/dir"
  flock "$D/dir" sleep 60 &
  wait_for 10 held "file:$D/dir"
  run -1 "$LOCKFN" run -n "file:$D/dir" -- true
}

@test "a flock-shaped call is answered with the run form on file:, which works as printed" {
  run -64 "$LOCKFN" -n "$D/h" echo shaped
  [[ "$output" == *"lockfn run -n file:$D/h -- echo shaped"* ]]
  run -0 "$LOCKFN" run -n "file:$D/h" -- echo shaped
  [ "$output" = shaped ]
}
