#!/usr/bin/env bats
# Persistent locks per service: `acquire --persist` states how long the lock lives, the lock
# outlives its command (and the service's session TTL), `run -n` is refused, status shows it
# as persistent (not dead), gc leaves it, and `release` from another process frees it; and
# `release --match` matches names as the user writes them.
# pmxcfs (expiry, --keep) is in tests/suites/30-pmxcfs.sh, on the emulator.

load helpers
bats_require_minimum_version 1.5.0

setup() {
  NAME=$(uniq_name)
}

teardown() {
  for t in "sem:$NAME" "zk:$NAME" "consul:$NAME" "consul:$NAME/svc/a" "consul:$NAME/svc/b" \
    "consul:$NAME/other/c"; do
    "$LOCKFN" release --force "$t" >/dev/null 2>&1 || true
  done
  "$LOCKFN" gc "sem:$NAME" >/dev/null 2>&1 || true
}

# persistent_checks TARGET: what every service's persistent lock shows once its command is gone.
persistent_checks() {
  local t=$1
  run -1 "$LOCKFN" run -n "$t" -- true
  run -0 "$LOCKFN" status --json "$t"
  [ "$(echo "$output" | json 'j["holders"][0]["state"]')" = persistent ]
  [ "$(echo "$output" | json 'j["holders"][0]["persist"]')" = True ]
  run -0 "$LOCKFN" status "$t"
  [[ "$output" == *"persistent, taken by pid"* ]]
  [[ "$output" != *"(dead)"* ]]
}

@test "sem: lives until released; status says persistent; gc leaves it; release frees it" {
  run -0 --separate-stderr "$LOCKFN" acquire --persist "sem:$NAME"
  [[ "$output" =~ ^[0-9]+$ ]]
  [[ "$stderr" == *"held persistently"*"when released"*"host restarts"* ]]
  persistent_checks "sem:$NAME"
  run -0 "$LOCKFN" gc "sem:$NAME"
  held "sem:$NAME"
  run -0 "$LOCKFN" release "sem:$NAME"
  run -0 "$LOCKFN" run -n "sem:$NAME" -- true
}

@test "acquire --persist --json states the lifetime" {
  run -0 --separate-stderr "$LOCKFN" acquire --persist --json "sem:$NAME"
  [ "$(echo "$output" | json 'j["lifetime"]["expires"]')" = None ]
  [[ "$(echo "$output" | json 'j["lifetime"]["ends"]')" == "when released"* ]]
  run -0 "$LOCKFN" release "sem:$NAME"
}

@test "zk: a persistent node outlives its session's TTL; release from another process frees it" {
  need_server ZKHOSTS
  run -0 --separate-stderr "$LOCKFN" acquire --persist --ttl 2 "zk:$NAME"
  [[ "$stderr" == *"its node is deleted"* ]]
  # Longer than the session timeout asked for (2 s; the server's minimum is 2 ticks): the
  # session of the acquiring command is gone, the node is not.
  sleep 5
  persistent_checks "zk:$NAME"
  run -0 "$LOCKFN" status --json "zk:$NAME"
  [ "$(echo "$output" | json 'j["details"]["nodes"][0]["ephemeral_owner"]')" = 0x0 ]
  run -0 "$LOCKFN" release "zk:$NAME"
  run -0 "$LOCKFN" run -n "zk:$NAME" -- true
}

@test "consul: a persistent lock's session has no TTL; with --ttl it says when it expires" {
  need_server CONSUL_HTTP_ADDR
  run -0 --separate-stderr "$LOCKFN" acquire --persist "consul:$NAME"
  [[ "$stderr" == *"no TTL"*"serfHealth"* ]]
  persistent_checks "consul:$NAME"
  # The property a wait past the default TTL (15 s) would test: the session has no TTL.
  sess=$(curl -sf "http://$CONSUL_HTTP_ADDR/v1/kv/lockfn/$NAME" | json 'j[0]["Session"]')
  [ -n "$sess" ]
  ttl=$(curl -sf "http://$CONSUL_HTTP_ADDR/v1/session/info/$sess" | json 'j[0]["TTL"]')
  [ "$ttl" = "" ]
  run -0 "$LOCKFN" release "consul:$NAME"
  run -0 "$LOCKFN" run -n "consul:$NAME" -- true
  run -0 --separate-stderr "$LOCKFN" acquire --persist --ttl 10 --json "consul:$NAME"
  [ "$(echo "$output" | json 'j["lifetime"]["renewal"]')" = 10.0 ]
  [[ "$(echo "$output" | json 'j["lifetime"]["ends"]')" == "10 s after the last renewal"* ]]
  run -0 "$LOCKFN" release "consul:$NAME"
}

@test "consul: release --match 'svc/.*' matches names as written, leaves the others" {
  need_server CONSUL_HTTP_ADDR
  for n in svc/a svc/b other/c; do
    run -0 "$LOCKFN" acquire --persist "consul:$NAME/$n"
  done
  run -0 "$LOCKFN" release --match "$NAME/svc/.*" consul:
  [[ "$output" == *"released consul:$NAME/svc/a"* ]]
  [[ "$output" == *"released consul:$NAME/svc/b"* ]]
  [[ "$output" != *"other/c"* ]]
  run -0 "$LOCKFN" run -n "consul:$NAME/svc/a" -- true
  run -1 "$LOCKFN" run -n "consul:$NAME/other/c" -- true
  # The whole key works too, and nothing matching is an error naming the pattern.
  run -0 "$LOCKFN" release --match "lockfn/$NAME/other/.*" consul:
  [[ "$output" == *"released consul:$NAME/other/c"* ]]
  run -65 "$LOCKFN" release --match "$NAME/none/.*" consul:
  [[ "$output" == *"matches"* ]]
}

@test "file: cannot persist, and says why" {
  run -64 "$LOCKFN" acquire --persist "file:/tmp/$NAME"
  [[ "$output" == *"ends with its process"* ]]
  rm -f "/tmp/$NAME"
}
