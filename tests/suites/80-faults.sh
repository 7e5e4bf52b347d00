#!/usr/bin/env bash
# Fault-injection suite: per backend, N workers loop `lockfn run TARGET -- crit.sh` (a
# read-sleep-write on a fenced store inside an exclusive marker, tests/faults/crit.sh) while
# tests/faults/checker.sh kills holders (SIGKILL), kills waiters, SIGSTOPs a holder past its
# TTL, removes a pmxcfs lock directory, or (tests/faults/leader-restart.sh) kills the
# ZooKeeper leader of a 3-node ensemble / restarts the Consul leader of a 3-server cluster.
# Every case must end with 0 violations: no two live valid holders inside at once, no lost
# update (every run that exited 0 is in the final state), landed writes in strictly increasing
# token order, late writes of a paused holder fenced, every worker done (liveness).
#
#   tests/suites/80-faults.sh [CASE-GLOB]     e.g. 'zk*' to run the zk cases only
#
# Env: LOCKFN (binary), ZKHOSTS / CONSUL_HTTP_ADDR (standalone servers: used for the holder
# and waiter faults; if unset, the suite starts its own), FAULTS_REPORT (JSON report, default
# /tmp/lockfn-faults.json), LOCKFN_TEST_REQUIRE_SERVERS=1 (a server that cannot be started
# fails the suite instead of skipping). Bounded: each case has its own timeout; the whole
# suite takes about 2 minutes without consul, about 5 with it, on 2 cores.
# Prints a table, one RESULT line per case, and a final `N passed, N failed`.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 2
ROOT=$PWD
export LOCKFN=${LOCKFN:-$ROOT/target/debug/lockfn}
REPORT=${FAULTS_REPORT:-/tmp/lockfn-faults.json}
ONLY=${1:-*}
CHECK=$ROOT/tests/faults/checker.sh
PASSED=0 FAILED=0
RESULTS=() # JSON objects
ID=$$

T=$(mktemp -d /dev/shm/lockfn-faults-suite.XXXXXX)
STARTED=() # "script dir" of servers we started
cleanup() {
  local s
  for s in "${STARTED[@]}"; do
    # shellcheck disable=SC2086
    tests/servers/$s >/dev/null 2>&1
  done
  [[ -d $T/emu ]] && tests/pmxcfs/emu.sh stop "$T/emu"
  rm -rf --one-file-system "$T"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [[ ! -x $LOCKFN ]]; then
  echo "no lockfn binary at $LOCKFN (cargo build first)"
  echo "0 passed, 1 failed"
  exit 1
fi

json_str() { python3 -c 'import json,sys; print(json.dumps(sys.argv[1]))' "$1"; }
# note BACKEND FAULT STATUS REASON: a case that is not run (n/a or skipped).
note() {
  RESULTS+=("{\"backend\": $(json_str "$1"), \"fault\": $(json_str "$2"), \"status\": \"$3\", \"reason\": $(json_str "$4")}")
  printf '%-4s %s %s: %s\n' "$3" "$1" "$2" "$4"
  if [[ $3 == fail ]]; then FAILED=$((FAILED + 1)); fi
}
# case NAME TIMEOUT CHECKER-ARGS...: run one checker case, bounded.
case_() {
  local name=$1 secs=$2 line
  shift 2
  # shellcheck disable=SC2053
  [[ $name == $ONLY ]] || return 0
  # Output to a file, not a pipe: a stray grandchild cannot hold the suite.
  timeout -k 10 "$secs" "$CHECK" "$@" >"$T/out.$name" 2>"$T/err.$name"
  local rc=$?
  line=$(grep '^RESULT ' "$T/out.$name" | tail -1)
  if [[ -n $line ]]; then
    echo "$line"
    RESULTS+=("${line#RESULT }")
  fi
  if [[ $rc -eq 0 && -n $line ]]; then
    PASSED=$((PASSED + 1))
    echo "ok   $name"
  else
    FAILED=$((FAILED + 1))
    [[ -z $line ]] && RESULTS+=("{\"case\": $(json_str "$name"), \"pass\": false, \"reason\": \"no result (exit $rc; 124 = timeout)\"}")
    echo "FAIL $name (exit $rc)"
    sed 's/^/    /' "$T/err.$name" | tail -5
  fi
}
server_missing() { # WHAT: fail or skip a backend whose server is missing
  if [[ ${LOCKFN_TEST_REQUIRE_SERVERS:-0} == 1 ]]; then
    note "$1" all fail "$2"
  else
    note "$1" all skip "$2"
  fi
}

# --- the checker itself: a "lock" that lets 3 holders in at once must be caught -----------
# shellcheck disable=SC2053
if [[ checker-selftest == $ONLY ]]; then
  timeout -k 10 60 "$CHECK" --label selftest "sem:faults-$ID-0" 3 5 -- --limit 3 >"$T/out.self" 2>"$T/err.self"
  rc=$?
  line=$(grep '^RESULT ' "$T/out.self" | tail -1)
  kept=$(sed -n 's|^work directory kept: \(/tmp/lockfn-faults\.[A-Za-z0-9]*\)$|\1|p' "$T/err.self")
  [[ -n $kept ]] && rm -rf "$kept"
  if [[ $rc -ne 0 && $line =~ \"violations\":\ [1-9] ]]; then
    PASSED=$((PASSED + 1))
    echo "ok   checker-selftest (a limit-3 semaphore is reported: ${line:0:160}...)"
  else
    FAILED=$((FAILED + 1))
    echo "FAIL checker-selftest: the checker did not catch 3 holders at once (exit $rc): $line"
  fi
fi

# --- sem ---------------------------------------------------------------------------------
case_ sem-kill-holder 90 --fault kill-holder --faults 8 --every 0.4 "sem:faults-$ID-1" 4 15
case_ sem-kill-waiter 90 --fault kill-waiter --faults 8 --every 0.3 "sem:faults-$ID-2" 4 15
note sem stop-holder n/a "sem has no TTL: a stopped holder keeps the lock (waiters wait)"

# --- pmxcfs (the FUSE emulator, tests/pmxcfs/emu.sh, as in 30-pmxcfs.sh) -------------------
export LOCKFN_PMXLOCK_DIR=$T/flock LOCKFN_RUN_DIR=$T/run
mkdir -p "$LOCKFN_PMXLOCK_DIR" "$LOCKFN_RUN_DIR"
if PMXEMU_TTL=120 PMXEMU_WATCH_PID=$$ tests/pmxcfs/emu.sh start "$T/emu"; then
  (
    LOCKFN_PMXCFS_DIR=$(sed -n 's/^LOCKFN_PMXCFS_DIR=//p' "$T/emu/env")
    export LOCKFN_PMXCFS_DIR
    case_ pmxcfs-kill-holder 90 --fault kill-holder --faults 8 --every 0.4 pmxcfs:faults-1 4 15
    case_ pmxcfs-kill-waiter 90 --fault kill-waiter --faults 8 --every 0.3 pmxcfs:faults-2 4 15
    # lockfn checks a pmxcfs lock every 5 s: each removal takes about that long to notice.
    case_ pmxcfs-rmdir 120 --fault rmdir --faults 3 --every 0.5 --lockdir "$LOCKFN_PMXCFS_DIR" \
      pmxcfs:faults-3 3 10
    printf '%s\n' "${RESULTS[@]}" >"$T/pmxcfs.results"
    echo "$PASSED $FAILED" >"$T/pmxcfs.counts"
  )
  # The subshell kept the pmxcfs environment away from everything else; take its results back.
  if [[ -f $T/pmxcfs.counts ]]; then
    read -r PASSED FAILED <"$T/pmxcfs.counts"
    mapfile -t RESULTS <"$T/pmxcfs.results"
  fi
  tests/pmxcfs/emu.sh stop "$T/emu"
else
  note pmxcfs all fail "cannot start the pmxcfs emulator (tests/pmxcfs/emu.sh)"
fi
note pmxcfs stop-holder n/a "pmxcfs has no TTL we can shorten (fixed 120 s, and only expired on request): a stopped holder keeps the lock"

# --- zk ----------------------------------------------------------------------------------
zk_env() { # DIR: export the ZKHOSTS of servers started in DIR
  set -a
  # shellcheck disable=SC1091
  . "$1/env"
  set +a
}
want_zk=0
for c in zk-kill-holder zk-kill-waiter zk-stop-holder zk-leader-kill; do
  # shellcheck disable=SC2053
  [[ $c == $ONLY ]] && want_zk=1
done
if ((want_zk)); then
  if [[ -z ${ZKHOSTS:-} ]]; then
    if tests/servers/zookeeper.sh start "$T/zk" >/dev/null; then
      STARTED+=("zookeeper.sh stop $T/zk")
      zk_env "$T/zk"
    fi
  fi
  if [[ -n ${ZKHOSTS:-} ]]; then
    # --ttl 2: a 2 s session timeout, so a dead holder's session expires in about 2 s.
    case_ zk-kill-holder 120 --fault kill-holder --faults 5 --every 0.5 zk:faults-$ID-1 3 10 -- --ttl 2 -w 60
    case_ zk-kill-waiter 120 --fault kill-waiter --faults 5 --every 0.4 zk:faults-$ID-2 3 10 -- --ttl 2 -w 60
    # Stopped 5 s with a 2 s session: ZooKeeper expires it a timeout after the last ping it
    # got, 1.3 s after the stop at the earliest with pings every 2/3 s; a ping delayed by a
    # loaded machine makes that earlier, so the check is loose (0.7 s).
    case_ zk-stop-holder 150 --fault stop-holder --faults 3 --stop 5 --min-age 0.7 --every 0.5 \
      zk:faults-$ID-3 3 10 -- --ttl 2 -w 60
  else
    server_missing zk "no ZooKeeper (ZKHOSTS unset and tests/servers/zookeeper.sh start failed)"
  fi
  # shellcheck disable=SC2053
  if [[ zk-leader-kill == $ONLY ]]; then
    if tests/servers/zookeeper.sh start "$T/zke" --ensemble 3 >/dev/null; then
      STARTED+=("zookeeper.sh stop $T/zke")
      (
        zk_env "$T/zke"
        case_ zk-leader-kill 150 --label zk-ensemble --name leader-kill --fault external \
          --external "$ROOT/tests/faults/leader-restart.sh zookeeper $T/zke kill 2 4 4" --after 2 \
          zk:faults-$ID-4 3 10 -- --ttl 6 -w 60
        printf '%s\n' "${RESULTS[@]}" >"$T/zke.results"
        echo "$PASSED $FAILED" >"$T/zke.counts"
      )
      read -r PASSED FAILED <"$T/zke.counts"
      mapfile -t RESULTS <"$T/zke.results"
      tests/servers/zookeeper.sh stop "$T/zke" >/dev/null 2>&1
    else
      server_missing zk-ensemble "a 3-node ZooKeeper ensemble did not start"
    fi
  fi
fi

# --- consul ------------------------------------------------------------------------------
consul_ready() { # is the consul backend in this build?
  [[ -d src/backend/consul ]] || return 1
  ! timeout 20 "$LOCKFN" status consul:faults-probe 2>&1 | grep -q 'not implemented'
}
want_consul=0
for c in consul-kill-holder consul-kill-waiter consul-stop-holder consul-leader-restart; do
  # shellcheck disable=SC2053
  [[ $c == $ONLY ]] && want_consul=1
done
if ((!want_consul)); then
  :
elif ! consul_ready; then
  for f in kill-holder kill-waiter stop-holder leader-restart; do
    note consul "$f" skip "the consul backend is not in this build yet (no src/backend/consul/)"
  done
else
  if [[ -z ${CONSUL_HTTP_ADDR:-} ]]; then
    if tests/servers/consul.sh start "$T/consul" >/dev/null; then
      STARTED+=("consul.sh stop $T/consul")
      zk_env "$T/consul"
    fi
  fi
  if [[ -n ${CONSUL_HTTP_ADDR:-} ]]; then
    # Sessions have a 10 s TTL at least, which Consul lets run up to 2×TTL, and a lock is
    # then kept for its lock-delay (15 s by default: 35 s per dead holder, measured): with
    # --lock-delay 0 and few faults the suite stays bounded (recovery ≈ 10–20 s).
    case_ consul-kill-holder 150 --fault kill-holder --faults 2 --every 0.5 consul:faults-$ID-1 3 5 \
      -- --ttl 10 --lock-delay 0 -w 90
    case_ consul-kill-waiter 120 --fault kill-waiter --faults 3 --every 0.4 consul:faults-$ID-2 3 5 \
      -- --ttl 10 --lock-delay 0 -w 90
    # Stopped 25 s: past 2×TTL, so the session is gone and another holder gets in first.
    case_ consul-stop-holder 150 --fault stop-holder --faults 1 --stop 25 --min-age 10 --every 0.5 \
      consul:faults-$ID-3 3 5 -- --ttl 10 --lock-delay 0 -w 90
  else
    server_missing consul "no Consul agent (CONSUL_HTTP_ADDR unset and tests/servers/consul.sh start failed)"
  fi
  # shellcheck disable=SC2053
  if [[ consul-leader-restart == $ONLY ]]; then
    if tests/servers/consul.sh start-cluster "$T/consulc" >/dev/null; then
      STARTED+=("consul.sh stop $T/consulc")
      (
        zk_env "$T/consulc"
        case_ consul-leader-restart 150 --label consul-cluster --name leader-restart --fault external \
          --external "$ROOT/tests/faults/leader-restart.sh consul $T/consulc term 2 4 6" --after 2 \
          consul:faults-$ID-4 3 10 -- --ttl 10 --lock-delay 0 -w 90
        printf '%s\n' "${RESULTS[@]}" >"$T/consulc.results"
        echo "$PASSED $FAILED" >"$T/consulc.counts"
      )
      read -r PASSED FAILED <"$T/consulc.counts"
      mapfile -t RESULTS <"$T/consulc.results"
      tests/servers/consul.sh stop "$T/consulc" >/dev/null 2>&1
    else
      server_missing consul-cluster "a 3-server Consul cluster did not start"
    fi
  fi
fi

# --- report ------------------------------------------------------------------------------
printf '%s\n' "${RESULTS[@]}" | python3 tests/faults/report.py "$REPORT"
echo "$PASSED passed, $FAILED failed"
((FAILED == 0))
