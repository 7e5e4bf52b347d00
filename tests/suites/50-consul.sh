#!/usr/bin/env bash
# The consul backend through the lockfn command, against real Consul agents:
#  - exclusion 8 processes x 200, limit 3, timeouts, cancel, exit codes, status/list/release;
#  - interop both ways with HashiCorp's `consul lock` (mutex and -n 3) and consullock;
#  - the queue of lockfn waiters: 300 `lockfn run -w` on one host behind one holder all exit
#    0 (past Consul's per-client connection limit); 4 lockfn + 4 `consul lock` x 200 with 20
#    more lockfn waiters queued: zero overlaps, growing tokens;
#  - kill -9 of a holder: the next waiter gets the lock after TTL + lock-delay, never before;
#  - an operator destroying the holder's session: `lockfn run` stops its command within 2 s;
#  - ACL agent (default deny): right token works, wrong token exit 77, token never printed;
#  - 3-server cluster: stop the leader while a lock is held and others wait: never two holders.
# Ends with `N passed, N failed`; exit status 0 only when all passed.
#
#   tests/suites/50-consul.sh [NAME-SUBSTRING...]   (only the checks whose name matches)
# Env: CONSUL_HTTP_ADDR (an agent; else one is started here), CONSUL_BIN, LOCKFN_VENV, LOCKFN.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 2
ROOT=$PWD
PASSED=0 FAILED=0 FAILED_NAMES=()
ONLY=("$@")
check() { # NAME CMD...
    local name=$1 o
    shift
    if ((${#ONLY[@]})); then
        local hit=0
        for o in "${ONLY[@]}"; do [[ $name == *"$o"* ]] && hit=1; done
        ((hit)) || return 0
    fi
    printf '\n--- %s\n' "$name"
    if "$@"; then
        PASSED=$((PASSED + 1))
        echo "ok: $name"
    else
        FAILED=$((FAILED + 1))
        FAILED_NAMES+=("$name")
        echo "FAILED: $name"
    fi
}

WORK=$(mktemp -d /tmp/lockfn-consul-suite.XXXXXX)
cleanup() {
    jobs -p | xargs -r kill -9 2>/dev/null || true
    [[ -f $WORK/tls/pid ]] && kill -9 "$(cat "$WORK/tls/pid")" 2>/dev/null
    for d in "$WORK"/agent "$WORK"/acl "$WORK"/cluster; do
        [[ -d $d ]] && tests/servers/consul.sh stop "$d" >/dev/null 2>&1
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

if [[ -z ${CONSUL_BIN:-} ]]; then
    for c in "${LOCKFN_TEST_CACHE:-/var/cache/lockfn-tests}/consul/root/usr/bin/consul" "$(command -v consul || true)"; do
        [[ -n $c && -x $c ]] && { CONSUL_BIN=$c; break; }
    done
fi
export CONSUL_BIN
if [[ -z ${CONSUL_BIN:-} ]]; then
    echo "no consul binary (CONSUL_BIN)"
    echo "0 passed, 1 failed"
    exit 1
fi
if [[ -z ${CONSUL_HTTP_ADDR:-} ]]; then
    tests/servers/consul.sh start "$WORK/agent" || { echo "0 passed, 1 failed"; exit 1; }
    set -a
    # shellcheck disable=SC1091
    . "$WORK/agent/env"
    set +a
fi
export CONSUL_HTTP_ADDR=${CONSUL_HTTP_ADDR#http://}
A=$CONSUL_HTTP_ADDR
L=${LOCKFN:-$ROOT/target/debug/lockfn}
[[ -x $L ]] || cargo build --quiet || { echo "0 passed, 1 failed"; exit 1; }
VENV=${LOCKFN_VENV:-${LOCKFN_TEST_CACHE:-/var/cache/lockfn-tests}/venv}
unset CONSUL_HTTP_TOKEN CONSUL_HTTP_TOKEN_FILE

key() { echo "lockfn-suite/$$-$RANDOM$RANDOM-$1"; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.3f", b-a}'; }
between() { awk -v x="$1" -v lo="$2" -v hi="$3" 'BEGIN{exit !(x>=lo && x<=hi)}'; }
# wait_file SECS FILE: until FILE exists (bounded).
wait_file() {
    local end=$(($(date +%s%N) + $1 * 1000000000))
    until [[ -e $2 ]]; do
        (($(date +%s%N) > end)) && { echo "timed out waiting for $2"; return 1; }
        sleep 0.02
    done
}
# wait_exit SECS PID: until PID is gone (bounded); prints nothing.
wait_gone() {
    local end=$(($(date +%s%N) + $1 * 1000000000))
    while kill -0 "$2" 2>/dev/null; do
        (($(date +%s%N) > end)) && return 1
        sleep 0.02
    done
}
kvkeys() { curl -sf "http://$1/v1/kv/$2?keys=true" || echo "[]"; }
sessions_of() { # ADDR NEEDLE -> session ids whose name contains NEEDLE
    curl -sf "http://$1/v1/session/list" | python3 -c "
import json,sys
for s in json.load(sys.stdin):
    if sys.argv[1] in s.get('Name',''): print(s['ID'])" "$2"
}
# wait_sessions SECS N NEEDLE: until at least N sessions named with NEEDLE exist (a lockfn
# waiter creates its session before it starts waiting), bounded. ADDR is $A unless SESSION_ADDR.
wait_sessions() {
    local end=$(($(date +%s%N) + $1 * 1000000000))
    until (($(sessions_of "${SESSION_ADDR:-$A}" "$3" | wc -l) >= $2)); do
        (($(date +%s%N) > end)) && { echo "timed out waiting for $2 session(s) of $3"; return 1; }
        sleep 0.05
    done
}
json() { python3 -c "import json,sys; j=json.load(sys.stdin); print($1)"; }

# --- exclusion, limits, timeouts, cancel, codes --------------------------------------------

t_exclusion() {
    local out
    out=$(tests/lib/exclusion.sh "consul://$A/$(key excl)" 8 200 -w 300) || { echo "$out"; return 1; }
    echo "$out"
    [[ $out == *"counter 1600, violations 0"* ]]
}

t_limit3() {
    local k d i pids=() max
    k=$(key lim3)
    d=$WORK/lim3
    mkdir -p "$d"
    cat >"$d/slot.sh" <<'SH'
#!/bin/bash
d=$1
touch "$d/in.$$"
for i in $(seq 150); do
  n=$(ls "$d" | grep -c '^in\.')
  echo "$n" >>"$d/seen"
  [ "$n" -ge 3 ] && break
  sleep 0.02
done
sleep 0.1
n=$(ls "$d" | grep -c '^in\.'); echo "$n" >>"$d/seen"
rm -f "$d/in.$$"
SH
    chmod +x "$d/slot.sh"
    for i in 1 2 3 4 5 6; do
        "$L" run --limit 3 -w 120 "consul://$A/$k" -- "$d/slot.sh" "$d" &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p" || { echo "lockfn run failed"; return 1; }; done
    max=$(sort -n "$d/seen" | tail -1)
    echo "most inside at once: $max"
    [[ $max == 3 ]] && [[ $(kvkeys "$A" "$k/") == "[]" ]]
}

t_codes_and_timeout() {
    local k t0 e rc
    k=$(key codes)
    "$L" run "consul://$A/$k" -- sh -c "touch $WORK/codes.held; sleep 4" &
    wait_file 20 "$WORK/codes.held" || return 1
    "$L" run -n "consul://$A/$k" -- true; rc=$?
    [[ $rc == 1 ]] || { echo "busy: $rc"; return 1; }
    "$L" run -n -E 7 "consul://$A/$k" -- true; rc=$?
    [[ $rc == 7 ]] || { echo "-E 7: $rc"; return 1; }
    t0=$(now)
    "$L" run -w 1.5 "consul://$A/$k" -- true; rc=$?
    e=$(since "$t0")
    echo "timeout 1.5 s took $e s"
    [[ $rc == 1 ]] && between "$e" 1.5 4 || return 1
    "$L" run -w 20 "consul://$A/$k" -- sh -c 'exit 5'; rc=$?
    [[ $rc == 5 ]] || { echo "command code: $rc"; return 1; }
    "$L" run -w 2 "consul://127.0.0.1:1/$k" -- true 2>"$WORK/unreach"; rc=$?
    if ! grep -q "127.0.0.1:1" "$WORK/unreach" || [[ $rc != 69 ]]; then
        echo "unreachable: $rc"
        cat "$WORK/unreach"
        return 1
    fi
    "$L" run --ttl 5 "consul://$A/$k" -- true; rc=$?
    [[ $rc == 64 ]] || { echo "ttl 5: $rc"; return 1; }
    wait
}

t_cancel() {
    local k pid t0 rc
    k=$(key cancel)
    # The holder holds until told to stop (an event, not a sleep that a loaded machine outlasts).
    "$L" run "consul://$A/$k" -- sh -c "touch $WORK/cancel.held; for i in \$(seq 1200); do [ -e $WORK/cancel.done ] && exit 0; sleep 0.05; done" &
    local holder=$!
    wait_file 20 "$WORK/cancel.held" || return 1
    "$L" run "consul://$A/$k" -- true &
    pid=$!
    local end=$(($(date +%s%N) + 20000000000))
    until [[ $(sessions_of "$A" "$k" | wc -l) == 2 ]]; do
        (($(date +%s%N) > end)) && { echo "waiter has no session?"; return 1; }
        sleep 0.05
    done
    t0=$(now)
    kill -TERM "$pid"
    wait "$pid"; rc=$?
    echo "cancel took $(since "$t0") s, exit $rc"
    [[ $rc == 143 ]] || return 1
    between "$(since "$t0")" 0 1.5 || return 1
    # The waiter's session is gone; the holder's remains.
    [[ $(sessions_of "$A" "$k" | wc -l) == 1 ]] || { sessions_of "$A" "$k"; return 1; }
    touch "$WORK/cancel.done"
    wait "$holder"
}

t_status_list_release() {
    local k out
    k=$(key st)
    "$L" run --holder "suite-holder" "consul://$A/$k/m" -- sh -c "touch $WORK/st.held; sleep 30" &
    local holder=$!
    wait_file 20 "$WORK/st.held" || return 1
    out=$("$L" status --json "consul://$A/$k/m") || return 1
    [[ $(json "j['held'], j['holders'][0]['holder'], j['holders'][0]['state']" <<<"$out") == "True suite-holder alive" ]] || { echo "$out"; return 1; }
    out=$("$L" list "consul://$A/$k") || return 1
    [[ $out == *"consul://$A/$k/m"* ]] || { echo "list: $out"; return 1; }
    "$L" release "consul://$A/$k/m"; [[ $? == 65 ]] || { echo "release without --force"; return 1; }
    "$L" release --force "consul://$A/$k/m" || return 1
    # The holder sees the loss within ~1 s and stops its command: exit 75.
    wait "$holder"; local rc=$?
    [[ $rc == 75 ]] || { echo "holder exit $rc"; return 1; }
    [[ $(kvkeys "$A" "$k/") == "[]" ]]
}

t_persist() {
    local k
    k=$(key persist)
    "$L" acquire --persist "consul://$A/$k" || return 1
    "$L" status --check "consul://$A/$k" || return 1
    "$L" update "consul://$A/$k" || return 1
    "$L" run -n "consul://$A/$k" -- true; [[ $? == 1 ]] || return 1
    "$L" release "consul://$A/$k" || return 1
    [[ $(kvkeys "$A" "$k") == "[]" ]] && [[ -z $(sessions_of "$A" "$k") ]]
}

t_release_match() {
    local k out
    k=$(key match)
    "$L" acquire --persist "consul://$A/$k/a" >/dev/null || return 1
    "$L" acquire --persist "consul://$A/$k/b" >/dev/null || return 1
    "$L" acquire --persist "consul://$A/$k-other" >/dev/null || return 1
    out=$("$L" release --match "$k/.*" "consul://$A/") || return 1
    [[ $out == "released consul://$A/$k/a"*"released consul://$A/$k/b" ]] || { echo "release --match: $out"; return 1; }
    "$L" status --check "consul://$A/$k/a"; [[ $? == 1 ]] || return 1
    "$L" status --check "consul://$A/$k-other" || return 1
    "$L" release --match "$k/.*" "consul://$A/"; [[ $? == 65 ]] || return 1
    "$L" release --match x sem:; [[ $? == 64 ]] || return 1
    "$L" release "consul://$A/$k-other"
}

# --- loss -----------------------------------------------------------------------------------

t_operator_destroys_session() {
    local k pid sess t0 rc e
    for lim in 1 3; do
        k=$(key opdestroy)
        rm -f "$WORK/op.pid" "$WORK/op.term"
        "$L" run --limit "$lim" --ttl 60 "consul://$A/$k" -- sh -c "trap 'touch $WORK/op.term; exit 0' TERM; echo \$\$ > $WORK/op.pid; while :; do sleep 0.1; done" &
        pid=$!
        wait_file 20 "$WORK/op.pid" || return 1
        sess=$(sessions_of "$A" "$k")
        [[ -n $sess ]] || { echo "no session"; return 1; }
        t0=$(now)
        curl -sf -X PUT "http://$A/v1/session/destroy/$sess" >/dev/null || return 1
        wait_gone 10 "$pid" || { echo "lockfn run still running"; return 1; }
        e=$(since "$t0")
        wait "$pid"; rc=$?
        echo "limit $lim: command stopped $e s after the session was destroyed; exit $rc"
        [[ $rc == 75 && -e $WORK/op.term ]] || return 1
        between "$e" 0 2 || return 1
    done
}

t_kill9_takeover() {
    local k pid t0 e rc
    k=$(key kill9)
    "$L" run --ttl 10 --lock-delay 2 "consul://$A/$k" -- sh -c "touch $WORK/k9.held; sleep 300" &
    pid=$!
    wait_file 20 "$WORK/k9.held" || return 1
    kill -9 "$pid"
    t0=$(now)
    "$L" run -w 60 "consul://$A/$k" -- true; rc=$?
    e=$(since "$t0")
    echo "kill -9 takeover (TTL 10 s, lock-delay 2 s): $e s"
    # Never before TTL + lock-delay; Consul ends a session 2 x TTL after its last renewal.
    [[ $rc == 0 ]] && between "$e" 12 27
}

# --- interop --------------------------------------------------------------------------------

# consul_lock_hold PREFIX N MARK STOP: `consul lock -n N PREFIX` holding until STOP exists.
consul_lock_hold() {
    "$CONSUL_BIN" lock -n "$2" "$1" "touch $3; i=0; while [ ! -e $4 ] && [ \$i -lt 600 ]; do sleep 0.1; i=\$((i+1)); done" >/dev/null 2>&1 &
}

t_consul_lock_mutex() {
    local p rc
    p=$(key clm)
    consul_lock_hold "$p" 1 "$WORK/clm.held" "$WORK/clm.stop"
    wait_file 30 "$WORK/clm.held" || return 1
    "$L" run -n "consul://$A/$p/.lock" -- true; rc=$?
    [[ $rc == 1 ]] || { echo "lockfn got a lock consul lock holds ($rc)"; return 1; }
    "$L" status "consul://$A/$p/.lock" | grep -q "Consul lock for" || return 1
    touch "$WORK/clm.stop"
    "$L" run -w 30 "consul://$A/$p/.lock" -- true || return 1
    wait
    "$L" run "consul://$A/$p/.lock" -- sh -c "touch $WORK/clm.l; sleep 3" &
    wait_file 20 "$WORK/clm.l" || return 1
    if "$CONSUL_BIN" lock -timeout=1s "$p" true >/dev/null 2>&1; then
        echo "consul lock got a lock lockfn holds"
        return 1
    fi
    "$CONSUL_BIN" lock -timeout=15s "$p" true >/dev/null || { echo "consul lock never got it"; return 1; }
    wait
}

t_consul_lock_semaphore() {
    local p rc
    p=$(key cln)
    consul_lock_hold "$p" 3 "$WORK/cln.h1" "$WORK/cln.stop"
    consul_lock_hold "$p" 3 "$WORK/cln.h2" "$WORK/cln.stop"
    wait_file 30 "$WORK/cln.h1" && wait_file 30 "$WORK/cln.h2" || return 1
    "$L" run --limit 3 "consul://$A/$p/.lock" -- sh -c "touch $WORK/cln.l; sleep 4" &
    wait_file 20 "$WORK/cln.l" || return 1
    "$L" run -n --limit 3 "consul://$A/$p/.lock" -- true; rc=$?
    [[ $rc == 1 ]] || { echo "4th slot via lockfn ($rc)"; return 1; }
    if "$CONSUL_BIN" lock -n 3 -timeout=1s "$p" true >/dev/null 2>&1; then
        echo "4th slot via consul lock"
        return 1
    fi
    [[ $("$L" status --json "consul://$A/$p/.lock" | json "len(j['holders']), j['limit']") == "3 3" ]] || return 1
    # When our slot frees, consul lock -n 3 gets it.
    "$CONSUL_BIN" lock -n 3 -timeout=20s "$p" true >/dev/null || { echo "consul lock -n 3 never got the slot"; return 1; }
    touch "$WORK/cln.stop"
    wait
}

# --- the queue of lockfn waiters --------------------------------------------------------------

# queued ADDR KEY: how many lockfn waiters are queued beside mutex key KEY. Read from 127.0.0.2:
# a client address of its own, so that the hundreds of waiters of 127.0.0.1 (which may fill
# the agent's per-client connection limit) do not refuse the test its reads.
queued() {
    curl -sf --max-time 5 --interface 127.0.0.2 "http://$1/v1/kv/$2/.queue/?keys=true" |
        python3 -c 'import json,sys; print(len(json.load(sys.stdin)))' 2>/dev/null || echo 0
}

# wait_pids SECS PID...: until every PID (a child of this shell) has exited, bounded; sets
# BAD to the count of those that failed (non-zero exit, or still running at the end: killed)
# and KILLED to the count of the latter.
wait_pids() {
    local end=$(($(date +%s%N) + $1 * 1000000000)) p
    BAD=0 KILLED=0
    shift
    for p in "$@"; do
        while kill -0 "$p" 2>/dev/null && (($(date +%s%N) < end)); do sleep 0.1; done
        if kill -0 "$p" 2>/dev/null; then
            kill -9 "$p" 2>/dev/null
            wait "$p" 2>/dev/null
            BAD=$((BAD + 1)) KILLED=$((KILLED + 1))
        else
            wait "$p" || BAD=$((BAD + 1))
        fi
    done
}

# 300 `lockfn run -w` on one host behind one holder, against the -dev agent with Consul's
# default limits.http_max_conns_per_client (200): each waiter keeps one connection, so the
# holder and 199 waiters get in and the others are refused (connection closed, or 429) and
# retry with backoff until a connection frees; every one must exit 0.
t_many_waiters() {
    local k d n=300 pids=() i hp t0 bad left
    k=$(key many)
    d=$WORK/many
    mkdir -p "$d"
    echo 0 >"$d/counter"
    echo 0 >"$d/last_token"
    : >"$d/violations"
    "$L" run "consul://$A/$k" -- sh -c "touch $d/held; while [ ! -e $d/stop ]; do sleep 0.05; done" &
    hp=$!
    wait_file 30 "$d/held" || return 1
    # Each exit status is written to a file (bash's wait statuses were seen to mislead
    # with hundreds of children).
    for ((i = 0; i < n; i++)); do
        ("$L" run -w 600 "consul://$A/$k" -- tests/lib/critical.sh "$d" 2>>"$d/err"
            echo $? >"$d/rc.$i") &
        pids+=($!)
    done
    # As many as the limit lets in (199 of 127.0.0.1's 200 connections) are queued.
    local end=$(($(date +%s) + 240))
    until (($(queued "$A" "$k") >= 180)); do
        (($(date +%s) > end)) && { echo "only $(queued "$A" "$k") waiters queued in 240 s"; return 1; }
        sleep 0.5
    done
    echo "queued: $(queued "$A" "$k") (the others wait for a connection)"
    t0=$(now)
    touch "$d/stop"
    wait_pids 400 "$hp" "${pids[@]}"
    bad=$((n - $(cat "$d"/rc.* 2>/dev/null | grep -cx 0)))
    echo "$n waiters: all through $(since "$t0") s after the holder left; not exit 0: $bad" \
        "(exit codes: $(cat "$d"/rc.* 2>/dev/null | sort | uniq -c | tr -s ' \n' ' ')); killed $KILLED;" \
        "counter $(cat "$d/counter")"
    sort "$d/err" | uniq -c | sort -rn | head -5
    [[ -s $d/violations ]] && { head -5 "$d/violations"; return 1; }
    left=$(curl -sf --interface 127.0.0.2 "http://$A/v1/kv/$k?recurse=true&keys=true" || echo "[]")
    [[ $bad == 0 && $KILLED == 0 && $(cat "$d/counter") == "$n" && $left == "[]" ]] || {
        echo "left: $left"
        return 1
    }
}

# Mutual exclusion with mixed contenders on one key: 4 `lockfn run` and 4 `consul lock`
# processes x 200 sections each, with 20 more lockfn waiters in the queue (10 sections each,
# from the start: a `consul lock` barges in when it sees the key free, lockfn waiters hand
# over among themselves, so unbounded they would take most sections). Inside,
# the fencing token is the key's ModifyIndex for both tools (`consul lock` sets no
# LOCKFN_TOKEN: read from the key), which must grow from section to section.
t_mixed_exclusion() {
    local p d w pids=() qpids=() bad total extra
    p=$(key mixed)
    d=$WORK/mixed
    mkdir -p "$d"
    echo 0 >"$d/counter"
    echo 0 >"$d/last_token"
    : >"$d/violations" && : >"$d/extra"
    cat >"$d/cl-section.sh" <<SH
#!/bin/bash
LOCKFN_TOKEN=\$(curl -sf "http://$A/v1/kv/$p/.lock" | grep -o '"ModifyIndex": *[0-9]*' | grep -o '[0-9]*$') \
    exec $ROOT/tests/lib/critical.sh $d
SH
    chmod +x "$d/cl-section.sh"
    for w in 1 2 3 4; do
        (for ((i = 0; i < 200; i++)); do
            "$L" run -w 300 "consul://$A/$p/.lock" -- tests/lib/critical.sh "$d" ||
                echo "lockfn worker $w: exit $?" >>"$d/violations"
        done
        touch "$d/done.l$w") &
        pids+=($!)
        (for ((i = 0; i < 200; i++)); do
            "$CONSUL_BIN" lock -timeout=300s "$p" "$d/cl-section.sh" >/dev/null 2>>"$d/cl.err" ||
                echo "consul lock worker $w: exit $?" >>"$d/violations"
        done
        touch "$d/done.c$w") &
        pids+=($!)
    done
    for w in $(seq 20); do
        (for ((i = 0; i < 10; i++)); do
            "$L" run -w 300 "consul://$A/$p/.lock" -- tests/lib/critical.sh "$d" ||
                echo "queue worker $w: exit $?" >>"$d/violations"
            echo x >>"$d/extra"
        done
        touch "$d/done.q$w") &
        qpids+=($!)
    done
    wait_pids 900 "${pids[@]}" "${qpids[@]}"
    # Every worker records its own failures in violations and ends with a done marker (the
    # markers, not wait's statuses, say that all 28 finished).
    local done
    done=$(find "$d" -maxdepth 1 -name 'done.*' | wc -l)
    extra=$(wc -l <"$d/extra")
    total=$((1600 + extra))
    echo "sections: counter $(cat "$d/counter") of $total (1600 + $extra by the 20 queue workers)," \
        "workers done $done of 28, killed at the time bound $KILLED, non-zero wait status $BAD"
    [[ -s $d/violations ]] && { head -5 "$d/violations"; head -3 "$d/cl.err"; return 1; }
    [[ $KILLED == 0 && $done == 28 && $(cat "$d/counter") == "$total" ]]
}

t_consullock() {
    local k rc out
    [[ -x $VENV/bin/consul-lock ]] || { echo "consul-lock not installed in $VENV"; return 1; }
    k=$(key pycl)
    "$VENV/bin/consul-lock" lock --session-ttl 60 "$k" >/dev/null || return 1
    "$L" run -n "consul://$A/$k" -- true; rc=$?
    [[ $rc == 1 ]] || { echo "lockfn got a lock consullock holds ($rc)"; return 1; }
    out=$("$L" status "consul://$A/$k")
    [[ $out == *consullock* ]] || { echo "$out"; return 1; }
    "$L" run -w 30 "consul://$A/$k" -- sh -c "touch $WORK/pycl.l; sleep 3" &
    wait_sessions 20 1 "$k" || return 1
    "$VENV/bin/consul-lock" unlock "$k" >/dev/null || return 1
    wait_file 10 "$WORK/pycl.l" || return 1
    "$VENV/bin/consul-lock" lock --non-blocking "$k" >/dev/null 2>&1; rc=$?
    [[ $rc == 100 ]] || { echo "consullock got a lock lockfn holds ($rc)"; return 1; }
    wait
}

# --- ACL ------------------------------------------------------------------------------------

t_acl() {
    local acl_addr rw none k rc out
    tests/servers/consul.sh start "$WORK/acl" --acl || return 1
    acl_addr=$(sed -n 's/^CONSUL_HTTP_ADDR=//p' "$WORK/acl/env")
    rw=$(cat "$WORK/acl/token.rw") none=$(cat "$WORK/acl/token.none")
    k=$(key acl)
    : >"$WORK/acl.out"
    # Right token (file): works, status shows the holder.
    CONSUL_HTTP_TOKEN_FILE=$WORK/acl/token.rw "$L" -vv run "consul://$acl_addr/$k" -- true >>"$WORK/acl.out" 2>&1 || { cat "$WORK/acl.out"; return 1; }
    CONSUL_HTTP_TOKEN=$rw "$L" -vv run --limit 2 "consul://$acl_addr/$k-sem" -- true >>"$WORK/acl.out" 2>&1 || { cat "$WORK/acl.out"; return 1; }
    CONSUL_HTTP_TOKEN=$rw "$L" run "consul://$acl_addr/$k" -- sh -c "touch $WORK/acl.held; sleep 3" >>"$WORK/acl.out" 2>&1 &
    wait_file 20 "$WORK/acl.held" || return 1
    CONSUL_HTTP_TOKEN=$rw "$L" -vv status --json "consul://$acl_addr/$k" >>"$WORK/acl.out" 2>&1 || return 1
    CONSUL_HTTP_TOKEN=$rw "$L" -vv list "consul://$acl_addr/lockfn-suite" >>"$WORK/acl.out" 2>&1 || return 1
    CONSUL_HTTP_TOKEN=$rw "$L" -vv run -n "consul://$acl_addr/$k" -- true >>"$WORK/acl.out" 2>&1; rc=$?
    [[ $rc == 1 ]] || { echo "busy under ACL: $rc"; return 1; }
    wait
    # A valid token without rights, an unknown token, no token: permission denied (77).
    for tok in "$none" "00000000-1111-2222-3333-444444444444" ""; do
        CONSUL_HTTP_TOKEN=$tok "$L" -vv run -w 2 "consul://$acl_addr/$k" -- true >"$WORK/acl.one" 2>&1; rc=$?
        cat "$WORK/acl.one" >>"$WORK/acl.out"
        [[ $rc == 77 ]] || { echo "token '${tok:0:4}…': exit $rc"; cat "$WORK/acl.one"; return 1; }
        grep -qiE "permission denied|acl not found" "$WORK/acl.one" || { cat "$WORK/acl.one"; return 1; }
        CONSUL_HTTP_TOKEN=$tok "$L" status "consul://$acl_addr/$k" >>"$WORK/acl.out" 2>&1; rc=$?
        [[ $rc == 77 ]] || { echo "status with token '${tok:0:4}…': exit $rc"; return 1; }
    done
    CONSUL_HTTP_TOKEN_FILE=$WORK/acl/token.none "$L" run "consul://$acl_addr/$k" -- true >>"$WORK/acl.out" 2>&1; rc=$?
    [[ $rc == 77 ]] || { echo "token file without rights: $rc"; return 1; }
    # No token ever appears in any output.
    if grep -qF -e "$rw" -e "$none" -e "00000000-1111-2222-3333-444444444444" "$WORK/acl.out"; then
        echo "a token was printed"
        return 1
    fi
    echo "checked $(wc -l <"$WORK/acl.out") lines of output: no token"
    tests/servers/consul.sh stop "$WORK/acl" >/dev/null 2>&1
}

# --- HTTPS ----------------------------------------------------------------------------------

t_tls() {
    local d=$WORK/tls hp pid i rc k
    command -v openssl >/dev/null || { echo "no openssl"; return 1; }
    mkdir -p "$d"
    (
        set -e
        cd "$d"
        openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj "/CN=lockfn test CA" 2>/dev/null
        openssl req -newkey rsa:2048 -nodes -keyout srv.key -out srv.csr -subj "/CN=localhost" 2>/dev/null
        printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >ext
        openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out srv.pem -days 2 -extfile ext 2>/dev/null
    ) || { echo "openssl failed"; return 1; }
    mapfile -t ports < <(tests/lib/ports.sh 4)
    ((${#ports[@]} == 4)) || { echo "no free ports"; return 1; }
    hp=${ports[0]}
    cat >"$d/agent.hcl" <<HCL
ports { http = -1, https = $hp, dns = -1, grpc = -1, serf_lan = ${ports[1]}, serf_wan = ${ports[2]}, server = ${ports[3]} }
cert_file = "$d/srv.pem"
key_file = "$d/srv.key"
ca_file = "$d/ca.pem"
verify_incoming = false
disable_update_check = true
HCL
    "$CONSUL_BIN" agent -dev -node "lockfn-tls-$$" -bind 127.0.0.1 -client 127.0.0.1 -config-file "$d/agent.hcl" >"$d/consul.log" 2>&1 &
    pid=$!
    echo "$pid" >"$d/pid"
    for ((i = 0; i < 300; i++)); do
        curl -sf --cacert "$d/ca.pem" "https://127.0.0.1:$hp/v1/status/leader" 2>/dev/null | grep -q ':' && break
        sleep 0.1
    done
    k=$(key tls)
    # https:// address + CONSUL_CACERT
    env -u CONSUL_HTTP_ADDR CONSUL_HTTP_ADDR="https://127.0.0.1:$hp" CONSUL_CACERT="$d/ca.pem" \
        "$L" run "consul:$k" -- true || { echo "https:// + CONSUL_CACERT failed"; tail -5 "$d/consul.log"; kill "$pid"; return 1; }
    # host:port + CONSUL_HTTP_SSL=true, through a URL target
    CONSUL_HTTP_SSL=true CONSUL_CACERT="$d/ca.pem" "$L" run "consul://127.0.0.1:$hp/$k" -- true ||
        { echo "CONSUL_HTTP_SSL failed"; kill "$pid"; return 1; }
    # Unknown CA: unavailable (69), naming the address
    CONSUL_HTTP_SSL=true "$L" run -w 2 "consul://127.0.0.1:$hp/$k" -- true 2>"$d/err"; rc=$?
    if [[ $rc != 69 ]] || ! grep -q "127.0.0.1:$hp" "$d/err"; then
        echo "unknown CA: exit $rc"
        cat "$d/err"
        kill "$pid"
        return 1
    fi
    # CONSUL_HTTP_SSL_VERIFY=false: accepted without the CA
    CONSUL_HTTP_SSL=true CONSUL_HTTP_SSL_VERIFY=false "$L" run "consul://127.0.0.1:$hp/$k" -- true ||
        { echo "SSL_VERIFY=false failed"; kill "$pid"; return 1; }
    kill "$pid"
    wait "$pid" 2>/dev/null
    true
}

# --- 3-server cluster -------------------------------------------------------------------------

t_cluster_leader_stop() {
    local d=$WORK/cluster leader addrs a b k i pids=() rcs=() crit
    tests/servers/consul.sh start-cluster "$d" || return 1
    leader=$(tests/servers/consul.sh leader "$d") || return 1
    # shellcheck disable=SC2207
    addrs=($(sed -n 's/^CONSUL_HTTP_ADDRS="\(.*\)"/\1/p' "$d/env"))
    # Clients talk to the two followers; the leader is stopped under them.
    a="" b=""
    for i in 1 2 3; do
        [[ $i == "$leader" ]] && continue
        if [[ -z $a ]]; then a=${addrs[$((i - 1))]}; else b=${addrs[$((i - 1))]}; fi
    done
    echo "leader node $leader; clients on $a and $b"
    k=$(key cluster)
    crit=$WORK/crit.sh
    cat >"$crit" <<SH
#!/bin/bash
trap 'rm -f $WORK/inside; date +%s.%N > $WORK/cl.\$1.end; exit 143' TERM
if ! (set -C; echo \$\$ > $WORK/inside) 2>/dev/null; then echo "overlap \$\$" >> $WORK/violations; fi
date +%s.%N > $WORK/cl.\$1
for i in \$(seq \$2); do sleep 0.1; done
rm -f $WORK/inside
SH
    chmod +x "$crit"
    : >"$WORK/violations"
    "$L" run --ttl 10 -w 120 "consul://$a/$k" -- "$crit" h 60 &
    pids+=($!)
    wait_file 20 "$WORK/cl.h" || return 1
    "$L" run --ttl 10 -w 120 "consul://$a/$k" -- "$crit" w1 10 &
    pids+=($!)
    "$L" run --ttl 10 -w 120 "consul://$b/$k" -- "$crit" w2 10 &
    pids+=($!)
    SESSION_ADDR=$a wait_sessions 20 3 "$k" || return 1
    tests/servers/consul.sh stop-node "$d" "$leader" || return 1
    echo "leader stopped; new leader: node $(tests/servers/consul.sh leader "$d")"
    for p in "${pids[@]}"; do
        wait "$p"
        rcs+=($?)
    done
    echo "exit codes: holder ${rcs[0]}, waiters ${rcs[1]} ${rcs[2]}"
    [[ ! -s $WORK/violations ]] || { cat "$WORK/violations"; return 1; }
    # The holder kept its lock or was told it lost it; the waiters got it in turn.
    [[ ${rcs[0]} == 0 || ${rcs[0]} == 75 ]] || return 1
    [[ ${rcs[1]} == 0 && ${rcs[2]} == 0 ]] || return 1
    # Phase 2: the holder talks to the leader's own agent, which is stopped under it. Its
    # session dies with that node (after the lock-delay the next waiter may take the key);
    # the holder must have reported the loss and stopped its command first.
    tests/servers/consul.sh start-node "$d" "$leader" || return 1
    leader=$(tests/servers/consul.sh leader "$d") || return 1
    # shellcheck disable=SC2207
    addrs=($(sed -n 's/^CONSUL_HTTP_ADDRS="\(.*\)"/\1/p' "$d/env"))
    a=${addrs[$((leader - 1))]}
    b=${addrs[$((leader % 3))]}
    echo "phase 2: leader node $leader; holder on its agent $a, waiter on $b"
    k=$(key cluster2)
    rm -f "$WORK/cl.h" "$WORK/cl.w1"
    pids=() rcs=()
    "$L" run --ttl 10 -w 120 "consul://$a/$k" -- "$crit" h 600 &
    pids+=($!)
    wait_file 20 "$WORK/cl.h" || return 1
    "$L" run --ttl 10 -w 120 "consul://$b/$k" -- "$crit" w1 5 &
    pids+=($!)
    SESSION_ADDR=$a wait_sessions 20 2 "$k" || return 1
    local stopped
    stopped=$(now)
    tests/servers/consul.sh stop-node "$d" "$leader" || return 1
    for p in "${pids[@]}"; do
        wait "$p"
        rcs+=($?)
    done
    echo "exit codes: holder ${rcs[0]}, waiter ${rcs[1]}"
    awk -v s="$stopped" -v h="$(cat "$WORK/cl.h.end" 2>/dev/null || echo 0)" -v w="$(cat "$WORK/cl.w1")" \
        'BEGIN{printf "after the leader stopped: holder stopped its command at +%.1f s, waiter entered at +%.1f s\n", h-s, w-s}'
    [[ ! -s $WORK/violations ]] || { cat "$WORK/violations"; return 1; }
    [[ ${rcs[0]} == 75 && ${rcs[1]} == 0 ]] || return 1
    tests/servers/consul.sh stop "$d" >/dev/null 2>&1
}

check "exclusion: 8 processes x 200 on consul" t_exclusion
check "limit 3: never more than 3, and 3 together; nothing left" t_limit3
check "exit codes, -E, timeout, unreachable agent, bad ttl" t_codes_and_timeout
check "cancel: SIGTERM while waiting exits 143 at once and leaves no session" t_cancel
check "status --json, list, release --force (holder exits 75)" t_status_list_release
check "acquire --persist, update, release" t_persist
check "release --match REGEX releases exactly the matching keys" t_release_match
check "operator destroys the session: lockfn run stops its command within 2 s" t_operator_destroys_session
check "kill -9 of a holder: next waiter after TTL + lock-delay, never before" t_kill9_takeover
check "consul lock (mutex) both ways" t_consul_lock_mutex
check "consul lock -n 3 shares the 3 slots both ways" t_consul_lock_semaphore
check "queue: 300 waiting lockfn run on one host behind one holder all exit 0" t_many_waiters
check "queue: 4 lockfn + 4 consul lock x 200 with 20 queued lockfn waiters, zero overlaps" t_mixed_exclusion
check "consullock (consul-lock lock/unlock) on the same key" t_consullock
check "ACL agent: right token works, others exit 77, no token in any output" t_acl
check "https: CONSUL_CACERT, CONSUL_HTTP_SSL, https:// address, SSL_VERIFY=false" t_tls
check "3-server cluster: leader stopped under a held lock: never two holders" t_cluster_leader_stop

echo
((FAILED)) && printf 'failed: %s\n' "${FAILED_NAMES[@]}"
echo "$PASSED passed, $FAILED failed"
((FAILED == 0))
