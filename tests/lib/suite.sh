# Shared by the shell suites (tests/suites/*.sh) and the bats helpers (tests/cli/helpers.bash):
# time, bounded waiting, JSON. Source it; it defines functions only.

now() { date +%s.%N; }
# since START: seconds since START (a `now` value).
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.3f", b-a}'; }
# wait_for SECS CMD...: run CMD (quietly) every 20 ms until it succeeds; after SECS (may be
# fractional) give up, say so on stderr and return 1. For states no event announces.
wait_for() {
  local secs=$1 n
  n=$(awk -v s="$secs" 'BEGIN { print int(s * 50) }')
  shift
  while ((n-- > 0)); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.02
  done
  echo "timed out after ${secs}s waiting for: $*" >&2
  return 1
}
# json EXPR < JSON: evaluate a Python expression on the parsed JSON `j`.
json() { python3 -c "import json,sys; j=json.load(sys.stdin); print($1)"; }
# fail MESSAGE: print it indented (a suite's test detail) and return 1.
fail() {
  echo "    $*"
  return 1
}
