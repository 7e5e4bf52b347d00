"""Runs lockfn's benchmarks against the ecosystem's tools (started by benches/run.sh, which
builds everything, starts the servers and exports the environment below). Prints a table and
writes JSON. See benches/README.md for what each row measures.

Environment (set by run.sh): BENCH_TMP, BENCH_OUT, BENCH_QUICK (0/1), LOCKFN_BIN,
LOCKFN_BENCH_BIN, CABI_BIN, RAWFLOOR_BIN, VENV_PY, PMXEMU_LOG, PMXLOCK_RUN, ZKHOSTS,
CONSUL_HTTP_ADDR, CONSUL_BIN, LOCKFN_PMXCFS_DIR, LOCKFN_PMXLOCK_DIR, LOCKFN_RUN_DIR,
VENV_BIN.
"""

import json
import os
import platform
import re
import select
import signal
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
E = os.environ
TMP = E.get("BENCH_TMP", "")
QUICK = E.get("BENCH_QUICK", "0") == "1"
LOCKFN = E.get("LOCKFN_BIN", "")
LBENCH = E.get("LOCKFN_BENCH_BIN", "")
CABI = E.get("CABI_BIN", "")
RAWF = E.get("RAWFLOOR_BIN", "")
PY = E.get("VENV_PY", "")
VBIN = E.get("VENV_BIN", "")
PEERS = os.path.join(HERE, "peers.py")
ZKHOSTS = E.get("ZKHOSTS", "")
CONSUL = E.get("CONSUL_HTTP_ADDR", "")
CONSUL_BIN = E.get("CONSUL_BIN", "")
TAG = f"lfb{os.getpid()}"

# sizes
REPEATS = 3 if QUICK else 5
CMD_REPEATS = 3 if QUICK else 10
DUR = 2.0 if QUICK else 3.0  # hand-off / throughput window, s
WINDOWS = 1 if QUICK else 3  # windows per figure (median over them)
# hand-off windows: a holder keeps the lock until the previous holder rejoined the queue and had
# MARGIN_MS to start waiting (its first attempt done), so every release goes to a waiting process
MARGIN_MS = 50
WAIT_S = 2.0 if QUICK else 6.0  # a waiter waits this long, s
SETTLE = 0.5  # waiting cost is counted from SETTLE s after the waiter starts waiting (steady state)
KS = [1, 10, 50]
KS_RUN = [1, 10] if QUICK else KS
N_CYCLE = {"sem": (2000, 20000), "pmxcfs": (200, 2000), "zk": (30, 300), "consul": (20, 150)}  # (quick, full)
BACKENDS = ["sem", "pmxcfs", "zk", "consul"]

ROWS = []
SKIPS = {}  # backend -> reason everything of that backend is skipped
LOCKFN_SKIP = {}  # backend -> reason lockfn's side is skipped
PROCS = []


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def pct(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    i = min(len(xs) - 1, max(0, int(round(p / 100.0 * (len(xs) - 1)))))
    return xs[i]


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def row(id_, section, backend, metric, unit, lockfn, peer, peer_value, *, lockfn_cabi=None, skip=None, note=None,
        runs=None, better="lower"):
    r = {
        "id": id_,
        "section": section,
        "backend": backend,
        "metric": metric,
        "unit": unit,
        "lockfn": lockfn,
        "lockfn_cabi": lockfn_cabi,
        "peer": peer,
        "peer_value": peer_value,
        "ratio": ratio(lockfn, peer_value),
        "ratio_cabi": ratio(lockfn_cabi, peer_value),
        "better": better,
        "runs": runs,
        "skip": skip,
        "note": note,
    }
    ROWS.append(r)
    return r


def benv(backend, extra=None):
    env = dict(E)
    env["LD_LIBRARY_PATH"] = os.path.dirname(LOCKFN) + ":" + E.get("LD_LIBRARY_PATH", "")
    # pmxcfs: LOCKFN_PMXCFS_DIR is on the emulator (a FUSE mount, run.sh), which logs every
    # mkdir/rmdir/utime that reaches it into PMXEMU_LOG ("OP PID RESULT ERRNO MONO_NS NAME").
    if extra:
        env.update(extra)
    return env


def run_json(cmd, env, timeout=300):
    p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {p.returncode}: {p.stderr.strip()[-400:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def target(backend, name):
    return f"{backend}:{name}"


PEER_KIND = {
    "sem": "sem-resourcelock",
    "pmxcfs": "pmxcfs-pmxlock",
    "zk": "zk-kazoo",
    "consul": "consul-consullock",
}
PEER_LABEL = {
    "sem-posix_ipc": "posix_ipc Semaphore acquire/release",
    "sem-resourcelock": "resourcelock get_lock/unget_lock",
    "pmxcfs-pmxlock": "pmxlock ClusterLock",
    "zk-kazoo": "kazoo Lock",
    "zk-raw": "floor: zk create+delete (kazoo raw)",
    "consul-consullock": "consullock ConsulLockManager (python-consul)",
    "consul-raw": "floor: session create+acquire+release+destroy (raw HTTP)",
}


# ---------- counters -------------------------------------------------------------------


def zk_mntr_packets():
    host, _, port = ZKHOSTS.split(",")[0].rpartition(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"mntr")
        data = b""
        while True:
            d = s.recv(65536)
            if not d:
                break
            data += d
    m = re.search(rb"zk_packets_received\s+(\d+)", data)
    return int(m.group(1)) if m else None


class Proxy:
    def __init__(self, mode, upstream):
        self.portfile = os.path.join(TMP, f"proxy-{mode}-{os.getpid()}.port")
        if os.path.exists(self.portfile):
            os.unlink(self.portfile)
        self.p = subprocess.Popen([PY, os.path.join(HERE, "countproxy.py"), mode, self.portfile, upstream])
        PROCS.append(self.p)
        for _ in range(600):
            if os.path.exists(self.portfile) or self.p.poll() is not None:
                break
            time.sleep(0.05)
        if not os.path.exists(self.portfile):
            raise RuntimeError(f"countproxy.py {mode} did not start")
        port, ctrl = open(self.portfile).read().split()
        self.addr = f"127.0.0.1:{port}"
        self.ctrl = int(ctrl)

    def count(self):
        with socket.create_connection(("127.0.0.1", self.ctrl), timeout=10) as s:
            return int(s.makefile().readline())


ZKPROXY = None
CPROXY = None


# ---------- 1. uncontended cycle --------------------------------------------------------


def bench_cycles():
    for b in BACKENDS:
        n = N_CYCLE[b][0 if QUICK else 1]
        env = benv(b)
        name = f"{TAG}-cyc-{b}"
        impls = {}
        if b not in SKIPS and b not in LOCKFN_SKIP:
            impls["rust"] = [LBENCH, "cycle", target(b, name + "-rust"), str(n)]
            impls["cabi"] = [CABI, target(b, name + "-cabi"), str(n)]
        peers = {
            "sem": ["sem-posix_ipc", "sem-resourcelock"],
            "pmxcfs": ["pmxcfs-pmxlock"],
            "zk": ["zk-kazoo", "zk-raw"],
            "consul": ["consul-consullock", "consul-raw"],
        }[b]
        if b not in SKIPS:
            for k in peers:
                pn = max(10, n // 10) if k.startswith(("consul", "zk")) or k == "pmxcfs-pmxlock" else n
                impls[k] = [PY, PEERS, "cycle", k, f"{name}-{k}", str(pn)]
        if b == "sem":
            impls["floor"] = [RAWF, "sem", f"{name}-floor", str(n * 10)]
        if b == "pmxcfs":
            impls["floor"] = [RAWF, "mkdir", os.path.join(E["LOCKFN_PMXCFS_DIR"], f"{name}-floor"), str(n)]
        res = {k: [] for k in impls}
        if b not in SKIPS:
            log(f"cycle {b}: {', '.join(impls)} x {REPEATS}")
            for _ in range(REPEATS):
                for k, cmd in impls.items():
                    try:
                        res[k].append(run_json(cmd, env)["ns_per_op"] / 1000.0)
                    except Exception as e:  # a failed impl leaves its row empty, with the reason
                        res[k].append(None)
                        log(f"  {k}: {e}")
        rust, cabi = med(res.get("rust", [])), med(res.get("cabi", []))
        lskip = SKIPS.get(b) or LOCKFN_SKIP.get(b)
        for k in peers + (["floor"] if "floor" in impls else []):
            label = PEER_LABEL.get(k) or {"sem": "floor: sem_wait+sem_post (C)", "pmxcfs": "floor: mkdir+rmdir (C, pmxemu)"}[b]
            pv = med(res.get(k, []))
            row(f"cycle.{b}.{k.split('-')[-1]}", "cycle", b, "acquire+release cycle", "us", rust, label, pv,
                lockfn_cabi=cabi, skip=SKIPS.get(b), runs=REPEATS,
                note=(f"lockfn side skipped: {lskip}" if lskip and not SKIPS.get(b) else None))


def bench_cycle_requests():
    """Service requests per uncontended cycle (zk: frames through the counting proxy; consul: HTTP
    requests through the counting proxy), by difference of two cycle counts (no connect cost)."""
    for b, proxy, var in (("zk", ZKPROXY, "ZKHOSTS"), ("consul", CPROXY, "CONSUL_HTTP_ADDR")):
        peer = PEER_KIND[b]
        if b in SKIPS or proxy is None:
            row(f"cycle_requests.{b}", "cycle_requests", b, "service requests per cycle", "requests", None,
                PEER_LABEL[peer], None, skip=SKIPS.get(b, "no proxy"))
            continue
        env = benv(b, {var: proxy.addr})

        def per_cycle(mk):
            counts = []
            for n in (10, 30):
                c0 = proxy.count()
                run_json(mk(n), env)
                counts.append(proxy.count() - c0)
            return (counts[1] - counts[0]) / 20.0

        lv = None
        if b not in LOCKFN_SKIP:
            try:
                lv = per_cycle(lambda n: [LBENCH, "cycle", target(b, f"{TAG}-req-{b}"), str(n)])
            except Exception as e:
                log(f"  lockfn cycle requests {b}: {e}")
        try:
            pv = per_cycle(lambda n: [PY, PEERS, "cycle", peer, f"{TAG}-req-{b}", str(n)])
        except Exception as e:
            pv = None
            log(f"  peer cycle requests {b}: {e}")
        row(f"cycle_requests.{b}", "cycle_requests", b, "service requests per cycle", "requests", lv,
            PEER_LABEL[peer], pv, note=(f"lockfn side skipped: {LOCKFN_SKIP[b]}" if b in LOCKFN_SKIP else None))
    # HashiCorp's `consul lock` (Go api.Lock): requests of one whole `consul lock PREFIX true`.
    if "consul" in SKIPS or CPROXY is None or not CONSUL_BIN:
        row("cycle_requests.consul.go", "cycle_requests", "consul", "service requests per command", "requests", None,
            "consul lock (Go api.Lock), whole command", None, skip=SKIPS.get("consul", "no consul binary"))
        return
    env = benv("consul", {"CONSUL_HTTP_ADDR": CPROXY.addr})
    vals, lvals = [], []
    for _ in range(REPEATS if not QUICK else 1):
        c0 = CPROXY.count()
        subprocess.run([CONSUL_BIN, "lock", f"lockfn-bench/{TAG}-go", "true"], env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=120)
        vals.append(CPROXY.count() - c0)
        if "consul" not in LOCKFN_SKIP:
            c0 = CPROXY.count()
            subprocess.run([LOCKFN, "run", f"consul:{TAG}-go", "--", "true"], env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=120)
            lvals.append(CPROXY.count() - c0)
    row("cycle_requests.consul.go", "cycle_requests", "consul", "service requests per command", "requests",
        med(lvals) if lvals else None, "consul lock (Go api.Lock), whole command", med(vals),
        note=("lockfn: `lockfn run consul:T -- true`" if lvals else f"lockfn side skipped: {LOCKFN_SKIP.get('consul')}"))


# ---------- 2. command overhead ---------------------------------------------------------


def timed(cmd, env, ok=(0,)):
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120, text=True)
    dt = time.perf_counter() - t0
    if p.returncode not in ok:
        raise RuntimeError(f"{' '.join(cmd)}: exit {p.returncode}: {p.stderr.strip()[-300:]}")
    return dt * 1000.0, p.stdout


def lockpick_cycle(env, name):
    t1, out = timed([os.path.join(VBIN, "lockpick"), "-s", ZKHOSTS, "lock", f"/{name}"], env)
    node = out.strip().splitlines()[-1]
    t2, _ = timed([os.path.join(VBIN, "lockpick"), "-s", ZKHOSTS, "unlock", node], env)
    return t1 + t2


def bench_commands():
    flockfile = os.path.join(TMP, "flock-cmd")
    specs = [
        ("sem", "flock", "flock(1) FILE true", lambda env, n: timed(["flock", flockfile, "true"], env)[0]),
        ("pmxcfs", "pmxlock", "pmxlock CLI NAME true",
         lambda env, n: timed([PY, E["PMXLOCK_RUN"], f"{n}-pmx", "true"], env)[0]),
        ("zk", "lockpick", "lockpick lock + lockpick unlock", lambda env, n: lockpick_cycle(env, f"{n}-lp")),
        ("consul", "consul-lock-go", "consul lock PREFIX true",
         lambda env, n: timed([CONSUL_BIN, "lock", f"lockfn-bench/{n}-go", "true"], env)[0]),
        ("consul", "consullock", "consul-lock execute KEY true",
         lambda env, n: timed([os.path.join(VBIN, "consul-lock"), "execute", f"lockfn-bench/{n}-cl", "true"], env)[0]),
    ]
    for b, pid, label, fn in specs:
        name = f"{TAG}-cmd-{b}"
        if b in SKIPS:
            row(f"command.{b}.{pid}", "command", b, "lockfn run T -- true vs the peer command", "ms", None, label, None,
                skip=SKIPS[b])
            continue
        env = benv(b)
        lv, pv = [], []
        log(f"command {b}: lockfn run vs {label} x {CMD_REPEATS}")
        for _ in range(CMD_REPEATS):
            if b not in LOCKFN_SKIP:
                try:
                    lv.append(timed([LOCKFN, "run", target(b, name), "--", "true"], env)[0])
                except Exception as e:
                    log(f"  lockfn run {b}: {e}")
            try:
                pv.append(fn(env, name))
            except Exception as e:
                log(f"  {label}: {e}")
        row(f"command.{b}.{pid}", "command", b, "lockfn run T -- true vs the peer command", "ms", med(lv), label,
            med(pv), runs=CMD_REPEATS, note=(f"lockfn side skipped: {LOCKFN_SKIP[b]}" if b in LOCKFN_SKIP else None))


# ---------- 3+4. hand-off latency and throughput ------------------------------------------


def strace_count(path, t0, t1):
    """Syscalls in an `strace -f -ttt` log (lines "PID TIME call…") between wall times t0 and t1;
    a call split in "<unfinished …>" and "<… resumed>" counts once."""
    n = 0
    try:
        for ln in open(path):
            f = ln.split(None, 2)
            if len(f) < 3 or "resumed>" in f[2]:
                continue
            try:
                if t0 <= float(f[1]) <= t1:
                    n += 1
            except ValueError:
                pass
    except OSError:
        pass
    return n


class Contenders:
    """K+1 processes (one holds, K wait) that run timed windows on request: mode handoff, a
    releaser rejoins only after another process took the lock (every release is a hand-off to
    one of K waiters); mode loop, a plain loop (throughput). The processes start once and serve
    every window of one (backend, implementation, K)."""

    def __init__(self, b, impl, k, strace=False):
        self.b, self.k = b, k
        name = f"{TAG}-ho-{b}-{impl}-{k}{'-st' if strace else ''}"
        self.shm = os.path.join(TMP, name + ".shm")
        self.reset()
        extra = {}
        self.pmxlog = E["PMXEMU_LOG"] if b == "pmxcfs" else None
        self.proxied = b == "consul" and CPROXY is not None
        if self.proxied:
            extra["CONSUL_HTTP_ADDR"] = CPROXY.addr
        env = benv(b, extra)
        if impl == "lockfn":
            cmd = [LBENCH, "worker", target(b, name), self.shm]
        else:
            cmd = [PY, PEERS, "worker", PEER_KIND[b] if impl == "peer" else impl, name, self.shm]
        self.procs, self.straces = [], []
        try:
            for i in range(k + 1):
                c = cmd
                if strace:
                    self.straces.append(os.path.join(TMP, f"{name}.{i}.strace"))
                    # the harness sleeps while it waits for its turn: those sleeps are not the lock's
                    c = ["strace", "-f", "-ttt", "-qq", "-e", "trace=!clock_nanosleep,nanosleep", "-o",
                         self.straces[-1]] + cmd
                self.procs.append(
                    subprocess.Popen(c, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
            deadline = time.monotonic() + 300
            for p in self.procs:
                line = self.readline(p, deadline)
                if line.strip() != "ready":
                    raise RuntimeError(f"a contender said {line!r} instead of ready")
        except BaseException:
            self.stop()
            raise

    def reset(self):
        with open(self.shm, "wb") as f:
            f.write(b"\0" * 32)

    def readline(self, p, deadline):
        r, _, _ = select.select([p.stdout], [], [], max(0.1, deadline - time.monotonic()))
        if not r:
            raise RuntimeError("a contender did not answer in time")
        line = p.stdout.readline()
        if not line:
            raise RuntimeError(f"a contender exited (exit {p.wait()})")
        return line

    def window(self, dur, mode, margin_ms=0):
        """Returns (acquisitions, hand-off latencies in ns, service requests or None)."""
        self.reset()
        # the emulator's log is shared: count what it gets from here on
        pmxoff = os.path.getsize(self.pmxlog) if self.pmxlog and os.path.exists(self.pmxlog) else 0
        b = self.b
        c0 = zk_mntr_packets() if b == "zk" else (CPROXY.count() if self.proxied else None)
        self.t0 = time.time()
        for p in self.procs:
            p.stdin.write(f"go {dur} {mode} {margin_ms}\n")
            p.stdin.flush()
        deadline = time.monotonic() + dur + 120
        outs = [json.loads(self.readline(p, deadline)) for p in self.procs]
        self.t1 = time.time()
        reqs = None
        if b == "zk":
            reqs = zk_mntr_packets() - c0
        elif self.proxied:
            reqs = CPROXY.count() - c0
        elif b == "pmxcfs":
            reqs = 0
            if os.path.exists(self.pmxlog):
                with open(self.pmxlog, "rb") as f:
                    f.seek(pmxoff)
                    reqs = sum(1 for _ in f)
        ops = sum(o["ops"] for o in outs)
        lat = [x for o in outs for x in o["handoffs_ns"]]
        return ops, lat, reqs

    def stop(self):
        """Ends the processes (EOF on stdin); returns the strace syscall total when traced."""
        for p in self.procs:
            try:
                p.stdin.close()
            except OSError:
                pass
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        return sum(strace_count(f, self.t0, self.t1) for f in self.straces)


REQ_UNIT = {
    "sem": "sem has no service: syscalls of all K+1 processes per hand-off (the harness's sleeps excluded), from a "
           "separate hand-off window under strace -f (the window only)",
    "zk": "ZooKeeper packets received by the server (mntr zk_packets_received) per hand-off, all K+1 clients",
    "consul": "HTTP requests of all K+1 clients (counting proxy) per hand-off",
    "pmxcfs": "pmxcfs messages (mkdir/rmdir/utime logged by pmxemu) per hand-off, all K+1 processes",
}


def bench_handoff():
    for b in BACKENDS:
        for k in KS:
            base = f"{b}.K{k}"
            peer = PEER_KIND[b]
            if k not in KS_RUN or b in SKIPS:
                reason = SKIPS.get(b) or "--quick runs K = 1 and 10 only"
                for m in ("p50", "p99", "requests"):
                    row(f"handoff.{base}.{m}", "handoff", b, f"hand-off {m}, K={k}", "ms" if m != "requests" else "req",
                        None, PEER_LABEL[peer], None, skip=reason)
                row(f"throughput.{base}", "throughput", b, f"throughput, K={k}", "ops/s", None, PEER_LABEL[peer], None,
                    skip=reason, better="higher")
                continue
            log(f"hand-off and throughput {b} K={k}: {WINDOWS} x {DUR} s windows of each")
            vals = {}
            for impl in ("lockfn", "peer"):
                p50s, p99s, pers, thrs, nh = [], [], [], [], 0
                if impl == "lockfn" and b in LOCKFN_SKIP:
                    vals[impl] = (None, None, None, None, 0)
                    continue
                try:
                    g = Contenders(b, impl, k)
                    try:
                        for _ in range(WINDOWS):
                            ops, lat, reqs = g.window(DUR, "handoff", MARGIN_MS)
                            nh += len(lat)
                            if lat:
                                p50s.append(pct(lat, 50) / 1e6)
                                p99s.append(pct(lat, 99) / 1e6)
                            if reqs is not None and ops:
                                pers.append(reqs / ops)
                        for _ in range(WINDOWS):
                            thrs.append(g.window(DUR, "loop")[0] / DUR)
                    finally:
                        g.stop()
                    if b == "sem":
                        # syscalls per hand-off: one more hand-off window under strace -f (slower,
                        # so its latencies are not used; polling waiters poll more when slowed down)
                        g = Contenders(b, impl, k, strace=True)
                        try:
                            ops = g.window(DUR, "handoff", MARGIN_MS)[0]
                        finally:
                            n = g.stop()
                        pers.append(n / ops if ops else None)
                except Exception as e:
                    log(f"  {impl}: {e}")
                vals[impl] = (med(p50s), med(p99s), med(pers), med(thrs), nh)
            lskip = f"lockfn side skipped: {LOCKFN_SKIP[b]}; " if b in LOCKFN_SKIP else ""
            lv, pv = vals["lockfn"], vals["peer"]
            nnote = f"{lskip}hand-offs measured: lockfn {lv[4]}, peer {pv[4]}; median over {WINDOWS} windows"
            row(f"handoff.{base}.p50", "handoff", b, f"hand-off p50, K={k}", "ms", lv[0], PEER_LABEL[peer], pv[0],
                note=nnote)
            row(f"handoff.{base}.p99", "handoff", b, f"hand-off p99, K={k}", "ms", lv[1], PEER_LABEL[peer], pv[1],
                note=nnote)
            row(f"handoff.{base}.requests", "handoff", b, f"requests per hand-off, K={k}",
                "syscalls" if b == "sem" else "req", lv[2], PEER_LABEL[peer], pv[2], note=lskip + REQ_UNIT[b])
            row(f"throughput.{base}", "throughput", b, f"throughput, K={k}", "ops/s", lv[3], PEER_LABEL[peer], pv[3],
                note=lskip or None, better="higher")


# ---------- 4b. consul: the queue against both Consul peers -------------------------------


def consul_agent_cpu():
    """CPU seconds (user + system) the Consul agent of benches/run.sh has used so far, or None."""
    try:
        env = open(os.path.join(TMP, "consul", "env")).read()
        pid = re.search(r'CONSUL_PIDS="?(\d+)', env).group(1)
        f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, AttributeError, IndexError, ValueError):
        return None


CONSUL_PEERS = [("consul-consullock", "consullock"), ("consul-lock-go", "consul lock")]
# Hand-off windows of this section: longer, and a 5 ms margin (enough for a lockfn releaser to
# be queued again), so that the K waiters' set-up at a window's start and their time-out at its
# end (a few requests each, per window) do not dominate the figure per hand-off at K = 50.
QDUR = 2 * DUR
QMARGIN_MS = 5


def bench_consul_queue():
    """Per real hand-off (the lock came from another process) at K waiters: requests of all
    K+1 clients (counting proxy), the agent's CPU, and real hand-offs per second in a plain
    loop (a process re-taking its own lock does not count): lockfn, consullock, `consul lock`."""
    b = "consul"
    for k in KS:
        base = f"consul_queue.K{k}"
        if k not in KS_RUN or b in SKIPS:
            reason = SKIPS.get(b) or "--quick runs K = 1 and 10 only"
            for _, label in CONSUL_PEERS:
                for m, unit in (("requests", "req"), ("server_cpu", "ms"), ("handoffs_per_s", "1/s")):
                    row(f"{base}.{m}.{label.replace(' ', '-')}", "consul_queue", b, f"{m}, K={k}", unit, None,
                        label, None, skip=reason)
            continue
        log(f"consul queue K={k}: {WINDOWS} x ({QDUR} + {DUR}) s windows of each of lockfn, consullock, consul lock")
        vals = {}
        for impl in ["lockfn"] + [p for p, _ in CONSUL_PEERS]:
            if impl == "lockfn" and b in LOCKFN_SKIP:
                continue
            reqs, cpus, thrs, nh = [], [], [], 0
            try:
                g = Contenders(b, impl, k)
                try:
                    for _ in range(WINDOWS):
                        c0 = consul_agent_cpu()
                        _, lat, r = g.window(QDUR, "handoff", QMARGIN_MS)
                        c1 = consul_agent_cpu()
                        nh += len(lat)
                        if lat and r is not None:
                            reqs.append(r / len(lat))
                        if lat and c0 is not None and c1 is not None:
                            cpus.append((c1 - c0) * 1000 / len(lat))
                    for _ in range(WINDOWS):
                        thrs.append(len(g.window(DUR, "loop")[1]) / DUR)
                finally:
                    g.stop()
            except Exception as e:
                log(f"  {impl}: {e}")
            vals[impl] = (med(reqs), med(cpus), med(thrs), nh)
        lv = vals.get("lockfn", (None, None, None, 0))
        for impl, label in CONSUL_PEERS:
            pv = vals.get(impl, (None, None, None, 0))
            note = (f"real hand-offs measured: lockfn {lv[3]}, {label} {pv[3]}; median over {WINDOWS} windows of "
                    f"{QDUR:g} s (hand-off, margin {QMARGIN_MS} ms) and {DUR:g} s (loop)")
            lid = label.replace(" ", "-")
            row(f"{base}.requests.{lid}", "consul_queue", b, f"requests per hand-off, K={k}", "req", lv[0], label,
                pv[0], note=note)
            row(f"{base}.server_cpu.{lid}", "consul_queue", b, f"agent CPU per hand-off, K={k}", "ms", lv[1], label,
                pv[1], note=note + "; /proc/PID/stat of the agent, 10 ms ticks")
            row(f"{base}.handoffs_per_s.{lid}", "consul_queue", b, f"real hand-offs per second, K={k}", "1/s", lv[2],
                label, pv[2], note=note, better="higher")


# ---------- 5. cost of waiting ----------------------------------------------------------


def wait_one(b, impl):
    """One holder, one waiter for WAIT_S; the waiter's service requests per second."""
    name = f"{TAG}-wait-{b}-{impl}"
    env = benv(b)
    if impl == "lockfn":
        hold = [LOCKFN, "hold", target(b, name)]
        waiter = [LBENCH, "wait", target(b, name), str(WAIT_S)]
    else:
        hold = [PY, PEERS, "hold", PEER_KIND[b], name]
        waiter = [PY, PEERS, "wait", PEER_KIND[b], name, str(WAIT_S)]
    h = subprocess.Popen(hold, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        r, _, _ = select.select([h.stdout], [], [], 60)
        if not r or not h.stdout.readline():
            raise RuntimeError("holder did not acquire")
        wenv = dict(env)
        strace_out = None
        pmxlog = None
        if b == "zk":
            wenv["ZKHOSTS"] = ZKPROXY.addr
        elif b == "consul":
            wenv["CONSUL_HTTP_ADDR"] = CPROXY.addr
        elif b == "pmxcfs":
            pmxlog = E["PMXEMU_LOG"]
        elif b == "sem":
            strace_out = os.path.join(TMP, name + ".strace")
            waiter = ["strace", "-f", "-ttt", "-qq", "-o", strace_out] + waiter
        w = subprocess.Popen(waiter, env=wenv, stdout=subprocess.PIPE, text=True)
        line = w.stdout.readline()
        if line.strip() != "waiting":
            raise RuntimeError(f"waiter said {line!r}")
        time.sleep(SETTLE)
        t_wall, t_mono = time.time(), time.monotonic_ns()
        c0 = (ZKPROXY if b == "zk" else CPROXY).count() if b in ("zk", "consul") else None
        w.communicate(timeout=WAIT_S + 60)
        t_end = time.time()
        if w.returncode != 0:
            raise RuntimeError(f"waiter exit {w.returncode}")
        window = t_end - t_wall
        if b in ("zk", "consul"):
            n = (ZKPROXY if b == "zk" else CPROXY).count() - c0
        elif b == "pmxcfs":
            n = 0
            if os.path.exists(pmxlog):
                for ln in open(pmxlog):
                    f = ln.split()
                    if len(f) >= 5 and f[1] == str(w.pid) and int(f[4]) >= t_mono:
                        n += 1
        else:
            n = strace_count(strace_out, t_wall, t_end)
        return n / window
    finally:
        if h.poll() is None:
            h.stdin.close()
            try:
                h.wait(timeout=30)
            except subprocess.TimeoutExpired:
                h.kill()
                h.wait()


WAIT_UNIT = {
    "sem": ("syscalls/s", "syscalls of the waiting process (strace -f), all threads"),
    "pmxcfs": ("msgs/s", "pmxcfs messages (mkdir/rmdir/utime, pmxemu log) of the waiting process"),
    "zk": ("req/s", "ZooKeeper requests of the waiting client (frames through the counting proxy, pings included; "
                    "the default 10 s session timeout on both sides)"),
    "consul": ("req/s", "HTTP requests of the waiting client (counting proxy)"),
}


def bench_wait():
    for b in BACKENDS:
        peer = PEER_KIND[b]
        unit, what = WAIT_UNIT[b]
        if b in SKIPS:
            row(f"wait.{b}", "wait", b, "requests/s of one waiter on a held lock", unit, None, PEER_LABEL[peer], None,
                skip=SKIPS[b])
            continue
        log(f"waiting cost {b}: {WAIT_S} s each")
        lv = pv = None
        if b not in LOCKFN_SKIP:
            try:
                lv = wait_one(b, "lockfn")
            except Exception as e:
                log(f"  lockfn: {e}")
        try:
            pv = wait_one(b, "peer")
        except Exception as e:
            log(f"  peer: {e}")
        note = what + (f"; lockfn side skipped: {LOCKFN_SKIP[b]}" if b in LOCKFN_SKIP else "")
        row(f"wait.{b}", "wait", b, "requests/s of one waiter on a held lock", unit, lv, PEER_LABEL[peer], pv,
            note=note)


# ---------- main ------------------------------------------------------------------------


def machine():
    cpu = ""
    try:
        for ln in open("/proc/cpuinfo"):
            if ln.startswith("model name"):
                cpu = ln.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "loadavg": open("/proc/loadavg").read().split()[:3],
        "kernel": platform.release(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }


def fmt(v):
    if v is None:
        return "-"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}"


def table():
    lines = []
    hdr = ("row", "unit", "lockfn", "lockfn C", "peer", "peer value", "lockfn/peer")
    data = []
    for r in ROWS:
        rat = "-" if r["ratio"] is None else f"{r['ratio']:.2f}"
        if r["ratio_cabi"] is not None:
            rat += f" (C {r['ratio_cabi']:.2f})"
        if r["skip"]:
            data.append((r["id"], r["unit"], "skip", "", r["peer"], "skip", r["skip"][:60]))
            continue
        data.append((r["id"], r["unit"], fmt(r["lockfn"]), fmt(r["lockfn_cabi"]) if r["section"] == "cycle" else "",
                     r["peer"][:48], fmt(r["peer_value"]), rat))
    w = [max(len(str(x[i])) for x in data + [hdr]) for i in range(len(hdr))]
    for x in [hdr] + data:
        lines.append("  ".join(str(c).ljust(w[i]) for i, c in enumerate(x)).rstrip())
    return "\n".join(lines)


def probe_lockfn(b):
    """lockfn's backend usable here? (the consul backend lands later)"""
    try:
        run_json([LBENCH, "cycle", target(b, f"{TAG}-probe"), "1"], benv(b), timeout=60)
        return None
    except Exception as e:
        msg = str(e)
        if "not implemented" in msg.lower():
            return f"lockfn's {b} backend is not implemented on this build"
        return f"lockfn {b} probe failed: {msg[-200:]}"


def main():
    global ZKPROXY, CPROXY
    if not ZKHOSTS:
        SKIPS["zk"] = E.get("ZK_SKIP", "no ZooKeeper server")
    if not CONSUL:
        SKIPS["consul"] = E.get("CONSUL_SKIP", "no Consul agent")
    for b in BACKENDS:
        if b not in SKIPS:
            r = probe_lockfn(b)
            if r:
                LOCKFN_SKIP[b] = r
                log(f"skip lockfn {b}: {r}")
    try:
        if "zk" not in SKIPS:
            ZKPROXY = Proxy("zk", ZKHOSTS.split(",")[0])
        if "consul" not in SKIPS:
            CPROXY = Proxy("http", CONSUL)
        m = machine()
        t0 = time.monotonic()
        bench_cycles()
        bench_cycle_requests()
        bench_commands()
        bench_handoff()
        bench_consul_queue()
        bench_wait()
        m["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
        m["seconds"] = round(time.monotonic() - t0, 1)
        out = {"quick": QUICK, "machine": m, "lockfn_skipped": LOCKFN_SKIP, "skipped": SKIPS, "rows": ROWS}
        with open(E["BENCH_OUT"] + ".tmp", "w") as f:
            json.dump(out, f, indent=1)
        os.rename(E["BENCH_OUT"] + ".tmp", E["BENCH_OUT"])
        print(f"lockfn benchmarks ({'quick' if QUICK else 'full'}), {m['date']}, {m['nproc']} CPUs {m['cpu']}, "
              f"load {' '.join(m['loadavg'])} -> {' '.join(m['loadavg_end'])}, {m['seconds']} s")
        print("cycle rows: lockfn = Rust API, lockfn C = C ABI; ratio < 1 means lockfn is cheaper "
              "(throughput: > 1 means lockfn is faster)")
        print(table())
        print(f"JSON: {E['BENCH_OUT']}")
    finally:
        for p in PROCS:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()


def markdown(path):
    """`driver.py --markdown results.json`: the rows as a Markdown table (for RESULTS.md)."""
    d = json.load(open(path))
    print("| row | unit | lockfn | lockfn C | peer | peer value | lockfn/peer |")
    print("|---|---|---|---|---|---|---|")
    for r in d["rows"]:
        if r["skip"]:
            print(f"| `{r['id']}` | {r['unit']} | skipped | | {r['peer']} | | {r['skip']} |")
            continue
        rat = "-" if r["ratio"] is None else f"{r['ratio']:.2f}"
        if r["ratio_cabi"] is not None:
            rat += f" (C {r['ratio_cabi']:.2f})"
        c = fmt(r["lockfn_cabi"]) if r["section"] == "cycle" else ""
        print(f"| `{r['id']}` | {r['unit']} | {fmt(r['lockfn'])} | {c} | {r['peer']} | {fmt(r['peer_value'])} | {rat} |")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--markdown":
        markdown(sys.argv[2])
    else:
        main()
