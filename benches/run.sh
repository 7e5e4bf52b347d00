#!/usr/bin/env bash
# lockfn's benchmarks against the ecosystem's own tools: one command.
#
#   benches/run.sh            full run (about 10 minutes on 2 cores)
#   benches/run.sh --quick    short run (fewer repeats, 2 s windows, K = 1 and 10 only; ~2 min)
#   benches/run.sh --out F    write the JSON to F (default benches/results.json)
#
# Installs the peers through tests/lib/deps.sh (venv with kazoo, pmxlock, consullock,
# cjnfuncs/resourcelock, posix_ipc, python-consul, lockpick; Debian 11's consul), builds
# release (`cargo build --release`: the library, the CLI and benches/lockfn_bench.rs), compiles
# the C helpers, starts a ZooKeeper and a Consul agent on 127.0.0.1 (free ports; stopped on
# exit), runs benches/driver.py, prints a table and writes JSON. pmxcfs runs on the pmxcfs
# emulator (tests/pmxcfs/emu.sh: a FUSE mount in a temp dir on /dev/shm, pmxcfs's lock
# semantics, message log).
# What each row measures: benches/README.md.
set -uo pipefail
# The whole script is one brace group: bash parses it before running it, so editing this file
# during a run cannot change the running script.
{
cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD
QUICK=0
OUT=$ROOT/benches/results.json
while (($#)); do
  case $1 in
    --quick) QUICK=1 ;;
    --out)
      OUT=$2
      shift
      ;;
    -h | --help)
      sed -n '2,15p' "$0"
      exit 0
      ;;
    *)
      echo "benches/run.sh: unknown argument $1 (try --help)" >&2
      exit 64
      ;;
  esac
  shift
done
[[ $OUT == /* ]] || OUT=$PWD/$OUT

say() { echo "[run.sh $(date +%H:%M:%S)] $*" >&2; }

say "dependencies (tests/lib/deps.sh)"
# shellcheck source=tests/lib/deps.sh
if ! source tests/lib/deps.sh; then
  echo "benches/run.sh: installing dependencies failed" >&2
  exit 2
fi
set +e
export LOCKFN_TEST_CACHE CONSUL_BIN LOCKFN_VENV ZK_CLASSPATH

T=$(mktemp -d /dev/shm/lockfn-bench.XXXXXX)
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
  tests/servers/zookeeper.sh stop "$T/zk" >/dev/null 2>&1 || true
  tests/servers/consul.sh stop "$T/consul" >/dev/null 2>&1 || true
  tests/pmxcfs/emu.sh stop "$T/emu" >/dev/null 2>&1 || true
  # our semaphores and holder records (names start with lfb<driver pid>-)
  find /dev/shm -maxdepth 1 \( -name 'sem.lfb[0-9]*-*' -o -name 'lockfn.lfb[0-9]*-*' -o -name 'lfb[0-9]*-*' \) \
    -user "$(id -u)" -delete 2>/dev/null || true
  rm -rf --one-file-system "$T"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "cargo build --release"
# One invocation for the library, the CLI and the bench target (benches/lockfn_bench.rs, a
# harness-less bench): separate invocations resolve features differently (the bench pulls
# dev-dependencies) and would rebuild each other's artifacts on every run.
BUILD_JSON=$(cargo build --release --lib --bin lockfn --bench lockfn_bench --message-format=json --quiet)
rc=$?
BENCH_BIN=$(sed -n 's/.*"executable":"\([^"]*lockfn_bench[^"]*\)".*/\1/p' <<<"$BUILD_JSON" | tail -n 1)
if [[ $rc != 0 || -z $BENCH_BIN || ! -x $BENCH_BIN ]]; then
  echo "benches/run.sh: cargo build --release failed" >&2
  cargo build --release --lib --bin lockfn --bench lockfn_bench >&2
  exit 1
fi
REL=$ROOT/target/release
mkdir -p "$T/bin" "$T/lib"
# the library's soname is liblockfn.so.0 (build.rs); the build leaves liblockfn.so only
ln -sf "$REL/liblockfn.so" "$T/lib/liblockfn.so.0"
if ! cc -O2 -Wall -Iinclude -o "$T/bin/cabi_cycle" benches/cabi_cycle.c -L"$REL" -llockfn -Wl,-rpath,"$T/lib" ||
  ! cc -O2 -Wall -o "$T/bin/raw_floor" benches/raw_floor.c -pthread; then
  echo "benches/run.sh: compiling the C helpers failed" >&2
  exit 1
fi

say "servers on 127.0.0.1"
ZK_SKIP="" CONSUL_SKIP=""
if tests/servers/zookeeper.sh start "$T/zk" >"$T/zk.log" 2>&1; then
  ZKHOSTS=$(sed -n 's/^ZKHOSTS=//p' "$T/zk/env")
else
  ZKHOSTS="" ZK_SKIP="ZooKeeper did not start: $(tail -n 1 "$T/zk.log")"
  say "$ZK_SKIP"
  tail -n 30 "$T/zk.log" >&2
fi
if [[ -n ${CONSUL_BIN:-} ]] && tests/servers/consul.sh start "$T/consul" >"$T/consul.log" 2>&1; then
  CONSUL_HTTP_ADDR=$(sed -n 's/^CONSUL_HTTP_ADDR=//p' "$T/consul/env")
else
  CONSUL_HTTP_ADDR="" CONSUL_SKIP="Consul did not start: $(tail -n 1 "$T/consul.log" 2>/dev/null || echo 'no consul binary')"
  say "$CONSUL_SKIP"
  tail -n 30 "$T/consul.log" >&2 2>/dev/null
fi

# pmxcfs: the FUSE emulator (tests/pmxcfs/emu.sh; stops by itself if this shell dies)
if ! PMXEMU_TTL=120 PMXEMU_WATCH_PID=$$ tests/pmxcfs/emu.sh start "$T/emu"; then
  echo "benches/run.sh: the pmxcfs emulator did not start" >&2
  exit 1
fi
LOCKFN_PMXCFS_DIR=$(sed -n 's/^LOCKFN_PMXCFS_DIR=//p' "$T/emu/env")
PMXEMU_LOG=$(sed -n 's/^PMXEMU_LOG=//p' "$T/emu/env")
export LOCKFN_PMXCFS_DIR PMXEMU_LOG LOCKFN_PMXLOCK_DIR=$T/flock LOCKFN_RUN_DIR=$T/run
mkdir -p "$LOCKFN_PMXLOCK_DIR" "$LOCKFN_RUN_DIR"
unset CONSUL_HTTP_TOKEN CONSUL_HTTP_TOKEN_FILE LOCKFN_BACKEND LOCKFN_ZK_AUTH
export ZKHOSTS CONSUL_HTTP_ADDR ZK_SKIP CONSUL_SKIP CONSUL_BIN
export BENCH_TMP=$T BENCH_OUT=$OUT BENCH_QUICK=$QUICK
export LOCKFN_BIN=$REL/lockfn LOCKFN_BENCH_BIN=$BENCH_BIN
export CABI_BIN=$T/bin/cabi_cycle RAWFLOOR_BIN=$T/bin/raw_floor
export VENV_PY=$LOCKFN_VENV/bin/python VENV_BIN=$LOCKFN_VENV/bin
export PMXLOCK_RUN=$ROOT/tests/pmxcfs/pmxlock_run.py

say "running benches/driver.py ($([[ $QUICK == 1 ]] && echo quick || echo full))"
"$VENV_PY" benches/driver.py
exit $?
}
