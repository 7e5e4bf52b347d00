#!/usr/bin/env bash
# shellcheck disable=SC2016 # single-quoted programs for perl/bash -c
# Bindings and install: the bash helper (bats tests/shell), the Python package (pytest with
# $LOCKFN_VENV's python), the Perl module (prove), and `make install` into a temporary
# DESTDIR, after which a C example (built with pkg-config), a Perl one-liner, a Python
# one-liner and a sourced lockfn.sh run from the installed files only.
# Ends with `N passed, N failed`; exit status 0 only when all passed.
#
#   tests/suites/60-bindings.sh
# Env: LOCKFN_VENV (python venv with pytest; else python3 with pytest), LOCKFN_INSTALL_PROFILE
# (debug: install the cargo debug build, the default here to spare a release build; release).
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 2
ROOT=$PWD
PASSED=0 FAILED=0 FAILED_NAMES=()
check() { # NAME CMD...
    local name=$1
    shift
    printf '\n--- %s\n' "$name"
    if "$@"; then
        PASSED=$((PASSED + 1))
        echo "ok: $name"
    else
        FAILED=$((FAILED + 1))
        FAILED_NAMES+=("$name")
        echo "FAILED: $name"
    fi
}

WORK=$(mktemp -d /tmp/lockfn-bindings.XXXXXX)
PMX=$(mktemp -d /dev/shm/lockfn-bindings-pmxcfs.XXXXXX)
trap 'rm -rf "$WORK" "$PMX"' EXIT
# pmxcfs: a plain lock directory on tmpfs (inode numbers, the fencing tokens, are not reused
# at once there, as on pmxcfs), with the node-local flock and record directories beside it.
mkdir "$PMX/lock" "$PMX/pmxlock" "$PMX/run"
export LOCKFN_PMXCFS_DIR=${LOCKFN_PMXCFS_DIR:-$PMX/lock}
export LOCKFN_PMXLOCK_DIR=${LOCKFN_PMXLOCK_DIR:-$PMX/pmxlock} LOCKFN_RUN_DIR=${LOCKFN_RUN_DIR:-$PMX/run}

if [[ ! -e target/debug/liblockfn.so || ! -e target/debug/lockfn ]]; then
    cargo build --quiet || { echo "cargo build failed"; echo "0 passed, 1 failed"; exit 1; }
fi
LIB=$ROOT/target/debug/liblockfn.so
BIN=$ROOT/target/debug/lockfn

# --- the bindings, from the source tree ----------------------------------------------------
check "bats tests/shell" env LOCKFN_BIN="$BIN" bats tests/shell

PY=""
if [[ -n ${LOCKFN_VENV:-} && -x $LOCKFN_VENV/bin/python ]]; then
    PY=$LOCKFN_VENV/bin/python
elif python3 -c 'import pytest' 2>/dev/null; then
    PY=python3
fi
if [[ -n $PY ]]; then
    check "pytest bindings/python/tests" env LOCKFN_LIBRARY="$LIB" \
        "$PY" -m pytest -q -rs -s -p no:cacheprovider bindings/python/tests
else
    check "pytest bindings/python/tests (no pytest: set LOCKFN_VENV)" false
fi

check "prove bindings/perl/t" env LOCKFN_LIBRARY="$LIB" prove bindings/perl/t

# --- install into a DESTDIR and use only the installed files --------------------------------
DEST=$WORK/dest
PROFILE=${LOCKFN_INSTALL_PROFILE:-debug}
check "make install PREFIX=/usr DESTDIR=..." \
    make --no-print-directory install PREFIX=/usr DESTDIR="$DEST" PROFILE="$PROFILE"

MA=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || gcc -print-multiarch)
LIBDIR=$DEST/usr/lib/$MA
PERLDIR=$DEST$(perl -MConfig -e 'print $Config{installvendorlib}')
PYDIR=$DEST/usr/lib/python3/dist-packages

# The real file is named after the library's version (Cargo.toml, what lock_version() says).
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
installed_layout() {
    local f ok=0
    [[ -n $VERSION ]] || { echo "no version in Cargo.toml"; ok=1; }
    for f in "$LIBDIR/liblockfn.so.$VERSION" "$LIBDIR/liblockfn.a" "$LIBDIR/pkgconfig/lockfn.pc" \
        "$DEST/usr/include/lockfn.h" "$DEST/usr/bin/lockfn" "$DEST/usr/bin/lockfn.sh" \
        "$PERLDIR/Lockfn.pm" "$PYDIR/lockfn/__init__.py" "$PYDIR/lockfn/_ffi.py"; do
        [[ -f $f ]] || { echo "missing: $f"; ok=1; }
    done
    [[ $(readlink "$LIBDIR/liblockfn.so.0") == "liblockfn.so.$VERSION" ]] || { echo "bad link liblockfn.so.0"; ok=1; }
    [[ $(readlink "$LIBDIR/liblockfn.so") == liblockfn.so.0 ]] || { echo "bad link liblockfn.so"; ok=1; }
    readelf -d "$LIBDIR/liblockfn.so.$VERSION" | grep -q 'SONAME.*\[liblockfn.so.0\]' || { echo "soname is not liblockfn.so.0"; ok=1; }
    return $ok
}
check "installed layout, soname links" installed_layout

# A clean environment: no build tree on any path, the library only from DESTDIR.
run_installed() { # CMD... (in $WORK, with only the installed files)
    (cd "$WORK" && env -i PATH="$DEST/usr/bin:/usr/bin:/bin" HOME="$WORK" TMPDIR="${TMPDIR:-/tmp}" \
        LD_LIBRARY_PATH="$LIBDIR" LOCKFN_PMXCFS_DIR="$LOCKFN_PMXCFS_DIR" \
        LOCKFN_PMXLOCK_DIR="$LOCKFN_PMXLOCK_DIR" LOCKFN_RUN_DIR="$LOCKFN_RUN_DIR" "$@")
}
NAME=inst$$

c_example() {
    local flags
    flags=$(PKG_CONFIG_PATH="$LIBDIR/pkgconfig" PKG_CONFIG_SYSROOT_DIR="$DEST" \
        pkg-config --cflags --libs lockfn) || return 1
    echo "pkg-config: $flags"
    [[ $flags == *"-I$DEST/usr/include"* && $flags == *"-L$LIBDIR"* && $flags == *-llockfn* ]] || return 1
    # shellcheck disable=SC2086
    gcc -Wall -Wextra -Werror "$ROOT/examples/c/hello_lock.c" $flags -o "$WORK/hello_lock" || return 1
    readelf -d "$WORK/hello_lock" | grep -q 'NEEDED.*\[liblockfn.so.0\]' || { echo "not linked to liblockfn.so.0"; return 1; }
    run_installed ldd "$WORK/hello_lock" | grep liblockfn
    run_installed ldd "$WORK/hello_lock" | grep -q "liblockfn.so.0 => $LIBDIR/liblockfn.so.0" || return 1
    local out
    out=$(run_installed "$WORK/hello_lock" "sem:$NAME-c") || return 1
    echo "$out"
    [[ $out == *"locked sem:$NAME-c token "* && $out == *'"holder":"hello_lock.c"'* && $out == *"released sem:$NAME-c"* ]]
}
check "C example built with pkg-config against the install" c_example

c_static() {
    local libs
    libs=$(PKG_CONFIG_PATH="$LIBDIR/pkgconfig" PKG_CONFIG_SYSROOT_DIR="$DEST" \
        pkg-config --static --libs-only-other --libs-only-l lockfn | sed 's/-llockfn//') || return 1
    # shellcheck disable=SC2086
    gcc "$ROOT/examples/c/hello_lock.c" -I"$DEST/usr/include" "$LIBDIR/liblockfn.a" $libs \
        -o "$WORK/hello_static" || return 1
    ! readelf -d "$WORK/hello_static" | grep -q 'NEEDED.*liblockfn' || return 1
    run_installed "$WORK/hello_static" "sem:$NAME-s" | grep -q "released sem:$NAME-s"
}
check "C example linked statically (liblockfn.a, Libs.private)" c_static

perl_oneliner() {
    local out
    out=$(run_installed perl -I"$PERLDIR" -MLockfn -e '
        my $l = Lockfn->acquire(shift, timeout => 5, holder => "perl one-liner");
        print "token ", $l->token, " ", Lockfn::status($l->target)->{holders}[0]{holder}, "\n";
        $l->release;
        print Lockfn::lock_with(shift, 5, sub { "lock_with ok" }), "\n";
        print $INC{"Lockfn.pm"}, "\n";' "sem:$NAME-pl" "sem:$NAME-pl2") || return 1
    echo "$out"
    [[ $out == *"perl one-liner"* && $out == *"lock_with ok"* && $out == *"$PERLDIR/Lockfn.pm"* ]]
}
check "Perl one-liner from the install" perl_oneliner

python_oneliner() {
    local out
    out=$(run_installed env PYTHONPATH="$PYDIR" /usr/bin/python3 -c '
import sys, lockfn
with lockfn.Lock(sys.argv[1], holder="python one-liner", timeout=5) as l:
    print("token", l.token, lockfn.status(sys.argv[1])["holders"][0]["holder"])
print(lockfn.__file__, lockfn.library_path())' "sem:$NAME-py") || return 1
    echo "$out"
    [[ $out == *"python one-liner"* && $out == *"$PYDIR/lockfn/__init__.py liblockfn.so.0"* ]]
}
check "Python one-liner from the install" python_oneliner

shell_sourced() {
    local out
    out=$(run_installed bash -c '
        set -euo pipefail
        source "$1"
        lock_acquire "$2" --holder "sourced lockfn.sh"
        lockfn status --json "$2" | grep -o "\"holder\":\"sourced lockfn.sh\""
        lock_release "$2"
        with_lock "$2" sh -c "echo with_lock \$LOCKFN_TARGET"
        command -v lockfn' _ lockfn.sh "sem:$NAME-sh") || return 1
    echo "$out"
    [[ $out == *'"holder":"sourced lockfn.sh"'* && $out == *"with_lock sem:$NAME-sh"* && $out == *"$DEST/usr/bin/lockfn" ]]
}
check "sourced lockfn.sh from the install" shell_sourced

examples_run() {
    local rc=0 b t
    for b in sem pmxcfs; do
        if [[ $(run_installed lockfn status "$b:probe" 2>&1) == *"not implemented"* ]]; then
            echo "examples: skipping $b: not implemented in this build"
            continue
        fi
        t="$b:$NAME-ex"
        run_installed "$WORK/hello_lock" "$t" >/dev/null || { echo "C example failed on $t"; rc=1; }
        run_installed env PYTHONPATH="$PYDIR" /usr/bin/python3 "$ROOT/examples/python/hello_lock.py" "$t" || rc=1
        run_installed perl -I"$PERLDIR" "$ROOT/examples/perl/hello_lock.pl" "$t" || rc=1
        run_installed bash "$ROOT/examples/shell/hello_lock.sh" "$t" || rc=1
    done
    return $rc
}

# Every `<!-- example: PATH -->` block in the READMEs is exactly the file the tests run.
docs_match_examples() {
    python3 - "$ROOT" README.md examples/README.md <<'PY'
import re, sys, os
root, docs = sys.argv[1], sys.argv[2:]
bad = found = 0
for doc in docs:
    path = os.path.join(root, doc)
    if not os.path.exists(path):
        continue
    text = open(path).read()
    for m in re.finditer(r"<!-- example: (\S+) -->\n```[a-z]*\n(.*?)\n```", text, re.S):
        found += 1
        want = open(os.path.join(root, m.group(1))).read().rstrip("\n")
        if m.group(2) != want:
            print(f"{doc}: the block for {m.group(1)} differs from the file")
            bad += 1
print(f"{found} example blocks checked")
sys.exit(1 if bad or found < 4 else 0)
PY
}
check "README example blocks are the example files" docs_match_examples
check "examples/ (C, Python, Perl, shell) run against the install" examples_run

uninstall_clean() {
    make --no-print-directory uninstall PREFIX=/usr DESTDIR="$DEST" >/dev/null || return 1
    local left
    left=$(find "$DEST" -type f -o -type l)
    [[ -z $left ]] || { echo "left after uninstall: $left"; return 1; }
}
check "make uninstall removes every installed file" uninstall_clean

rm -f /dev/shm/sem."$NAME"-* /dev/shm/lockfn@table."$NAME"-* 2>/dev/null
echo
((FAILED == 0)) || echo "failed: ${FAILED_NAMES[*]}"
echo "$PASSED passed, $FAILED failed"
((FAILED == 0))
