#!/usr/bin/env bash
# Start and stop throwaway Consul agents on 127.0.0.x for lockfn's tests
# (consul 1.8 from Debian 11's package, extracted by tests/lib/deps.sh).
#
#   consul.sh start DIR [--acl]            one -dev server agent on 127.0.0.1
#   consul.sh start-cluster DIR [--acl]    3 servers on 127.0.0.1, 127.0.0.2, 127.0.0.3
#   consul.sh stop DIR                     stop every agent started in DIR
#   consul.sh leader DIR                   print the leader's node index (cluster: 1..3)
#   consul.sh stop-node DIR I [--kill]     stop node I (TERM, or KILL with --kill)
#   consul.sh start-node DIR I             start node I again, wait until it has a leader
#   consul.sh status DIR                   one line per node: index http-addr pid leader
#
# start/start-cluster write DIR/env (sourceable KEY=value lines):
#   CONSUL_HTTP_ADDR=127.0.0.1:P           HTTP API of node 1
#   CONSUL_HTTP_ADDRS="127.0.0.1:P ..."     every node's HTTP API (cluster)
#   CONSUL_MODE=dev|cluster  CONSUL_NODES=N  CONSUL_PIDS="pid ..." ('-' for stopped)
#   CONSUL_ACL=0|1 and, with --acl:
#   CONSUL_MGMT_TOKEN_FILE=DIR/token.mgmt  bootstrapped management token
#   CONSUL_RW_TOKEN_FILE=DIR/token.rw      policy lockfn-rw: key_prefix "" and session_prefix ""
#                                          write, agent_prefix "" read (`consul lock` reads
#                                          /v1/agent/self for the node name)
#   CONSUL_NONE_TOKEN_FILE=DIR/token.none  a valid token with no policy
# (CONSUL_HTTP_TOKEN is not set: tests choose the token they want.)
# Load it with `set -a; . DIR/env; set +a` to export the variables.
# With --acl: acl enabled, default_policy deny, tokens bootstrapped through
# /v1/acl/bootstrap.  All ports are free ports picked at start (DNS and gRPC off).
# Environment: CONSUL_BIN (from tests/lib/deps.sh), CONSUL_START_TIMEOUT (s, 60).
# All waits are bounded; stop kills only pids recorded in DIR whose command line
# names DIR.

set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=SCRIPTDIR/../lib/ports.sh
source "$HERE/../lib/ports.sh"

CONSUL_START_TIMEOUT=${CONSUL_START_TIMEOUT:-60}
if [[ -z ${CONSUL_BIN:-} ]]; then
  for c in "${LOCKFN_TEST_CACHE:-/var/cache/lockfn-tests}/consul/root/usr/bin/consul" "$(command -v consul || true)"; do
    if [[ -n $c && -x $c ]]; then CONSUL_BIN=$c; break; fi
  done
fi

die() { echo "consul.sh: $*" >&2; exit 1; }
# Is PID a live process (not a zombie waiting to be reaped)?
alive() {
  local st
  st=$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$1/status" 2>/dev/null) || return 1
  [[ -n $st && $st != Z && $st != X ]]
}
log() { echo "consul.sh: $*" >&2; }

node_count() {
  find "$1" -maxdepth 1 -name 'node[0-9]*' -type d 2>/dev/null | wc -l
}
node_dir() { echo "$1/node$2"; }
node_var() { # DIR I KEY -> value from DIR/nodeI/node.conf
  sed -n "s/^$3=//p" "$1/node$2/node.conf"
}
node_http() { echo "$(node_var "$1" "$2" IP):$(node_var "$1" "$2" HTTP)"; }

node_pid() { # DIR I -> prints pid if running
  local nd pid
  nd=$(node_dir "$1" "$2")
  [[ -f $nd/pid ]] || return 1
  pid=$(cat "$nd/pid")
  [[ $pid =~ ^[0-9]+$ && -r /proc/$pid/cmdline ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$nd/" || return 1
  echo "$pid"
}

# curl with a bound; extra args passed through
http() { curl -sS --max-time 5 --connect-timeout 2 "$@"; }

node_leader() { # DIR I -> leader's server address as node I sees it ('' if none)
  http "http://$(node_http "$1" "$2")/v1/status/leader" 2>/dev/null | tr -d '"' || true
}

write_env() { # DIR
  local dir=$1 n i addrs="" pids="" acl
  n=$(node_count "$dir")
  acl=$(node_var "$dir" 1 ACL)
  for ((i = 1; i <= n; i++)); do
    addrs+="${addrs:+ }$(node_http "$dir" "$i")"
    pids+="${pids:+ }$(node_pid "$dir" "$i" || echo -)"
  done
  {
    echo "CONSUL_HTTP_ADDR=$(node_http "$dir" 1)"
    echo "CONSUL_HTTP_ADDRS=\"$addrs\""
    echo "CONSUL_MODE=$(node_var "$dir" 1 MODE)"
    echo "CONSUL_NODES=$n"
    echo "CONSUL_PIDS=\"$pids\""
    echo "CONSUL_ACL=$acl"
    if [[ $acl == 1 ]]; then
      echo "CONSUL_MGMT_TOKEN_FILE=$dir/token.mgmt"
      echo "CONSUL_RW_TOKEN_FILE=$dir/token.rw"
      echo "CONSUL_NONE_TOKEN_FILE=$dir/token.none"
    fi
  } >"$dir/env.tmp"
  mv "$dir/env.tmp" "$dir/env"
}

write_node() { # DIR I MODE IP ACL N -> node.conf + agent.hcl with fresh ports
  local dir=$1 i=$2 mode=$3 ip=$4 acl=$5 n=$6 nd
  nd=$(node_dir "$dir" "$i")
  mkdir -p "$nd/data"
  {
    echo "MODE=$mode"
    echo "IP=$ip"
    echo "ACL=$acl"
    echo "HTTP=$(free_port)"
    echo "SERF_LAN=$(free_port)"
    echo "SERF_WAN=$(free_port)"
    echo "SERVER=$(free_port)"
    echo "NAME=lockfn-$i-$(basename "$dir" | tr -c 'A-Za-z0-9-\n' '-')"
    echo "N=$n"
  } >"$nd/node.conf"
  {
    echo 'disable_update_check = true'
    echo 'disable_host_node_id = true'
    echo 'log_level = "INFO"'
    echo 'performance { raft_multiplier = 1 }'
    if [[ $acl == 1 ]]; then
      echo 'acl {'
      echo '  enabled = true'
      echo '  default_policy = "deny"'
      echo '  down_policy = "extend-cache"'
      echo '  enable_token_persistence = false'
      echo '}'
    fi
  } >"$nd/agent.hcl"
}

launch() { # DIR I
  local dir=$1 i=$2 nd mode args j
  nd=$(node_dir "$dir" "$i")
  if node_pid "$dir" "$i" >/dev/null; then die "node $i in $dir is already running"; fi
  mode=$(node_var "$dir" "$i" MODE)
  args=(agent -node "$(node_var "$dir" "$i" NAME)"
    -bind "$(node_var "$dir" "$i" IP)" -client "$(node_var "$dir" "$i" IP)"
    -http-port "$(node_var "$dir" "$i" HTTP)" -dns-port -1 -grpc-port -1
    -serf-lan-port "$(node_var "$dir" "$i" SERF_LAN)"
    -serf-wan-port "$(node_var "$dir" "$i" SERF_WAN)"
    -server-port "$(node_var "$dir" "$i" SERVER)"
    -config-file "$nd/agent.hcl")
  if [[ $mode == dev ]]; then
    args+=(-dev)
  else
    args+=(-server -bootstrap-expect "$(node_var "$dir" "$i" N)" -data-dir "$nd/data"
      -advertise "$(node_var "$dir" "$i" IP)")
    for ((j = 1; j <= $(node_var "$dir" "$i" N); j++)); do
      ((j == i)) || args+=(-retry-join "$(node_var "$dir" "$j" IP):$(node_var "$dir" "$j" SERF_LAN)")
    done
  fi
  (exec "$CONSUL_BIN" "${args[@]}") </dev/null >>"$nd/consul.log" 2>&1 3>&- 4>&- 5>&- &
  echo $! >"$nd/pid"
}

# Wait until node I answers and knows a leader (bounded).
wait_leader() { # DIR I
  local dir=$1 i=$2 deadline nd
  nd=$(node_dir "$dir" "$i")
  deadline=$((SECONDS + CONSUL_START_TIMEOUT))
  while ((SECONDS < deadline)); do
    node_pid "$dir" "$i" >/dev/null || {
      tail -n 30 "$nd/consul.log" >&2 || true
      die "node $i exited during start (log: $nd/consul.log)"
    }
    [[ -n $(node_leader "$dir" "$i") ]] && return 0
    sleep 0.1
  done
  tail -n 30 "$nd/consul.log" >&2 || true
  die "node $i has no leader after ${CONSUL_START_TIMEOUT}s (log: $nd/consul.log)"
}

# Retry an HTTP call until it succeeds (ACL system may lag leader election).
http_retry() { # OUTFILE curl-args...
  local out=$1 deadline
  shift
  deadline=$((SECONDS + CONSUL_START_TIMEOUT))
  while ((SECONDS < deadline)); do
    if http -f -o "$out" "$@" 2>"$out.err"; then rm -f "$out.err"; return 0; fi
    sleep 0.2
  done
  cat "$out.err" "$out" >&2 2>/dev/null || true
  return 1
}

json_field() { # FILE FIELD -> top-level string field (no jq needed)
  sed -n "s/.*\"$2\": *\"\\([^\"]*\\)\".*/\\1/p" "$1" | head -n 1
}

bootstrap_acl() { # DIR
  local dir=$1 base mgmt tok
  base="http://$(node_http "$dir" 1)"
  tok=$(mktemp "$dir/.acl.XXXXXX")
  http_retry "$tok" -X PUT "$base/v1/acl/bootstrap" || die "ACL bootstrap failed"
  mgmt=$(json_field "$tok" SecretID)
  [[ -n $mgmt ]] || die "ACL bootstrap: no SecretID in $(cat "$tok")"
  (umask 077 && printf '%s\n' "$mgmt" >"$dir/token.mgmt")
  http_retry "$tok" -X PUT -H "X-Consul-Token: $mgmt" "$base/v1/acl/policy" \
    --data '{"Name":"lockfn-rw","Description":"lockfn tests: key and session write everywhere","Rules":"key_prefix \"\" { policy = \"write\" }\nsession_prefix \"\" { policy = \"write\" }\nagent_prefix \"\" { policy = \"read\" }"}' ||
    die "ACL policy creation failed"
  http_retry "$tok" -X PUT -H "X-Consul-Token: $mgmt" "$base/v1/acl/token" \
    --data '{"Description":"lockfn tests: rw","Policies":[{"Name":"lockfn-rw"}]}' ||
    die "ACL rw token creation failed"
  (umask 077 && json_field "$tok" SecretID >"$dir/token.rw")
  http_retry "$tok" -X PUT -H "X-Consul-Token: $mgmt" "$base/v1/acl/token" \
    --data '{"Description":"lockfn tests: no rights","Policies":[]}' ||
    die "ACL none token creation failed"
  (umask 077 && json_field "$tok" SecretID >"$dir/token.none")
  rm -f "$tok"
  [[ -s $dir/token.rw && -s $dir/token.none ]] || die "ACL tokens missing"
}

kill_node() { # DIR I [--kill]
  local dir=$1 i=$2 sig=TERM pid k
  [[ ${3:-} == --kill ]] && sig=KILL
  if pid=$(node_pid "$dir" "$i"); then
    kill -s "$sig" "$pid" 2>/dev/null || true
    for ((k = 0; k < 100; k++)); do # 10 s
      alive "$pid" || break
      sleep 0.1
    done
    if alive "$pid"; then
      kill -s KILL "$pid" 2>/dev/null || true
      for ((k = 0; k < 50; k++)); do
        alive "$pid" || break
        sleep 0.1
      done
    fi
    alive "$pid" && log "WARNING: pid $pid (node $i) still alive"
  fi
  rm -f "$(node_dir "$dir" "$i")/pid"
}

# A start can fail for a reason the next try does not meet (a port taken between choosing and
# binding it, a slow first boot): one more try, with fresh ports, before giving up.
start_retry() { # DIR MODE N [--acl]
  if (cmd_start "$@"); then return 0; fi
  echo "consul.sh: start failed (log tail above); trying once more with fresh ports" >&2
  cmd_start "$@"
}

cmd_start() { # DIR MODE N [--acl]
  local dir=$1 mode=$2 n=$3 acl=0 i
  shift 3
  while (($#)); do
    case $1 in
      --acl) acl=1 ;;
      *) die "start: unknown option $1" ;;
    esac
    shift
  done
  [[ -n ${CONSUL_BIN:-} && -x $CONSUL_BIN ]] || die "no consul binary (run tests/lib/deps.sh or set CONSUL_BIN)"
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  for ((i = 1; i <= $(node_count "$dir"); i++)); do
    node_pid "$dir" "$i" >/dev/null && die "$dir already has a running agent; stop it first"
  done
  rm -rf "$dir"/node[0-9]* "$dir"/token.* "$dir/env"
  local t0=$SECONDS
  for ((i = 1; i <= n; i++)); do write_node "$dir" "$i" "$mode" "127.0.0.$i" "$acl" "$n"; done
  _CONSUL_START_DIR=$dir
  trap 'cmd_stop "$_CONSUL_START_DIR" >/dev/null 2>&1 || true' EXIT
  for ((i = 1; i <= n; i++)); do launch "$dir" "$i"; done
  for ((i = 1; i <= n; i++)); do wait_leader "$dir" "$i"; done
  if [[ $acl == 1 ]]; then bootstrap_acl "$dir"; fi
  trap - EXIT
  write_env "$dir"
  log "started $mode ($n node(s)$([[ $acl == 1 ]] && echo ", ACL")) in $((SECONDS - t0))s: $(node_http "$dir" 1)"
}

cmd_stop() {
  local dir=$1 n i
  [[ -d $dir ]] || return 0
  dir=$(cd "$dir" && pwd)
  n=$(node_count "$dir")
  for ((i = 1; i <= n; i++)); do kill_node "$dir" "$i"; done
  for ((i = 1; i <= n; i++)); do
    local key
    for key in HTTP SERF_LAN SERF_WAN SERVER; do
      rm -rf "${LOCKFN_PORT_DIR:?}/$(node_var "$dir" "$i" "$key")" 2>/dev/null || true
    done
  done
  if [[ -f $dir/env ]]; then write_env "$dir"; fi
}

cmd_leader() {
  local dir=$1 n i j addr deadline
  n=$(node_count "$dir")
  ((n >= 1)) || die "leader: nothing started in $dir"
  deadline=$((SECONDS + ${CONSUL_LEADER_TIMEOUT:-30}))
  while ((SECONDS < deadline)); do
    for ((i = 1; i <= n; i++)); do
      node_pid "$dir" "$i" >/dev/null || continue
      addr=$(node_leader "$dir" "$i")
      [[ -n $addr ]] || continue
      for ((j = 1; j <= n; j++)); do
        if [[ $addr == "$(node_var "$dir" "$j" IP):$(node_var "$dir" "$j" SERVER)" ]] &&
          node_pid "$dir" "$j" >/dev/null; then
          echo "$j"
          return 0
        fi
      done
    done
    sleep 0.2
  done
  die "leader: no leader within ${CONSUL_LEADER_TIMEOUT:-30}s"
}

check_index() { # DIR I
  [[ $2 =~ ^[0-9]+$ && $2 -ge 1 && $2 -le $(node_count "$1") ]] || die "no node $2 in $1"
}

main() {
  local cmd=${1:-} dir=${2:-}
  [[ -n $cmd && -n $dir ]] || { sed -n '2,31p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }
  shift 2
  case $cmd in
    start) start_retry "$dir" dev 1 "$@" ;;
    start-cluster) start_retry "$dir" cluster 3 "$@" ;;
    stop) cmd_stop "$dir" ;;
    leader) cmd_leader "$dir" ;;
    stop-node)
      check_index "$dir" "${1:-}"
      dir=$(cd "$dir" && pwd)
      kill_node "$dir" "$1" "${2:-}"
      write_env "$dir"
      ;;
    start-node)
      check_index "$dir" "${1:-}"
      dir=$(cd "$dir" && pwd)
      launch "$dir" "$1"
      wait_leader "$dir" "$1"
      write_env "$dir"
      ;;
    status)
      local n i
      dir=$(cd "$dir" && pwd)
      n=$(node_count "$dir")
      for ((i = 1; i <= n; i++)); do
        echo "$i $(node_http "$dir" "$i") $(node_pid "$dir" "$i" || echo -) $(node_leader "$dir" "$i")"
      done
      ;;
    *) die "unknown command $cmd" ;;
  esac
}

main "$@"
