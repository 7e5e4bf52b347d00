#!/usr/bin/env bash
# Start, stop, restart, freeze and thaw the pmxcfs emulator (tests/pmxcfs/pmxemu.c, a FUSE
# file system) in DIR:
#
#   tests/pmxcfs/emu.sh start|stop|restart|freeze|thaw|build DIR
#
# start    builds DIR/pmxemu if needed (or uses $PMXEMU_BIN), mounts it at DIR/mnt (state in
#          DIR/state, log DIR/ops.log, TTL $PMXEMU_TTL or 120 s, kept for restart), waits until
#          the mount is there and writes DIR/env:
#            LOCKFN_PMXCFS_DIR=DIR/mnt/priv/lock  PMXEMU_PID=…  PMXEMU_LOG=DIR/ops.log
#            PMXEMU_MNT=DIR/mnt
#          $PMXEMU_WATCH_PID: the emulator stops by itself once that process is gone.
#          It runs at a real-time priority (chrt --rr 1) when it may: it only answers requests,
#          each in microseconds, and so answers them at once on a loaded test machine as an
#          idle pmxcfs would (instead of adding its own scheduling delays to every call and
#          to the time stamps of its log). PMXEMU_RT=0: the normal priority.
# stop     SIGCONT (a frozen one), SIGTERM, SIGKILL after 5 s, then unmounts whatever is left.
# restart  stop + start with the same state (directories and files kept, lock times reset,
#          st_ino numbering restarts, as when pmxcfs restarts).
# freeze   SIGSTOP: every call on the mount blocks until thaw (SIGCONT), as with pmxcfs.
# build    only build DIR/pmxemu.
# All are idempotent, bounded in time, and never leave a mount behind when they fail.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
cmd=${1:-} D=${2:-}
[[ -n $cmd && -n $D ]] || {
  echo "usage: $0 start|stop|restart|freeze|thaw|build DIR" >&2
  exit 2
}
mkdir -p "$D" || exit 1
D=$(cd "$D" && pwd)
MNT=$D/mnt

die() {
  echo "emu.sh: $*" >&2
  exit 1
}

build() {
  local out=$D/pmxemu src=$HERE/pmxemu.c
  if [[ -n ${PMXEMU_BIN:-} ]]; then
    [[ -x $PMXEMU_BIN ]] || die "PMXEMU_BIN=$PMXEMU_BIN is not executable"
    BIN=$PMXEMU_BIN
    return 0
  fi
  BIN=$out
  [[ -x $out && $out -nt $src ]] && return 0
  pkg-config --exists fuse 2>/dev/null ||
    die "libfuse 2 development files missing (Debian: apt-get install libfuse-dev fuse)"
  # shellcheck disable=SC2046
  cc -O2 -Wall -o "$out.tmp.$$" "$src" $(pkg-config --cflags --libs fuse) ||
    die "cannot build $src"
  mv -f "$out.tmp.$$" "$out"
}

pid_of() { # the running emulator's pid, or nothing
  local p
  p=$(cat "$D/pid" 2>/dev/null) || return 0
  [[ -n $p ]] && kill -0 "$p" 2>/dev/null && [[ $(readlink "/proc/$p/exe" 2>/dev/null) == */pmxemu* ]] &&
    echo "$p"
}

# wait_until SECONDS CMD...: poll CMD every 10 ms, bounded.
wait_until() {
  local n=$(($1 * 100))
  shift
  while ((n-- > 0)); do
    "$@" && return 0
    sleep 0.01
  done
  return 1
}
mounted() { mountpoint -q "$MNT" 2>/dev/null; }
# A dead emulator leaves a mount answering ENOTCONN, which `mountpoint` may not call a mount
# point: look in /proc/self/mountinfo too.
in_mountinfo() { awk -v m="$MNT" '$5 == m { f = 1 } END { exit !f }' /proc/self/mountinfo; }
gone() { ! kill -0 "$1" 2>/dev/null || [[ $(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) == Z ]]; }

unmount() {
  local i
  for i in 1 2 3; do
    in_mountinfo || return 0
    fusermount -u -z "$MNT" 2>/dev/null || umount -l "$MNT" 2>/dev/null
  done
  ! in_mountinfo || die "cannot unmount $MNT"
}

stop() {
  local p
  p=$(pid_of)
  if [[ -n $p ]]; then
    kill -CONT "$p" 2>/dev/null
    kill -TERM "$p" 2>/dev/null
    if ! wait_until 5 gone "$p"; then
      kill -KILL "$p" 2>/dev/null
      wait_until 5 gone "$p" || echo "emu.sh: pid $p does not die" >&2
    fi
  fi
  rm -f "$D/pid"
  unmount
}

start() {
  local p
  if [[ -n $(pid_of) ]] && mounted; then
    return 0 # already running
  fi
  stop
  build
  mkdir -p "$MNT"
  if [[ -n ${PMXEMU_TTL:-} ]]; then
    echo "$PMXEMU_TTL" >"$D/ttl"
  fi
  local ttl
  ttl=$(cat "$D/ttl" 2>/dev/null || echo 120)
  local args=(--ttl "$ttl" --state "$D/state" --log "$D/ops.log")
  [[ -n ${PMXEMU_WATCH_PID:-} ]] && args+=(--watch-pid "$PMXEMU_WATCH_PID")
  # Its own session: a terminal's or a test's signals to the process group do not reach it.
  local prio=()
  [[ ${PMXEMU_RT:-1} == 1 ]] && chrt --rr 1 true 2>/dev/null && prio=(chrt --rr 1)
  setsid "${prio[@]}" "$BIN" "${args[@]}" "$MNT" </dev/null >>"$D/emu.out" 2>&1 &
  p=$!
  echo "$p" >"$D/pid"
  if ! wait_until 10 mounted; then
    echo "emu.sh: the emulator did not mount $MNT within 10 s:" >&2
    tail -n 5 "$D/emu.out" >&2
    stop
    exit 1
  fi
  {
    echo "LOCKFN_PMXCFS_DIR=$MNT/priv/lock"
    echo "PMXEMU_PID=$p"
    echo "PMXEMU_LOG=$D/ops.log"
    echo "PMXEMU_MNT=$MNT"
  } >"$D/env"
}

case $cmd in
start) start ;;
stop) stop ;;
restart)
  stop
  start
  ;;
freeze)
  p=$(pid_of)
  [[ -n $p ]] || die "not running"
  kill -STOP "$p"
  ;;
thaw)
  p=$(pid_of)
  [[ -n $p ]] || die "not running"
  kill -CONT "$p"
  ;;
build) build ;;
*) die "unknown command $cmd" ;;
esac
