#!/usr/bin/env bash
# shellcheck disable=SC2016 # single-quoted programs for bash -c / chroot scripts
# Packaging: lockfn(1) and the bash completion (man -l, complete -p), `make install` /
# `install-debug` / `uninstall` (stripped files, separate debug symbols, nothing left, not even
# a directory), a real `make install` into /usr/local (ldconfig run: C, Python and Perl load
# the library with no environment), then the Debian packages: `make deb` (one release build,
# reused by everything here), lintian (no errors), and on this Debian 12 host and in a
# Debian 13 (trixie) root made with `debootstrap --variant=minbase` (cached as a tarball in
# $LOCKFN_TEST_CACHE): apt-get install ./*.deb, `man lockfn`, the C (dynamic, and static with
# gcc -static), shell (`source lockfn.sh` by name), Python and Perl examples from the installed
# files only, purge, and nothing of lockfn left.
#
# Everything this suite puts on the system is removed by its EXIT trap: packages purged,
# /usr/local files uninstalled; the chroot's mounts live in a private mount namespace
# (unshare), so they vanish with it even if the suite is killed.
# Ends with `N passed, N failed`; exit status 0 only when all passed.
#
#   tests/suites/65-packages.sh
# Env: LOCKFN_TEST_CACHE (/var/cache/lockfn-tests), LOCKFN_PKG_KEEP=1 (keep $WORK for a look).
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 2
ROOT=$PWD
CACHE=${LOCKFN_TEST_CACHE:-/var/cache/lockfn-tests}
PASSED=0 FAILED=0 FAILED_NAMES=()
T0=$SECONDS
check() { # NAME CMD...
    local name=$1 t=$SECONDS
    shift
    printf '\n--- %s\n' "$name"
    if "$@"; then
        PASSED=$((PASSED + 1))
        echo "ok: $name ($((SECONDS - t)) s)"
    else
        FAILED=$((FAILED + 1))
        FAILED_NAMES+=("$name")
        echo "FAILED: $name ($((SECONDS - t)) s)"
    fi
}
fail() { echo "    $*"; return 1; }

PKGS=(liblockfn0 liblockfn-dev lockfn liblockfn-perl python3-lockfn)
VERSION=$(sed -n 's/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -n1)
MA=$(dpkg-architecture -qDEB_HOST_MULTIARCH)
WORK=$(mktemp -d /tmp/lockfn-packages.XXXXXX)
NAME=pkg$$
HOST_INSTALLED=0 LOCAL_INSTALLED=0

cleanup() {
    if ((HOST_INSTALLED)); then
        echo "cleanup: purging ${PKGS[*]}"
        DEBIAN_FRONTEND=noninteractive timeout 300 apt-get purge -y -q -o DPkg::Lock::Timeout=120 \
            "${PKGS[@]}" >/dev/null 2>&1 || dpkg --purge "${PKGS[@]}" >/dev/null 2>&1
    fi
    if ((LOCAL_INSTALLED)); then
        echo "cleanup: make uninstall (/usr/local)"
        make --no-print-directory uninstall PREFIX=/usr/local >/dev/null 2>&1
    fi
    # The chroot's mounts were private to its namespace; never delete through a live mount.
    if grep -q " $WORK/" /proc/mounts; then
        grep " $WORK/" /proc/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount -l
    fi
    if [[ ${LOCKFN_PKG_KEEP:-0} == 1 ]]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
    rm -f /dev/shm/sem."$NAME"* /dev/shm/lockfn@table."$NAME"* 2>/dev/null
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- lockfn(1) and the completion, as generated from the clap definitions --------------------

man_page_renders() {
    local out warn
    warn=$(MANWIDTH=80 man --warnings -l doc/lockfn.1 2>&1 >/dev/null)
    [[ -z $warn ]] || fail "groff warnings: $warn" || return 1
    out=$(MANWIDTH=80 man -l doc/lockfn.1 2>/dev/null | col -b | tr -s ' \t' '  ')
    local want
    for want in "lockfn - Run things" "SYNOPSIS" "lockfn run" "--nonblock" "--conflict-exit-code" \
        "lockfn status" "EXIT STATUS" "lock busy or timed out" "TARGETS" "sem:NAME" "ENVIRONMENT" \
        "source lockfn.sh" "SEE ALSO"; do
        [[ $out == *"$want"* ]] || fail "lockfn(1) lacks '$want'" || return 1
    done
    echo "    lockfn(1): $(wc -l <<<"$out") lines at 80 columns"
}
check "man -l renders lockfn(1) without warnings" man_page_renders

completion_loads() {
    local out
    out=$(bash --norc -c 'source doc/lockfn.bash-completion && complete -p lockfn') || return 1
    echo "    $out"
    [[ $out == "complete "*"-F _lockfn"*" lockfn" ]] || fail "unexpected: $out" || return 1
    # and it completes: subcommands, then the options of `run`
    out=$(bash --norc -c 'source doc/lockfn.bash-completion
        COMP_WORDS=(lockfn ru); COMP_CWORD=1; COMP_LINE="lockfn ru"; COMP_POINT=${#COMP_LINE}
        _lockfn lockfn ru lockfn; echo "${COMPREPLY[*]}"
        COMP_WORDS=(lockfn run --non); COMP_CWORD=2; COMP_LINE="lockfn run --non"; COMP_POINT=${#COMP_LINE}
        _lockfn lockfn --non run; echo "${COMPREPLY[*]}"') || return 1
    echo "    completions: ${out//$'\n'/ | }"
    [[ $(sed -n 1p <<<"$out") == run ]] || fail "'lockfn ru<TAB>' gave '$(sed -n 1p <<<"$out")'" || return 1
    [[ $(sed -n 2p <<<"$out") == *--nonblock* ]] || fail "'lockfn run --non<TAB>' gave '$(sed -n 2p <<<"$out")'"
}
check "bash completion loads and completes" completion_loads

# --- the release build, once ---------------------------------------------------------------

release_build() {
    make --no-print-directory build PROFILE=release >"$WORK/build.log" 2>&1 ||
        { tail -n 30 "$WORK/build.log"; return 1; }
    [[ -f target/release/liblockfn.so && -f target/release/lockfn && -f target/release/liblockfn.a ]]
}
check "release build (make build; reused below)" release_build

# --- make install / install-debug / uninstall into a DESTDIR --------------------------------

# DWARF sections (not .debug_gdb_scripts: a 34-byte loaded section of Rust programs, kept by strip)
debug_sections() { readelf -S --wide "$1" 2>/dev/null | grep -cE ' \.(z?debug_(info|line|str|abbrev|aranges|ranges|rnglists|loclists|frame))\b'; }
size_of() { stat -c %s "$1"; }
human() { numfmt --to=iec --suffix=B "$1"; }

make_install_stripped() {
    local D=$WORK/stage L
    make --no-print-directory install PREFIX=/usr/local DESTDIR="$D" >"$WORK/install.log" 2>&1 ||
        { tail -n 20 "$WORK/install.log"; return 1; }
    L=$D/usr/local/lib/$MA
    local f src
    for f in "$L/liblockfn.so.$VERSION:target/release/liblockfn.so" \
        "$D/usr/local/bin/lockfn:target/release/lockfn" "$L/liblockfn.a:target/release/liblockfn.a"; do
        src=${f#*:}
        f=${f%%:*}
        [[ -f $f ]] || fail "missing $f" || return 1
        echo "    FIGURE $(basename "$f"): $(human "$(size_of "$src")") built, $(human "$(size_of "$f")") installed"
        (($(debug_sections "$f") == 0)) || fail "$f keeps debug sections" || return 1
    done
    [[ -x $D/usr/local/bin/lockfn.sh ]] || fail "lockfn.sh is not in the bin directory" || return 1
    [[ -f $D/usr/local/share/man/man1/lockfn.1 && -f $D/usr/local/share/bash-completion/completions/lockfn ]] ||
        fail "lockfn(1) or the completion missing" || return 1
    [[ -s $D/usr/local/share/lockfn/install-manifest ]] || fail "no install manifest" || return 1
    grep -q 'Libs.private:.*-lgcc_s' "$L/pkgconfig/lockfn.pc" && fail "lockfn.pc names -lgcc_s"
    # Staged: no ldconfig. The library still runs (soname link) from the stage.
    grep -q '^ldconfig' "$WORK/install.log" && fail "ldconfig ran with DESTDIR set" || true
}
check "make install DESTDIR=…: stripped .so, .a and CLI; lockfn.sh in bin; man page, completion" make_install_stripped

# Python and Perl from the stage, the library nowhere the loader looks: the error says what to do.
load_errors_hint() {
    local D=$WORK/stage out
    if /sbin/ldconfig -p | grep -q liblockfn.so.0; then
        fail "liblockfn.so.0 is installed on this system ($(/sbin/ldconfig -p | grep liblockfn.so.0)): cannot test the load error" || return 1
    fi
    out=$(env -i PATH=/usr/bin:/bin PYTHONPATH="$(echo "$D"/usr/local/lib/python3*/dist-packages)" \
        python3 -c 'import lockfn; lockfn.Lock("sem:x").acquire()' 2>&1)
    echo "    python: $(tail -n 1 <<<"$out")"
    [[ $out == *"OSError: lockfn: cannot load liblockfn"*"run ldconfig or set LOCKFN_LIBRARY"* ]] ||
        fail "Python's load error lacks the hint" || return 1
    [[ $(grep -o 'liblockfn.so.0: cannot open' <<<"$out" | wc -l) == 1 ]] || fail "Python names a candidate twice" || return 1
    out=$(env -i PATH=/usr/bin:/bin perl -I"$(echo "$D"/usr/local/share/perl/*)" -MLockfn -e 'Lockfn->acquire("sem:x")' 2>&1)
    echo "    perl: $out"
    [[ $out == *"cannot load liblockfn"*"run ldconfig or set LOCKFN_LIBRARY"* ]] || fail "Perl's load error lacks the hint"
}
check "Python and Perl load errors say: run ldconfig or set LOCKFN_LIBRARY" load_errors_hint

make_install_debug() {
    local D=$WORK/stage f id n=0
    make --no-print-directory install-debug PREFIX=/usr/local DESTDIR="$D" >"$WORK/install-debug.log" 2>&1 ||
        { tail -n 20 "$WORK/install-debug.log"; return 1; }
    for f in "$D/usr/local/lib/$MA/liblockfn.so.$VERSION" "$D/usr/local/bin/lockfn"; do
        id=$(readelf -n "$f" | sed -n 's/.*Build ID: *//p')
        [[ -n $id ]] || fail "$f has no build id" || return 1
        local dbg=$D/usr/lib/debug/.build-id/${id:0:2}/${id:2}.debug
        [[ -f $dbg ]] || fail "no $dbg for $f" || return 1
        (($(debug_sections "$dbg") > 0)) || fail "$dbg has no debug sections" || return 1
        echo "    FIGURE debug info of $(basename "$f"): $(human "$(size_of "$dbg")") (compressed)"
        n=$((n + 1))
    done
    ((n == 2))
}
check "make install-debug: separate debug files by build id" make_install_debug

make_uninstall_clean() {
    local D=$WORK/stage left
    make --no-print-directory uninstall PREFIX=/usr/local DESTDIR="$D" >"$WORK/uninstall.log" 2>&1 ||
        { tail -n 20 "$WORK/uninstall.log"; return 1; }
    left=$(find "$D" -mindepth 1)
    [[ -z $left ]] || fail "left after uninstall: $(head -n 10 <<<"$left")"
}
check "make uninstall: no file and no directory left" make_uninstall_clean

# --- a real `make install` into /usr/local: ldconfig, then everything loads ------------------

local_snapshot() { find /usr/local /etc/ld.so.cache -printf '%p %y\n' 2>/dev/null | grep -v '^/etc/ld.so.cache' | sort; }

make_install_local() {
    if compgen -G "/usr/local/lib/$MA/liblockfn*" >/dev/null || [[ -e /usr/local/bin/lockfn ]]; then
        fail "lockfn is already installed in /usr/local: not touching it" || return 1
    fi
    local_snapshot >"$WORK/local.before"
    LOCAL_INSTALLED=1
    make --no-print-directory install >"$WORK/local-install.log" 2>&1 ||
        { tail -n 20 "$WORK/local-install.log"; return 1; }
    grep -q '^ldconfig' "$WORK/local-install.log" || fail "make install did not run ldconfig" || return 1
    ldconfig -p | grep -q "liblockfn.so.0 .*=> /usr/local/lib/$MA/liblockfn.so.0" ||
        fail "ldconfig does not know /usr/local/lib/$MA/liblockfn.so.0" || return 1
    local out
    out=$(cd "$WORK" && env -i PATH=/usr/local/bin:/usr/bin:/bin HOME="$WORK" bash -c '
        set -e
        python3 -c "import lockfn; print(\"python\", lockfn.library_path(), lockfn.__file__)"
        perl -MLockfn -e "print qq(perl ), Lockfn::version(), qq( \$INC{q(Lockfn.pm)}\n)"
        source lockfn.sh && type -t lock_acquire && command -v lockfn.sh
        man -w lockfn') || { echo "$out"; return 1; }
    echo "$out" | sed 's/^/    /'
    [[ $out == *"python liblockfn.so.0 /usr/local/lib/python3"* && $out == *"perl $VERSION /usr/local/share/perl"* &&
        $out == *"/usr/local/bin/lockfn.sh"* && $out =~ /usr/local/(share/)?man/man1/lockfn.1 ]] ||
        fail "not loaded from /usr/local" || return 1
    make --no-print-directory uninstall >"$WORK/local-uninstall.log" 2>&1 ||
        { tail -n 20 "$WORK/local-uninstall.log"; return 1; }
    LOCAL_INSTALLED=0
    ldconfig -p | grep -q liblockfn && fail "ldconfig still lists liblockfn after uninstall" && return 1
    local_snapshot >"$WORK/local.after"
    diff "$WORK/local.before" "$WORK/local.after" >/dev/null ||
        fail "/usr/local differs after uninstall: $(diff "$WORK/local.before" "$WORK/local.after" | head)"
}
check "make install (/usr/local): ldconfig ran, Python/Perl/lockfn.sh/man load by name; uninstall restores /usr/local" make_install_local

# --- Debian packages ---------------------------------------------------------------------------

DEBS=$WORK/debs
make_deb() {
    local profile=""
    # Debian 13 builds with its own rustc; Debian 12's (1.63) is too old: rustup's cargo.
    if ! dpkg --compare-versions "$(dpkg-query -W -f='${Version}' rustc 2>/dev/null || echo 0)" ge 1.85; then
        profile=pkg.lockfn.rustup
    fi
    echo "    make deb DEB_BUILD_PROFILES=$profile"
    DEB_BUILD_PROFILES=$profile make --no-print-directory deb DEB_OUT="$DEBS" >"$WORK/deb.log" 2>&1 ||
        { tail -n 40 "$WORK/deb.log"; return 1; }
    local p f
    for p in "${PKGS[@]}"; do
        f=$(compgen -G "$DEBS/${p}_${VERSION}_*.deb") || fail "no package $p" || return 1
        echo "    FIGURE $(basename "$f"): $(human "$(size_of "$f")")"
    done
    compgen -G "$DEBS/liblockfn0-dbgsym_*.deb" >/dev/null && compgen -G "$DEBS/lockfn-dbgsym_*.deb" >/dev/null ||
        fail "no -dbgsym packages" || return 1
    git status --porcelain --ignored debian | grep -q . && fail "make deb left files in debian/: $(git status --porcelain --ignored debian)"
    return 0
}
check "make deb: the five packages and their -dbgsym" make_deb

deb_of() { compgen -G "$DEBS/${1}_${VERSION}_*.deb"; }
MAIN_DEBS=()
for p in "${PKGS[@]}"; do MAIN_DEBS+=("$(deb_of "$p" || echo "$DEBS/missing-$p.deb")"); done

lintian_clean() {
    local out
    out=$(timeout 600 lintian --tag-display-limit 0 --display-info "$DEBS"/*.deb 2>&1)
    echo "$out" | sed 's/^/    /'
    ! grep -q '^E: ' <<<"$out" || fail "lintian reports errors" || return 1
    echo "    lintian: $(grep -c '^E: ' <<<"$out") errors, $(grep -c '^W: ' <<<"$out") warnings, $(grep -c '^I: ' <<<"$out") info"
}
check "lintian: no errors" lintian_clean

package_contents() {
    local f ok=0 tmp=$WORK/contents
    mkdir -p "$tmp"
    for f in "${MAIN_DEBS[@]}"; do dpkg-deb -x "$f" "$tmp" || return 1; done
    for f in "usr/lib/$MA/liblockfn.so.$VERSION" usr/bin/lockfn "usr/lib/$MA/liblockfn.a"; do
        [[ -f $tmp/$f ]] || { echo "    missing /$f"; ok=1; continue; }
        (($(debug_sections "$tmp/$f") == 0)) || { echo "    /$f is not stripped"; ok=1; }
        echo "    FIGURE /$f: $(human "$(size_of "$tmp/$f")")"
    done
    for f in usr/bin/lockfn.sh usr/share/man/man1/lockfn.1.gz usr/share/man/man3/Lockfn.3pm.gz \
        usr/share/bash-completion/completions/lockfn usr/include/lockfn.h "usr/lib/$MA/pkgconfig/lockfn.pc" \
        usr/share/perl5/Lockfn.pm usr/lib/python3/dist-packages/lockfn/__init__.py \
        usr/share/doc/lockfn/copyright usr/share/doc/lockfn/changelog.gz; do
        [[ -e $tmp/$f ]] || { echo "    missing /$f"; ok=1; }
    done
    dpkg-deb -I "$(deb_of liblockfn0)" triggers 2>/dev/null | grep -q 'activate-noawait ldconfig' ||
        { echo "    liblockfn0 has no ldconfig trigger"; ok=1; }
    dpkg-deb -I "$(deb_of liblockfn0)" shlibs 2>/dev/null | grep -q '^liblockfn 0 liblockfn0' ||
        { echo "    liblockfn0 has no shlibs entry"; ok=1; }
    dpkg-deb -I "$(deb_of python3-lockfn)" postinst 2>/dev/null | grep -q py3compile ||
        { echo "    python3-lockfn does not byte-compile (py3compile)"; ok=1; }
    return $ok
}
check "package contents: stripped, man pages, completion, ldconfig trigger, copyright" package_contents

# The checks run in a system where the packages are installed: this host, or the trixie root.
# $1: a shell prefix that runs a bash script given on stdin (host: bash -s; trixie: chroot).
INSIDE_SCRIPT='
set -uo pipefail
N=$1 VERSION=$2 MA=$3
rc=0
say() { echo "    $*"; }
bad() { echo "    FAIL: $*"; rc=1; }
W=$(mktemp -d /tmp/lockfn-examples.XXXXXX)
cd "$W"
export PATH=/usr/bin:/bin HOME=$W
unset LOCKFN_LIBRARY LD_LIBRARY_PATH PYTHONPATH PERL5LIB LOCKFN_BIN

/sbin/ldconfig -p | grep -qE "liblockfn.so.0 .*=> (/usr)?/lib/$MA/liblockfn.so.0" || bad "ldconfig cache lacks liblockfn.so.0"
EX=/usr/share/doc
# C, dynamic, against the installed header and .pc
flags=$(pkg-config --cflags --libs lockfn) || bad "pkg-config lockfn"
gcc -Wall -Werror $EX/liblockfn-dev/examples/hello_lock.c $flags -o hello_lock || bad "C example does not build"
out=$(./hello_lock "sem:$N-c") || bad "C example failed"
[[ $out == *"released sem:$N-c"* && $out == *"\"holder\":\"hello_lock.c\""* ]] || bad "C example said: $out"
# C, fully static (the README recipe)
gcc -static $EX/liblockfn-dev/examples/hello_lock.c $(pkg-config --static --cflags --libs lockfn) \
    -o hello_static 2>static.log || { cat static.log; bad "gcc -static failed"; }
readelf -d hello_static 2>/dev/null | grep -q NEEDED && bad "static binary has NEEDED entries"
out=$(./hello_static "sem:$N-s") && [[ $out == *"released sem:$N-s"* ]] || bad "static C example: $out"
say "C: $(stat -c %s hello_lock) bytes dynamic, $(stat -c %s hello_static) bytes static"
# shell: source lockfn.sh by name
out=$(bash $EX/lockfn/examples/hello_lock.sh "sem:$N-sh") || bad "shell example failed"
[[ $out == *"released sem:$N-sh"* && $out == *"ran under sem:$N-sh with token"* ]] || bad "shell example said: $out"
[[ $(bash -c "source lockfn.sh; command -v lockfn.sh") == /usr/bin/lockfn.sh ]] || bad "source lockfn.sh by name"
# Python, Perl
out=$(python3 $EX/python3-lockfn/examples/hello_lock.py "sem:$N-py") || bad "Python example failed"
[[ $out == *"released sem:$N-py"* ]] || bad "Python example said: $out"
[[ $(python3 -c "import lockfn; print(lockfn.__file__)") == /usr/lib/python3/dist-packages/lockfn/__init__.py ]] ||
    bad "Python imports lockfn from elsewhere"
out=$(perl $EX/liblockfn-perl/examples/hello_lock.pl "sem:$N-pl") || bad "Perl example failed"
[[ $out == *"released sem:$N-pl"* && $out == *"ran with a b"* ]] || bad "Perl example said: $out"
# lockfn(1) and the completion
if command -v man >/dev/null; then
    m=$(man -w lockfn) && [[ $m == /usr/share/man/man1/lockfn.1.gz ]] || bad "man lockfn opens ${m:-nothing}"
    [[ $(man -w 3pm Lockfn) == /usr/share/man/man3/Lockfn.3pm.gz ]] || bad "no Lockfn(3pm)"
    say "man lockfn: $m"
fi
c=$(bash -c "source /usr/share/bash-completion/completions/lockfn; complete -p lockfn") || bad "completion"
[[ $c == *"-F _lockfn"* ]] || bad "completion: $c"
[[ $(lockfn --version) == "lockfn $VERSION" ]] || bad "lockfn --version: $(lockfn --version)"
cd /; rm -rf "$W"
exit $rc
'

# After purge: none of the package files, no dpkg database entry, no ldconfig entry, no
# byte-compiled Python left. $1: the file list recorded while installed.
GONE_SCRIPT='
set -uo pipefail
rc=0
bad() { echo "    FAIL: $*"; rc=1; }
for p in liblockfn0 liblockfn-dev lockfn liblockfn-perl python3-lockfn; do
    s=$(dpkg-query -W -f="\${db:Status-Abbrev}" "$p" 2>/dev/null)
    [[ -z $s || $s == "un "* || $s == "pn "* ]] || bad "$p is still known to dpkg: $s"
    compgen -G "/var/lib/dpkg/info/$p.*" >/dev/null && bad "/var/lib/dpkg/info/$p.* left"
    compgen -G "/var/lib/dpkg/info/$p:*" >/dev/null && bad "/var/lib/dpkg/info/$p:* left"
done
while read -r f; do
    [[ -d $f && ! -L $f ]] && case $f in */lockfn|*/lockfn/*|*/liblockfn*|*/python3-lockfn|*lockfn-*.dist-info) ;; *) continue ;; esac
    [[ -e $f || -L $f ]] && bad "left: $f"
done < "$1"
ldconfig -p | grep -q liblockfn && bad "ldconfig still lists liblockfn"
exit $rc
'

# Install on this host: only when nothing else would be installed or removed, and none of the
# packages is installed already (then it is someone else's, and we leave it alone).
host_cycle() {
    local p s
    for p in "${PKGS[@]}"; do
        s=$(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null)
        [[ -z $s || $s == "un "* || $s == "pn "* ]] || fail "$p is installed on this host ($s): not touching it" || return 1
    done
    local sim others
    sim=$(apt-get install -s --no-install-recommends "${MAIN_DEBS[@]}" 2>&1) || { echo "$sim" | tail; return 1; }
    others=$(grep -E '^(Inst|Remv) ' <<<"$sim" | awk '{print $2}' | grep -vxF -f <(printf '%s\n' "${PKGS[@]}"))
    [[ -z $others ]] || fail "installing the packages would also change: $others (not on this host)" || return 1
    HOST_INSTALLED=1
    DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -q --no-install-recommends \
        -o DPkg::Lock::Timeout=120 "${MAIN_DEBS[@]}" >"$WORK/host-install.log" 2>&1 ||
        { tail -n 20 "$WORK/host-install.log"; return 1; }
    for p in "${PKGS[@]}"; do dpkg -L "$p"; done | sort -u >"$WORK/host-files"
    env -i PATH=/usr/bin:/bin LANG=C.UTF-8 bash -s "$NAME" "$VERSION" "$MA" <<<"$INSIDE_SCRIPT" || return 1
    DEBIAN_FRONTEND=noninteractive timeout 300 apt-get purge -y -q -o DPkg::Lock::Timeout=120 \
        "${PKGS[@]}" >"$WORK/host-purge.log" 2>&1 || { tail -n 20 "$WORK/host-purge.log"; return 1; }
    HOST_INSTALLED=0
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin bash -s "$WORK/host-files" <<<"$GONE_SCRIPT"
}
check "Debian 12 (this host): apt-get install ./*.deb, examples from the installed files, purge, nothing left" host_cycle

# --- Debian 13 (trixie) root -------------------------------------------------------------------

TRIXIE_PKGS="gcc libc6-dev pkg-config libffi-platypus-perl python3 man-db"
TRIXIE_TAR=$CACHE/trixie-minbase-$(echo "$TRIXIE_PKGS" | md5sum | cut -c1-8).tar
R=$WORK/trixie

mirror() {
    local u
    u=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null)
    echo "${u:-http://deb.debian.org/debian}"
}

# In a private mount namespace: proc, a fresh /dev/shm, and the host's resolv.conf; gone with it.
in_root() { # ROOT CMD...
    local r=$1
    shift
    timeout --kill-after=10 900 unshare --mount --propagation private -- bash -c '
        r=$1; shift
        mount -t proc proc "$r/proc" && mkdir -p "$r/dev/shm" &&
            mount -t tmpfs -o mode=1777,size=64m tmpfs "$r/dev/shm" || exit 1
        [[ -e $r/dev/null ]] || { echo "no /dev/null in $r"; exit 1; }
        exec chroot "$r" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
            DEBIAN_FRONTEND=noninteractive "$@"' _ "$r" "$@"
}

trixie_root() {
    if [[ ! -s $TRIXIE_TAR ]]; then
        command -v debootstrap >/dev/null || fail "debootstrap is missing" || return 1
        local b=$WORK/bootstrap
        echo "    debootstrap --variant=minbase trixie (cached as $TRIXIE_TAR)"
        timeout 900 debootstrap --variant=minbase trixie "$b" "$(mirror)" >"$WORK/debootstrap.log" 2>&1 ||
            { tail -n 20 "$WORK/debootstrap.log"; return 1; }
        cp /etc/resolv.conf "$b/etc/resolv.conf"
        in_root "$b" sh -c "apt-get update -q && apt-get install -y -q --no-install-recommends $TRIXIE_PKGS && apt-get clean && rm -rf /var/lib/apt/lists/*" \
            >"$WORK/trixie-apt.log" 2>&1 || { tail -n 20 "$WORK/trixie-apt.log"; return 1; }
        mkdir -p "$CACHE"
        tar -C "$b" --numeric-owner -cf "$TRIXIE_TAR.tmp" . && mv "$TRIXIE_TAR.tmp" "$TRIXIE_TAR" || return 1
        rm -rf "$b"
    fi
    mkdir -p "$R" && tar -C "$R" --numeric-owner -xpf "$TRIXIE_TAR" || return 1
    grep -q 'VERSION_CODENAME=trixie' "$R/etc/os-release" || fail "not a trixie root" || return 1
    echo "    $(. "$R/etc/os-release"; echo "$PRETTY_NAME"): perl $(in_root "$R" perl -e 'print $^V'), $(in_root "$R" python3 --version), rustc none"
}
check "Debian 13 root (debootstrap --variant=minbase trixie, cached)" trixie_root

trixie_cycle() {
    [[ -x $R/usr/bin/apt-get ]] || fail "no trixie root" || return 1
    mkdir -p "$R/tmp/debs" && cp "${MAIN_DEBS[@]}" "$R/tmp/debs/" || return 1
    printf '%s\n' "$INSIDE_SCRIPT" >"$R/tmp/inside.sh"
    printf '%s\n' "$GONE_SCRIPT" >"$R/tmp/gone.sh"
    in_root "$R" bash -c '
        set -uo pipefail
        cd /tmp/debs
        apt-get install -y -q --no-install-recommends ./*.deb >/tmp/install.log 2>&1 || { tail -n 20 /tmp/install.log; exit 1; }
        for p in liblockfn0 liblockfn-dev lockfn liblockfn-perl python3-lockfn; do dpkg -L $p; done | sort -u >/tmp/files
        bash /tmp/inside.sh "$1" "$2" "$3" || exit 1
        apt-get purge -y -q liblockfn0 liblockfn-dev lockfn liblockfn-perl python3-lockfn >/tmp/purge.log 2>&1 ||
            { tail -n 20 /tmp/purge.log; exit 1; }
        bash /tmp/gone.sh /tmp/files || exit 1
        # the strongest check a throw-away root allows: no file of that name anywhere
        left=$(find / -xdev \( -iname "*lockfn*" \) -not -path "/tmp/*" 2>/dev/null)
        [[ -z $left ]] || { echo "    left after purge: $left"; exit 1; }
        echo "    purged: nothing named *lockfn* outside /tmp"' _ "$NAME" "$VERSION" "$MA"
}
check "Debian 13 root: apt-get install ./*.deb, examples from the installed files, purge, nothing left" trixie_cycle

echo
echo "suite time: $((SECONDS - T0)) s"
((FAILED == 0)) || echo "failed: ${FAILED_NAMES[*]}"
echo "$PASSED passed, $FAILED failed"
((FAILED == 0))
