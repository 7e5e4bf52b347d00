#!/usr/bin/env bash
# benches/run.sh --quick runs end to end and writes a JSON with every expected row.
# Values are not asserted (speed is not asserted in tests); structure is: every row present
# once, each one measured or skipped with a reason, lockfn measured wherever its backend exists.
#
#   tests/suites/70-bench-quick.sh
# Prints one line per check and a final `N passed, N failed`; exits non-zero on any failure.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 2
PASSED=0 FAILED=0
T=$(mktemp -d /tmp/lockfn-bench-quick.XXXXXX)
trap 'rm -rf "$T"' EXIT

check() { # NAME CMD...
  local name=$1
  shift
  if "$@"; then
    PASSED=$((PASSED + 1))
    echo "ok   $name"
  else
    FAILED=$((FAILED + 1))
    echo "FAIL $name"
  fi
}

t0=$SECONDS
timeout --kill-after=10 900 benches/run.sh --quick --out "$T/results.json" >"$T/out" 2>"$T/err"
rc=$?
echo "    benches/run.sh --quick: exit $rc in $((SECONDS - t0)) s"
ran_ok() {
  [[ $rc == 0 ]] || {
    echo "    stderr:"
    tail -n 20 "$T/err" | sed 's/^/    /'
    return 1
  }
}
check "run.sh --quick exits 0" ran_ok
check "run.sh prints a table naming the JSON" grep -q "^JSON: $T/results.json" "$T/out"

VENV=${LOCKFN_VENV:-${LOCKFN_TEST_CACHE:-/var/cache/lockfn-tests}/venv}
PY=$VENV/bin/python
[[ -x $PY ]] || PY=python3

rows_ok() {
  "$PY" - "$T/results.json" <<'EOF'
import json, os, sys
d = json.load(open(sys.argv[1]))
ids = [r["id"] for r in d["rows"]]
exp = ["cycle.sem.posix_ipc", "cycle.sem.resourcelock", "cycle.sem.floor", "cycle.pmxcfs.pmxlock",
       "cycle.pmxcfs.floor", "cycle.zk.kazoo", "cycle.zk.raw", "cycle.consul.consullock", "cycle.consul.raw",
       "cycle_requests.zk", "cycle_requests.consul", "cycle_requests.consul.go",
       "command.sem.flock", "command.pmxcfs.pmxlock", "command.zk.lockpick", "command.consul.consul-lock-go",
       "command.consul.consullock"]
for b in ("sem", "pmxcfs", "zk", "consul"):
    for k in (1, 10, 50):
        exp += [f"handoff.{b}.K{k}.p50", f"handoff.{b}.K{k}.p99", f"handoff.{b}.K{k}.requests", f"throughput.{b}.K{k}"]
    exp.append(f"wait.{b}")
# The Consul queue against both Consul peers (benches/driver.py bench_consul_queue).
for k in (1, 10, 50):
    for peer in ("consullock", "consul-lock"):
        exp += [f"consul_queue.K{k}.{m}.{peer}" for m in ("requests", "server_cpu", "handoffs_per_s")]
bad = []
for e in exp:
    if ids.count(e) != 1:
        bad.append(f"row {e} appears {ids.count(e)} times")
for e in ids:
    if e not in exp:
        bad.append(f"unexpected row {e}")
num = lambda v: isinstance(v, (int, float))
for r in d["rows"]:
    if r["skip"]:
        continue
    if not (num(r["lockfn"]) or num(r["peer_value"])):
        bad.append(f"row {r['id']}: neither measured nor skipped")
    # lockfn is measured wherever its backend exists (consul lands later: skipped with a reason)
    if r["section"] in ("cycle", "command", "throughput", "wait") and r["backend"] not in d["lockfn_skipped"] \
            and not num(r["lockfn"]):
        bad.append(f"row {r['id']}: lockfn not measured")
    if r["section"] == "cycle" and r["backend"] not in d["lockfn_skipped"] and not num(r["lockfn_cabi"]):
        bad.append(f"row {r['id']}: lockfn C ABI not measured")
for r in d["rows"]:
    if "K50" in r["id"] and not r["skip"]:
        bad.append(f"row {r['id']}: --quick should skip K=50")
# with LOCKFN_TEST_REQUIRE_SERVERS=1 (tests/run.sh), a service that did not start is a failure
if os.environ.get("LOCKFN_TEST_REQUIRE_SERVERS") == "1" and d["skipped"]:
    bad.append(f"services skipped: {d['skipped']}")
for k in ("nproc", "cpu", "loadavg", "date"):
    if k not in d["machine"]:
        bad.append(f"machine.{k} missing")
for b in bad[:20]:
    print("    " + b)
sys.exit(1 if bad else 0)
EOF
}
rows_or_log() {
  rows_ok && return 0
  echo "    benches/run.sh stderr (last 40 lines):"
  tail -n 40 "$T/err" | sed 's/^/    /'
  return 1
}
if [[ -s $T/results.json ]]; then
  check "results.json has every expected row, each measured or skipped with a reason" rows_or_log
else
  check "results.json written" false
fi

echo "$PASSED passed, $FAILED failed"
[[ $FAILED == 0 ]]
