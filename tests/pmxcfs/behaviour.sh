#!/usr/bin/env bash
# Checks, against whatever is mounted at PVE_ROOT (the directory holding priv/), each fact of
# pmxcfs's behaviour that lockfn relies on (docs: /work/shared/PMXCFS.md, tests/pmxcfs/README.md).
# Run it on the emulator (CI, a short TTL) and by hand on a real pmxcfs:
#
#   tests/pmxcfs/behaviour.sh PVE_ROOT [TTL]          TTL in seconds, default 120 (pmxcfs's)
#   RESTART_CMD='…' tests/pmxcfs/behaviour.sh /etc/pve   also the checks across a restart
#   FREEZE_CMD='…' THAW_CMD='…'                          also: a call blocks while frozen
#
# e.g. behaviour.sh /etc/pve (about 125 s), or with
#   RESTART_CMD='/tmp/pmxcfs-scratch/ctl.sh restart'
# Needs root and python3; the non-root check needs setpriv. Makes only directories and files
# named bhv-PID-… (under priv/lock and priv/) and removes what is left of them at the end.
# Prints one line per check (ok / FAIL / skip, with what was seen) and exits 1 on any FAIL.
set -uo pipefail
[[ $# -ge 1 && -d $1 ]] || {
  echo "usage: $0 PVE_ROOT [TTL]   (env RESTART_CMD: how to restart it)" >&2
  exit 2
}
exec python3 - "$1" "${2:-120}" <<'PY'
import errno, os, subprocess, sys, time

ROOT, TTL = sys.argv[1], int(sys.argv[2])
PRIV = os.path.join(ROOT, "priv")
LOCK = os.path.join(PRIV, "lock")
RESTART = os.environ.get("RESTART_CMD", "")
P = "bhv-%d-" % os.getpid()
fails = 0

def res(name, ok, seen=""):
    global fails
    if ok is None:
        print("skip %s%s" % (name, (": " + seen) if seen else ""))
    else:
        print("%s %s%s" % ("ok  " if ok else "FAIL", name, (": " + seen) if seen else ""))
        fails += 0 if ok else 1
    sys.stdout.flush()

def err(f, *a):
    """errno of f(*a), 0 on success."""
    try:
        f(*a)
        return 0
    except OSError as e:
        return e.errno

def en(e):
    return errno.errorcode.get(e, str(e)) if e else "success"

def L(n):
    return os.path.join(LOCK, P + n)

def settle():
    """Wait until the wall clock is more than 20 ms into a second (and not about to leave it):
    pmxcfs takes its times from time(2), a coarse clock that lags by up to a few ms, so a
    whole second read here just after it began may not have begun there yet."""
    while not 0.02 <= time.time() % 1 <= 0.97:
        time.sleep(0.005)

def unlock(p):
    """The unlock request utime(p, 0, 0), with the wall clock before and after it."""
    settle()
    tb = time.time()
    e = err(os.utime, p, (0, 0))
    return e, tb, time.time()

# --- layout, modes ------------------------------------------------------------------------
for d in (PRIV, LOCK):
    try:
        st = os.stat(d)
        res("%s is 0700 root:www-data(33)" % d[len(ROOT):],
            (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o700, 0, 33),
            "mode %o uid %d gid %d" % (st.st_mode & 0o7777, st.st_uid, st.st_gid))
    except OSError as e:
        res("%s exists" % d, False, str(e))
        sys.exit(1)

# --- mkdir, EEXIST, times -----------------------------------------------------------------
a = L("a")
settle()
t0 = time.time()
e1 = err(os.mkdir, a)
e2 = err(os.mkdir, a)
res("mkdir makes a lock, a second mkdir is EEXIST", (e1, e2) == (0, errno.EEXIST),
    "%s, %s" % (en(e1), en(e2)))
st = os.stat(a)
res("lock dir is 0700 root:www-data(33)",
    (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o700, 0, 33),
    "mode %o uid %d gid %d" % (st.st_mode & 0o7777, st.st_uid, st.st_gid))
ns = (st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns)
res("times are whole seconds, atime = mtime = ctime = mkdir's second",
    len(set(ns)) == 1 and ns[0] % 10**9 == 0 and int(t0) <= ns[0] // 10**9 <= int(time.time()),
    "atime %d mtime %d ctime %d (ns), mkdir at %.3f" % (ns + (t0,)))
mA = st.st_mtime_ns // 10**9

# --- unlock request while young ------------------------------------------------------------
e, _, _ = unlock(a)
res("unlock request utime(0,0) on a young lock is EACCES and changes nothing",
    e == errno.EACCES and os.stat(a).st_mtime_ns // 10**9 == mA, en(e))

# --- refresh ------------------------------------------------------------------------------
r = L("r")
os.mkdir(r)
m = os.stat(r).st_mtime_ns // 10**9
e = err(os.utime, r, (m, m))
res("refresh utime(t,t) with t == mtime is accepted", e == 0, en(e))
e = err(os.utime, r, (m - 1, m - 1))
res("refresh with t < mtime is EACCES", e == errno.EACCES, en(e))
fut = m + 1000
e = err(os.utime, r, (fut, fut))
st = os.stat(r)
got = (st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns)
res("refresh with t > mtime (future) is accepted and sets atime = mtime = ctime = t",
    e == 0 and got == (fut * 10**9,) * 3, "%s, times %s" % (en(e), got))
e = err(os.utime, r, (m, m))
res("after that, the old t (now < mtime) is EACCES", e == errno.EACCES, en(e))
os.rmdir(r)

# --- rename, chmod, chown -------------------------------------------------------------------
e = err(os.rename, a, L("a2"))
res("rename of a lock dir is EACCES", e == errno.EACCES, en(e))
e = err(os.chmod, a, 0o700)
res("chmod 0700 of a lock dir is EPERM", e == errno.EPERM, en(e))
e = err(os.chmod, a, 0o600)
res("chmod 0600 (the one mode pmxcfs 'accepts' in priv/) succeeds and changes nothing",
    e == 0 and os.stat(a).st_mode & 0o7777 == 0o700, en(e))
e = err(os.chown, a, 65534, -1)
res("chown to another user is EPERM", e == errno.EPERM, en(e))

# --- ENOTEMPTY, nested ------------------------------------------------------------------------
n = L("n")
os.mkdir(n)
with open(os.path.join(n, "f"), "w") as f:
    f.write("x")
e = err(os.rmdir, n)
res("rmdir of a lock dir holding a file is ENOTEMPTY", e == errno.ENOTEMPTY, en(e))
os.unlink(os.path.join(n, "f"))
os.mkdir(os.path.join(n, "sub"))
e = err(os.rmdir, n)
res("rmdir of a lock dir holding a dir is ENOTEMPTY", e == errno.ENOTEMPTY, en(e))
os.rmdir(os.path.join(n, "sub"))
os.rmdir(n)

# --- names ------------------------------------------------------------------------------------
for ln, want in ((255, 0), (1024 - len(P), 0), (1025 - len(P), errno.ENAMETOOLONG)):
    p = L("x" * ln)
    e = err(os.mkdir, p)
    res("a lock name of %d bytes: %s" % (len(P) + ln, en(want)), e == want, en(e))
    if e == 0:
        os.rmdir(p)

# --- st_ino -------------------------------------------------------------------------------------
g = L("g")
os.mkdir(g)
i1 = os.stat(g).st_ino
os.rmdir(g)
os.mkdir(g)
i2 = os.stat(g).st_ino
os.rmdir(g)
res("rmdir + mkdir (nothing open): a new, larger st_ino", i2 > i1, "%d then %d" % (i1, i2))
os.mkdir(g)
fd = os.open(g, os.O_RDONLY | os.O_DIRECTORY)
i1 = os.fstat(fd).st_ino
os.rmdir(g)
os.mkdir(g)
i2 = os.stat(g).st_ino
os.close(fd)
os.rmdir(g)
res("rmdir + mkdir with a descriptor open on the old one: a new st_ino (rmdir goes through "
    "libfuse, which forgets the name)", i2 != i1, "%d then %d" % (i1, i2))

# --- a regular file under priv/ -------------------------------------------------------------
fdir = os.path.join(PRIV, P + "files")
os.mkdir(fdir)
tok = os.path.join(fdir, "token")
try:
    fd = os.open(tok, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, b"hello world\n")
    os.close(fd)
    fd = os.open(tok, os.O_WRONLY)
    os.pwrite(fd, b"HELLO", 0)
    os.close(fd)
    with open(tok, "rb") as f:
        data = f.read()
    st = os.stat(tok)
    res("a file in priv/: create, write, pwrite at 0 without truncation, read back",
        data == b"HELLO world\n", repr(data))
    res("a file in priv/ is 0600 root:www-data(33), whole-second times",
        (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o600, 0, 33)
        and st.st_mtime_ns % 10**9 == 0,
        "mode %o uid %d gid %d mtime_ns %d" % (st.st_mode & 0o7777, st.st_uid, st.st_gid,
                                               st.st_mtime_ns))
    fd = os.open(tok, os.O_WRONLY | os.O_TRUNC)
    os.write(fd, b"7")
    os.close(fd)
    with open(tok, "rb") as f:
        data = f.read()
    res("O_TRUNC truncates", data == b"7", repr(data))
    e = err(os.rename, tok, tok + ".new")
    e2 = err(os.rename, tok + ".new", tok)
    res("rename of a file in priv/ (also back over nothing)", (e, e2) == (0, 0),
        "%s, %s" % (en(e), en(e2)))
    tmp = tok + ".tmp"
    with open(tmp, "wb") as f:
        f.write(b"new")
    e = err(os.rename, tmp, tok)
    with open(tok, "rb") as f:
        data = f.read()
    res("rename of a file over an existing one replaces it", e == 0 and data == b"new",
        "%s, %r" % (en(e), data))
except OSError as ex:
    res("a file in priv/", False, str(ex))

# --- non-root ---------------------------------------------------------------------------------
try:
    out = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--", "python3", "-c",
         "import os,sys\n"
         "for f,a in ((os.stat,(sys.argv[1],)),(os.mkdir,(sys.argv[2],)),(os.listdir,(sys.argv[3],))):\n"
         "  try: f(*a); print('success')\n"
         "  except OSError as e: print(e.errno)\n",
         LOCK, L("nobody"), PRIV], capture_output=True, text=True, timeout=30)
    got = out.stdout.split()
    res("non-root (uid 65534): stat priv/lock, mkdir a lock, list priv/ are EACCES",
        got == [str(errno.EACCES)] * 3, " ".join(got) or out.stderr.strip())
except (OSError, subprocess.SubprocessError) as ex:
    res("non-root gets EACCES", None, "setpriv: %s" % ex)

# --- frozen (optional) ------------------------------------------------------------------------
FREEZE, THAW = os.environ.get("FREEZE_CMD", ""), os.environ.get("THAW_CMD", "")
if FREEZE and THAW:
    subprocess.run(["sh", "-c", FREEZE], check=False)
    t0 = time.time()
    child = subprocess.Popen(["stat", L("frozen")], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        child.wait(timeout=1.5)
        blocked = False
    except subprocess.TimeoutExpired:
        blocked = True
    subprocess.run(["sh", "-c", THAW], check=False)
    try:
        rc = child.wait(timeout=10)
    except subprocess.TimeoutExpired:
        child.kill()
        rc = None
    res("frozen (%s): a stat blocks until thawed, then answers" % FREEZE,
        blocked and rc is not None and time.time() - t0 >= 1.5,
        "blocked %s, then exit %s after %.1f s" % (blocked, rc, time.time() - t0))
else:
    res("frozen checks", None, "FREEZE_CMD and THAW_CMD not set")

# --- restart (optional), expiry, refresh resets the lock time ---------------------------------
# Locks, all polled with unlock requests in one loop so the whole takes about TTL + 5 s:
#   R  made before a restart: expires TTL after the restart, not after its making;
#   A  expires TTL after its making; a descriptor stays open on it (st_ino reuse);
#   B  made with A, refreshed with t == mtime 2 s later: outlives A, expires TTL after that.
def wait_second(s):
    while int(time.time()) < s:
        time.sleep(0.02)
    settle()

R = L("restart")
restart = None
if RESTART:
    os.mkdir(R)
    mR = os.stat(R).st_mtime_ns // 10**9
    rfile = os.path.join(fdir, "token")
    ino_before = os.stat(R).st_ino
    wait_second(mR + 2)
    ts0 = time.time()
    rc = subprocess.run(["sh", "-c", RESTART]).returncode
    ts1 = time.time()
    ok = rc == 0 and os.path.isdir(R)
    res("restart (%s): the lock dir survives" % RESTART, ok, "exit %d, %.1f s" % (rc, ts1 - ts0))
    try:
        with open(rfile, "rb") as f:
            data = f.read()
    except OSError as ex:
        data = repr(ex)
    res("restart: a file in priv/ survives with its content", data == b"new", repr(data))
    ino_after = os.stat(R).st_ino
    res("restart: st_ino numbering starts again (the same dir gets a smaller st_ino)",
        ino_after < ino_before, "%d before, %d after" % (ino_before, ino_after))
    restart = (mR, ts0, ts1)
else:
    res("restart checks", None, "RESTART_CMD not set")

# A: st_ino and expiry
os.rmdir(a)
settle()
os.mkdir(a)
tA = time.time()
mA = os.stat(a).st_mtime_ns // 10**9
fdA = os.open(a, os.O_RDONLY | os.O_DIRECTORY)
inoA = os.fstat(fdA).st_ino
b = L("b")
os.mkdir(b)
mB = os.stat(b).st_mtime_ns // 10**9
wait_second(mB + 2)
tr0 = time.time()
eref = err(os.utime, b, (mB, mB))
tr1 = time.time()
res("refresh of B with t == mtime, 2 s after its making", eref == 0, en(eref))

state = {"A": [mA, None, True, None], "B": [mB, None, True, None]}  # m, expired at, ok, seen
if restart:
    state["R"] = [restart[0], None, True, None]
last_b_eacces = None
deadline = time.time() + TTL + 30
while time.time() < deadline and any(v[1] is None for v in state.values()):
    for k, v in state.items():
        if v[1] is not None:
            continue
        p = {"A": a, "B": b, "R": R}[k]
        e, tb, ta = unlock(p)
        if e == errno.EACCES:
            # the lock time (ltime) is not older than TTL whole seconds
            lt_min = {"A": mA, "B": int(tr0), "R": int(restart[1]) if restart else 0}[k]
            if k == "B":
                last_b_eacces = tb
            if int(tb) > {"A": mA + 1, "B": int(tr1), "R": int(restart[2]) + 1 if restart else 0}[k] + TTL:
                v[2] = False
                v[3] = "EACCES at %.3f, lock time <= %s + TTL" % (tb, lt_min)
        else:
            v[1] = (e, tb, ta)
    time.sleep(0.2)

eA = state["A"][1]
if eA is None:
    res("A expires", False, "still there after TTL + 30 s")
else:
    e, tb, ta = eA
    el = ta - tA
    res("unlock request on A: EACCES until TTL whole seconds after mkdir, then ENOENT "
        "(deleted)", e == errno.ENOENT and state["A"][2] and int(ta) >= mA + TTL + 1,
        "%s at +%.2f s after mkdir%s" % (en(e), el, ", " + state["A"][3] if state["A"][3] else ""))
    ex = err(os.stat, a)
    e2 = err(os.mkdir, a)
    res("after the expiry, mkdir of the same name succeeds at once", e2 == 0,
        "%s (stat just before: %s)" % (en(e2), en(ex)))
    if e2 == 0:
        i2 = os.stat(a).st_ino
        res("a dir re-made after an expiry while a descriptor on the old one is open gets "
            "the SAME st_ino", i2 == inoA, "%d then %d" % (inoA, i2))
os.close(fdA)

eB = state["B"][1]
if eB is None:
    res("B expires", False, "still there after TTL + 30 s")
else:
    e, tb, ta = eB
    outlived = last_b_eacces is not None and int(last_b_eacces) >= mB + TTL + 2
    res("a refresh with t == mtime resets the lock time: B outlives TTL from its making, "
        "expires TTL after the refresh",
        e == errno.ENOENT and state["B"][2] and outlived and int(ta) >= int(tr0) + TTL + 1,
        "%s at +%.2f s after the refresh, +%.2f after mkdir; last EACCES +%.2f after mkdir%s"
        % (en(e), ta - tr0, ta - mB, (last_b_eacces or 0) - mB,
           ", " + state["B"][3] if state["B"][3] else ""))

if restart:
    eR = state["R"][1]
    if eR is None:
        res("R expires", False, "still there after TTL + 30 s")
    else:
        e, tb, ta = eR
        mR, ts0, ts1 = restart
        res("restart resets lock times: R expires TTL after the restart, not after its making",
            e == errno.ENOENT and state["R"][2] and int(ta) >= int(ts0) + TTL + 1,
            "%s at +%.2f s after the restart began, +%.2f after mkdir%s"
            % (en(e), ta - ts0, ta - mR, ", " + state["R"][3] if state["R"][3] else ""))

# --- clean up ---------------------------------------------------------------------------------
for d in (LOCK, PRIV):
    try:
        names = [x for x in os.listdir(d) if x.startswith(P)]
    except OSError:
        names = []
    for x in names:
        p = os.path.join(d, x)
        if os.path.isdir(p):
            for y in os.listdir(p):
                try:
                    os.unlink(os.path.join(p, y))
                except OSError:
                    pass
            err(os.rmdir, p)
        else:
            err(os.unlink, p)

print("behaviour: %d check(s) failed" % fails if fails else "behaviour: all checks passed")
sys.exit(1 if fails else 0)
PY
