#!/usr/bin/env python3
"""Misbehaving ZooKeeper and Consul servers, and the checks that lockfn stays bounded against
them (issue 12).

Every fake listens on 127.0.0.1, on a free port the kernel picks (a "blackhole" never
accepts and its queue is full, so connection attempts hang like against a SYN-dropping host). For each fake, lockfn is run
as a child process and the test asserts:
  - `run -w 2` ends within 3 s, `run -n` within 2.5 s, `status` (LOCKFN_OP_TIMEOUT=1.5) within
    3 s, each with the documented exit code (69: service unavailable) and a one-line message
    on stderr (no control bytes, not longer than 1000 bytes);
  - the child's peak RSS (wait4's ru_maxrss) stays under 64 MB;
  - for the redirecting Consul: nothing ever reaches the address redirected to (so no
    X-Consul-Token left for it), and the message names the Location.
Each run of lockfn is bounded by a hard kill after 20 s (BADSERVERS_KILL_AFTER; a kill is a
failure).

  badservers.py LOCKFN [CASE...]    run the cases (all by default); exit 0 when all passed
  badservers.py --serve CASE        only serve CASE, print its address, until killed

Cases: zk-blackhole zk-silent zk-pings zk-huge-timeout zk-trickle zk-garbage
       consul-blackhole consul-silent consul-session-then-silent consul-headers consul-trickle
       consul-redirect consul-huge
"""
import os
import socket
import struct
import subprocess
import sys
import threading
import time

STOP = threading.Event()


def listener():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    return s


def serve(sock, handler):
    """Accept forever on a daemon thread; each connection on its own daemon thread."""

    def loop():
        while not STOP.is_set():
            try:
                c, _ = sock.accept()
            except OSError:
                return
            threading.Thread(target=guard, args=(handler, c), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()


def guard(handler, c):
    try:
        handler(c)
    except OSError:
        pass
    finally:
        try:
            c.close()
        except OSError:
            pass


def recv_exact(c, n):
    buf = b""
    while len(buf) < n:
        d = c.recv(n - len(buf))
        if not d:
            raise OSError("closed")
        buf += d
    return buf


def recv_frame(c):
    (n,) = struct.unpack(">i", recv_exact(c, 4))
    return recv_exact(c, n)


def frame(body):
    return struct.pack(">i", len(body)) + body


def zk_handshake(c, timeout_ms=None):
    req = recv_frame(c)
    # ConnectRequest: protocolVersion, lastZxidSeen, timeOut, sessionId, passwd
    _, _, asked = struct.unpack(">iqi", req[:16])
    t = asked if timeout_ms is None else timeout_ms
    resp = struct.pack(">iiq", 0, t, 0x1234) + struct.pack(">i", 16) + b"\0" * 16
    c.sendall(frame(resp))


def hold_open(c):
    """Keep the connection, read and drop whatever comes, answer nothing."""
    c.settimeout(0.5)
    while not STOP.is_set():
        try:
            if not c.recv(65536):
                return
        except socket.timeout:
            pass


def zk_silent(c):
    zk_handshake(c)
    hold_open(c)


def zk_pings(c):
    zk_handshake(c)
    while True:
        f = recv_frame(c)
        (xid,) = struct.unpack(">i", f[:4])
        if xid == -2:
            c.sendall(frame(struct.pack(">iqi", -2, 0, 0)))


def zk_huge_timeout(c):
    zk_handshake(c, timeout_ms=0x7FFFFFFF)
    hold_open(c)


def zk_trickle(c):
    zk_handshake(c)
    c.sendall(struct.pack(">i", 60 << 20))  # a 60 MB frame, then one byte at a time
    while not STOP.is_set():
        c.sendall(b"x")
        time.sleep(0.05)


def zk_garbage(c):
    zk_handshake(c)
    c.sendall(frame(b"\xde\xad") + os.urandom(64))
    hold_open(c)


def read_head(c):
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = c.recv(4096)
        if not d:
            raise OSError("closed")
        buf += d
        if len(buf) > 1 << 20:
            raise OSError("head too long")
    return buf


def consul_silent(c):
    read_head(c)
    hold_open(c)


def consul_session_then_silent(c):
    """Creates sessions, then is silent to everything else (reads, transactions, destroy)."""
    while True:
        head = read_head(c)
        if head.startswith(b"PUT /v1/session/create"):
            n = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    n = int(line.split(b":")[1])
            body = head.split(b"\r\n\r\n", 1)[1]
            if len(body) < n:
                recv_exact(c, n - len(body))
            out = b'{"ID":"0d7a4c2e-5b1f-4a3e-9c8d-7f6e5d4c3b2a"}'
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n%s" % (len(out), out))
        else:
            hold_open(c)
            return


def consul_headers(c):
    read_head(c)
    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
    i = 0
    while not STOP.is_set():  # headers that never end
        c.sendall(b"X-Filler-%d: %s\r\n" % (i, b"y" * 64))
        i += 1
        time.sleep(0.02)


def consul_trickle(c):
    read_head(c)
    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
              b"Content-Length: 100000000\r\n\r\n[")
    while not STOP.is_set():
        c.sendall(b" ")
        time.sleep(0.05)


def consul_huge(c):
    read_head(c)
    n = 50 << 20
    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n" % n)
    chunk = b'{"ID":"' + b"a" * 65000 + b'"},'
    sent = 0
    c.sendall(b"[")
    sent += 1
    while sent + len(chunk) < n - 1:
        c.sendall(chunk)
        sent += len(chunk)
    c.sendall(b" " * (n - 1 - sent) + b"]")
    hold_open(c)


class Elsewhere:
    """The address a redirect points to: records every byte that reaches it."""

    def __init__(self):
        self.sock = listener()
        self.port = self.sock.getsockname()[1]
        self.got = []
        self.lock = threading.Lock()
        serve(self.sock, self.handle)

    def handle(self, c):
        c.settimeout(2)
        data = b""
        try:
            while b"\r\n\r\n" not in data and len(data) < 65536:
                d = c.recv(4096)
                if not d:
                    break
                data += d
        except socket.timeout:
            pass
        with self.lock:
            self.got.append(data)
        c.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")

    def received(self):
        with self.lock:
            return list(self.got)


def make_redirect(elsewhere):
    def consul_redirect(c):
        head = read_head(c)
        path = head.split(b" ", 2)[1]
        loc = b"http://127.0.0.1:%d%s" % (elsewhere.port, path)
        c.sendall(b"HTTP/1.1 302 Found\r\nLocation: " + loc + b"\r\nContent-Length: 0\r\n\r\n")

    return consul_redirect


def blackhole():
    """A port whose SYNs go unanswered: a listener that never accepts, its queue full."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen(0)
    port = s.getsockname()[1]
    fill = []
    for _ in range(4):
        c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        c.setblocking(False)
        try:
            c.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        fill.append(c)
    return s, port, fill


def start(case):
    """Start the fake for CASE: (env for lockfn, target, extra) ."""
    extra = {}
    if case.endswith("-blackhole"):
        s, port, fill = blackhole()
        extra["keep"] = (s, fill)
        if case.startswith("zk-"):
            return {"ZKHOSTS": "127.0.0.1:%d" % port}, "zk:bad-%s" % case, extra
        env = {"CONSUL_HTTP_ADDR": "127.0.0.1:%d" % port, "CONSUL_HTTP_TOKEN": TOKEN}
        return env, "consul:bad-%s" % case, extra
    s = listener()
    port = s.getsockname()[1]
    if case.startswith("zk-"):
        handler = {
            "zk-silent": zk_silent,
            "zk-pings": zk_pings,
            "zk-huge-timeout": zk_huge_timeout,
            "zk-trickle": zk_trickle,
            "zk-garbage": zk_garbage,
        }[case]
        serve(s, handler)
        env = {"ZKHOSTS": "127.0.0.1:%d" % port}
        return env, "zk:bad-%s" % case, extra
    if case == "consul-redirect":
        elsewhere = Elsewhere()
        extra["elsewhere"] = elsewhere
        handler = make_redirect(elsewhere)
    else:
        handler = {
            "consul-silent": consul_silent,
            "consul-session-then-silent": consul_session_then_silent,
            "consul-headers": consul_headers,
            "consul-trickle": consul_trickle,
            "consul-huge": consul_huge,
        }[case]
    serve(s, handler)
    env = {"CONSUL_HTTP_ADDR": "127.0.0.1:%d" % port, "CONSUL_HTTP_TOKEN": TOKEN}
    return env, "consul:bad-%s" % case, extra


TOKEN = "tok-5e3c7a1f-9d2b-4c8e-b0a1-issue12"
CASES = ["zk-blackhole", "zk-silent", "zk-pings", "zk-huge-timeout", "zk-trickle", "zk-garbage",
         "consul-blackhole",
         "consul-silent", "consul-session-then-silent", "consul-headers", "consul-trickle", "consul-redirect", "consul-huge"]
UNAVAILABLE = 69


KILL_AFTER = float(os.environ.get("BADSERVERS_KILL_AFTER", "20"))


def run_child(lockfn, args, env, kill_after=None):
    """Run lockfn; (exit code or None when killed, seconds, stderr, peak RSS in kB)."""
    kill_after = KILL_AFTER if kill_after is None else kill_after
    full = dict(os.environ)
    for k in ("ZKHOSTS", "CONSUL_HTTP_ADDR", "CONSUL_HTTP_TOKEN", "CONSUL_HTTP_TOKEN_FILE",
              "LOCKFN_ZK_AUTH", "LOCKFN_BACKEND", "LOCKFN_OP_TIMEOUT"):
        full.pop(k, None)
    full.update(env)
    t0 = time.monotonic()
    p = subprocess.Popen([lockfn] + args, env=full, stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    killed = [False]

    def killer():
        if not done.wait(kill_after):
            killed[0] = True
            p.kill()

    done = threading.Event()
    threading.Thread(target=killer, daemon=True).start()
    # Read the pipes while the child runs (a chatty child must not block on a full pipe).
    out = {}

    def drain(name, f):
        out[name] = f.read()

    readers = [threading.Thread(target=drain, args=(n, f), daemon=True)
               for n, f in (("out", p.stdout), ("err", p.stderr))]
    for r in readers:
        r.start()
    _, status, ru = os.wait4(p.pid, 0)
    dt = time.monotonic() - t0
    done.set()
    for r in readers:
        r.join(5)
    p.returncode = os.waitstatus_to_exitcode(status)
    code = None if killed[0] else p.returncode
    return code, dt, out.get("err", b"").decode("utf-8", "replace"), ru.ru_maxrss


def check_case(lockfn, case):
    env, target, extra = start(case)
    failures = []
    runs = [
        ("run -w 2", ["run", "-w", "2", target, "--", "true"], {}, 3.0),
        ("run -n", ["run", "-n", target, "--", "true"], {}, 2.5),
        ("status", ["status", target], {"LOCKFN_OP_TIMEOUT": "1.5"}, 3.0),
    ]
    for name, args, more, bound in runs:
        code, dt, err, rss = run_child(lockfn, args, {**env, **more})
        if code is not None and dt > bound:
            # Only the time bound missed: on a machine loaded by others (load average 20 on
            # 2 cores was seen) the child can be starved of CPU. Once more; a real regression
            # (10 to 30 s before) misses twice.
            print("  %-16s %-10s took %.2f s (load %s), once more" % (
                case, name, dt, os.getloadavg()[0]))
            code, dt, err, rss = run_child(lockfn, args, {**env, **more})
        lines = [line for line in err.splitlines() if line.strip()]
        line = lines[0] if lines else ""
        print("  %-16s %-10s exit %-4s %5.2f s  %6d kB  %s" % (
            case, name, code, dt, rss, line[:160]))
        if code is None:
            failures.append("%s %s: killed after %.1f s" % (case, name, dt))
            continue
        if dt > bound:
            failures.append("%s %s: took %.2f s (bound %.1f s)" % (case, name, dt, bound))
        if code != UNAVAILABLE:
            failures.append("%s %s: exit %s, expected %d" % (case, name, code, UNAVAILABLE))
        if len(lines) != 1:
            failures.append("%s %s: %d lines on stderr: %r" % (case, name, len(lines), err[:500]))
        if len(line) > 1000 or any(ord(ch) < 32 or 0x7F <= ord(ch) < 0xA0 for ch in line):
            failures.append("%s %s: message too long or with control bytes: %r" % (
                case, name, line[:300]))
        if "panicked" in err:
            failures.append("%s %s: panic: %s" % (case, name, err[:300]))
        if rss >= 64 * 1024:
            failures.append("%s %s: peak RSS %d kB" % (case, name, rss))
        if TOKEN in err:
            failures.append("%s %s: the token shows in the message" % (case, name))
        if case == "consul-redirect" and "Location" not in line and "redirect" not in line:
            failures.append("%s %s: the message does not name the redirect: %s" % (
                case, name, line))
        if case == "consul-redirect" and str(extra["elsewhere"].port) not in line:
            failures.append("%s %s: the message does not name the Location: %s" % (
                case, name, line))
    if "elsewhere" in extra:
        got = extra["elsewhere"].received()
        if any(TOKEN.encode() in g for g in got):
            failures.append("%s: the token was sent to the redirect's address" % case)
        if got:
            failures.append("%s: %d request(s) reached the redirect's address" % (case, len(got)))
    return failures


def main():
    if len(sys.argv) >= 3 and sys.argv[1] == "--serve":
        env, target, _ = start(sys.argv[2])
        print(" ".join("%s=%s" % kv for kv in env.items()), target, flush=True)
        while True:
            time.sleep(3600)
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    lockfn = sys.argv[1]
    cases = sys.argv[2:] or CASES
    failures = []
    for case in cases:
        failures += check_case(lockfn, case)
    STOP.set()
    for f in failures:
        print("FAIL - " + f)
    print("%d cases, %d failures" % (len(cases), len(failures)))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
