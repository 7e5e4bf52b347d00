#!/usr/bin/env bash
# Start and stop throwaway ZooKeeper 3.8 servers (Debian's zookeeper package, no
# systemd) on 127.0.0.1 for lockfn's tests.
#
#   zookeeper.sh start DIR [--ensemble N]   standalone server, or an N-node (3) ensemble
#   zookeeper.sh stop DIR                   stop every server started in DIR
#   zookeeper.sh leader DIR                 print the leader's node index (1..N)
#   zookeeper.sh stop-node DIR I [--kill]   stop node I (TERM, or KILL with --kill)
#   zookeeper.sh start-node DIR I           start node I again and wait until it serves
#   zookeeper.sh status DIR                 one line per node: index port pid mode
#
# start writes DIR/env (sourceable, KEY=value lines):
#   ZKHOSTS=127.0.0.1:P1[,127.0.0.1:P2,...]   connect string
#   ZK_MODE=standalone|ensemble  ZK_NODES=N
#   ZK_PORTS="P1 ..."  ZK_PIDS="pid1 ..." ('-' for a stopped node)
#   ZK_PORT / ZK_PID (standalone only)
# Layout: standalone: DIR/zoo.cfg, DIR/data, DIR/zookeeper.log, DIR/pid;
#         ensemble:   DIR/nodeI/{zoo.cfg,data/myid,zookeeper.log,pid}.
# tickTime=500, minSessionTimeout=1000 (so a 2 s session timeout is allowed),
# maxSessionTimeout=60000, 4lw.commands.whitelist=*, admin server off.
# Environment: ZK_CLASSPATH (from tests/lib/deps.sh, else a default), JAVA,
# ZK_START_TIMEOUT (seconds, default 60), ZK_JAVA_OPTS (extra JVM flags).
# All waits are bounded; stop kills only pids recorded in DIR whose command line
# names DIR's zoo.cfg.

set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=SCRIPTDIR/../lib/ports.sh
source "$HERE/../lib/ports.sh"

ZK_CLASSPATH=${ZK_CLASSPATH:-/etc/zookeeper/conf:/usr/share/java/zookeeper.jar:/usr/share/java/slf4j-api.jar:/usr/share/java/slf4j-log4j12.jar:/usr/share/java/log4j-1.2.jar}
JAVA=${JAVA:-java}
ZK_START_TIMEOUT=${ZK_START_TIMEOUT:-60}

die() { echo "zookeeper.sh: $*" >&2; exit 1; }
# Is PID a live process (not a zombie waiting to be reaped)?
alive() {
  local st
  st=$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$1/status" 2>/dev/null) || return 1
  [[ -n $st && $st != Z && $st != X ]]
}
log() { echo "zookeeper.sh: $*" >&2; }

node_dir() { # DIR I
  if [[ -f $1/node1/zoo.cfg ]]; then echo "$1/node$2"; else echo "$1"; fi
}
node_count() {
  local n
  n=$(find "$1" -maxdepth 1 -name 'node*' -type d 2>/dev/null | wc -l)
  if ((n > 0)); then echo "$n"; elif [[ -f $1/zoo.cfg ]]; then echo 1; else echo 0; fi
}
node_port() { sed -n 's/^clientPort=//p' "$(node_dir "$1" "$2")/zoo.cfg"; }

# Is PID alive and a java process running DIR's zoo.cfg for node I?
node_pid() { # DIR I -> prints pid if running
  local nd pid
  nd=$(node_dir "$1" "$2")
  [[ -f $nd/pid ]] || return 1
  pid=$(cat "$nd/pid")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  [[ -r /proc/$pid/cmdline ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$nd/zoo.cfg" || return 1
  echo "$pid"
}

# Send a four-letter word to 127.0.0.1:PORT, print the answer (bounded: 3 s).
fourlw() { # PORT WORD
  # shellcheck disable=SC2016  # expanded by the inner bash
  timeout 3 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1" && printf "%s" "$2" >&3 && cat <&3' _ "$1" "$2" 2>/dev/null || true
}
node_mode() { # DIR I -> standalone|leader|follower|'' (not serving)
  fourlw "$(node_port "$1" "$2")" srvr | sed -n 's/^Mode: //p'
}

write_env() { # DIR
  local dir=$1 n i hosts="" ports="" pids="" p pid
  n=$(node_count "$dir")
  for ((i = 1; i <= n; i++)); do
    p=$(node_port "$dir" "$i")
    pid=$(node_pid "$dir" "$i" || echo -)
    hosts+="${hosts:+,}127.0.0.1:$p"
    ports+="${ports:+ }$p"
    pids+="${pids:+ }$pid"
  done
  {
    echo "ZKHOSTS=$hosts"
    if ((n == 1)); then
      echo "ZK_MODE=standalone"
      echo "ZK_PORT=$ports"
      echo "ZK_PID=$pids"
    else
      echo "ZK_MODE=ensemble"
    fi
    echo "ZK_NODES=$n"
    echo "ZK_PORTS=\"$ports\""
    echo "ZK_PIDS=\"$pids\""
  } >"$dir/env.tmp"
  mv "$dir/env.tmp" "$dir/env"
}

write_cfg() { # NODEDIR CLIENTPORT [server lines...]
  local nd=$1 port=$2
  shift 2
  mkdir -p "$nd/data"
  {
    echo "tickTime=500"
    echo "initLimit=20"
    echo "syncLimit=10"
    echo "minSessionTimeout=1000"
    echo "maxSessionTimeout=60000"
    echo "dataDir=$nd/data"
    echo "clientPort=$port"
    echo "clientPortAddress=127.0.0.1"
    echo "maxClientCnxns=0"
    echo "admin.enableServer=false"
    echo "4lw.commands.whitelist=*"
    echo "forceSync=no"
    echo "autopurge.purgeInterval=0"
    if (($# > 0)); then
      echo "reconfigEnabled=false"
      echo "standaloneEnabled=false"
      echo "electionPortBindRetry=3"
      printf '%s\n' "$@"
    fi
  } >"$nd/zoo.cfg"
  cat >"$nd/log4j.properties" <<'EOF'
log4j.rootLogger=INFO, CONSOLE
log4j.appender.CONSOLE=org.apache.log4j.ConsoleAppender
log4j.appender.CONSOLE.layout=org.apache.log4j.PatternLayout
log4j.appender.CONSOLE.layout.ConversionPattern=%d{ISO8601} %-5p [%t:%C{1}@%L] - %m%n
EOF
}

launch() { # DIR I
  local dir=$1 i=$2 nd main
  nd=$(node_dir "$dir" "$i")
  if node_pid "$dir" "$i" >/dev/null; then die "node $i in $dir is already running"; fi
  if [[ $nd == "$dir" ]]; then
    main=org.apache.zookeeper.server.ZooKeeperServerMain
  else
    main=org.apache.zookeeper.server.quorum.QuorumPeerMain
  fi
  # shellcheck disable=SC2086  # ZK_JAVA_OPTS is a list of flags
  (
    exec "$JAVA" -Xms32m -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
      -Djava.net.preferIPv4Stack=true -Dzookeeper.jmx.log4j.disable=true \
      -Dlog4j.configuration="file:$nd/log4j.properties" ${ZK_JAVA_OPTS:-} \
      -cp "$ZK_CLASSPATH" "$main" "$nd/zoo.cfg"
  ) </dev/null >>"$nd/zookeeper.log" 2>&1 3>&- 4>&- 5>&- &
  echo $! >"$nd/pid"
}

# Wait until node I serves (srvr answers with a mode), bounded by ZK_START_TIMEOUT.
wait_serving() { # DIR I
  local dir=$1 i=$2 deadline mode nd
  nd=$(node_dir "$dir" "$i")
  deadline=$((SECONDS + ZK_START_TIMEOUT))
  while ((SECONDS < deadline)); do
    node_pid "$dir" "$i" >/dev/null || {
      tail -n 30 "$nd/zookeeper.log" >&2 || true
      die "node $i exited during start (log: $nd/zookeeper.log)"
    }
    mode=$(node_mode "$dir" "$i")
    if [[ $mode =~ ^(standalone|leader|follower|observer)$ ]]; then return 0; fi
    sleep 0.1
  done
  tail -n 30 "$nd/zookeeper.log" >&2 || true
  die "node $i did not serve within ${ZK_START_TIMEOUT}s (log: $nd/zookeeper.log)"
}

kill_node() { # DIR I [--kill]
  local dir=$1 i=$2 sig=TERM pid k nd
  [[ ${3:-} == --kill ]] && sig=KILL
  nd=$(node_dir "$dir" "$i")
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
  rm -f "$nd/pid"
}

# A start can fail for a reason the next try does not meet (a port taken between choosing and
# binding it, a slow first JVM start): one more try, with fresh ports, before giving up.
start_retry() {
  if (cmd_start "$@"); then return 0; fi
  echo "zookeeper.sh: start failed (log tail above); trying once more with fresh ports" >&2
  cmd_start "$@"
}

cmd_start() {
  local dir=$1 n=1
  shift
  while (($#)); do
    case $1 in
      --ensemble) n=${2:-3}; shift 2 || shift ;;
      --ensemble=*) n=${1#*=}; shift ;;
      *) die "start: unknown option $1" ;;
    esac
  done
  [[ $n =~ ^[0-9]+$ && $n -ge 1 ]] || die "start: bad node count $n"
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  if (($(node_count "$dir") > 0)); then
    local i
    for ((i = 1; i <= $(node_count "$dir"); i++)); do
      node_pid "$dir" "$i" >/dev/null && die "$dir already has a running server; stop it first"
    done
    rm -rf "$dir"/node* "$dir/zoo.cfg" "$dir/data" "$dir/pid" "$dir/env"
  fi
  local t0=$SECONDS
  if ((n == 1)); then
    write_cfg "$dir" "$(free_port)"
    launch "$dir" 1
  else
    local i servers=() ports=()
    for ((i = 1; i <= n; i++)); do
      ports+=("$(free_port)")
      servers+=("server.$i=127.0.0.1:$(free_port):$(free_port)")
    done
    for ((i = 1; i <= n; i++)); do
      write_cfg "$dir/node$i" "${ports[i - 1]}" "${servers[@]}"
      echo "$i" >"$dir/node$i/data/myid"
    done
    for ((i = 1; i <= n; i++)); do launch "$dir" "$i"; done
  fi
  # on failure, stop what we started
  _ZK_START_DIR=$dir
  trap 'cmd_stop "$_ZK_START_DIR" >/dev/null 2>&1 || true' EXIT
  for ((i = 1; i <= n; i++)); do wait_serving "$dir" "$i"; done
  trap - EXIT
  write_env "$dir"
  log "started $( ((n == 1)) && echo standalone || echo "$n-node ensemble") in $((SECONDS - t0))s: $(sed -n 's/^ZKHOSTS=//p' "$dir/env")"
}

cmd_stop() {
  local dir=$1 n i
  [[ -d $dir ]] || return 0
  dir=$(cd "$dir" && pwd)
  n=$(node_count "$dir")
  for ((i = 1; i <= n; i++)); do kill_node "$dir" "$i"; done
  # release the port reservations (client, quorum and election ports)
  local p
  # shellcheck disable=SC2013  # one port per word
  for p in $(sed -n -e 's/^clientPort=//p' -e 's/^server\.[0-9]*=[^:]*:\([0-9]*\):\([0-9]*\).*/\1 \2/p' \
    "$(node_dir "$dir" 1)/zoo.cfg" 2>/dev/null); do
    rm -rf "${LOCKFN_PORT_DIR:?}/$p" 2>/dev/null || true
  done
  for ((i = 2; i <= n; i++)); do
    rm -rf "${LOCKFN_PORT_DIR:?}/$(node_port "$dir" "$i")" 2>/dev/null || true
  done
  if [[ -f $dir/env ]]; then write_env "$dir"; fi
}

cmd_leader() {
  local dir=$1 n i deadline
  n=$(node_count "$dir")
  ((n > 1)) || die "leader: $dir is not an ensemble"
  deadline=$((SECONDS + ${ZK_LEADER_TIMEOUT:-30}))
  while ((SECONDS < deadline)); do
    for ((i = 1; i <= n; i++)); do
      if node_pid "$dir" "$i" >/dev/null && [[ $(node_mode "$dir" "$i") == leader ]]; then
        echo "$i"
        return 0
      fi
    done
    sleep 0.2
  done
  die "leader: no leader within ${ZK_LEADER_TIMEOUT:-30}s"
}

check_index() { # DIR I
  [[ $2 =~ ^[0-9]+$ && $2 -ge 1 && $2 -le $(node_count "$1") ]] || die "no node $2 in $1"
}

main() {
  local cmd=${1:-} dir=${2:-}
  [[ -n $cmd && -n $dir ]] || { sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }
  shift 2
  case $cmd in
    start) start_retry "$dir" "$@" ;;
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
      wait_serving "$dir" "$1"
      write_env "$dir"
      ;;
    status)
      local n i
      dir=$(cd "$dir" && pwd)
      n=$(node_count "$dir")
      for ((i = 1; i <= n; i++)); do
        echo "$i $(node_port "$dir" "$i") $(node_pid "$dir" "$i" || echo -) $(node_mode "$dir" "$i")"
      done
      ;;
    *) die "unknown command $cmd" ;;
  esac
}

main "$@"
