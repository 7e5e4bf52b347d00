#!/usr/bin/env bats
# lockfn.sh: `source shell/lockfn.sh` in bash scripts, against the real `lockfn hold`.

bats_require_minimum_version 1.5.0
load helper

@test "acquire and release print nothing, set the token, and free the lock" {
    backends
    for b in "${BACKENDS[@]}"; do
        t="$b:$N"
        run bash -c '
            set -euo pipefail
            source "$LOCKFN_SH"
            lock_acquire "$1" --holder "bats test"
            v=LOCKFN_TOKEN_${1//[^A-Za-z0-9_]/_}
            [[ ${!v} =~ ^[0-9]+$ ]] && [[ $LOCKFN_TOKEN == "${!v}" ]]
            "$LOCKFN_BIN" status --json "$1" >"$2/status"
            lock_update "$1"
            lock_release "$1"
            [[ -z ${!v+x} ]]
        ' _ "$t" "$T"
        [ "$status" -eq 0 ]
        [ -z "$output" ]
        grep -q '"held":true' "$T/status"
        grep -q '"holder":"bats test"' "$T/status"
        ! held "$t"
    done
}

@test "a second script gets 1 when busy, with -n and after -w SECS" {
    backends
    for b in "${BACKENDS[@]}"; do
        t="$b:$N"
        source "$LOCKFN_SH"
        lock_acquire "$t"
        run bash -c 'source "$LOCKFN_SH"; lock_acquire "$1" -n' _ "$t"
        [ "$status" -eq 1 ]
        [[ $output == *busy* ]]
        start=$(date +%s%N)
        run bash -c 'source "$LOCKFN_SH"; lock_acquire "$1" -w 0.5' _ "$t"
        ms=$((($(date +%s%N) - start) / 1000000))
        [ "$status" -eq 1 ]
        [ "$ms" -ge 450 ]
        lock_release "$t"
        run bash -c 'source "$LOCKFN_SH"; lock_acquire "$1" -n && lock_release "$1"' _ "$t"
        [ "$status" -eq 0 ]
    done
}

@test "SIGKILL of the shell releases its locks" {
    backends
    for b in "${BACKENDS[@]}"; do
        t="$b:$N"
        mkfifo "$T/block"
        bash -c '
            source "$LOCKFN_SH"
            lock_acquire "$1"
            lock_acquire "$1-second"
            echo ready >"$2/ready"
            read -r _ <"$2/block"   # a builtin: no child shares the lock pipe
        ' _ "$t" "$T" 3>&- &
        pid=$!
        wait_line "$T/ready"
        held "$t"
        held "$t-second"
        kill -KILL "$pid"
        wait "$pid" || true
        wait_free "$t" 10
        wait_free "$t-second" 10
        rm -f "$T/block" "$T/ready"
    done
}

@test "a normal exit of the shell releases, even without lock_release" {
    t="sem:$N"
    run bash -c 'source "$LOCKFN_SH"; lock_acquire "$1"; exit 0' _ "$t"
    [ "$status" -eq 0 ]
    wait_free "$t" 10
}

@test "like a flock fd, a child still running keeps the lock after the shell is killed" {
    t="sem:$N"
    bash -c '
        source "$LOCKFN_SH"
        lock_acquire "$1"
        echo ready >"$2/ready"
        sleep 2
    ' _ "$t" "$T" 3>&- &
    pid=$!
    wait_line "$T/ready"
    kill -KILL "$pid"
    wait "$pid" || true
    held "$t"          # the sleep child, inside the critical section, still has the pipe
    wait_free "$t" 15  # and when it ends, the lock is released
}

@test "two scripts contending never overlap" {
    backends
    for b in "${BACKENDS[@]}"; do
        t="$b:$N"
        echo 0 >"$T/count"
        script='
            set -euo pipefail
            source "$LOCKFN_SH"
            work() {
                if [[ -e $T/inside ]]; then echo OVERLAP >>"$T/overlap"; fi
                touch "$T/inside"
                local n; n=$(<"$T/count")
                sleep 0.01
                echo $((n + 1)) >"$T/count"
                rm -f "$T/inside"
            }
            for i in $(seq 15); do with_lock "$1" work; done
        '
        T=$T bash -c "$script" _ "$t" 3>&- &
        p1=$!
        T=$T bash -c "$script" _ "$t" 3>&- &
        p2=$!
        wait "$p1"
        wait "$p2"
        [ "$(cat "$T/count")" -eq 30 ]
        [ ! -e "$T/overlap" ]
    done
}

@test "with_lock runs functions and commands, returns their status, exports the token" {
    t="sem:$N"
    run bash -c '
        set -euo pipefail
        source "$LOCKFN_SH"
        f() { echo "f $* $LOCKFN_TARGET ${LOCKFN_TOKEN:+tok}"; "$LOCKFN_BIN" status --json "$LOCKFN_TARGET" | grep -q "\"held\":true"; }
        with_lock "$1" f a b
        rc=0; with_lock "$1" sh -c "exit 7" || rc=$?
        echo "rc=$rc"
        with_lock "$1" -w 0 --holder opts -- sh -c "echo \$LOCKFN_TARGET"
        "$LOCKFN_BIN" status --json "$1" | grep -q "\"held\":false"
        echo end
    ' _ "$t"
    [ "$status" -eq 0 ]
    [ "${lines[0]}" = "f a b $t tok" ]
    [ "${lines[1]}" = "rc=7" ]
    [ "${lines[2]}" = "$t" ]
    [ "${lines[3]}" = "end" ]
}

@test "with_lock returns 1 without running CMD when busy" {
    t="sem:$N"
    source "$LOCKFN_SH"
    lock_acquire "$t"
    run bash -c 'source "$LOCKFN_SH"; with_lock "$1" -n -- touch "$2/ran"' _ "$t" "$T"
    [ "$status" -eq 1 ]
    [ ! -e "$T/ran" ]
    lock_release "$t"
}

@test "several locks at once, released independently" {
    t="sem:$N"
    source "$LOCKFN_SH"
    lock_acquire "$t-a"
    lock_acquire "$t-b" --limit 2
    lock_acquire "$t-c"
    held "$t-a"; held "$t-b"; held "$t-c"
    v=LOCKFN_TOKEN_sem_${N//[^A-Za-z0-9_]/_}_c
    [ "$LOCKFN_TOKEN" = "${!v}" ]
    lock_release "$t-b"
    held "$t-a"; ! held "$t-b"; held "$t-c"
    lock_release "$t-a"
    lock_release "$t-c"
    ! held "$t-a"; ! held "$t-c"
}

@test "errors: documented codes and messages on stderr" {
    source "$LOCKFN_SH"
    run lock_release "sem:$N"
    [ "$status" -eq 65 ]
    run lock_update "sem:$N"
    [ "$status" -eq 65 ]
    run lock_acquire "sem:../etc"
    [ "$status" -eq 64 ]
    [[ $output == *invalid* ]]
    run lock_acquire
    [ "$status" -eq 64 ]
    run -127 env LOCKFN_BIN=/nonexistent/lockfn bash -c 'source "$LOCKFN_SH"; lock_acquire sem:x'
    lock_acquire "sem:$N"
    run lock_acquire "sem:$N"
    [ "$status" -eq 64 ]
    [[ $output == *"already held"* ]]
    lock_release "sem:$N"
}

@test "lock_update reports a lost lock with 75" {
    t="sem:$N"
    run bash -c '
        source "$LOCKFN_SH"
        lock_acquire "$1"
        "$LOCKFN_BIN" release --force "$1" || exit 99
        lock_update "$1"
    ' _ "$t"
    [ "$status" -eq 75 ]
}

@test "set -euo pipefail: busy is testable, no unbound variables, errexit still works" {
    t="sem:$N"
    source "$LOCKFN_SH"
    lock_acquire "$t"
    run bash -c '
        set -euo pipefail
        source "$LOCKFN_SH"
        if lock_acquire "$1" -n 2>/dev/null; then echo "wrongly acquired"; fi
        lock_acquire "$1-free"
        lock_acquire "$1" -n 2>/dev/null
        echo "not reached"
    ' _ "$t"
    [ "$status" -eq 1 ]
    [ -z "$output" ]
    wait_free "$t-free" 10
    lock_release "$t"
}

@test "no leaked variables or traps; the script's own variables and traps are untouched" {
    t="sem:$N"
    run bash -c '
        set -euo pipefail
        target=mine dir=mine line=mine rc=mine pid=mine w=mine r=mine opts=mine i=mine
        trap "echo exit-trap" EXIT
        trap "echo int-trap" INT
        trap "" PIPE
        before_vars=$(compgen -v | grep -v -e "^_LOCKFN" -e "^LOCKFN_TOKEN" -e "^BASH" -e "^_$" -e "^PIPESTATUS$" | sort)
        before_traps=$(trap -p)
        before_fds=$(ls /proc/$$/fd | sort)
        source "$LOCKFN_SH"
        lock_acquire "$1"
        lock_update "$1"
        lock_status "$1" >/dev/null
        with_lock "$1-w" true
        lock_release "$1"
        rc2=0; lock_release "$1" 2>/dev/null || rc2=$?
        after_vars=$(compgen -v | grep -v -e "^_LOCKFN" -e "^LOCKFN_TOKEN" -e "^BASH" -e "^_$" -e "^PIPESTATUS$" -e "^before_" -e "^rc2$" | sort)
        [[ $before_vars == "$after_vars" ]] || { diff <(echo "$before_vars") <(echo "$after_vars"); exit 3; }
        [[ $before_traps == "$(trap -p)" ]] || exit 4
        [[ $before_fds == "$(ls /proc/$$/fd | sort)" ]] || exit 5
        echo "$target $dir $line $rc $pid $w $r $opts $i $rc2"
    ' _ "$t"
    [ "$status" -eq 0 ]
    [ "${lines[0]}" = "mine mine mine mine mine mine mine mine mine 65" ]
    [ "${lines[1]}" = "exit-trap" ]
}

@test "lock_status and lock_gc pass through to lockfn" {
    source "$LOCKFN_SH"
    lock_acquire "sem:$N" --holder "status test"
    run lock_status "sem:$N"
    [ "$status" -eq 0 ]
    [[ $output == *"status test"* ]]
    run lock_status "sem:$N" --json
    [[ $output == *'"held":true'* ]]
    lock_release "sem:$N"
    run lock_gc sem
    [ "$status" -eq 0 ]
}
