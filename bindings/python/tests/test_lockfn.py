"""Behaviour, errors, threads, fork and Ctrl-C of the Python binding, against real backends."""

import ctypes
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import lockfn
from conftest import PKG, new_name


def holders(target):
    return lockfn.status(target)["holders"]


def child_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = PKG + os.pathsep + env.get("PYTHONPATH", "")
    return env


def spawn(code):
    return subprocess.Popen(
        [sys.executable, "-u", "-c", textwrap.dedent(code)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())


def wait_sleeping(pid, limit=10.0):
    """Wait until the main thread of `pid` is blocked in a system call (state S)."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        if state == "S":
            return
        time.sleep(0.01)
    pytest.fail(f"process {pid} never blocked")


# --- behaviour ---------------------------------------------------------------------------

def test_acquire_release_status(target):
    lock = lockfn.Lock(target, holder="pytest holder text")
    other = lockfn.Lock(target)
    assert not lock.locked() and not lock.held
    assert lock.token is None
    assert lock.acquire() is True
    assert lock.locked() and lock.held
    assert other.locked() and not other.held  # taken, by someone else
    st = lockfn.status(target)
    assert st["held"] is True
    assert [h["pid"] for h in st["holders"]] == [os.getpid()]
    assert st["holders"][0]["holder"] == "pytest holder text"
    assert st["holders"][0]["token"] == lock.token
    lock.update()
    lock.release()
    assert not lock.locked()
    assert lockfn.status(target)["held"] is False


def test_try_once_and_timeout_when_busy(target):
    a, b = lockfn.Lock(target), lockfn.Lock(target)
    assert a.acquire()
    assert b.acquire(blocking=False) is False
    assert b.acquire(timeout=0) is False
    t0 = time.monotonic()
    assert b.acquire(timeout=0.4) is False
    took = time.monotonic() - t0
    assert 0.35 <= took < 5, took
    assert not b.held and b.locked()
    a.release()
    assert b.acquire(blocking=False) is True
    b.release()


def test_blocking_acquire_waits_for_release(target):
    a, b = lockfn.Lock(target), lockfn.Lock(target)
    a.acquire()
    got = []
    t = threading.Thread(target=lambda: got.append(b.acquire(timeout=30)))
    t.start()
    time.sleep(0.2)
    assert got == []  # still waiting while a holds it
    a.release()
    t.join(30)
    assert got == [True]
    b.release()


def test_context_manager_and_token_grows(target):
    tokens = []
    for _ in range(3):
        with lockfn.Lock(target) as lock:
            assert lock.locked()
            tokens.append(lock.token)
        assert not lock.locked()
    assert tokens == sorted(tokens) and len(set(tokens)) == 3, tokens


def test_context_manager_timeout_raises_busy(target):
    with lockfn.Lock(target):
        with pytest.raises(lockfn.LockBusy) as ei:
            with lockfn.Lock(target, timeout=0.2):
                pytest.fail("entered a busy lock")
        assert isinstance(ei.value, TimeoutError)
        assert ei.value.code == 1


def test_context_manager_releases_on_exception(target):
    with pytest.raises(ZeroDivisionError):
        with lockfn.Lock(target):
            1 / 0
    assert lockfn.status(target)["held"] is False


def test_limit_is_a_semaphore(backend, target):
    if backend == "pmxcfs":  # pmxcfs locks are exclusive, as in Proxmox
        with pytest.raises(lockfn.LockInvalid):
            lockfn.Lock(target, limit=2).acquire(blocking=False)
        return
    locks = [lockfn.Lock(target, limit=2) for _ in range(3)]
    assert locks[0].acquire(blocking=False)
    assert locks[1].acquire(blocking=False)
    assert not locks[2].acquire(blocking=False)
    assert len(holders(target)) == 2
    assert locks[2].locked() and not locks[2].held  # no slot free
    locks[0].release()
    assert not locks[2].locked()
    assert locks[2].acquire(blocking=False)
    locks[1].release()
    locks[2].release()


def test_garbage_collected_lock_is_released(target):
    lock = lockfn.Lock(target)
    lock.acquire()
    del lock
    other = lockfn.Lock(target)
    assert other.acquire(blocking=False)
    other.release()


def test_gc_returns_a_count():
    assert lockfn.gc("sem") >= 0
    assert lockfn.gc(f"sem:{new_name()}") == 0


def test_version_and_library_path():
    assert lockfn.version() == lockfn.__version__
    assert "liblockfn" in lockfn.library_path()


# --- errors ------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [
    "sem:", "sem:../etc", "sem:a/b", "sem:" + "x" * 201, "sem:sp ace", "sem:tab\tx",
    "pmxcfs:a/b", "pmxcfs:..", "nosuch:x", "",
])
def test_invalid_targets_raise_lockinvalid(bad):
    with pytest.raises(lockfn.LockInvalid) as ei:
        lockfn.Lock(bad).acquire(blocking=False)
    assert isinstance(ei.value, ValueError)
    assert ei.value.code == 2
    assert str(ei.value)  # the library's detail


def test_nul_in_target_or_holder_is_invalid():
    with pytest.raises(lockfn.LockInvalid):
        lockfn.Lock("sem:a\0b")
    with pytest.raises(lockfn.LockInvalid):
        lockfn.Lock("sem:ab", holder="x\0y")
    with pytest.raises(lockfn.LockInvalid):
        lockfn.status("sem:a\0b")


def library_says(target, **fields):
    """(code, message) of one lock_acquire straight through the C ABI (try once)."""
    lib = lockfn._ffi.lib()
    opts = lockfn._ffi.LockOptions()
    lib.lock_options_init(ctypes.byref(opts))
    opts.timeout = 0.0
    for k, v in fields.items():
        setattr(opts, k, v)
    out = ctypes.c_void_p()
    rc = lib.lock_acquire(target.encode(), ctypes.byref(opts), ctypes.byref(out))
    if out.value:
        lib.lock_release(out)
    return rc, lib.lock_last_error().decode()


def test_bad_options_raise_lockinvalid(sem_target):
    # limit 0 is the library's to refuse: its code and message, unchanged
    with pytest.raises(lockfn.LockInvalid) as ei:
        lockfn.Lock(sem_target, limit=0).acquire(blocking=False)
    assert (ei.value.code, str(ei.value)) == library_says(sem_target, limit=0)
    assert ei.value.target == sem_target
    # a value that does not fit the C field is refused before it could wrap
    with pytest.raises(lockfn.LockInvalid):
        lockfn.Lock(sem_target, ttl=-1)
    with pytest.raises(lockfn.LockInvalid):
        lockfn.Lock(sem_target, limit=2**32)
    with pytest.raises(ValueError):
        lockfn.Lock(sem_target).acquire(blocking=False, timeout=3)
    with pytest.raises(ValueError):
        lockfn.Lock(sem_target).acquire(timeout=-5)


def test_nan_and_non_numbers_are_rejected_not_tried_once(sem_target):
    # Issue 12: acquire(timeout=nan) silently tried once.
    lock = lockfn.Lock(sem_target)
    for bad in (float("nan"), "3", [1]):
        with pytest.raises(ValueError):
            lock.acquire(timeout=bad)
    with pytest.raises(ValueError):
        lockfn.Lock(sem_target, timeout=float("nan"))
    for bad in (float("nan"), float("inf"), 2.5, True):
        with pytest.raises(lockfn.LockInvalid):
            lockfn.Lock(sem_target, ttl=bad)
        with pytest.raises(lockfn.LockInvalid):
            lockfn.Lock(sem_target, limit=bad)
    assert not lock.locked()


def test_huge_timeouts_mean_forever_without_overflow(sem_target):
    for t in (float("inf"), 1e19, 1e300):
        lock = lockfn.Lock(sem_target)
        assert lock.acquire(timeout=t) is True
        lock.release()
    with lockfn.Lock(sem_target, timeout=float("inf")):
        pass


def test_sem_has_no_shared_mode(sem_target):
    with pytest.raises(lockfn.LockInvalid) as ei:
        lockfn.Lock(sem_target, shared=True).acquire(blocking=False)
    assert "shared" in str(ei.value) or "reader" in str(ei.value)
    assert str(ei.value) == library_says(sem_target, flags=lockfn._ffi.LOCK_FLAG_SHARED)[1]


def test_messages_are_the_librarys(target):
    bad = target.split(":")[0] + ":" + "x" * 201  # too long for every service
    with pytest.raises(lockfn.LockError) as ei:
        lockfn.Lock(bad).acquire(blocking=False)
    assert (ei.value.code, str(ei.value)) == library_says(bad)
    with lockfn.Lock(target):
        busy = lockfn.Lock(target)
        assert busy.acquire(blocking=False) is False
        with pytest.raises(lockfn.LockBusy) as ei:
            with lockfn.Lock(target, timeout=0):
                pytest.fail("entered a busy lock")
        assert (ei.value.code, str(ei.value)) == library_says(target)
        # a wait that timed out: the library's message of that very call
        with pytest.raises(lockfn.LockBusy) as ei:
            with lockfn.Lock(target, timeout=0.2):
                pytest.fail("entered a busy lock")
        assert str(ei.value) == lockfn._ffi.lib().lock_last_error().decode()
        assert target in str(ei.value)


def test_double_release_raises_not_crashes(target):
    lock = lockfn.Lock(target)
    lock.acquire()
    lock.release()
    with pytest.raises(lockfn.LockNotHeld) as ei:
        lock.release()
    assert isinstance(ei.value, RuntimeError)
    with pytest.raises(lockfn.LockNotHeld):
        lock.update()


def test_stale_handle_in_library_is_an_error_not_a_crash(sem_target):
    lib = lockfn._ffi.lib()
    lock = lockfn.Lock(sem_target)
    lock.acquire()
    handle = lock._handle
    lock.release()
    assert lib.lock_release(handle) == lockfn._ffi.LOCK_ENOTHELD
    assert lib.lock_update(handle) == lockfn._ffi.LOCK_ENOTHELD
    assert lib.lock_token(handle) == 0
    assert lib.lock_release(None) == 0
    assert b"not a live" in lib.lock_last_error()


def test_error_carries_target_and_detail():
    with pytest.raises(lockfn.LockError) as ei:
        lockfn.status("sem:../x")
    assert ei.value.target == "sem:../x"
    assert "sem:../x" in str(ei.value) or "'/'" in str(ei.value)


def test_lockfn_library_env_is_final():
    env = child_env()
    env["LOCKFN_LIBRARY"] = "/nonexistent/liblockfn.so"
    r = subprocess.run([sys.executable, "-c", "import lockfn; lockfn.status('sem:x')"],
                       capture_output=True, text=True, env=env)
    assert r.returncode != 0
    assert "/nonexistent/liblockfn.so" in r.stderr and "LOCKFN_LIBRARY" in r.stderr


# --- threads -----------------------------------------------------------------------------

def test_threads_with_own_lock_objects_exclude_each_other(target):
    inside, overlaps, done = [0], [0], []
    guard = threading.Lock()

    def work():
        for _ in range(15):
            with lockfn.Lock(target):
                with guard:
                    inside[0] += 1
                    if inside[0] > 1:
                        overlaps[0] += 1
                time.sleep(0.001)
                with guard:
                    inside[0] -= 1
        done.append(1)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(done) == 4
    assert overlaps[0] == 0


def test_threads_sharing_one_lock_object(sem_target):
    lock = lockfn.Lock(sem_target)
    count = [0]

    def work():
        for _ in range(50):
            with lock:
                v = count[0]
                time.sleep(0)
                count[0] = v + 1

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert count[0] == 200
    assert not lock.locked()


def test_errors_are_per_thread(sem_target):
    """lock_last_error is thread-local: another thread's failure doesn't change our message."""
    msgs = []

    def fail(name):
        try:
            lockfn.Lock(name).acquire(blocking=False)
        except lockfn.LockInvalid as e:
            msgs.append(str(e))

    ts = [threading.Thread(target=fail, args=(n,)) for n in ("sem:a/b", "sem:" + "y" * 300)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert len(msgs) == 2 and msgs[0] != msgs[1]


# --- fork --------------------------------------------------------------------------------

def test_fork_child_gets_error_parent_keeps_lock(target):
    lock = lockfn.Lock(target)
    lock.acquire()
    token = lock.token
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: every use of the parent's lock is an error; nothing is released
        code = 0
        try:
            os.close(r)
            if lock.held or not lock.locked():  # not ours here, but taken (by the parent)
                code |= 1
            for op in (lock.update, lambda: lock.acquire(blocking=False), lock.release):
                try:
                    op()
                    code |= 2
                except lockfn.LockForked as e:
                    # the library's verdict and message, not the binding's
                    if str(e) != lockfn._ffi.lib().lock_last_error().decode() or not str(e):
                        code |= 32
            # released (forgotten) in the child: the object is usable again, and busy
            if lock.held or lock.acquire(blocking=False):
                code |= 4
            # the child can take its own lock (busy: the parent holds it)
            if lockfn.Lock(target).acquire(blocking=False):
                code |= 8
        except BaseException:
            code |= 16
        os.write(w, bytes([code]))
        os._exit(0)
    os.close(w)
    result = os.read(r, 1)
    os.close(r)
    os.waitpid(pid, 0)
    assert result == b"\x00", result
    # the parent still holds it, unchanged
    assert lock.held and lock.token == token
    assert [h["pid"] for h in holders(target)] == [os.getpid()]
    assert not lockfn.Lock(target).acquire(blocking=False)
    lock.update()
    lock.release()
    assert lockfn.status(target)["held"] is False


# --- Ctrl-C ------------------------------------------------------------------------------

CTRL_C_CHILD = """
    import os, signal, sys, time, lockfn
    lock = lockfn.Lock(sys.argv[1])
    def fds():
        # The binding's own fds (wakeup pipe); a zk: session's socket is the library's
        # per-process session, kept on purpose, not a leak.
        out = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                if not os.readlink("/proc/self/fd/" + fd).startswith("socket:"):
                    out.append(fd)
            except OSError:
                pass
        return sorted(out)
    before = fds()
    print("waiting", flush=True)
    try:
        lock.acquire()
        print("ACQUIRED", flush=True)
    except KeyboardInterrupt:
        t = time.monotonic()
        clean = signal.set_wakeup_fd(-1) == -1 and fds() == before
        print("clean" if clean else "LEAK", "KeyboardInterrupt %.6f" % t, flush=True)
        sys.exit(3)
"""


def test_ctrl_c_while_waiting_raises_keyboardinterrupt_fast(target):
    holder = lockfn.Lock(target, limit=1)
    holder.acquire()
    before = lockfn.status(target)
    p = subprocess.Popen([sys.executable, "-u", "-c", textwrap.dedent(CTRL_C_CHILD), target],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=child_env())
    try:
        assert p.stdout.readline().strip() == "waiting"
        wait_sleeping(p.pid)
        time.sleep(0.3)  # let the child settle deep in the library's wait loop
        sent = time.monotonic()
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=10)
        exited = time.monotonic()
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 3, (out, err)
    assert out.startswith("clean "), out  # no wakeup fd or pipe of ours left in the child
    raised = float(out.split()[-1])
    latency = raised - sent
    print(f"Ctrl-C latency [{target.split(':')[0]}]: {latency * 1000:.1f} ms "
          f"(exit {1000 * (exited - sent):.0f} ms)")
    assert latency < 0.5, latency
    # nothing left behind: same holders as before, and after release the lock is free
    after = lockfn.status(target)
    assert [h["pid"] for h in after["holders"]] == [h["pid"] for h in before["holders"]]
    assert after.get("available") == before.get("available")
    holder.release()
    st = lockfn.status(target)
    assert st["held"] is False
    other = lockfn.Lock(target)
    assert other.acquire(blocking=False)
    other.release()


WAKEUP_CHILD = """
    import os, signal, sys, time, lockfn
    r, w = os.pipe2(os.O_NONBLOCK)
    signal.set_wakeup_fd(w)
    seen = []
    signal.signal(signal.SIGUSR1, lambda *a: seen.append("usr1"))
    lock = lockfn.Lock(sys.argv[1])
    print("waiting", flush=True)
    ok = lock.acquire(timeout=60)
    restored = signal.set_wakeup_fd(-1)
    data = os.read(r, 100)
    print(ok, seen, restored == w, list(data), flush=True)
    lock.release()
"""


def test_application_wakeup_fd_and_handlers_survive_a_wait(sem_target):
    holder = lockfn.Lock(sem_target)
    holder.acquire()
    p = spawn(WAKEUP_CHILD.replace("sys.argv[1]", repr(sem_target)))
    try:
        assert p.stdout.readline().strip() == "waiting"
        wait_sleeping(p.pid)
        time.sleep(0.2)
        p.send_signal(signal.SIGUSR1)
        time.sleep(0.3)
        assert p.poll() is None  # the handler returned: still waiting
        holder.release()
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, err
    assert out.strip() == f"True ['usr1'] True [{int(signal.SIGUSR1)}]", (out, err)


def test_acquire_in_a_thread_needs_no_wakeup_fd(sem_target):
    holder = lockfn.Lock(sem_target)
    holder.acquire()
    res = []
    t = threading.Thread(target=lambda: res.append(lockfn.Lock(sem_target).acquire(timeout=0.2)))
    t.start()
    t.join(30)
    assert res == [False]
    assert signal.set_wakeup_fd(-1) == -1  # nothing of ours left installed
    holder.release()


# --- figures -----------------------------------------------------------------------------

def test_uncontended_cycle_time(sem_target):
    lock = lockfn.Lock(sem_target)
    n = 2000
    t0 = time.perf_counter()
    for _ in range(n):
        lock.acquire()
        lock.release()
    per = (time.perf_counter() - t0) / n
    print(f"Python uncontended acquire+release on sem: {per * 1e6:.1f} us")
    assert per < 0.05


# --- lost --------------------------------------------------------------------------------

def lockfn_cli():
    from conftest import ROOT
    return os.environ.get("LOCKFN") or os.path.join(ROOT, "target", "debug", "lockfn")


def force_release(target):
    r = subprocess.run([lockfn_cli(), "release", "--force", target], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_update_reports_lost_lock_then_release_is_quiet(sem_target):
    lock = lockfn.Lock(sem_target)
    lock.acquire()
    force_release(sem_target)
    with pytest.raises(lockfn.LockLost) as ei:
        lock.update()
    assert ei.value.code == 3 and sem_target in str(ei.value)
    lock.release()  # the loss was reported by update(): no second error
    assert not lock.locked()


def test_release_of_a_lost_lock_raises_lost(sem_target):
    lock = lockfn.Lock(sem_target)
    lock.acquire()
    force_release(sem_target)
    with pytest.raises(lockfn.LockLost):
        lock.release()
    assert not lock.locked()
    with pytest.raises(lockfn.LockLost):
        with lockfn.Lock(sem_target) as l2:
            force_release(sem_target)
    assert not l2.locked()


def test_library_next_to_the_package_is_found(tmp_path):
    import shutil
    pkg = tmp_path / "lockfn"
    shutil.copytree(os.path.join(PKG, "lockfn"), pkg,
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(lockfn.library_path(), pkg / "liblockfn.so")
    env = {k: v for k, v in os.environ.items() if k not in ("LOCKFN_LIBRARY", "LD_LIBRARY_PATH")}
    env["PYTHONPATH"] = str(tmp_path)
    r = subprocess.run([sys.executable, "-c",
                        "import lockfn; print(lockfn.library_path()); print(lockfn.version())"],
                       capture_output=True, text=True, env=env, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(pkg / "liblockfn.so"), lockfn.__version__]
