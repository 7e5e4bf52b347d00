#!/usr/bin/env bash
# External fault for checker.sh: stop the leader of a ZooKeeper ensemble or a Consul cluster
# (tests/servers/{zookeeper,consul}.sh), start it again, ROUNDS times. Prints one fault event
# "EPOCH leader-kill|leader-restart - -" per stop on stdout.
# Usage: leader-restart.sh zookeeper|consul DIR kill|term [ROUNDS (2)] [DOWN_SECS (4)] [GAP_SECS (4)]
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
srv=$here/../servers/$1.sh
dir=$2 how=$3 rounds=${4:-2} down=${5:-4} gap=${6:-4}
flag=() what=leader-restart
if [[ $how == kill ]]; then flag=(--kill) what=leader-kill; fi
for ((r = 0; r < rounds; r++)); do
  ((r > 0)) && sleep "$gap"
  leader=''
  for ((i = 0; i < 100; i++)); do
    leader=$("$srv" leader "$dir" 2>/dev/null) && [[ -n $leader ]] && break
    sleep 0.1
  done
  if [[ -z $leader ]]; then
    echo "leader-restart.sh: no leader in $dir" >&2
    exit 1
  fi
  t0=$EPOCHREALTIME
  "$srv" stop-node "$dir" "$leader" "${flag[@]}" >&2 || exit 1
  echo "$t0 $what - -"
  sleep "$down"
  "$srv" start-node "$dir" "$leader" >&2 || exit 1
done
