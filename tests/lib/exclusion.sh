#!/usr/bin/env bash
# Mutual-exclusion checker, for every backend: WORKERS processes × ITERATIONS each run
# `lockfn run [ARGS] TARGET -- critical.sh DIR`, which does read-sleep-write on a counter file
# inside an O_EXCL marker. Passes when the counter is exactly WORKERS×ITERATIONS and no
# overlap or non-growing fencing token was ever seen.
# Usage: exclusion.sh TARGET WORKERS ITERATIONS [lockfn run ARGS...]
# Env: LOCKFN (the binary; default target/debug/lockfn); PEER: a command (split on spaces)
#      that runs the critical section under another tool's lock on the same lock, e.g.
#      "flock /run/lock/x": then every odd worker uses it instead of lockfn (mixed contenders).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
lockfn=${LOCKFN:-$here/../../target/debug/lockfn}
target=$1 workers=$2 iters=$3
shift 3
dir=$(mktemp -d /tmp/lockfn-excl.XXXXXX)
echo 0 >"$dir/counter"
echo 0 >"$dir/last_token"
: >"$dir/violations"
start=$(date +%s.%N)
pids=()
for ((w = 0; w < workers; w++)); do
  (
    for ((i = 0; i < iters; i++)); do
      if [[ -n ${PEER:-} ]] && ((w % 2)); then
        # shellcheck disable=SC2086 # PEER is a command with its arguments
        $PEER "$here/critical.sh" "$dir" || echo "worker $w iteration $i: $PEER exited $?" >>"$dir/violations"
      else
        "$lockfn" run "$@" "$target" -- "$here/critical.sh" "$dir" || echo "worker $w iteration $i: lockfn run exited $?" >>"$dir/violations"
      fi
    done
  ) &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
end=$(date +%s.%N)
count=$(cat "$dir/counter")
violations=$(wc -l <"$dir/violations")
echo "exclusion $target: $workers x $iters, counter $count, violations $violations, $(awk -v a="$start" -v b="$end" 'BEGIN{printf "%.1f", b-a}') s"
if [[ $violations -ne 0 ]]; then head -5 "$dir/violations"; fi
rm -rf "$dir"
[[ $count -eq $((workers * iters)) && $violations -eq 0 ]]
