#!/usr/bin/env bash
# pmxcfs backend at the shell level: `lockfn run pmxcfs:…` against pmxlock (PyPI, its own code
# with its two hard-coded directories moved, tests/pmxcfs/pmxlock_run.py) and a Perl loop doing
# what Proxmox's cfs_lock does (tests/pmxcfs/cfs_lock_loop.pl), non-root EPERM via setpriv,
# cluster traffic counted with strace while waiting 5 s, kill -9 takeover, a lost lock, and
# persistent locks / status / list / gc.
#
# The pmxcfs emulator (tests/pmxcfs/pmxemu.c, a FUSE file system behaving like pmxcfs in local
# mode, started by tests/pmxcfs/emu.sh in a temp dir) stands in for /etc/pve: priv/lock on it
# answers unlock requests and refreshes as pmxcfs does (EACCES while young, expiry → ENOENT),
# st_ino is libfuse's node number, times are whole seconds. tests/pmxcfs/behaviour.sh checks
# the emulator against pmxcfs's documented behaviour first (t_emulator_behaves_like_pmxcfs).
#
#   tests/suites/30-pmxcfs.sh        (LOCKFN=path/to/lockfn, LOCKFN_VENV=venv with pmxlock)
# Prints one line per test and a final `N passed, N failed`; exits non-zero on any failure.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 2
ROOT=$PWD
LOCKFN=${LOCKFN:-$ROOT/target/debug/lockfn}
VENV=${LOCKFN_VENV:-${LOCKFN_TEST_CACHE:-/var/cache/lockfn-tests}/venv}
PASSED=0 FAILED=0

T=$(mktemp -d /dev/shm/lockfn-pmxcfs-suite.XXXXXX)
EMU=$ROOT/tests/pmxcfs/emu.sh
PIDS=()
cleanup() {
  local p d
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
  wait 2>/dev/null
  for d in "$T"/emu*; do [[ -d $d ]] && "$EMU" stop "$d"; done
  rm -rf --one-file-system "$T"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# emu_start DIR TTL: start an emulator (stopped by cleanup, or by itself once this shell is
# gone), all of them sharing one build of it.
emu_start() {
  PMXEMU_TTL=$2 PMXEMU_BIN=$T/bin/pmxemu PMXEMU_WATCH_PID=$$ "$EMU" start "$1"
}
if ! "$EMU" build "$T/bin" || ! emu_start "$T/emu" 120; then
  echo "cannot start the pmxcfs emulator (tests/pmxcfs/emu.sh)"
  echo "0 passed, 1 failed"
  exit 1
fi
LOCKFN_PMXCFS_DIR=$(sed -n 's/^LOCKFN_PMXCFS_DIR=//p' "$T/emu/env")
export LOCKFN_PMXCFS_DIR LOCKFN_PMXLOCK_DIR=$T/flock LOCKFN_RUN_DIR=$T/run
mkdir -p "$LOCKFN_PMXLOCK_DIR" "$LOCKFN_RUN_DIR"
LD=$LOCKFN_PMXCFS_DIR
# shellcheck source=tests/lib/suite.sh
. "$ROOT/tests/lib/suite.sh"

# waiting_on_flock PID: PID sleeps on the inotify watch of the node-local flock file (it has
# found the lock taken and is waiting), the event the tests await instead of a sleep.
waiting_on_flock() {
  local fd
  for fd in /proc/"$1"/fd/*; do
    [[ $(readlink "$fd" 2>/dev/null) == *inotify* ]] && return 0
  done
  return 1
}
run_test() {
  local name=$1
  if "$name"; then
    PASSED=$((PASSED + 1))
    echo "ok   $name"
  else
    FAILED=$((FAILED + 1))
    echo "FAIL $name"
  fi
  # Nothing of one test may leak into the next.
  rm -rf "${LD:?}"/* "$T/mark"
}
mark_init() { rm -rf "$T/mark" && mkdir -p "$T/mark"; }
# The critical section of every participant: an O_EXCL marker (noclobber) proves exclusion.
CRIT='set -C; : > "$M/inside" 2>/dev/null || echo "$W found someone inside" >> "$M/violations"; sleep 0.005; rm -f "$M/inside"; echo "$W" >> "$M/count"'
no_violations() {
  if [[ -s $T/mark/violations ]]; then
    fail "mutual exclusion violated: $(head -3 "$T/mark/violations")"
  fi
}
count_of() { grep -c "^$1\$" "$T/mark/count" 2>/dev/null || echo 0; }

pmxlock() { "$VENV/bin/python" tests/pmxcfs/pmxlock_run.py "$@"; }

# ---------------------------------------------------------------------------------------------

t_run_token_is_the_counter() {
  # The fencing token is the per-name counter beside priv/lock (priv/lockfn/tokens/NAME),
  # one more on every acquisition.
  local out tokfile=$LOCKFN_PMXCFS_DIR/../lockfn/tokens/basic
  out=$("$LOCKFN" run pmxcfs:basic -- sh -c 'echo "$LOCKFN_TOKEN"') || return 1
  [[ $out =~ ^[0-9]+$ ]] || fail "LOCKFN_TOKEN '$out' is not a number" || return 1
  ((10#$(cat "$tokfile") == out)) || fail "token file $(cat "$tokfile") != $out" || return 1
  local again
  again=$("$LOCKFN" run pmxcfs:basic -- sh -c 'echo "$LOCKFN_TOKEN"') || return 1
  ((again == out + 1)) || fail "token did not grow by one: $out then $again"
  [[ ! -e $LD/basic ]] || fail "directory left behind"
}

t_busy_messages_and_codes() {
  mkdir "$LD/held"
  local rc err
  err=$("$LOCKFN" run -w 1 pmxcfs:held -- true 2>&1 >/dev/null)
  rc=$?
  [[ $rc == 1 ]] || fail "timeout: exit $rc, expected 1" || return 1
  [[ $err == *"cfs-lock 'held' error: got lock request timeout"* ]] || fail "timeout message: $err" || return 1
  "$LOCKFN" run -n -E 9 pmxcfs:held -- true 2>/dev/null
  rc=$?
  [[ $rc == 9 ]] || fail "-n -E 9: exit $rc" || return 1
  [[ -d $LD/held ]] || fail "the holder's directory was touched"
}

t_emulator_behaves_like_pmxcfs() {
  # Each fact of pmxcfs lockfn relies on, on an emulator of its own with a TTL of 2 s, with a
  # restart (the same script runs by hand against a real pmxcfs).
  emu_start "$T/emu-bhv" 2 || fail "emulator did not start" || return 1
  local out rc=0
  out=$(RESTART_CMD="PMXEMU_BIN=$T/bin/pmxemu PMXEMU_WATCH_PID=$$ $EMU restart $T/emu-bhv" \
    FREEZE_CMD="$EMU freeze $T/emu-bhv" THAW_CMD="$EMU thaw $T/emu-bhv" \
    tests/pmxcfs/behaviour.sh "$T/emu-bhv/mnt" 2 2>&1) || rc=$?
  "$EMU" stop "$T/emu-bhv"
  echo "$out" | grep -v '^ok ' | sed 's/^/    /'
  echo "    $(echo "$out" | grep -c '^ok ') behaviour checks passed"
  ((rc == 0)) || fail "behaviour.sh: exit $rc"
}

t_traffic_while_waiting_5s() {
  mkdir "$LD/traffic"
  # strace counts the system calls: an EEXIST mkdir never reaches the file system (the kernel
  # answers it after a lookup).
  strace -f -e trace=mkdir,mkdirat,utimensat,utimes,utime -o "$T/strace.txt" \
    "$LOCKFN" run -w 5 pmxcfs:traffic -- true 2>/dev/null
  local mk ul
  mk=$(grep -c "mkdir.*\"$LD/traffic\"" "$T/strace.txt")
  ul=$(grep -c "utim.*\"$LD/traffic\", \[{tv_sec=0, tv_nsec=0}, {tv_sec=0, tv_nsec=0}\]" "$T/strace.txt")
  echo "    FIGURE strace while waiting 5 s: $mk mkdir, $ul unlock requests on the lock directory"
  ((mk <= 21)) || fail "$mk mkdir in 5 s (limit 4/s)" || return 1
  ((ul <= 6)) || fail "$ul unlock requests in 5 s (limit 1/s)" || return 1
  ((mk >= 10 && ul >= 3)) || fail "it stopped trying: $mk mkdir, $ul unlock requests"
}

t_interop_pmxlock() {
  if [[ ! -x $VENV/bin/python ]] || ! "$VENV/bin/python" -c 'import pmxlock' 2>/dev/null; then
    echo "    pmxlock missing in $VENV"
    return 1
  fi
  mark_init
  export M=$T/mark
  local pids=()
  for _ in a b; do
    (for _ in $(seq 40); do W=lockfn "$LOCKFN" run pmxcfs:px -- sh -c "$CRIT" || echo "lockfn run failed" >> "$M/violations"; done) &
    pids+=($!)
  done
  (for _ in $(seq 15); do W=pmxlock pmxlock -w 60 -- px sh -c "$CRIT" || echo "pmxlock failed" >> "$M/violations"; done) &
  pids+=($!)
  PIDS+=("${pids[@]}")
  wait "${pids[@]}"
  no_violations || return 1
  [[ $(count_of lockfn) == 80 && $(count_of pmxlock) == 15 ]] ||
    fail "counts: lockfn $(count_of lockfn)/80, pmxlock $(count_of pmxlock)/15" || return 1
  # Held by pmxlock: we wait; held by us: pmxlock -n gets its conflict code.
  pmxlock -- px sh -c "touch $T/pxin; sleep 2; rm $T/pxin" &
  PIDS+=($!)
  wait_for 10 test -e "$T/pxin" || fail "pmxlock did not get in" || return 1
  "$LOCKFN" run -w 20 pmxcfs:px -- sh -c "test ! -e $T/pxin" || fail "we got in while pmxlock was inside" || return 1
  "$LOCKFN" run pmxcfs:px -- sh -c '"$0" "$1" -n -E 7 -- px true; echo $? > "$2"' "$VENV/bin/python" "$ROOT/tests/pmxcfs/pmxlock_run.py" "$T/pxrc" >/dev/null 2>&1
  [[ $(cat "$T/pxrc" 2>/dev/null) == 7 ]] || fail "pmxlock -n while we hold: exit $(cat "$T/pxrc" 2>/dev/null), expected 7"
}

t_interop_cfs_lock_perl() {
  mark_init
  export M=$T/mark
  local pids=()
  perl tests/pmxcfs/cfs_lock_loop.pl "$LD" pl 40 "$M" 0.003 >/dev/null &
  pids+=($!)
  for _ in a b; do
    (for _ in $(seq 40); do W=lockfn "$LOCKFN" run pmxcfs:pl -- sh -c "$CRIT" || echo "lockfn run failed" >> "$M/violations"; done) &
    pids+=($!)
  done
  PIDS+=("${pids[@]}")
  wait "${pids[@]}"
  no_violations || return 1
  [[ $(count_of lockfn) == 80 && $(grep -c '^perl' "$M/count") == 40 ]] ||
    fail "counts: lockfn $(count_of lockfn)/80, perl $(grep -c '^perl' "$M/count")/40"
}

t_never_take_over_live_cfs_lock_after_our_death() {
  mark_init
  # Our holder dies holding incarnation X; cfs_lock's unlock request expires X (on an emulator
  # of its own with a TTL of 3 s: X goes 3-4 s after its mkdir, Y survives its 2 s) and it
  # holds Y for 2 s: our waiter must wait for it, not take Y over.
  emu_start "$T/emu-orph" 3 || fail "emulator did not start" || return 1
  local ld
  ld=$(sed -n 's/^LOCKFN_PMXCFS_DIR=//p' "$T/emu-orph/env")
  # lockfn is told the emulator's TTL (it never assumes one longer than pmxcfs's).
  LOCKFN_PMXCFS_TTL=3 LOCKFN_PMXCFS_DIR=$ld "$LOCKFN" run pmxcfs:orph -- sleep 100 &
  local holder=$!
  PIDS+=("$holder")
  wait_for 10 test -d "$ld/orph" || fail "holder did not get in" || return 1
  local x
  x=$(stat -c %Y "$ld/orph")
  kill -9 $holder
  wait $holder 2>/dev/null
  perl tests/pmxcfs/cfs_lock_loop.pl "$ld" orph 1 "$T/mark" 2 > "$T/perl.out" &
  PIDS+=($!)
  wait_for 10 grep -q '^IN' "$T/perl.out" || fail "cfs_lock did not get in" || return 1
  local y
  y=$(stat -c %Y "$ld/orph") # the mtime tells incarnations apart (st_ino may be re-used)
  [[ $x != "$y" ]] || fail "same incarnation" || return 1
  LOCKFN_PMXCFS_TTL=3 LOCKFN_PMXCFS_DIR=$ld "$LOCKFN" run -w 20 pmxcfs:orph -- sh -c "test ! -e $T/mark/inside" || fail "took over the live cfs_lock holder" || return 1
  wait_for 5 grep -q DONE "$T/perl.out" || fail "cfs_lock did not finish cleanly" || return 1
  "$EMU" stop "$T/emu-orph"
}

t_never_take_over_live_pmxlock_after_our_death() {
  if ! "$VENV/bin/python" -c 'import pmxlock' 2>/dev/null; then
    echo "    pmxlock missing in $VENV"
    return 1
  fi
  # Our holder dies holding X; a same-node pmxlock "recovers" X (its way: flock free, refresh
  # succeeds) and holds it 2 s. Our record still says "X, dead holder": we must wait anyway.
  "$LOCKFN" run pmxcfs:porph -- sleep 100 &
  local holder=$!
  PIDS+=("$holder")
  wait_for 10 test -e "$LOCKFN_RUN_DIR/pmxcfs/porph" || fail "holder did not get in" || return 1
  local x
  x=$(stat -c %i "$LD/porph")
  kill -9 $holder
  wait $holder 2>/dev/null
  pmxlock -- porph sh -c "touch $T/pin; sleep 2; rm $T/pin" &
  PIDS+=($!)
  wait_for 10 test -e "$T/pin" || fail "pmxlock did not get in" || return 1
  [[ $(stat -c %i "$LD/porph") == "$x" ]] || fail "pmxlock made a new directory instead" || return 1
  "$LOCKFN" run -w 20 pmxcfs:porph -- sh -c "test ! -e $T/pin" || fail "took over the live pmxlock holder"
}

t_kill9_takeover_within_1s() {
  "$LOCKFN" run pmxcfs:k9 -- sleep 100 &
  local holder=$!
  PIDS+=("$holder")
  wait_for 10 test -d "$LD/k9" || fail "holder did not get in" || return 1
  "$LOCKFN" run pmxcfs:k9 -- sh -c "date +%s.%N > $T/k9.in" &
  local waiter=$!
  PIDS+=("$waiter")
  wait_for 10 waiting_on_flock "$waiter" || fail "waiter did not start waiting" || return 1
  local t0
  t0=$(now)
  kill -9 $holder
  wait $holder 2>/dev/null
  wait $waiter || fail "waiter failed" || return 1
  local took
  took=$(awk -v a="$(cat "$T/k9.in")" -v b="$t0" 'BEGIN { printf "%.3f", a - b }')
  echo "    FIGURE lockfn run takeover after kill -9: ${took} s"
  awk -v t="$took" 'BEGIN { exit !(t < 1) }' || fail "takeover took $took s"
}

t_lost_lock_stops_command() {
  "$LOCKFN" run pmxcfs:lost -- sleep 60 &
  local p=$!
  PIDS+=("$p")
  wait_for 10 test -d "$LD/lost" || fail "did not get in" || return 1
  rmdir "$LD/lost" # what pmxcfs does when the lock expired and someone asked
  local n=0
  while kill -0 $p 2>/dev/null && ((n++ < 1000)); do sleep 0.02; done
  wait $p
  local rc=$?
  [[ $rc == 75 ]] || fail "exit $rc, expected 75 (lock lost)"
}

t_non_root_eperm() {
  # priv/ is 0700 root:www-data on pmxcfs and on the emulator; its mount point must be
  # reachable for nobody.
  chmod 0755 "$T"
  local err rc
  err=$(setpriv --reuid nobody --regid nogroup --clear-groups -- \
    "$LOCKFN" run -n pmxcfs:x -- true 2>&1)
  rc=$?
  [[ $rc == 77 ]] || fail "exit $rc, expected 77: $err" || return 1
  [[ $err == *"only root"* ]] || fail "message: $err"
}

t_unavailable() {
  mkdir -p "$T/down/pve"
  local err rc
  err=$(LOCKFN_PMXCFS_DIR=$T/down/pve/priv/lock "$LOCKFN" run -n pmxcfs:x -- true 2>&1)
  rc=$?
  [[ $rc == 69 ]] || fail "exit $rc, expected 69: $err" || return 1
  [[ $err == *"not online"* ]] || fail "message: $err"
}

t_persist_status_list_update_release_gc() {
  "$LOCKFN" acquire --persist pmxcfs:per >/dev/null || fail "acquire --persist" || return 1
  [[ -d $LD/per ]] || fail "no directory" || return 1
  out=$("$LOCKFN" status --json pmxcfs:per)
  [[ $out == *'"persist":true'* ]] || fail "status: $out" || return 1
  local out
  out=$("$LOCKFN" list pmxcfs:)
  [[ $out == *"pmxcfs:per"* ]] || fail "list: $out" || return 1
  "$LOCKFN" update pmxcfs:per || fail "update" || return 1
  "$LOCKFN" run -n pmxcfs:per -- true 2>/dev/null && fail "got a persistent lock" && return 1
  "$LOCKFN" release pmxcfs:per || fail "release" || return 1
  [[ ! -e $LD/per ]] || fail "release left the directory" || return 1
  # gc: a SIGKILLed holder's directory goes; a foreign one stays.
  "$LOCKFN" run pmxcfs:gcd -- sleep 100 &
  local p=$!
  PIDS+=("$p")
  # Killed once its record is written (between mkdir and the record, a few hundred µs, a
  # killed holder leaves a directory nobody can prove is an orphan: pmxcfs expires it).
  wait_for 10 test -e "$LOCKFN_RUN_DIR/pmxcfs/gcd" || fail "did not get in" || return 1
  kill -9 $p
  wait $p 2>/dev/null
  mkdir "$LD/gcf"
  "$LOCKFN" gc pmxcfs >/dev/null || fail "gc failed" || return 1
  [[ ! -e $LD/gcd && -d $LD/gcf ]] || fail "gc: left $(ls "$LD"); records: $(ls "$LOCKFN_RUN_DIR/pmxcfs"); $(cat "$LOCKFN_RUN_DIR/pmxcfs/gcd" 2>&1)"
}

# Persistent locks expire as pmxcfs says, and --keep keeps one: on an emulator whose locks
# expire after 3 s (LOCKFN_PMXCFS_TTL tells lockfn so).
t_persist_lifetime_and_keep() {
  emu_start "$T/emu3" 3 >/dev/null || fail "second emulator" || return 1
  local ld3 err out t0
  ld3=$(sed -n 's/^LOCKFN_PMXCFS_DIR=//p' "$T/emu3/env")
  pe() { LOCKFN_PMXCFS_DIR=$ld3 LOCKFN_PMXCFS_TTL=3 "$LOCKFN" "$@"; }
  # acquire --persist states its deadline; the lock is gone after it, not before.
  t0=$(now)
  err=$(pe acquire --persist pmxcfs:life 2>&1 >/dev/null) || fail "acquire: $err" || return 1
  [[ $err == *"in 3 s"*"lockfn update pmxcfs:life"* ]] || fail "no deadline stated: $err" || return 1
  out=$(pe status --json pmxcfs:life)
  [[ $out == *'"state":"persistent"'*'"expires":'* ]] || fail "status: $out" || return 1
  out=$(pe status pmxcfs:life)
  [[ $out == *"persistent, taken by pid"*"expires"* && $out != *"(dead)"* ]] || fail "status: $out" || return 1
  pe run -n pmxcfs:life -- true 2>/dev/null && fail "taken while alive" && return 1
  # Its stated end: the first time another can take it (the emulator expires it 3 s after
  # the last refresh, as pmxcfs does after 120 s).
  wait_for 10 pe run -n pmxcfs:life -- true 2>/dev/null || fail "never expired" || return 1
  awk -v a="$t0" -v b="$(now)" 'BEGIN { exit !(b - a >= 2.9) }' || fail "expired before its deadline" || return 1
  # --keep: kept past three lifetimes, ended by release, and the keeper goes with it.
  err=$(pe acquire --persist --keep pmxcfs:kept 2>&1 >/dev/null) || fail "acquire --keep: $err" || return 1
  local keeper
  keeper=$(sed -n 's/.*lockfn keep (pid \([0-9]*\)).*/\1/p' <<<"$err")
  [[ -n $keeper ]] || fail "no keeper: $err" || return 1
  PIDS+=("$keeper")
  sleep 9.5 # three lifetimes: time itself is what is tested
  pe run -n pmxcfs:kept -- true 2>/dev/null && fail "--keep did not keep it" && return 1
  pe release pmxcfs:kept || fail "release" || return 1
  wait_for 10 sh -c "! kill -0 $keeper 2>/dev/null" || fail "keeper $keeper still running" || return 1
  pe run -n pmxcfs:kept -- true || fail "not free after release"
}

# --- the core's CLI tests, on pmxcfs: ---------------------------------------------------------

t_cli_exclusion_8x200() {
  local out
  out=$(tests/lib/exclusion.sh pmxcfs:excl 8 200 2>&1)
  echo "$out" | tail -1 | sed 's/^/    /'
  [[ $out == *"counter 1600, violations 0"* ]] || fail "$out"
}

t_cli_sigint_cancels_wait() {
  "$LOCKFN" run pmxcfs:int -- sleep 100 &
  local holder=$!
  PIDS+=("$holder")
  wait_for 10 test -d "$LD/int" || fail "holder did not get in" || return 1
  # As from a terminal's Ctrl-C: a background job of a non-interactive shell starts with
  # SIGINT ignored, which lockfn respects (as flock(1) does), so give it the default back.
  env --default-signal=INT "$LOCKFN" -v run pmxcfs:int -- touch "$T/ran" 2>"$T/waiter.log" &
  local waiter=$!
  PIDS+=("$waiter")
  wait_for 10 waiting_on_flock "$waiter" || fail "waiter did not start waiting" || return 1
  local t0 st=0 took
  t0=$(now)
  kill -INT "$waiter"
  wait "$waiter" || st=$?
  took=$(awk -v a="$(now)" -v b="$t0" 'BEGIN { printf "%.3f", a - b }')
  [[ $st == 130 ]] || fail "exit $st, expected 130" || return 1
  # A bound on bad behaviour (a wait that goes on), generous for a loaded machine.
  awk -v t="$took" 'BEGIN { exit !(t < 2) }' || fail "cancel took $took s" || return 1
  [[ ! -e $T/ran ]] || fail "the command ran" || return 1
  kill -TERM "$holder"
  wait "$holder" 2>/dev/null
  [[ ! -e $LD/int ]] || fail "directory left behind" || return 1
  "$LOCKFN" run -n pmxcfs:int -- true || fail "lock not free after cancel"
}

t_cli_hold_over_stdin() {
  coproc H { "$LOCKFN" hold --holder "shell job" pmxcfs:hold; }
  local line
  read -r -t 10 line <&"${H[0]}" || fail "no JSON line" || return 1
  [[ $line == *'"target":"pmxcfs:hold"'* ]] || fail "hold said: $line" || return 1
  [[ -d $LD/hold ]] || fail "no directory while held" || return 1
  local out
  out=$("$LOCKFN" status --json pmxcfs:hold)
  [[ $out == *'"holder":"shell job"'* ]] || fail "status: $out" || return 1
  echo update >&"${H[1]}"
  read -r -t 10 line <&"${H[0]}" || fail "no answer to update" || return 1
  [[ $line == '{"updated":true}' ]] || fail "update said: $line" || return 1
  local fd=${H[1]}
  exec {fd}>&-
  wait "$H_PID"
  [[ ! -e $LD/hold ]] || fail "not released on stdin EOF"
}

t_cli_release_force_stops_holder() {
  "$LOCKFN" run --grace 2 pmxcfs:force -- sleep 100 &
  local holder=$!
  PIDS+=("$holder")
  wait_for 10 test -d "$LD/force" || fail "holder did not get in" || return 1
  "$LOCKFN" release pmxcfs:force 2>/dev/null
  local rc=$?
  [[ $rc == 65 ]] || fail "release of a running holder's lock: exit $rc, expected 65" || return 1
  "$LOCKFN" release --force pmxcfs:force || fail "release --force" || return 1
  local st=0
  wait "$holder" || st=$?
  [[ $st == 75 ]] || fail "holder exit $st, expected 75" || return 1
  "$LOCKFN" run -n pmxcfs:force -- true || fail "not free after --force"
}

ALL=(t_emulator_behaves_like_pmxcfs t_run_token_is_the_counter t_busy_messages_and_codes t_traffic_while_waiting_5s
  t_interop_pmxlock t_interop_cfs_lock_perl t_never_take_over_live_cfs_lock_after_our_death
  t_never_take_over_live_pmxlock_after_our_death t_kill9_takeover_within_1s
  t_lost_lock_stops_command t_non_root_eperm t_unavailable
  t_persist_status_list_update_release_gc t_persist_lifetime_and_keep t_cli_exclusion_8x200 t_cli_sigint_cancels_wait
  t_cli_hold_over_stdin t_cli_release_force_stops_holder)
# ONLY="t_a t_b" runs a subset.
for t in ${ONLY:-${ALL[*]}}; do
  run_test "$t"
done
echo "$PASSED passed, $FAILED failed"
((FAILED == 0))
