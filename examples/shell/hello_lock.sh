#!/bin/bash
# Take a lock, show who holds it, release it:  bash hello_lock.sh sem:hello
set -euo pipefail
# lockfn.sh is installed beside lockfn, so bash finds it on PATH (as gettext.sh)
# shellcheck source=/dev/null
source lockfn.sh

target=${1:-sem:hello}
lock_acquire "$target" -w 10 --holder hello_lock.sh   # 1 if still busy after 10 s
token_var=LOCKFN_TOKEN_${target//[^A-Za-z0-9_]/_}
echo "locked $target token ${!token_var}"
lock_status "$target" --json | grep -o '"holder":"hello_lock.sh"'
lock_release "$target"
echo "released $target"

# Or for one command (or shell function):
# shellcheck disable=SC2016 # expanded by the command, not here
with_lock "$target" sh -c 'echo "ran under $LOCKFN_TARGET with token $LOCKFN_TOKEN"'
