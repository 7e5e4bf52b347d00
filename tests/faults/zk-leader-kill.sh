#!/usr/bin/env bash
# External fault for checker.sh: SIGKILL the leader of a ZooKeeper ensemble, start it again,
# ROUNDS times. Prints one fault event "EPOCH leader-kill - -" per kill on stdout.
# Usage: zk-leader-kill.sh DIR [ROUNDS (2)] [DOWN_SECS (4)] [GAP_SECS (4)]
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
zk=$here/../servers/zookeeper.sh
dir=$1 rounds=${2:-2} down=${3:-4} gap=${4:-4}
for ((r = 0; r < rounds; r++)); do
  ((r > 0)) && sleep "$gap"
  leader=''
  for ((i = 0; i < 100; i++)); do
    leader=$("$zk" leader "$dir" 2>/dev/null) && [[ -n $leader ]] && break
    sleep 0.1
  done
  if [[ -z $leader ]]; then
    echo "zk-leader-kill.sh: no leader in $dir" >&2
    exit 1
  fi
  t0=$EPOCHREALTIME
  "$zk" stop-node "$dir" "$leader" --kill >&2 || exit 1
  echo "$t0 leader-kill - -"
  sleep "$down"
  "$zk" start-node "$dir" "$leader" >&2 || exit 1
done
