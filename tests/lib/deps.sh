#!/usr/bin/env bash
# Install what lockfn's tests need, idempotently and quietly (Debian 12, root,
# CI=true, no stdin).  Fast when everything is already there (no network).
#
#   source tests/lib/deps.sh      # exports the variables below into the caller
#   eval "$(tests/lib/deps.sh)"   # same, from a child: prints `export VAR=...`
#
# Exports:
#   LOCKFN_TEST_CACHE  cache dir (default /var/cache/lockfn-tests)
#   CONSUL_BIN         consul binary extracted from Debian 11's package ('' if missing)
#   LOCKFN_VENV        Python venv with pytest, kazoo, lockpick, pmxlock,
#                      consullock, cjnfuncs, posix_ipc, python-consul
#   ZK_CLASSPATH       java classpath for ZooKeeper 3.8 from Debian's packages
#   LOCKFN_DEPS_MISSING  space-separated list of what could not be installed
#                      (tests that need one of them skip with that reason)
#
# Logs go to stderr, only when something is installed or fails
# (LOCKFN_DEPS_VERBOSE=1 for more).  Full logs: $LOCKFN_TEST_CACHE/logs/.
# Returns non-zero only when a Debian package could not be installed.

_lockfn_deps_saved_opts=$(set +o)
set -euo pipefail

LOCKFN_TEST_CACHE=${LOCKFN_TEST_CACHE:-/var/cache/lockfn-tests}
LOCKFN_VENV=${LOCKFN_VENV:-$LOCKFN_TEST_CACHE/venv}
LOCKFN_DEPS_MISSING=""

_deps_log() { echo "deps.sh: $*" >&2; }
_deps_vlog() { if [[ "${LOCKFN_DEPS_VERBOSE:-0}" != 0 ]]; then _deps_log "$@"; fi; }
_deps_missing() { LOCKFN_DEPS_MISSING="${LOCKFN_DEPS_MISSING:+$LOCKFN_DEPS_MISSING }$1"; }

# Run apt/dpkg non-interactively, bounded in time, with output to a log file.
_deps_run() { # LOGNAME TIMEOUT CMD...
  local log="$LOCKFN_TEST_CACHE/logs/$1.log" t=$2
  shift 2
  if ! DEBIAN_FRONTEND=noninteractive timeout "$t" "$@" </dev/null >>"$log" 2>&1; then
    _deps_log "failed: $* (log: $log)"
    tail -n 5 "$log" >&2 || true
    return 1
  fi
}

_deps_apt_updated=0
_deps_apt_update() {
  if [[ $_deps_apt_updated == 0 ]]; then
    _deps_log "apt-get update"
    _deps_run apt 600 apt-get update -q || return 1
    _deps_apt_updated=1
  fi
}

# --- 1. Debian packages -----------------------------------------------------
LOCKFN_APT_PACKAGES=(zookeeper default-jre-headless bats libffi-platypus-perl python3-venv
  valgrind strace pkg-config procps util-linux iproute2 curl ca-certificates
  # the pmxcfs emulator (tests/pmxcfs/emu.sh): libfuse 2, as pmxcfs; fusermount
  libfuse-dev fuse)

_deps_apt() {
  local missing=() p status
  for p in "${LOCKFN_APT_PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null || true)
    [[ $status == ii* ]] || missing+=("$p")
  done
  if ((${#missing[@]} == 0)); then
    _deps_vlog "Debian packages present"
    return 0
  fi
  _deps_log "installing Debian packages: ${missing[*]}"
  _deps_apt_update || return 1
  _deps_run apt 900 apt-get install -y -q --no-install-recommends "${missing[@]}" || return 1
}

# tests/suites/65-packages.sh: make deb, lintian, a Debian 13 root, man -l
LOCKFN_APT_PACKAGES+=(build-essential debhelper dh-python lintian debootstrap binutils man-db)

# --- 2. consul from Debian 11 (bullseye), downloaded and extracted, never installed ---
LOCKFN_BULLSEYE_SOURCES=/etc/apt/sources.list.d/lockfn-bullseye.sources
LOCKFN_BULLSEYE_PIN=/etc/apt/preferences.d/lockfn-bullseye

# Print "URIS<TAB>SIGNED_BY" of the bookworm stanza of debian.sources.
_deps_bookworm_source() {
  local f=/etc/apt/sources.list.d/debian.sources
  [[ -r $f ]] || return 1
  awk '
    function flush() { if (suites ~ /(^| )bookworm( |$)/ && uris != "" && !done) { print uris "\t" signed; done=1 } uris=""; signed=""; suites="" }
    /^[ \t]*$/ { flush(); next }
    /^#/ { next }
    /^URIs:/      { sub(/^URIs:[ \t]*/, "");      uris=$0 }
    /^Suites:/    { sub(/^Suites:[ \t]*/, "");    suites=$0 }
    /^Signed-By:/ { sub(/^Signed-By:[ \t]*/, ""); signed=$0 }
    END { flush() }' "$f"
}

_deps_consul_write_apt_config() {
  local line uris signed
  line=$(_deps_bookworm_source || true)
  uris=${line%%$'\t'*}
  signed=${line#*$'\t'}
  [[ -n $line && -n $uris ]] || uris=http://deb.debian.org/debian
  [[ -n $line && -n $signed ]] || signed=/usr/share/keyrings/debian-archive-keyring.gpg
  local want
  want=$(printf 'Types: deb\nURIs: %s\nSuites: bullseye\nComponents: main\nSigned-By: %s\n' "$uris" "$signed")
  if [[ ! -f $LOCKFN_BULLSEYE_SOURCES || "$(cat "$LOCKFN_BULLSEYE_SOURCES")" != "$want" ]]; then
    printf '%s\n' "$want" >"$LOCKFN_BULLSEYE_SOURCES"
  fi
  # Nothing from bullseye is ever installed (negative priority); consul alone gets
  # a low positive priority so that `apt-get download consul` has a candidate.
  # shellcheck disable=SC2016  # literal backquotes in a comment line
  want=$(printf '%s\n' \
    '# lockfn tests: only `apt-get download consul` uses bullseye; never install from it.' \
    'Package: *' 'Pin: release n=bullseye' 'Pin-Priority: -10' '' \
    'Package: consul' 'Pin: release n=bullseye' 'Pin-Priority: 1')
  if [[ ! -f $LOCKFN_BULLSEYE_PIN || "$(cat "$LOCKFN_BULLSEYE_PIN")" != "$want" ]]; then
    printf '%s\n' "$want" >"$LOCKFN_BULLSEYE_PIN"
  fi
}

_deps_consul() {
  local dir="$LOCKFN_TEST_CACHE/consul" bin
  bin="$dir/root/usr/bin/consul"
  if [[ -x $bin ]] && timeout 20 "$bin" version >/dev/null 2>&1; then
    CONSUL_BIN=$bin
    _deps_vlog "consul present: $bin"
    return 0
  fi
  _deps_log "fetching consul from Debian 11 (bullseye)"
  _deps_consul_write_apt_config
  # Update the bullseye index only: the bookworm lists stay as they are.
  _deps_run apt 600 apt-get update -q \
    -o Dir::Etc::SourceList="$LOCKFN_BULLSEYE_SOURCES" \
    -o Dir::Etc::SourceParts=/dev/null -o APT::Get::List-Cleanup=0 || return 1
  rm -rf "$dir/download" "$dir/root"
  mkdir -p "$dir/download"
  # apt-get download writes into the current directory, as user _apt when it can
  chmod 0755 "$dir/download"
  (cd "$dir/download" && _deps_run apt 600 apt-get download -q consul) || return 1
  local deb
  deb=$(find "$dir/download" -maxdepth 1 -name 'consul_*.deb' | head -n 1)
  [[ -n $deb ]] || { _deps_log "apt-get download consul produced no .deb"; return 1; }
  mkdir -p "$dir/root"
  dpkg -x "$deb" "$dir/root"
  if [[ -x $bin ]] && timeout 20 "$bin" version >/dev/null 2>&1; then
    CONSUL_BIN=$bin
    _deps_log "consul: $bin ($("$bin" version | head -n 1))"
  else
    _deps_log "consul binary missing or does not run after extracting $deb"
    return 1
  fi
}

# --- 3. Python venv with the peer packages ------------------------------------
# distribution name -> pip requirement(s) to try, in order
LOCKFN_PY_DISTS=(pytest kazoo lockpick pmxlock cjnfuncs posix_ipc python-consul consullock)

_deps_py_missing() { # print the distributions not installed in the venv
  "$LOCKFN_VENV/bin/python" - "${LOCKFN_PY_DISTS[@]}" <<'EOF'
import sys
from importlib import metadata
alias = {"python-consul": ["python-consul", "python-consul2"], "posix_ipc": ["posix_ipc", "posix-ipc"]}
for d in sys.argv[1:]:
    for name in alias.get(d, [d]):
        try:
            metadata.distribution(name)
            break
        except metadata.PackageNotFoundError:
            pass
    else:
        print(d)
EOF
}

_deps_pip() { # LOGNAME pip-args...
  local name=$1
  shift
  _deps_run "pip-$name" 600 "$LOCKFN_VENV/bin/python" -m pip install -q --disable-pip-version-check --no-input "$@"
}

_deps_py_install_one() {
  local d=$1
  case $d in
    python-consul)
      _deps_pip "$d" python-consul || _deps_pip "$d" python-consul2
      ;;
    consullock)
      # consullock 4.2.0 needs demjson 2.2.4, whose setup.py uses `use_2to3`,
      # which setuptools >= 58 rejects ("use_2to3 is invalid"); it builds with
      # setuptools < 58 (legacy setup.py install, no build isolation).
      _deps_pip "$d" 'setuptools<58' && _deps_pip "$d" consullock
      ;;
    *)
      _deps_pip "$d" "$d"
      ;;
  esac
}

_deps_venv() {
  local py=/usr/bin/python3
  [[ -x $py ]] || py=$(command -v python3)
  if [[ ! -x $LOCKFN_VENV/bin/python ]] || ! "$LOCKFN_VENV/bin/python" -c 'import sys' 2>/dev/null; then
    _deps_log "creating venv $LOCKFN_VENV"
    rm -rf "$LOCKFN_VENV"
    _deps_run venv 300 "$py" -m venv "$LOCKFN_VENV" || return 1
  fi
  local missing d
  missing=$(_deps_py_missing) || return 1
  [[ -n $missing ]] || { _deps_vlog "venv complete"; return 0; }
  for d in $missing; do
    _deps_log "pip install $d"
    _deps_py_install_one "$d" || true
  done
  missing=$(_deps_py_missing) || return 1
  for d in $missing; do
    _deps_log "WARNING: Python package '$d' could not be installed; tests that need it will skip (log: $LOCKFN_TEST_CACHE/logs/pip-$d.log)"
    _deps_missing "py:$d"
  done
}

_deps_zk_classpath() {
  # zookeeper.jar's manifest Class-Path names its own dependencies; add a log
  # binding (slf4j -> log4j 1.2).  Not /usr/share/java/*: it holds several slf4j
  # bindings and log4j-over-slf4j, which clash.
  ZK_CLASSPATH=/etc/zookeeper/conf:/usr/share/java/zookeeper.jar:/usr/share/java/slf4j-api.jar:/usr/share/java/slf4j-log4j12.jar:/usr/share/java/log4j-1.2.jar
  local j
  for j in ${ZK_CLASSPATH//:/ }; do
    [[ -e $j ]] || { _deps_log "WARNING: $j missing; ZooKeeper tests will skip"; _deps_missing zookeeper; return 0; }
  done
}

_lockfn_deps_main() {
  local rc=0
  CONSUL_BIN=""
  mkdir -p "$LOCKFN_TEST_CACHE/logs"
  _deps_apt || { rc=1; _deps_missing apt; }
  if ! _deps_consul; then
    _deps_log "WARNING: consul not available; Consul tests will skip"
    _deps_missing consul
  fi
  if ! _deps_venv; then
    _deps_log "WARNING: Python venv not available; tests that need it will skip"
    _deps_missing venv
  fi
  _deps_zk_classpath
  export LOCKFN_TEST_CACHE CONSUL_BIN LOCKFN_VENV ZK_CLASSPATH LOCKFN_DEPS_MISSING
  return "$rc"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  _rc=0
  _lockfn_deps_main || _rc=$?
  for _v in LOCKFN_TEST_CACHE CONSUL_BIN LOCKFN_VENV ZK_CLASSPATH LOCKFN_DEPS_MISSING; do
    printf 'export %s=%q\n' "$_v" "${!_v}"
  done
  exit "$_rc"
else
  _lockfn_deps_rc=0
  _lockfn_deps_main || _lockfn_deps_rc=$?
  eval "$_lockfn_deps_saved_opts"
  unset _lockfn_deps_saved_opts
  # the status of `source deps.sh`: non-zero when a Debian package is missing
  [[ $_lockfn_deps_rc == 0 ]]
fi
