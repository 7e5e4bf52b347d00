#!/usr/bin/env bash
# The critical section of the exclusion checker: run under a lock, it marks its entry with an
# O_EXCL file (noclobber), does read-sleep-write on a counter, checks the fencing token grew,
# and unmarks. Any overlap or a token that did not grow is recorded in DIR/violations.
# Usage: critical.sh DIR   (LOCKFN_TOKEN from the lock holder's environment; a peer tool's
# holder has none: its sections are checked for overlap only)
set -u
dir=$1
set -C # '>' uses O_EXCL: fails if another holder is inside
if ! { : >"$dir/inside"; } 2>/dev/null; then
  echo "overlap pid $$" >>"$dir/violations"
  exit 1
fi
set +C
n=$(cat "$dir/counter")
last=$(cat "$dir/last_token")
tok=${LOCKFN_TOKEN:-}
if [[ -n $tok ]] && ((tok <= last)); then
  echo "token $tok not above $last" >>"$dir/violations"
fi
sleep 0.001
echo $((n + 1)) >"$dir/counter"
if [[ -n $tok ]]; then echo "$tok" >"$dir/last_token"; fi
rm -f "$dir/inside"
