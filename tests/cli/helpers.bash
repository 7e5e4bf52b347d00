# Shared by the CLI bats files.
ROOT=$(cd "$BATS_TEST_DIRNAME/../.." && pwd)
LOCKFN=${LOCKFN:-$ROOT/target/debug/lockfn}
export LOCKFN
# now, since, wait_for, json, fail
# shellcheck source=tests/lib/suite.sh
. "$ROOT/tests/lib/suite.sh"

# A lock name unique to this test.
uniq_name() { echo "bats-$$-${BATS_TEST_NUMBER}-$RANDOM"; }

# elapsed START -> seconds since START
elapsed() { since "$1"; }
# lt A B: A < B (floats)
lt() { awk -v a="$1" -v b="$2" 'BEGIN{exit !(a<b)}'; }


held() { "$LOCKFN" status --check "$1" >/dev/null; }
free() { ! "$LOCKFN" status --check "$1" >/dev/null; }

# need_server VAR: skip when the server is not configured, fail under tests/run.sh.
need_server() {
  if [[ -z "${!1:-}" ]]; then
    [[ "${LOCKFN_TEST_REQUIRE_SERVERS:-0}" == 1 ]] && { echo "$1 is not set" >&2; return 1; }
    skip "$1 not set (run tests/run.sh)"
  fi
}
