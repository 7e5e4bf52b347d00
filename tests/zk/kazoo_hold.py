#!/usr/bin/env python3
"""kazoo side of lockfn's ZooKeeper interop tests.

usage: kazoo_hold.py HOSTS PATH KIND [MAX_LEASES] [TIMEOUT]

KIND: lock | rlock | wlock | sem. Tries to take the kazoo recipe on PATH (waiting at most
TIMEOUT seconds, default 10; 0 = try once). Prints "held" (and flushes) once it holds, or
"busy" and exits 1 when it could not; then holds until stdin closes, releases, prints
"released" and exits 0. Also prints "contenders: [...]" (kazoo's view of the node data).
"""
import sys

from kazoo.client import KazooClient
from kazoo.exceptions import LockTimeout


def main():
    hosts, path, kind = sys.argv[1], sys.argv[2], sys.argv[3]
    max_leases = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    timeout = float(sys.argv[5]) if len(sys.argv) > 5 else 10.0
    zk = KazooClient(hosts=hosts, timeout=10)
    zk.start(timeout=15)
    if kind == "lock":
        lk = zk.Lock(path, "kazoo-test")
    elif kind == "rlock":
        lk = zk.ReadLock(path, "kazoo-test")
    elif kind == "wlock":
        lk = zk.WriteLock(path, "kazoo-test")
    elif kind == "sem":
        lk = zk.Semaphore(path, "kazoo-test", max_leases=max_leases)
    else:
        raise SystemExit("unknown kind " + kind)
    try:
        if timeout == 0:
            got = lk.acquire(blocking=False)
        else:
            got = lk.acquire(timeout=timeout)
    except LockTimeout:
        got = False
    except ValueError as e:  # Semaphore max_leases mismatch
        print("error:", e, flush=True)
        zk.stop()
        return 2
    if not got:
        print("busy", flush=True)
        zk.stop()
        return 1
    print("held", flush=True)
    if kind != "sem":
        print("contenders:", lk.contenders(), flush=True)
    else:
        print("contenders:", lk.lease_holders(), flush=True)
    sys.stdin.read()
    lk.release()
    print("released", flush=True)
    zk.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
