#!/usr/bin/env bats
# The README's examples stay true: the commands it shows are run here as written (with the
# debug build in place of target/release, and commands that need other hosts left out).

load helpers
bats_require_minimum_version 1.5.0

@test "README: the main-job command works on a fresh machine (sem:, no server)" {
  line=$(grep -m1 '^target/release/lockfn run -n sem:' "$ROOT/README.md")
  [ -n "$line" ]
  cmd=${line/target\/release\/lockfn/$LOCKFN}
  run bash -c "$cmd"
  [ "$status" -eq 0 ]
  [ "$output" = "only one of me at a time" ]
}

@test "README: the sem: examples in the CLI section run" {
  bin=$(mktemp -d)
  printf '#!/bin/sh\necho backup-ran\n' >"$bin/backup.sh"
  chmod +x "$bin/backup.sh"
  line=$(grep -m1 '^lockfn run -n sem:backup -- /usr/local/bin/backup.sh' "$ROOT/README.md")
  [ -n "$line" ]
  cmd=${line%%#*}
  cmd=${cmd/\/usr\/local\/bin\/backup.sh/$bin/backup.sh}
  run bash -c "${cmd/lockfn/$LOCKFN}"
  [ "$status" -eq 0 ]
  [ "$output" = backup-ran ]
  line=$(grep -m1 '^lockfn status --json sem:backup' "$ROOT/README.md")
  run bash -c "${line/lockfn/$LOCKFN}"
  [ "$status" -eq 0 ]
  [[ "$output" == *'"target":"sem:backup"'* ]]
  rm -rf "$bin"
}

@test "README: the exit code table matches lockfn --help" {
  run "$LOCKFN" --help
  for code in 64 65 69 70 75 77; do
    grep -q "^| $code |" "$ROOT/README.md"
    [[ "$output" == *"  $code "* ]]
  done
}

@test "README: the -q cron line is silent on a busy lock; -v's line has the shape shown" {
  name=$(uniq_name)
  d=$(mktemp -d)
  mkfifo "$d/in"
  line=$(grep -m1 'lockfn run -q -n sem:sync -- /usr/local/bin/sync.sh' "$ROOT/README.md")
  [ -n "$line" ]
  cmd=${line#*\* \* \* \* }
  cmd=${cmd//sem:sync/sem:$name}
  cmd=${cmd/\/usr\/local\/bin\/sync.sh/touch $d/ran}
  "$LOCKFN" run --holder "nightly backup" "sem:$name" -- sh -c "cat '$d/in' >/dev/null" &
  holder=$!
  wait_for 10 held "sem:$name"
  run --separate-stderr bash -c "${cmd/lockfn/$LOCKFN}"
  [ "$status" -eq 1 ] && [ -z "$stderr" ] && [ ! -e "$d/ran" ]
  # The README's -v example, with this run's pid, host and times in place of its own.
  shown=$(grep -m1 '^  lockfn: waiting for sem:backup' "$ROOT/README.md")
  [ -n "$shown" ]
  run --separate-stderr env LOCKFN_PROGRESS_INTERVAL=0.2 "$LOCKFN" run -v -w 0.5 "sem:$name" -- true
  got=$(grep -m1 '^lockfn: waiting for' <<<"$stderr")
  pattern=$(sed -e 's/^  //' -e 's/sem:backup/sem:NAME/' -e 's/[0-9][0-9.]*/N/g' -e 's/ on [^ ]* / on H /' <<<"$shown")
  seen=$(sed -e "s/sem:$name/sem:NAME/" -e 's/[0-9][0-9.]*/N/g' -e 's/ on [^ ]* / on H /' <<<"$got")
  echo "README: $pattern"
  echo "got:    $seen"
  [ "$pattern" = "$seen" ]
  timeout 10 sh -c "echo >'$d/in'"
  wait "$holder"
  rm -rf "$d"
}
