"""The peers' side of lockfn's benchmarks: the ecosystem's own tools, driven the way their
users drive them (benches/run.sh runs this with the test venv's python).

    peers.py cycle KIND NAME N          N uncontended cycles in this process -> {"ns_per_op", "n"}
    peers.py worker KIND NAME SHMFILE   hand-off / throughput contender; protocol of
                                        benches/lockfn_bench.rs ("ready", then per line
                                        "go SECS handoff|loop [MARGIN_MS]" one window and one
                                        JSON line)
    peers.py hold KIND NAME             acquire, print "held", hold until stdin closes
    peers.py wait KIND NAME SECS        wait for a held lock for SECS seconds (then give up)

KIND:
    zk-kazoo           kazoo.recipe.lock.Lock(client, "/lockfn-bench/NAME")
    zk-raw             kazoo raw client.create(ephemeral, sequence) + client.delete (the floor)
    sem-posix_ipc      posix_ipc.Semaphore("/NAME", O_CREAT, initial 1) acquire/release
    sem-resourcelock   cjnfuncs.resourcelock.resource_lock(NAME) get_lock/unget_lock
    pmxcfs-pmxlock     pmxlock.ClusterLock(NAME) acquire/release, its two directories moved to
                       LOCKFN_PMXLOCK_DIR / LOCKFN_PMXCFS_DIR (class attributes)
    consul-consullock  consullock.managers.ConsulLockManager(session_ttl 86400).acquire/release
                       (session create, PUT ?acquire, then GET + session destroy; polls 1 s)
    consul-raw         raw HTTP/1.1 keep-alive: session create, PUT ?acquire, PUT ?release,
                       session destroy (the floor)
    consul-lock-go     HashiCorp's `consul lock -pass-stdin PREFIX CHILD` (Go api.Lock), one
                       command per acquisition: the child prints "held" and holds until told
"""

import json
import mmap
import os
import pathlib
import struct
import subprocess
import sys
import time


def env_hosts():
    return os.environ.get("ZKHOSTS", "127.0.0.1:2181")


def consul_addr():
    a = os.environ.get("CONSUL_HTTP_ADDR", "127.0.0.1:8500")
    host, _, port = a.rpartition(":")
    return host, int(port)


class Kind:
    """acquire(timeout: None forever / 0 try / secs) -> bool, release()."""

    # hand-off/throughput windows wait without a timeout (see PmxcfsPmxlock)
    block_in_window = False


class ZkKazoo(Kind):
    def __init__(self, name):
        from kazoo.client import KazooClient

        self.zk = KazooClient(hosts=env_hosts())
        self.zk.start(timeout=30)
        self.lock = self.zk.Lock("/lockfn-bench/" + name)

    def acquire(self, timeout=None):
        from kazoo.exceptions import LockTimeout

        try:
            if timeout == 0:
                return self.lock.acquire(blocking=False)
            return self.lock.acquire(timeout=timeout)
        except LockTimeout:
            return False

    def release(self):
        self.lock.release()


class ZkRaw(Kind):
    def __init__(self, name):
        from kazoo.client import KazooClient

        self.zk = KazooClient(hosts=env_hosts())
        self.zk.start(timeout=30)
        self.path = "/lockfn-bench/raw-" + name
        self.zk.ensure_path(self.path)
        self.node = None

    def acquire(self, timeout=None):
        self.node = self.zk.create(self.path + "/n-", b"", ephemeral=True, sequence=True)
        return True

    def release(self):
        self.zk.delete(self.node)


class SemPosixIpc(Kind):
    def __init__(self, name):
        import posix_ipc

        self.posix_ipc = posix_ipc
        self.sem = posix_ipc.Semaphore("/" + name, flags=posix_ipc.O_CREAT, mode=0o600, initial_value=1)

    def acquire(self, timeout=None):
        try:
            self.sem.acquire(timeout)
            return True
        except self.posix_ipc.BusyError:
            return False

    def release(self):
        self.sem.release()


class SemResourceLock(Kind):
    def __init__(self, name):
        from cjnfuncs.resourcelock import resource_lock

        self.lock = resource_lock(name)

    def acquire(self, timeout=None):
        return self.lock.get_lock(timeout=timeout, lock_info="bench")

    def release(self):
        self.lock.unget_lock()


class PmxcfsPmxlock(Kind):
    # pmxlock waits for its node-local flock by blocking only without a timeout; with one it
    # polls flock(LOCK_NB) once a second. Its CLI default (-w -1) and API default block, so the
    # windows do too (every contender is in the queue, so it drains after the window's end).
    block_in_window = True
    def __init__(self, name):
        import pmxlock

        pmxlock.ClusterLock.flock_dir = pathlib.Path(os.environ["LOCKFN_PMXLOCK_DIR"])
        pmxlock.ClusterLock.pmxlock_dir = pathlib.Path(os.environ["LOCKFN_PMXCFS_DIR"])
        self.lock = pmxlock.ClusterLock(name)

    def acquire(self, timeout=None):
        if timeout == 0:
            return self.lock.acquire(blocking=False)
        return self.lock.acquire(blocking=True, timeout=-1 if timeout is None else timeout)

    def release(self):
        self.lock.release()


class ConsulConsullock(Kind):
    def __init__(self, name):
        import consul
        from consullock.managers import ConsulLockManager

        host, port = consul_addr()
        self.mgr = ConsulLockManager(consul_client=consul.Consul(host=host, port=port), session_ttl_in_seconds=86400)
        self.key = "lockfn-bench/consullock-" + name

    def acquire(self, timeout=None):
        from consullock.exceptions import LockAcquireTimeoutError

        try:
            if timeout == 0:
                return self.mgr.acquire(self.key, blocking=False) is not None
            return self.mgr.acquire(self.key, blocking=True, timeout=timeout) is not None
        except LockAcquireTimeoutError:
            # consullock times out with SIGALRM (timeout_decorator): the alarm can fire after
            # the PUT ?acquire succeeded, leaving the key held by a session nobody releases
            # (TTL 86400). Destroy our still-acquiring sessions, as consullock's atexit teardown
            # does (behavior delete removes a key one of them holds).
            for sid in list(self.mgr._acquiring_session_ids):
                try:
                    self.mgr.consul_client.session.destroy(sid)
                except Exception:
                    pass
                self.mgr._acquiring_session_ids.discard(sid)
            return False

    def release(self):
        self.mgr.release(self.key)


class ConsulRaw(Kind):
    def __init__(self, name):
        import http.client

        host, port = consul_addr()
        self.c = http.client.HTTPConnection(host, port, timeout=30)
        self.key = "lockfn-bench/raw-" + name
        self.sid = None

    def req(self, method, path, body=None):
        self.c.request(method, path, body=body)
        r = self.c.getresponse()
        data = r.read()
        if r.status != 200:
            raise RuntimeError(f"{method} {path}: {r.status} {data!r}")
        return json.loads(data) if data else None

    def acquire(self, timeout=None):
        self.sid = self.req("PUT", "/v1/session/create", json.dumps({"LockDelay": "0s", "Behavior": "delete"}))["ID"]
        ok = self.req("PUT", f"/v1/kv/{self.key}?acquire={self.sid}", b"x")
        if not ok:
            raise RuntimeError("raw acquire refused (key held?)")
        return True

    def release(self):
        self.req("PUT", f"/v1/kv/{self.key}?release={self.sid}")
        self.req("PUT", f"/v1/session/destroy/{self.sid}")


class ConsulLockGo(Kind):
    """`consul lock` is a command, not a library: each acquisition is one `consul lock` run
    (CONSUL_BIN, CONSUL_HTTP_ADDR) whose child reports "held" on stdout and holds the lock
    until a line arrives on its stdin (-pass-stdin); release = that line, then the command
    releases and exits."""

    def __init__(self, name):
        self.bin = os.environ["CONSUL_BIN"]
        self.prefix = "lockfn-bench/go-" + name
        self.p = None

    def acquire(self, timeout=None):
        args = [self.bin, "lock", "-pass-stdin"]
        if timeout is not None:
            args.append(f"-timeout={max(timeout, 0.001):.3f}s")
        args += [self.prefix, "echo held; read x"]
        self.p = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True)
        if self.p.stdout.readline().strip() == "held":
            return True
        self.p.wait()
        self.p = None
        return False

    def release(self):
        self.p.stdin.write("\n")
        self.p.stdin.close()
        self.p.wait()
        self.p = None


KINDS = {
    "zk-kazoo": ZkKazoo,
    "zk-raw": ZkRaw,
    "sem-posix_ipc": SemPosixIpc,
    "sem-resourcelock": SemResourceLock,
    "pmxcfs-pmxlock": PmxcfsPmxlock,
    "consul-consullock": ConsulConsullock,
    "consul-raw": ConsulRaw,
    "consul-lock-go": ConsulLockGo,
}


def cycle(kind, name, n):
    k = KINDS[kind](name)
    # warm-up cycle (connection set-up is not a cycle)
    if not k.acquire(None):
        sys.exit(f"peers.py: {kind} warm-up acquire failed")
    k.release()
    t0 = time.perf_counter_ns()
    for _ in range(n):
        if not k.acquire(None):
            sys.exit(f"peers.py: {kind} acquire failed")
        k.release()
    print(json.dumps({"ns_per_op": (time.perf_counter_ns() - t0) / n, "n": n}))


def worker(kind, name, shm):
    k = KINDS[kind](name)
    fd = os.open(shm, os.O_RDWR)
    # mapped shared: reading/writing the record costs no syscall (strace -c counts the lock's)
    m = mmap.mmap(fd, 32)
    print("ready", flush=True)
    for line in sys.stdin:
        w = line.split()
        if not w or w[0] != "go":
            continue
        secs = float(w[1]) if len(w) > 1 else 1.0
        window(k, m, secs, len(w) > 2 and w[2] == "handoff", float(w[3]) / 1000 if len(w) > 3 else 0.0)
    os._exit(0)  # no atexit/thread teardown noise in the timing of the others


def u64(m, off):
    return struct.unpack_from("<Q", m, off)[0]


def put(m, off, *vals):
    struct.pack_into("<" + "Q" * len(vals), m, off, *vals)


def window(k, m, secs, handoff, margin):
    """The record protocol of benches/lockfn_bench.rs `window` (32 bytes: last releaser pid,
    its time just before release, current holder pid, previous holder's rejoin time)."""
    pid = os.getpid()
    end = time.monotonic() + secs
    ops = selfs = 0
    lat = []
    while True:
        left = end - time.monotonic()
        if left <= 0:
            break
        if not k.acquire(None if k.block_in_window else left):
            break
        if time.monotonic() >= end and k.block_in_window:
            k.release()  # the queue drains after the window's end: not counted
            break
        now = time.monotonic_ns()
        last_pid, last_t = u64(m, 0), u64(m, 8)
        if last_t and last_pid != pid and now >= last_t:
            lat.append(now - last_t)
        elif last_pid == pid:
            selfs += 1
        ops += 1
        if handoff:
            put(m, 16, pid)
            cap = time.monotonic() + 1.0
            while last_t and time.monotonic() < min(end, cap):
                rejoined = u64(m, 24)
                if rejoined >= now and time.monotonic_ns() >= rejoined + int(margin * 1e9):
                    break
                time.sleep(0.0005)
        put(m, 0, pid, time.monotonic_ns())
        k.release()
        if handoff:
            while time.monotonic() < end and u64(m, 16) == pid:
                time.sleep(0.0005)
            put(m, 24, time.monotonic_ns())
    print(json.dumps({"ops": ops, "self": selfs, "handoffs_ns": lat}), flush=True)


def hold(kind, name):
    k = KINDS[kind](name)
    if not k.acquire(None):
        sys.exit(f"peers.py: {kind} hold failed")
    print("held", flush=True)
    sys.stdin.read()
    k.release()


def wait(kind, name, secs):
    k = KINDS[kind](name)
    print("waiting", flush=True)
    if k.acquire(secs):
        k.release()
        sys.exit("peers.py: the lock was free (expected held)")


def main():
    a = sys.argv[1:]
    if len(a) == 4 and a[0] == "cycle":
        cycle(a[1], a[2], int(a[3]))
    elif len(a) == 4 and a[0] == "worker":
        worker(a[1], a[2], a[3])
    elif len(a) == 3 and a[0] == "hold":
        hold(a[1], a[2])
    elif len(a) == 4 and a[0] == "wait":
        wait(a[1], a[2], float(a[3]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
