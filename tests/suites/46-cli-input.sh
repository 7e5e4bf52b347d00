#!/usr/bin/env bash
# The CLI against bad input (issue 12): commands with non-UTF-8 arguments run; huge timeouts
# do not panic; configuration errors (CONSUL_HTTP_TOKEN_FILE missing/a directory/not UTF-8,
# CONSUL_HTTP_ADDR malformed, ZKHOSTS malformed) exit 64 at once naming the variable; no raw
# control byte reaches the terminal and long values are cut; `lockfn hold` handles a 2 MB line
# without newline in bounded time and memory. Needs no server. Prints `N passed, N failed`.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
LOCKFN=${LOCKFN:-$ROOT/target/debug/lockfn}
PASS=0 FAIL=0
TMP=$(mktemp -d /tmp/lockfn-cli-input.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
unset ZKHOSTS CONSUL_HTTP_ADDR CONSUL_HTTP_TOKEN CONSUL_HTTP_TOKEN_FILE LOCKFN_BACKEND
export LOCKFN_PMXCFS_DIR=$TMP/lock LOCKFN_PMXLOCK_DIR=$TMP/flock LOCKFN_RUN_DIR=$TMP/run
mkdir -p "$LOCKFN_PMXCFS_DIR" "$LOCKFN_PMXLOCK_DIR" "$LOCKFN_RUN_DIR"

ok() { PASS=$((PASS + 1)); echo "ok - $*"; }
bad() { FAIL=$((FAIL + 1)); echo "FAIL - $*"; }
name() { echo "cli-input-$$-$1-$RANDOM"; }
ms() { date +%s%3N; }

# expect WANT_CODE MAX_MS PATTERN NAME CMD...: exit code, time bound, stderr matches PATTERN
# (grep -E), one line of stderr, no control byte in it.
expect() {
  local want=$1 max=$2 pat=$3 what=$4 rc t0 dt lines
  shift 4
  t0=$(ms)
  timeout 20 "$@" >"$TMP/out" 2>"$TMP/err"
  rc=$?
  dt=$(($(ms) - t0))
  lines=$(grep -c . "$TMP/err")
  if [[ $rc != "$want" ]]; then
    bad "$what: exit $rc, want $want: $(head -c 300 "$TMP/err")"
  elif ((dt > max)); then
    bad "$what: took $dt ms (bound $max ms)"
  elif [[ -n $pat ]] && ! grep -qE -- "$pat" "$TMP/err"; then
    bad "$what: message does not match /$pat/: $(head -c 300 "$TMP/err")"
  elif [[ $want != 0 && $lines != 1 ]]; then
    bad "$what: $lines lines on stderr"
  elif LC_ALL=C tr -d '\n' <"$TMP/err" | LC_ALL=C grep -q '[[:cntrl:]]'; then
    bad "$what: a control byte on stderr: $(od -c "$TMP/err" | head -3)"
  else
    ok "$what (exit $rc, $dt ms)"
  fi
}

# --- non-UTF-8 arguments (flock(1) runs them)
out=$("$LOCKFN" run -n "sem:$(name utf)" -- printf %s $'caf\xe9' | od -An -tx1 | tr -d ' \n')
if [[ $out == 636166e9 ]]; then ok "run passes non-UTF-8 arguments byte for byte"; else
  bad "run with a non-UTF-8 argument printed '$out', want 636166e9"
fi
expect 0 5000 '' "run -c with non-UTF-8 bytes" "$LOCKFN" run -n -c $'test "\xff" = "\xff"' "sem:$(name c)"

# --- huge timeouts: accepted (forever), never a panic
expect 0 5000 '' "run -w 1e19 on a free lock" "$LOCKFN" run -w 1e19 "sem:$(name big)" -- true
expect 0 5000 '' "run -w inf on a free lock" "$LOCKFN" run -w inf "sem:$(name inf)" -- true
expect 0 5000 '' "watch --for 1e19 --count 1" "$LOCKFN" watch --for 1e19 --count 1 "sem:$(name w)"
expect 64 3000 'grace' "run --grace 1e19 is refused" "$LOCKFN" run --grace 1e19 -n "sem:$(name g)" -- true
expect 64 3000 'NaN|nan' "run -w nan is refused" "$LOCKFN" run -w nan "sem:$(name n)" -- true

# --- configuration errors: 64 at once (long before the 10 s wait), naming the variable
printf '\xff\xfe\n' >"$TMP/tok-bad"
for case in "/nonexistent/token" "$TMP" "$TMP/tok-bad"; do
  expect 64 3000 'CONSUL_HTTP_TOKEN_FILE' "CONSUL_HTTP_TOKEN_FILE=$case: run -w 10" \
    env CONSUL_HTTP_TOKEN_FILE="$case" "$LOCKFN" run -w 10 consul:x -- true
  expect 64 3000 'CONSUL_HTTP_TOKEN_FILE' "CONSUL_HTTP_TOKEN_FILE=$case: status" \
    env CONSUL_HTTP_TOKEN_FILE="$case" "$LOCKFN" status consul:x
done
expect 64 3000 'CONSUL_HTTP_ADDR' "CONSUL_HTTP_ADDR=http://[::1: run -w 10" \
  env CONSUL_HTTP_ADDR='http://[::1' "$LOCKFN" run -w 10 consul:x -- true
for hosts in '::::' 'h:99999' ',,' 'h:0'; do
  expect 64 3000 'ZKHOSTS' "ZKHOSTS='$hosts': run -w 10" \
    env ZKHOSTS="$hosts" "$LOCKFN" run -w 10 zk:x -- true
done

# --- control bytes and long values never reach the terminal raw
expect 64 3000 'ZKHOSTS' "ZKHOSTS with an escape sequence is escaped" \
  env ZKHOSTS=$'x\e]0;pwned\a:2181' "$LOCKFN" status zk:x
if grep -q $'\e' "$TMP/err"; then bad "ESC on stderr"; else ok "no ESC on stderr"; fi
long=$(head -c 10000 /dev/zero | tr '\0' a)
expect 64 3000 'ZKHOSTS' "a 10 kB ZKHOSTS" env ZKHOSTS="$long:1" "$LOCKFN" status zk:x
len=$(wc -c <"$TMP/err")
if ((len < 1000)); then ok "the 10 kB value is cut ($len bytes of message)"; else
  bad "a $len byte message for a 10 kB value"
fi
expect 64 3000 'target' "a target with control bytes" "$LOCKFN" status $'sem:a\e[2Jb'
if grep -q $'\e' "$TMP/err"; then bad "ESC on stderr (target)"; else ok "no ESC on stderr (target)"; fi
T=sem:$(name holder)
"$LOCKFN" run -n --holder $'evil\e]0;x\a'"$(head -c 1000 /dev/zero | tr '\0' h)" "$T" -- \
  "$LOCKFN" status "$T" >"$TMP/status" 2>&1
if grep -q $'\e' "$TMP/status"; then bad "ESC in status output"; else ok "holder text escaped in status"; fi
if grep -q 'more bytes]' "$TMP/status" && (($(awk '{ if (length > m) m = length } END { print m }' "$TMP/status") < 400)); then
  ok "a 1 kB holder text is cut with a marker"
else
  bad "holder text not cut: $(head -c 300 "$TMP/status")"
fi

# --- hold: a 2 MB line without newline, then EOF: linear time, bounded memory, released
T=sem:$(name hold)
t0=$(ms)
head -c 2000000 /dev/zero | tr '\0' x |
  /usr/bin/time -f '%M' -o "$TMP/rss" timeout 20 "$LOCKFN" hold "$T" >"$TMP/out" 2>"$TMP/err"
rc=$?
dt=$(($(ms) - t0))
rss=$(tail -1 "$TMP/rss")
if [[ $rc == 0 ]] && grep -q '"token"' "$TMP/out" && grep -q 'ignoring a request line' "$TMP/err"; then
  ok "hold: 2 MB line without newline, then EOF: exit 0 ($dt ms, $rss kB)"
else
  bad "hold with a 2 MB line: exit $rc ($dt ms): $(head -c 300 "$TMP/err")"
fi
if ((dt < 5000)); then ok "hold: bounded time ($dt ms)"; else bad "hold took $dt ms"; fi
if ((rss < 65536)); then ok "hold: peak RSS $rss kB"; else bad "hold: peak RSS $rss kB"; fi
if "$LOCKFN" status --check "$T" >/dev/null; then bad "hold left $T held"; else ok "hold released $T"; fi
# The same line, then a request while stdin stays open: the request is still understood.
mkfifo "$TMP/in"
timeout 20 "$LOCKFN" hold "$T" <"$TMP/in" >"$TMP/out" 2>"$TMP/err" &
HOLD=$!
exec 7>"$TMP/in"
{ head -c 2000000 /dev/zero | tr '\0' x; printf '\nrelease\n'; } >&7
for _ in $(seq 500); do # until the answer arrives (at most 10 s)
  grep -q '"released"' "$TMP/out" && break
  kill -0 "$HOLD" 2>/dev/null || break
  sleep 0.02
done
exec 7>&-
wait "$HOLD"
rc=$?
if [[ $rc == 0 ]] && grep -q '"released":true' "$TMP/out"; then
  ok "hold: a request after a 2 MB line is answered"
else
  bad "hold: after a 2 MB line: exit $rc, out $(head -c 200 "$TMP/out")"
fi

echo "$PASS passed, $FAIL failed"
((FAIL == 0))
