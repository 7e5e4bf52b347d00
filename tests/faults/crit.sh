#!/usr/bin/env bash
# The critical section of the fault checker (tests/faults/checker.sh), run by
# `lockfn run TARGET -- crit.sh DIR` with LOCKFN_TOKEN and FAULT_RUN (the run's id) set.
#
# 1. Entry: an exclusive marker DIR/inside "cspid lockfnpid token run". If a marker is there:
#    - its command and its `lockfn run` are both dead (a SIGKILLed holder; its command died
#      through the parent-death signal): a stale marker, set aside, not an overlap. A command
#      alive although its `lockfn run` is dead is a violation (it would run unprotected);
#    - its token was declared lost by the fault injector (DIR/invalid/TOKEN: "t0 min_age" —
#      a holder SIGSTOPped past its TTL, or whose pmxcfs directory was removed) at least
#      min_age seconds ago: superseded, not an overlap (its late writes are fenced below);
#    - else two live holders overlap: recorded in DIR/overlaps; analyze.py counts it as a
#      violation unless the other run learnt its lock was lost (exit 75, or "was lost" in
#      its stderr): then the service had revoked it (e.g. a session expired under load).
# 2. Read-sleep-write on a fenced store (see store() below), changed only under
#    flock(DIR/store.lock) by write-tmp + rename. Reading registers our token as seen; a
#    read or write with a token below the highest seen is rejected (fenced, exit 3: counted,
#    not a violation). A write whose read went stale although fencing let it through would
#    be a lost update: a violation. A landed write adds "token run pid" to DIR/state.
# Sleep: FAULT_CRIT_SLEEP seconds (default 0.02); while DIR/hold/TOKEN exists (the injector
# wants this holder inside its section; DIR/hold/TOKEN.ack says it saw it), up to 12 s more.
set -u
set -C # '>' is O_EXCL
dir=$1
tok=${LOCKFN_TOKEN:-0}
run=${FAULT_RUN:-?}
me=$$ lfn=$PPID
nap=${FAULT_CRIT_SLEEP:-0.02}

event() { echo "$EPOCHREALTIME $*" >>"$dir/events"; }
violation() { echo "$EPOCHREALTIME run $run token $tok: $*" >>"$dir/violations"; }
# Is PID a live process (zombies are dead)? Prints its state letter.
pstate() {
  local st
  st=$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$1/status" 2>/dev/null) || return 1
  [[ -n $st && $st != Z && $st != X ]] || return 1
  echo "$st"
}
aside() { mv -f "$dir/inside" "$dir/old/$1.$me" 2>/dev/null; }

# The marker is written first and linked into place: link(2) is atomic and fails when the
# name exists, so a marker is never seen half-written.
echo "$me $lfn $tok $run" >|"$dir/m.$me"
entered=0
for ((try = 0; try < 400; try++)); do
  if ln "$dir/m.$me" "$dir/inside" 2>/dev/null; then
    entered=1
    break
  fi
  opid='' olfn='' otok='' orun=''
  read -r opid olfn otok orun 2>/dev/null <"$dir/inside" || continue # gone meanwhile
  if [[ -f $dir/invalid/$otok ]]; then
    read -r t0 min_age <"$dir/invalid/$otok"
    age=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f", b - a }')
    if awk -v a="$age" -v m="$min_age" 'BEGIN { exit !(a >= m) }'; then
      event "superseded $otok $orun age $age by $tok"
      aside "$otok"
      continue
    fi
    violation "entered while run $orun (token $otok) was inside, its lock declared lost only $age s ago (< $min_age s)"
    aside "$otok"
    continue
  fi
  if ! pstate "$olfn" >/dev/null; then
    # Its lockfn run is dead: the command must die too (parent-death signal), promptly.
    for ((w = 0; w < 150; w++)); do
      pstate "$opid" >/dev/null || break
      sleep 0.02
    done
    if st=$(pstate "$opid"); then
      violation "command $opid (run $orun, token $otok) outlived its dead lockfn run $olfn (state $st)"
    else
      event "stale $otok $orun"
    fi
    aside "$otok"
    continue
  fi
  # Both alive: a violation, unless the service had taken the other one's lock away (a
  # session that expired under load): analyze.py decides, from how that run ended.
  echo "$EPOCHREALTIME $run $tok $orun $otok pid $opid lockfn $olfn state $(pstate "$olfn")" >>"$dir/overlaps"
  aside "$otok"
done
rm -f "$dir/m.$me"
if ((!entered)); then
  violation "could not enter"
  exit 4
fi
event "enter $tok $run"

leave() {
  local p=''
  read -r p _ 2>/dev/null <"$dir/inside"
  [[ $p == "$me" ]] && rm -f "$dir/inside"
}
# store OP: under the store's flock. read: register the token as seen, print the count.
# write N: land N+1 if no newer token was seen and the count is still N. DIR/seen holds the
# highest token seen; DIR/state is "count last" then the landed writes "token run pid", one a
# line: a landed write and its history line are one rename, so a SIGKILL cannot split them.
store() {
  local count last seen rc=0
  exec {fd}>>"$dir/store.lock"
  flock "$fd"
  read -r seen <"$dir/seen"
  read -r count last <"$dir/state"
  if ((tok < seen)); then
    echo "$EPOCHREALTIME $1 $tok $seen $last $run" >>"$dir/fenced"
    rc=3
  elif [[ $1 == read ]]; then
    echo "$tok" >|"$dir/seen.tmp" && mv -f "$dir/seen.tmp" "$dir/seen"
    echo "$count"
  elif ((count != $2)); then
    violation "lost update: read $2, count is now $count (last landed token $last)"
    rc=5
  else
    {
      echo "$((count + 1)) $tok"
      tail -n +2 "$dir/state"
      echo "$tok $run $me"
    } >|"$dir/state.tmp" && mv -f "$dir/state.tmp" "$dir/state"
  fi
  exec {fd}>&-
  return $rc
}

if ! n=$(store read); then
  leave
  exit 3
fi
sleep "$nap"
for ((i = 0; i < 240; i++)); do
  [[ -e $dir/hold/$tok ]] || break
  ((i == 0)) && : >|"$dir/hold/$tok.ack"
  sleep 0.05
done
store write "$n"
rc=$?
leave
event "exit $tok $run $rc"
exit $rc
