#!/usr/bin/env bats
# The README's examples stay true: the commands it shows are run here as written (with the
# debug build in place of target/release, and commands that need other hosts left out).

load helpers

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
