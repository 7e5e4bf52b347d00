# Shared setup for the lockfn.sh bats tests.
ROOT=$(cd "$BATS_TEST_DIRNAME/../.." && pwd)
: "${LOCKFN_SH:=$ROOT/shell/lockfn.sh}"
if [[ -z ${LOCKFN_BIN:-} ]]; then
    if [[ -n ${LOCKFN:-} ]]; then
        LOCKFN_BIN=$LOCKFN
    elif [[ -x $ROOT/target/debug/lockfn ]]; then
        LOCKFN_BIN=$ROOT/target/debug/lockfn
    else
        LOCKFN_BIN=lockfn
    fi
fi
export LOCKFN_BIN LOCKFN_SH

setup() {
    T=$BATS_TEST_TMPDIR
    if [[ -z ${LOCKFN_PMXCFS_DIR:-} ]]; then
        # pmxcfs: a plain lock directory on tmpfs (inode numbers, the fencing tokens, are
        # not reused at once there, as on pmxcfs), with the node-local directories beside it.
        PMX=$(mktemp -d /dev/shm/lockfn-bats-pmxcfs.XXXXXX)
        mkdir "$PMX/lock" "$PMX/pmxlock" "$PMX/run"
        export LOCKFN_PMXCFS_DIR=$PMX/lock LOCKFN_PMXLOCK_DIR=$PMX/pmxlock LOCKFN_RUN_DIR=$PMX/run
    fi
    N="sh$$-${BATS_TEST_NUMBER}"
}

teardown() {
    rm -f /dev/shm/sem."$N"* /dev/shm/lockfn@table."$N"* 2>/dev/null || true
    if [[ -n ${PMX:-} ]]; then rm -rf "$PMX"; fi
}

# The backends to run a test against, in BACKENDS: sem, pmxcfs when the library has it,
# zk/consul when their server is given (a missing one is a failure when
# LOCKFN_TEST_REQUIRE_SERVERS=1). A left-out backend is reported on fd 3.
backends() {
    local b env
    BACKENDS=()
    for b in sem pmxcfs zk consul; do
        env=""
        case $b in
        zk) env=ZKHOSTS ;;
        consul) env=CONSUL_HTTP_ADDR ;;
        esac
        if [[ -n $env && -z ${!env:-} ]]; then
            if [[ ${LOCKFN_TEST_REQUIRE_SERVERS:-} == 1 ]]; then
                echo "$env is not set but LOCKFN_TEST_REQUIRE_SERVERS=1" >&2
                return 1
            fi
            echo "# skipping $b: $env not set" >&3
            continue
        fi
        if [[ $("$LOCKFN_BIN" status "$b:probe$$" 2>&1) == *"not implemented"* ]]; then
            echo "# skipping $b: not implemented in this build" >&3
            continue
        fi
        BACKENDS+=("$b")
    done
}

# Wait (bounded) until FILE has a line; print it.
wait_line() { # FILE [SECS]
    local i
    for ((i = 0; i < ${2:-20} * 100; i++)); do
        if [[ -s $1 ]]; then
            head -n1 "$1"
            return 0
        fi
        sleep 0.01
    done
    echo "timed out waiting for a line in $1" >&2
    return 1
}

held() { # TARGET -> 0 if held
    "$LOCKFN_BIN" status --json "$1" | grep -q '"held":true'
}

# Wait (bounded) until TARGET is free.
wait_free() { # TARGET [SECS]
    local i
    for ((i = 0; i < ${2:-20} * 20; i++)); do
        held "$1" || return 0
        sleep 0.05
    done
    echo "$1 still held" >&2
    return 1
}
