# Shared by the CLI bats files.
ROOT=$(cd "$BATS_TEST_DIRNAME/../.." && pwd)
LOCKFN=${LOCKFN:-$ROOT/target/debug/lockfn}
export LOCKFN

# A lock name unique to this test.
uniq_name() { echo "bats-$$-${BATS_TEST_NUMBER}-$RANDOM"; }

now() { date +%s.%N; }
# elapsed START -> seconds since START
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.3f", b-a}'; }
# lt A B: A < B (floats)
lt() { awk -v a="$1" -v b="$2" 'BEGIN{exit !(a<b)}'; }

# wait_for SECS CMD...: poll CMD every 20 ms until it succeeds; fail after SECS.
wait_for() {
  local secs=$1
  shift
  local end=$(($(date +%s%N) + secs * 1000000000))
  until "$@" 2>/dev/null; do
    if (($(date +%s%N) > end)); then
      echo "timed out after ${secs}s waiting for: $*" >&2
      return 1
    fi
    sleep 0.02
  done
}

held() { "$LOCKFN" status --check "$1" >/dev/null; }
free() { ! "$LOCKFN" status --check "$1" >/dev/null; }
# json FIELD-EXPR < JSON: evaluate a Python expression on the parsed JSON `j`
json() { python3 -c "import json,sys; j=json.load(sys.stdin); print($1)"; }

# need_server VAR: skip when the server is not configured, fail under tests/run.sh.
need_server() {
  if [[ -z "${!1:-}" ]]; then
    [[ "${LOCKFN_TEST_REQUIRE_SERVERS:-0}" == 1 ]] && { echo "$1 is not set" >&2; return 1; }
    skip "$1 not set (run tests/run.sh)"
  fi
}
