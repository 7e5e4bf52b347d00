#!/usr/bin/env bash
# shellcheck disable=SC2016  # bash -c '...' scripts expand their own arguments
# Self-test of the test servers: start each kind, use it with a real client,
# stop it, and check that nothing is left running.
#
#   tests/servers/selftest.sh            (installs dependencies first via tests/lib/deps.sh)
#
# Checks: ZooKeeper standalone and 3-node ensemble with kazoo from the venv
# (create/read/delete a node, 2 s session timeout, leader failover, node
# restart); Consul dev, dev with ACLs and 3-server cluster with curl (KV PUT/GET,
# session create/destroy, ACL tokens) and `consul lock` running a command.
# Prints one timing line per start and a closing "N passed, N failed" line;
# exits non-zero when a check failed.  Bounded: every step runs under timeout.

set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ZK="$HERE/zookeeper.sh"
CS="$HERE/consul.sh"

# shellcheck source=SCRIPTDIR/../lib/deps.sh
source "$HERE/../lib/deps.sh"
PY="$LOCKFN_VENV/bin/python"

WORK=$(mktemp -d /tmp/lockfn-selftest.XXXXXX)
PASSED=0
FAILED=0
SKIPPED=0
TIMES=()

cleanup() {
  local d
  for d in "$WORK"/zk-*; do [[ -d $d ]] && timeout 60 "$ZK" stop "$d" >/dev/null 2>&1; done
  for d in "$WORK"/consul-*; do [[ -d $d ]] && timeout 60 "$CS" stop "$d" >/dev/null 2>&1; done
  return 0
}
trap cleanup EXIT

ok() { PASSED=$((PASSED + 1)); echo "ok   $*"; }
fail() { FAILED=$((FAILED + 1)); echo "FAIL $*"; }
skip() { SKIPPED=$((SKIPPED + 1)); echo "skip $*"; }
check() { # DESCRIPTION CMD...  (a command runs under timeout 60; a function bounds itself)
  local d=$1 out
  shift
  if declare -F "$1" >/dev/null; then
    if out=$("$@" 2>&1); then ok "$d"; else fail "$d"; printf '%s\n' "$out" | tail -n 15 | sed 's/^/     /'; fi
  else
    if out=$(timeout 60 "$@" 2>&1); then ok "$d"; else fail "$d"; printf '%s\n' "$out" | tail -n 15 | sed 's/^/     /'; fi
  fi
}
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }

# timed_start LABEL CMD...: run a start command, record its wall time
timed_start() {
  local label=$1 t0 t
  shift
  t0=$(now)
  if timeout 120 "$@" 2>"$WORK/start.err"; then
    t=$(elapsed "$t0")
    TIMES+=("$label: ${t}s")
    ok "start $label (${t}s)"
    return 0
  fi
  fail "start $label"
  sed 's/^/     /' "$WORK/start.err"
  return 1
}
loadenv() { # DIR: export the variables of DIR/env
  set -a
  # shellcheck source=/dev/null
  source "$1/env"
  set +a
}

# Every pid recorded in DIR's env must be gone, and no process may name DIR.
check_gone() { # DIR
  local dir=$1 left
  left=$(pgrep -f -- "$dir/" 2>/dev/null | while read -r p; do
    st=$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$p/status" 2>/dev/null || true)
    [[ -n $st && $st != Z ]] && echo "$p"
  done || true)
  if [[ -z $left ]]; then ok "nothing left running from $dir"; else
    fail "left running from $dir: $left"; ps -o pid,args -p "${left//$'\n'/,}" | sed 's/^/     /' || true
  fi
}

kazoo() { # HOSTS SCRIPT: run python with kazoo connected as `zk`
  timeout 60 "$PY" - "$1" <<EOF
import sys
from kazoo.client import KazooClient
zk = KazooClient(hosts=sys.argv[1], timeout=2.0)
zk.start(timeout=15)
try:
$(printf '%s\n' "$2" | sed 's/^/    /')
finally:
    zk.stop()
    zk.close()
EOF
}

# ---------------------------------------------------------------- ZooKeeper
zk_tests() {
  if [[ " $LOCKFN_DEPS_MISSING " == *" py:kazoo "* || " $LOCKFN_DEPS_MISSING " == *" zookeeper "* ]]; then
    skip "ZooKeeper: missing dependency ($LOCKFN_DEPS_MISSING)"
    return 0
  fi
  local d="$WORK/zk-standalone" e="$WORK/zk-ensemble" leader new
  if timed_start "zookeeper standalone" "$ZK" start "$d"; then
    loadenv "$d"
    check "zk standalone: env has ZKHOSTS=127.0.0.1:PORT" grep -Eq '^ZKHOSTS=127\.0\.0\.1:[0-9]+$' "$d/env"
    check "zk standalone: kazoo create/get/delete, 2 s session" kazoo "$ZKHOSTS" "
zk.create('/lockfn-selftest/a', b'hello', makepath=True)
assert zk.get('/lockfn-selftest/a')[0] == b'hello'
zk.delete('/lockfn-selftest', recursive=True)
assert zk.exists('/lockfn-selftest') is None
assert zk._session_timeout == 2000, zk._session_timeout"
    check "zk standalone: stop" "$ZK" stop "$d"
    check_gone "$d"
  fi

  if timed_start "zookeeper ensemble of 3" "$ZK" start "$e" --ensemble 3; then
    loadenv "$e"
    check "zk ensemble: env has 3 hosts" grep -Eq '^ZKHOSTS=127\.0\.0\.1:[0-9]+,127\.0\.0\.1:[0-9]+,127\.0\.0\.1:[0-9]+$' "$e/env"
    local p1 p3
    p1=$(echo "$ZK_PORTS" | cut -d' ' -f1)
    p3=$(echo "$ZK_PORTS" | cut -d' ' -f3)
    check "zk ensemble: write on node 1, read on node 3" bash -c '
      "$1" - "$2" "$3" <<EOF
import sys
from kazoo.client import KazooClient
a = KazooClient(hosts=sys.argv[1], timeout=2.0); a.start(timeout=15)
b = KazooClient(hosts=sys.argv[2], timeout=2.0); b.start(timeout=15)
a.create("/lockfn-ens", b"v")
b.sync("/lockfn-ens")
assert b.get("/lockfn-ens")[0] == b"v"
a.delete("/lockfn-ens")
a.stop(); b.stop()
EOF' _ "$PY" "127.0.0.1:$p1" "127.0.0.1:$p3"
    if leader=$(timeout 60 "$ZK" leader "$e"); then
      ok "zk ensemble: leader is node $leader"
      local t0
      t0=$(now)
      check "zk ensemble: SIGKILL the leader" "$ZK" stop-node "$e" "$leader" --kill
      if new=$(timeout 60 "$ZK" leader "$e") && [[ $new != "$leader" ]]; then
        ok "zk ensemble: new leader node $new ($(elapsed "$t0")s after kill)"
        TIMES+=("zookeeper failover (kill leader -> new leader): $(elapsed "$t0")s")
      else
        fail "zk ensemble: no new leader after killing node $leader"
      fi
      check "zk ensemble: kazoo works with 2 of 3" kazoo "$ZKHOSTS" "
zk.create('/lockfn-2of3', b'x'); zk.delete('/lockfn-2of3')"
      t0=$(now)
      check "zk ensemble: start-node $leader again" "$ZK" start-node "$e" "$leader"
      TIMES+=("zookeeper start-node (rejoin): $(elapsed "$t0")s")
      check "zk ensemble: all 3 serving" bash -c '[[ $("$1" status "$2" | grep -cE " (leader|follower)$") == 3 ]]' _ "$ZK" "$e"
    else
      fail "zk ensemble: no leader"
    fi
    check "zk ensemble: stop" "$ZK" stop "$e"
    check_gone "$e"
  fi
}

# ---------------------------------------------------------------- Consul
consul_lock_check() { # DESCRIPTION TOKEN  (uses CONSUL_HTTP_ADDR)
  local out
  if out=$(CONSUL_HTTP_TOKEN=$2 timeout 30 "$CONSUL_BIN" lock -timeout=10s lockfn/selftest 'echo locked-ok-$((6*7))' 2>&1) &&
    [[ $out == *locked-ok-42* ]]; then
    ok "$1"
  else
    fail "$1"
    printf '%s\n' "$out" | tail -n 10 | sed 's/^/     /'
  fi
}

# shellcheck disable=SC2015  # `a && b || { msg; return 1; }` is meant
consul_kv_session() { # PREFIX TOKEN  (uses CONSUL_HTTP_ADDR); fails with a message on error
  local base="http://$CONSUL_HTTP_ADDR" h=() sid v
  if [[ -n $2 ]]; then h=(-H "X-Consul-Token: $2"); fi
  c() { curl -fsS --max-time 5 "${h[@]}" "$@"; }
  v=$(c -X PUT --data "value-$1" "$base/v1/kv/lockfn-selftest/$1") && [[ $v == true ]] ||
    { echo "PUT kv: '$v'"; return 1; }
  v=$(c "$base/v1/kv/lockfn-selftest/$1?raw") && [[ $v == "value-$1" ]] ||
    { echo "GET kv: '$v'"; return 1; }
  v=$(c -X PUT --data '{"TTL":"10s","Name":"lockfn-selftest"}' "$base/v1/session/create") ||
    { echo "session create: '$v'"; return 1; }
  sid=$(printf '%s' "$v" | sed -n 's/.*"ID": *"\([^"]*\)".*/\1/p')
  [[ -n $sid ]] || { echo "no session id in '$v'"; return 1; }
  v=$(c -X PUT "$base/v1/kv/lockfn-selftest/$1-lock?acquire=$sid") && [[ $v == true ]] ||
    { echo "acquire: '$v'"; return 1; }
  v=$(c -X PUT "$base/v1/session/destroy/$sid") && [[ $v == true ]] ||
    { echo "session destroy: '$v'"; return 1; }
  v=$(c "$base/v1/session/info/$sid") && [[ $v == null || $v == "[]" ]] ||
    { echo "session $sid still exists: '$v'"; return 1; }
  v=$(c -X DELETE "$base/v1/kv/lockfn-selftest?recurse") && [[ $v == true ]] ||
    { echo "DELETE kv: '$v'"; return 1; }
}

consul_tests() {
  if [[ -z ${CONSUL_BIN:-} ]]; then
    skip "Consul: no consul binary ($LOCKFN_DEPS_MISSING)"
    return 0
  fi
  export CONSUL_BIN
  local d="$WORK/consul-dev" a="$WORK/consul-acl" c="$WORK/consul-cluster" leader new t0
  if timed_start "consul dev" "$CS" start "$d"; then
    loadenv "$d"
    check "consul dev: KV PUT/GET, session create/acquire/destroy" consul_kv_session dev ""
    consul_lock_check "consul dev: consul lock runs a command" ""
    check "consul dev: stop" "$CS" stop "$d"
    check_gone "$d"
  fi

  if timed_start "consul dev --acl" "$CS" start "$a" --acl; then
    loadenv "$a"
    local mgmt rw none
    mgmt=$(cat "$a/token.mgmt")
    rw=$(cat "$a/token.rw")
    none=$(cat "$a/token.none")
    check "consul acl: rw token: KV and session" consul_kv_session rw "$rw"
    check "consul acl: management token: KV and session" consul_kv_session mgmt "$mgmt"
    check "consul acl: none token is denied (403)" bash -c \
      '[[ $(curl -s -o /dev/null -w "%{http_code}" --max-time 5 -H "X-Consul-Token: $2" -X PUT --data x "http://$1/v1/kv/lockfn-selftest/none") == 403 ]]' \
      _ "$CONSUL_HTTP_ADDR" "$none"
    check "consul acl: anonymous is denied (403)" bash -c \
      '[[ $(curl -s -o /dev/null -w "%{http_code}" --max-time 5 -X PUT --data x "http://$1/v1/kv/lockfn-selftest/anon") == 403 ]]' \
      _ "$CONSUL_HTTP_ADDR"
    consul_lock_check "consul acl: consul lock with the rw token" "$rw"
    check "consul acl: stop" "$CS" stop "$a"
    check_gone "$a"
  fi

  if timed_start "consul cluster of 3" "$CS" start-cluster "$c"; then
    loadenv "$c"
    check "consul cluster: env lists 127.0.0.1, .2, .3" grep -Eq '^CONSUL_HTTP_ADDRS="127\.0\.0\.1:[0-9]+ 127\.0\.0\.2:[0-9]+ 127\.0\.0\.3:[0-9]+"$' "$c/env"
    local a1 a3
    a1=$(echo "$CONSUL_HTTP_ADDRS" | cut -d' ' -f1)
    a3=$(echo "$CONSUL_HTTP_ADDRS" | cut -d' ' -f3)
    check "consul cluster: PUT on node 1, consistent GET on node 3" bash -c '
      curl -fsS --max-time 5 -X PUT --data v "http://$1/v1/kv/lockfn-selftest/c" | grep -qx true &&
      [[ $(curl -fsS --max-time 5 "http://$2/v1/kv/lockfn-selftest/c?raw&consistent") == v ]]' _ "$a1" "$a3"
    check "consul cluster: session + KV" consul_kv_session cluster ""
    if leader=$(timeout 60 "$CS" leader "$c"); then
      ok "consul cluster: leader is node $leader"
      t0=$(now)
      check "consul cluster: SIGKILL the leader" "$CS" stop-node "$c" "$leader" --kill
      if new=$(timeout 60 "$CS" leader "$c") && [[ $new != "$leader" ]]; then
        ok "consul cluster: new leader node $new ($(elapsed "$t0")s after kill)"
        TIMES+=("consul failover (kill leader -> new leader): $(elapsed "$t0")s")
      else
        fail "consul cluster: no new leader after killing node $leader"
      fi
      t0=$(now)
      check "consul cluster: start-node $leader again" "$CS" start-node "$c" "$leader"
      TIMES+=("consul start-node (rejoin): $(elapsed "$t0")s")
      loadenv "$c"
      consul_lock_check "consul cluster: consul lock after failover" ""
    else
      fail "consul cluster: no leader"
    fi
    check "consul cluster: stop" "$CS" stop "$c"
    check_gone "$c"
  fi
}

T0=$(now)
zk_tests
consul_tests
check_gone "$WORK"
echo
echo "start times:"
printf '  %s\n' "${TIMES[@]}"
echo "total: $(elapsed "$T0")s"
echo "selftest: $PASSED passed, $FAILED failed, $SKIPPED skipped"
if ((FAILED == 0)); then rm -rf "$WORK"; else echo "logs kept in $WORK"; fi
((FAILED == 0))
