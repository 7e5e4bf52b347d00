#!/usr/bin/env bash
# Runs every test of lockfn. Installs what the tests need (Debian packages, Consul, a Python
# venv) idempotently, starts a ZooKeeper and a Consul agent on 127.0.0.1 (free ports), runs
# the Rust, C, CLI, shell, Python and Perl tests, stops what it started, and ends with one
# line `steps: N passed, N failed`. Exit status 0 only when every step passed.
#
#   tests/run.sh            everything
#   tests/run.sh --quick    skip lint and the long suites (for a fast local loop)
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD
QUICK=0
[[ "${1:-}" == --quick ]] && QUICK=1

say() { printf '\n=== %s\n' "$*"; }
PASSED=0 FAILED=0 FAILED_STEPS=()
step() { # NAME CMD...: run a step, record the result, never stop the run
  local name=$1 t0=$SECONDS
  shift
  say "$name"
  # No step may hang the run: each is bounded (STEP_TIMEOUT seconds, default 15 min).
  if timeout --kill-after=10 "${STEP_TIMEOUT:-900}" "$@"; then
    PASSED=$((PASSED + 1))
    echo "--- $name: ok ($((SECONDS - t0)) s)"
  else
    FAILED=$((FAILED + 1))
    FAILED_STEPS+=("$name")
    echo "--- $name: FAILED ($((SECONDS - t0)) s)"
  fi
}

say "dependencies"
# shellcheck source=tests/lib/deps.sh
if ! source tests/lib/deps.sh; then
  echo "installing test dependencies failed" >&2
  exit 2
fi
[[ -n "${LOCKFN_DEPS_MISSING:-}" ]] && echo "missing (tests needing them fail): $LOCKFN_DEPS_MISSING"
export LOCKFN_TEST_CACHE CONSUL_BIN LOCKFN_VENV ZK_CLASSPATH

RUN=$(mktemp -d /tmp/lockfn-run.XXXXXX)
export LOCKFN_TEST_RUN=$RUN
cleanup() {
  tests/servers/zookeeper.sh stop "$RUN/zk" >/dev/null 2>&1 || true
  tests/servers/consul.sh stop "$RUN/consul" >/dev/null 2>&1 || true
  rm -rf "$RUN"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

export CARGO_TERM_COLOR=never
step "build" cargo build --all-targets --features test-counters
if [[ $QUICK == 0 ]]; then
  step "format" cargo fmt --check
  step "clippy" cargo clippy --all-targets --features test-counters -- -D warnings
fi

say "servers"
tests/servers/zookeeper.sh start "$RUN/zk" || echo "ZooKeeper did not start"
tests/servers/consul.sh start "$RUN/consul" || echo "Consul did not start"
set -a
# shellcheck disable=SC1091
[[ -f "$RUN/zk/env" ]] && . "$RUN/zk/env"
# shellcheck disable=SC1091
[[ -f "$RUN/consul/env" ]] && . "$RUN/consul/env"
set +a
echo "ZKHOSTS=${ZKHOSTS:-} CONSUL_HTTP_ADDR=${CONSUL_HTTP_ADDR:-}"
# Tests that need a server fail (not skip) when it is missing.
export LOCKFN_TEST_REQUIRE_SERVERS=1
export LOCKFN="$ROOT/target/debug/lockfn"
export BATS_TEST_TIMEOUT=${BATS_TEST_TIMEOUT:-180}

step "cargo test" cargo test --no-fail-fast --features test-counters
bats_dirs=(tests/cli)
# tests/shell (lockfn.sh) runs in tests/suites/60-bindings.sh with the other bindings.
step "bats ${bats_dirs[*]}" bats "${bats_dirs[@]}"
if [[ $QUICK == 0 ]]; then
  for suite in tests/suites/*.sh; do
    [[ -x "$suite" ]] || continue
    step "$suite" "$suite"
  done
fi

echo
if ((FAILED > 0)); then echo "failed steps: ${FAILED_STEPS[*]}"; fi
echo "steps: $PASSED passed, $FAILED failed"
((FAILED == 0))
