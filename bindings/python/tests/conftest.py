"""Fixtures: the library under test, a temporary pmxcfs root, and one target per backend.

The library is the one named by LOCKFN_LIBRARY, else target/debug/liblockfn.so of this
checkout; the package is imported from this checkout (bindings/python).
"""

import glob
import itertools
import os
import shutil
import sys
import tempfile

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
PKG = os.path.dirname(HERE)
ROOT = os.path.dirname(os.path.dirname(PKG))
sys.path.insert(0, PKG)

if not os.environ.get("LOCKFN_LIBRARY"):
    for cand in ("target/debug/liblockfn.so", "target/release/liblockfn.so"):
        if os.path.exists(os.path.join(ROOT, cand)):
            os.environ["LOCKFN_LIBRARY"] = os.path.join(ROOT, cand)
            break

# pmxcfs: a plain lock directory on tmpfs (inode numbers, the fencing tokens, are not reused
# at once there, as on pmxcfs), with the node-local flock and record directories beside it.
_PMXCFS_TMP = None
if not os.environ.get("LOCKFN_PMXCFS_DIR"):
    _PMXCFS_TMP = tempfile.mkdtemp(prefix="lockfn-py-pmxcfs-",
                                   dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    for var, sub in (("LOCKFN_PMXCFS_DIR", "lock"), ("LOCKFN_PMXLOCK_DIR", "pmxlock"),
                     ("LOCKFN_RUN_DIR", "run")):
        os.makedirs(os.path.join(_PMXCFS_TMP, sub))
        os.environ.setdefault(var, os.path.join(_PMXCFS_TMP, sub))

import lockfn  # noqa: E402

PREFIX = f"py{os.getpid()}"
_counter = itertools.count()

# backend -> environment variable naming its server (None: host-local)
BACKENDS = {"sem": None, "pmxcfs": None, "zk": "ZKHOSTS", "consul": "CONSUL_HTTP_ADDR"}


def pytest_sessionfinish(session, exitstatus):
    for path in glob.glob(f"/dev/shm/sem.{PREFIX}-*") + glob.glob(f"/dev/shm/lockfn@table.{PREFIX}-*"):
        try:
            os.unlink(path)
        except OSError:
            pass
    if _PMXCFS_TMP:
        shutil.rmtree(_PMXCFS_TMP, ignore_errors=True)


def backend_usable(backend):
    """None if usable, else the reason to skip; fails when a required server is missing."""
    env = BACKENDS[backend]
    if env and not os.environ.get(env):
        if os.environ.get("LOCKFN_TEST_REQUIRE_SERVERS") == "1":
            pytest.fail(f"{env} is not set but LOCKFN_TEST_REQUIRE_SERVERS=1")
        return f"{env} not set: no {backend} server for this run"
    try:
        lockfn.status(f"{backend}:{PREFIX}-probe")
    except lockfn.LockUnavailable as e:
        if "not implemented" in str(e):
            return f"the library says: {e}"
        raise
    return None


def new_name():
    return f"{PREFIX}-{next(_counter)}"


@pytest.fixture(params=list(BACKENDS))
def backend(request):
    reason = backend_usable(request.param)
    if reason:
        pytest.skip(reason)
    return request.param


@pytest.fixture
def target(backend):
    return f"{backend}:{new_name()}"


@pytest.fixture
def sem_target():
    return f"sem:{new_name()}"
