#!/bin/bash
# shellcheck shell=bash
# lockfn.sh — locks for bash scripts (bash >= 4.3), on top of `lockfn hold`.
#
#   source lockfn.sh      # installed beside lockfn (e.g. /usr/bin), as gettext.sh is:
#                         # bash's `source` finds it on PATH
#
#   lock_acquire TARGET [-w SECS] [-n] [--shared] [--limit N] [--ttl S] [--holder TEXT]
#       Take the lock and keep it until lock_release TARGET or until this shell exits (also
#       when it is killed with SIGKILL). Prints nothing on success. Sets
#       LOCKFN_TOKEN_<TARGET with every character outside [A-Za-z0-9_] replaced by _> (e.g.
#       LOCKFN_TOKEN_sem_backup) and LOCKFN_TOKEN (the last lock taken) to the fencing token.
#   lock_update TARGET     renew now and check the lock is still ours (75 if it was lost)
#   lock_release TARGET    give the lock up (65 if this shell does not hold it)
#   lock_status TARGET [--json]   who holds TARGET (lockfn status)
#   lock_gc [SCOPE]        clean what dead holders on this host left behind (lockfn gc)
#   with_lock TARGET CMD...               run CMD (a command or a shell function) holding
#   with_lock TARGET [OPTIONS] -- CMD...  the lock; returns CMD's status. CMD sees
#                                         LOCKFN_TOKEN and LOCKFN_TARGET.
#
# Return codes (those of the lockfn command): 0 held/done, 1 busy or timed out, 64 invalid
# usage or target, 65 not held, 69 service unavailable, 70 internal error, 75 lock lost,
# 77 permission denied, 127 lockfn not found, 128+N the wait was cancelled by signal N.
#
# How it works: every lock is held by a `lockfn hold` helper whose stdin is a pipe that only
# this shell writes to. The helper renews the lock and releases it when asked to, or when
# the pipe reaches end-of-file, i.e. when the shell is gone, however it ended. The helper
# runs in its own session, so a Ctrl-C meant for the script's commands does not release a
# lock the script still holds. Like a flock(1) descriptor, the pipe is inherited by
# background processes started while the lock is held: the lock then lasts until they end
# too (or until lock_release). Works under `set -euo pipefail`; sets no traps; its own
# state lives in variables named _LOCKFN_*.
#
# The lockfn binary is $LOCKFN_BIN if set, else `lockfn` from PATH.

# POSIX syntax up to here, so that another shell stops with a message, not a syntax error.
if [ -z "${BASH_VERSION:-}" ]; then
    echo "lockfn.sh: bash >= 4.3 is needed" >&2
    # shellcheck disable=SC2317 # exit when executed instead of sourced
    return 64 2>/dev/null || exit 64
fi
if ((BASH_VERSINFO[0] < 4 || (BASH_VERSINFO[0] == 4 && BASH_VERSINFO[1] < 3))); then
    echo "lockfn.sh: bash >= 4.3 is needed, this is $BASH_VERSION" >&2
    # shellcheck disable=SC2317
    return 64 2>/dev/null || exit 64
fi

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    echo "lockfn.sh is a library for bash scripts: use \`source lockfn.sh\` (see lockfn(1))" >&2
    exit 64
fi

# target -> "PID WRITE_FD READ_FD"
declare -gA _LOCKFN_HELD 2>/dev/null || declare -A _LOCKFN_HELD
_LOCKFN_HELD=()

_lockfn_bin() {
    printf '%s' "${LOCKFN_BIN:-lockfn}"
}

_lockfn_tokvar() { # TARGET -> name of the token variable
    local s=${1//[^A-Za-z0-9_]/_}
    printf 'LOCKFN_TOKEN_%s' "$s"
}

# Forget a lock's helper: close our ends of its pipes, reap it, unset the token variable.
# Sets _LOCKFN_RC to the helper's exit status.
_lockfn_forget() { # TARGET
    local _lf_target=$1 _lf_pid _lf_w _lf_r
    read -r _lf_pid _lf_w _lf_r <<<"${_LOCKFN_HELD[$_lf_target]}"
    unset "_LOCKFN_HELD[$_lf_target]"
    exec {_lf_w}>&- {_lf_r}<&-
    _LOCKFN_RC=0
    wait "$_lf_pid" 2>/dev/null || _LOCKFN_RC=$?
    unset "$(_lockfn_tokvar "$_lf_target")"
}

# Send one request line to a helper without risking SIGPIPE in this shell, read one answer.
_lockfn_request() { # TARGET REQUEST -> prints the answer line; non-zero if none
    local _lf_pid _lf_w _lf_r _lf_line
    read -r _lf_pid _lf_w _lf_r <<<"${_LOCKFN_HELD[$1]}"
    (trap '' PIPE; printf '%s\n' "$2" >&"$_lf_w") 2>/dev/null || return 1
    IFS= read -r _lf_line <&"$_lf_r" || return 1
    printf '%s' "$_lf_line"
}

lock_acquire() {
    if (($# < 1)); then
        echo "usage: lock_acquire TARGET [-w SECS] [-n] [--shared] [--limit N] [--ttl S] [--holder TEXT]" >&2
        return 64
    fi
    local _lf_target=$1 _lf_bin _lf_dir _lf_w _lf_r _lf_pid _lf_line _lf_rc=0
    shift
    if [[ -n ${_LOCKFN_HELD[$_lf_target]+x} ]]; then
        echo "lock_acquire: $_lf_target is already held by this shell" >&2
        return 64
    fi
    _lf_bin=$(_lockfn_bin)
    if ! command -v "$_lf_bin" >/dev/null 2>&1; then
        echo "lock_acquire: $_lf_bin: command not found (set LOCKFN_BIN)" >&2
        return 127
    fi
    _lf_dir=$(mktemp -d "${TMPDIR:-/tmp}/lockfn.XXXXXXXX") || return 70
    if ! mkfifo -m 600 "$_lf_dir/out"; then
        rm -rf "$_lf_dir"
        return 70
    fi
    # stdin: a pipe only this shell writes to; stdout: the FIFO (our read end below).
    if command -v setsid >/dev/null 2>&1; then
        exec {_lf_w}> >(exec setsid -w "$_lf_bin" hold "$_lf_target" "$@" >"$_lf_dir/out")
    else
        exec {_lf_w}> >(exec "$_lf_bin" hold "$_lf_target" "$@" >"$_lf_dir/out")
    fi
    _lf_pid=$!
    exec {_lf_r}<"$_lf_dir/out"
    rm -rf "$_lf_dir"
    _LOCKFN_HELD[$_lf_target]="$_lf_pid $_lf_w $_lf_r"
    if IFS= read -r _lf_line <&"$_lf_r" && [[ $_lf_line =~ \"token\":([0-9]+) ]]; then
        printf -v "$(_lockfn_tokvar "$_lf_target")" '%s' "${BASH_REMATCH[1]}"
        LOCKFN_TOKEN=${BASH_REMATCH[1]}
        return 0
    fi
    # Not acquired: the helper said why on stderr and exits with the code.
    _lockfn_forget "$_lf_target"
    _lf_rc=$_LOCKFN_RC
    unset _LOCKFN_RC
    ((_lf_rc != 0)) || _lf_rc=70
    return "$_lf_rc"
}

lock_update() {
    if (($# != 1)); then
        echo "usage: lock_update TARGET" >&2
        return 64
    fi
    local _lf_line _lf_rc
    if [[ -z ${_LOCKFN_HELD[$1]+x} ]]; then
        echo "lock_update: $1 is not held by this shell" >&2
        return 65
    fi
    if _lf_line=$(_lockfn_request "$1" update) && [[ $_lf_line == *'"updated":true'* ]]; then
        return 0
    fi
    # Lost or failed: the helper has exited (it said why on stderr).
    _lockfn_forget "$1"
    _lf_rc=$_LOCKFN_RC
    unset _LOCKFN_RC
    ((_lf_rc != 0)) || _lf_rc=75
    return "$_lf_rc"
}

lock_release() {
    if (($# != 1)); then
        echo "usage: lock_release TARGET" >&2
        return 64
    fi
    local _lf_rc
    if [[ -z ${_LOCKFN_HELD[$1]+x} ]]; then
        echo "lock_release: $1 is not held by this shell" >&2
        return 65
    fi
    _lockfn_request "$1" release >/dev/null || true
    _lockfn_forget "$1"
    _lf_rc=$_LOCKFN_RC
    unset _LOCKFN_RC
    return "$_lf_rc"
}

lock_status() {
    if (($# < 1)); then
        echo "usage: lock_status TARGET [--json]" >&2
        return 64
    fi
    "$(_lockfn_bin)" status "$@"
}

lock_gc() {
    "$(_lockfn_bin)" gc "$@"
}

with_lock() {
    if (($# < 2)); then
        echo "usage: with_lock TARGET CMD... | with_lock TARGET [OPTIONS] -- CMD..." >&2
        return 64
    fi
    local _lf_target=$1 _lf_opts=() _lf_rc=0 _lf_tok
    shift
    if [[ $1 == -* ]]; then
        while (($#)) && [[ $1 != -- ]]; do
            _lf_opts+=("$1")
            shift
        done
        if (($# < 2)); then
            echo "with_lock: missing -- CMD..." >&2
            return 64
        fi
        shift
    fi
    lock_acquire "$_lf_target" ${_lf_opts[@]+"${_lf_opts[@]}"} || return
    _lf_tok=$LOCKFN_TOKEN
    # CMD runs in this shell (functions work). As with any `cmd || ...`, bash does not apply
    # set -e inside a function CMD; its status is returned.
    LOCKFN_TOKEN=$_lf_tok LOCKFN_TARGET=$_lf_target "$@" || _lf_rc=$?
    lock_release "$_lf_target" || { ((_lf_rc != 0)) || _lf_rc=$?; }
    return "$_lf_rc"
}
