#!/usr/bin/env bash
# Fault checker: WORKERS processes each loop `lockfn run [ARGS] TARGET -- crit.sh DIR` until
# ITERATIONS runs exited 0 (at most 3×ITERATIONS+5 attempts), while an injector hurts them.
# crit.sh (see its header) does read-sleep-write on a fenced store and marks its section with
# an exclusive marker; analyze.py then checks the whole history and prints one line
# `RESULT {json}` (fields in analyze.py) and exits non-zero on any violation.
#
# Usage: checker.sh [OPTIONS] TARGET WORKERS ITERATIONS [-- LOCKFN_RUN_ARGS...]
#   --label TEXT      backend label for the report (default: TARGET's service)
#   --name TEXT       fault label for the report (default: the --fault KIND)
#   --fault KIND      none | kill-holder | kill-waiter | stop-holder | rmdir | external
#   --faults K        inject at most K faults (default 6)
#   --every SECS      mean seconds between faults (default 1; random in [SECS/2, 3·SECS/2])
#   --stop SECS       stop-holder: how long the holder stays SIGSTOPped (default 5)
#   --min-age SECS    stop-holder: another holder may enter only this long after the stop
#   --lockdir DIR     rmdir: the pmxcfs lock directory of TARGET (DIR/NAME is removed)
#   --external CMD    external: run `CMD` once, in the background, --after SECS after the
#                     start; each line it prints, "EPOCH label", is a fault event
#   --after SECS      (default 3)
#   --cont-gap SECS   stop-holder: SIGCONT goes to the command first on odd faults (its late
#                     write must be fenced), to lockfn first on even ones (lockfn must stop
#                     the command), the other one SECS later (default 0.3)
#   --seed N          PRNG seed (default 1)
#   --max-secs SECS   the workers start no run after SECS (default 150)
#   --settle SECS     after the workers, a last `lockfn run -w SECS` must get the lock (60)
# Workers keep running until each had ITERATIONS successful runs and the injector is done.
# Env: LOCKFN (binary), FAULT_CRIT_SLEEP (seconds in the section, default 0.02),
#      FAULT_KEEP=1 keeps the work directory.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
lockfn=${LOCKFN:-$here/../../target/debug/lockfn}
label='' name='' fault=none max_faults=6 every=1 stop_secs=5 min_age=0 lockdir='' external='' after=3 seed=1 max_secs=150 cont_gap=0.3 settle=60
while [[ $# -gt 0 && $1 == --* ]]; do
  case $1 in
  --label) label=$2 ;;
  --name) name=$2 ;;
  --fault) fault=$2 ;;
  --faults) max_faults=$2 ;;
  --every) every=$2 ;;
  --stop) stop_secs=$2 ;;
  --min-age) min_age=$2 ;;
  --lockdir) lockdir=$2 ;;
  --external) external=$2 ;;
  --after) after=$2 ;;
  --seed) seed=$2 ;;
  --max-secs) max_secs=$2 ;;
  --cont-gap) cont_gap=$2 ;;
  --settle) settle=$2 ;;
  *)
    echo "checker.sh: unknown option $1" >&2
    exit 64
    ;;
  esac
  shift 2
done
if [[ $# -lt 3 ]]; then
  echo "usage: checker.sh [OPTIONS] TARGET WORKERS ITERATIONS [-- ARGS...]" >&2
  exit 64
fi
target=$1 workers=$2 iters=$3
shift 3
[[ ${1:-} == -- ]] && shift
[[ -n $label ]] || label=${target%%:*}
[[ -n $name ]] || name=$fault
RANDOM=$seed

dir=$(mktemp -d /tmp/lockfn-faults.XXXXXX)
mkdir -p "$dir/w" "$dir/old" "$dir/invalid" "$dir/hold"
echo "0 0" >"$dir/state"
echo 0 >"$dir/seen"
: >"$dir/events"
: >"$dir/faults"
: >"$dir/fenced"
: >"$dir/violations"
: >"$dir/runs"
: >"$dir/overlaps"

pstate() {
  local st
  st=$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$1/status" 2>/dev/null) || return 1
  [[ -n $st && $st != Z && $st != X ]] || return 1
  echo "$st"
}
violation() { echo "$EPOCHREALTIME injector: $*" >>"$dir/violations"; }
# nap MEAN: sleep a random time in [MEAN/2, 3·MEAN/2].
nap() { sleep "$(awk -v m="$1" -v r="$RANDOM" 'BEGIN { printf "%.3f", m * (0.5 + r / 32768) }')"; }
# wait_gone PID SECS: bounded wait until PID is dead.
wait_gone() {
  local n=$(($2 * 50))
  while ((n-- > 0)); do
    pstate "$1" >/dev/null || return 0
    sleep 0.02
  done
  return 1
}

worker() {
  local w=$1 ok=0 attempt=0 lp rc rs
  shift
  # Until ITERATIONS runs succeeded and the injector is done (bounded in attempts and time).
  while ((attempt < max_attempts && ${EPOCHREALTIME%.*} < deadline)); do
    ((ok >= iters)) && [[ ! -e $dir/injecting ]] && break
    rs=$EPOCHREALTIME
    FAULT_RUN="$w.$attempt" "$lockfn" run "$@" "$target" -- "$here/crit.sh" "$dir" 2>"$dir/w/$w.$attempt.err" &
    lp=$!
    echo "$lp" >|"$dir/w/$w.pid"
    wait "$lp"
    rc=$?
    echo "$w.$attempt $rc $EPOCHREALTIME $rs" >>"$dir/runs"
    ((rc == 0)) && ok=$((ok + 1))
    attempt=$((attempt + 1))
  done
}

inject() {
  local k=0 opid olfn otok orun t0 w p name=${target#*:}
  if [[ $fault == external ]]; then
    sleep "$after"
    bash -c "$external" >>"$dir/faults" 2>>"$dir/external.err" || violation "external fault command failed: $external"
    return
  fi
  [[ $fault == none ]] && return
  while ((k < max_faults)) && [[ ! -e $dir/done ]]; do
    nap "$every"
    opid='' olfn='' otok='' orun=''
    read -r opid olfn otok orun 2>/dev/null <"$dir/inside" || continue
    [[ -n $orun ]] || continue
    if ! pstate "$opid" >/dev/null || ! pstate "$olfn" >/dev/null; then continue; fi
    case $fault in
    kill-holder)
      t0=$EPOCHREALTIME
      kill -KILL "$olfn" 2>/dev/null || continue
      echo "$t0 kill-holder $otok $orun" >>"$dir/faults"
      # Its command must die with it (parent-death signal).
      wait_gone "$opid" 5 || violation "command $opid of SIGKILLed run $orun still alive after 5 s"
      ;;
    kill-waiter)
      w=$((RANDOM % workers))
      p=$(cat "$dir/w/$w.pid" 2>/dev/null) || continue
      [[ -n $p && $p != "$olfn" ]] || continue
      grep -qa lockfn "/proc/$p/cmdline" 2>/dev/null || continue
      # Still waiting: not the one inside, and no command (child) yet.
      [[ -z $(cat "/proc/$p/task/$p/children" 2>/dev/null) ]] || continue
      # Not a holder (acquired, command not started yet or finished): the service says so.
      if "$lockfn" status --json "$target" 2>/dev/null | grep -Eq "\"pid\":${p}[,}]"; then continue; fi
      t0=$EPOCHREALTIME
      kill -KILL "$p" 2>/dev/null || continue
      echo "$t0 kill-waiter - $w" >>"$dir/faults"
      ;;
    stop-holder)
      # Stop it inside its section, between its read and its write (the hold loop).
      : >"$dir/hold/$otok"
      for ((p = 0; p < 50; p++)); do
        [[ -e $dir/hold/$otok.ack ]] && break
        sleep 0.02
      done
      if [[ ! -e $dir/hold/$otok.ack ]]; then
        rm -f "$dir/hold/$otok"
        continue
      fi
      echo "$EPOCHREALTIME $min_age" >"$dir/invalid/$otok"
      t0=$EPOCHREALTIME
      kill -STOP "$opid" "$olfn" 2>/dev/null
      rm -f "$dir/hold/$otok" # once resumed, it goes on to its write
      echo "$t0 stop-holder $otok $orun" >>"$dir/faults"
      sleep "$stop_secs"
      if ((k % 2 == 0)); then
        kill -CONT "$opid" 2>/dev/null
        sleep "$cont_gap"
        echo "$EPOCHREALTIME $otok $orun" >>"$dir/conts"
        kill -CONT "$olfn" 2>/dev/null
      else
        echo "$EPOCHREALTIME $otok $orun" >>"$dir/conts"
        kill -CONT "$olfn" 2>/dev/null
        sleep "$cont_gap"
        kill -CONT "$opid" 2>/dev/null
      fi
      ;;
    rmdir)
      # Keep the holder in its section until lockfn notices and stops it; only a holder
      # that says it stays (before its write) is chosen.
      : >"$dir/hold/$otok"
      for ((p = 0; p < 50; p++)); do
        [[ -e $dir/hold/$otok.ack ]] && break
        sleep 0.02
      done
      if [[ ! -e $dir/hold/$otok.ack ]]; then
        rm -f "$dir/hold/$otok"
        continue
      fi
      echo "$EPOCHREALTIME 0" >"$dir/invalid/$otok"
      t0=$EPOCHREALTIME
      if ! rmdir "$lockdir/$name" 2>>"$dir/external.err"; then
        rm -f "$dir/hold/$otok" "$dir/invalid/$otok"
        continue
      fi
      echo "$t0 rmdir $otok $orun" >>"$dir/faults"
      # One at a time: wait (bounded) until that run is over.
      p=$olfn
      wait_gone "$p" 15 || violation "run $orun still alive 15 s after its lock directory was removed"
      ;;
    *)
      violation "unknown fault $fault"
      return
      ;;
    esac
    k=$((k + 1))
  done
}

max_attempts=$((3 * iters + 500))
: >"$dir/injecting"
start=$EPOCHREALTIME
deadline=$((${start%.*} + max_secs))
pids=()
for ((w = 0; w < workers; w++)); do
  worker "$w" "$@" 2>>"$dir/w/$w.jobs" &
  pids+=($!)
done
( inject; rm -f "$dir/injecting" ) &
ipid=$!
for p in "${pids[@]}"; do wait "$p"; done
: >"$dir/done"
wait "$ipid"
end=$EPOCHREALTIME
# Nothing a fault left may block for ever: one more run gets the lock (bounded wait).
fargs=()
while [[ $# -gt 0 ]]; do
  case $1 in
  -w | --wait) shift ;;
  -w* | --wait=*) ;;
  *) fargs+=("$1") ;;
  esac
  shift
done
t0=$EPOCHREALTIME
"$lockfn" run -w "$settle" "${fargs[@]}" "$target" -- true 2>"$dir/final.err"
echo "$? $t0 $EPOCHREALTIME" >"$dir/final"
# Anything still inside must be dead or declared lost.
python3 "$here/analyze.py" "$dir" --label "$label" --fault "$name" --target "$target" \
  --workers "$workers" --iterations "$iters" --start "$start" --end "$end"
rc=$?
if [[ $rc -ne 0 || ${FAULT_KEEP:-0} == 1 ]]; then
  echo "work directory kept: $dir" >&2
else
  rm -rf "$dir"
fi
exit $rc
