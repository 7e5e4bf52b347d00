"""ctypes declarations of liblockfn's C ABI (include/lockfn.h) and library lookup.

ctypes cannot read a C header, so the constants and the struct layout below are copies of
include/lockfn.h; tests/test_header.py fails when a copy differs from the header.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from typing import Optional

LOCK_OK = 0
LOCK_BUSY = 1
LOCK_EINVAL = 2
LOCK_ELOST = 3
LOCK_ENOTHELD = 4
LOCK_EUNAVAILABLE = 5
LOCK_EPERM = 6
LOCK_ECANCELED = 7
LOCK_EFORKED = 8
LOCK_EINTERNAL = 9

LOCK_FLAG_SHARED = 1
LOCK_FLAG_REENTRANT = 2
# Persistent locks outlive their process; how long per service is said in lockfn.h at
# LOCK_FLAG_PERSIST. This wrapper holds locks for the life of a Lock object only: take a
# persistent one with `lockfn acquire --persist TARGET`, end it with `lockfn release TARGET`.
LOCK_FLAG_PERSIST = 4
LOCK_FLAG_AUTO_RENEW = 8

SONAME = "liblockfn.so.0"


class LockOptions(ctypes.Structure):
    """`struct lock_options`; always filled by `lock_options_init` first."""

    _fields_ = [
        ("size", ctypes.c_uint32),
        ("timeout", ctypes.c_double),
        ("ttl", ctypes.c_uint32),
        ("limit", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("holder", ctypes.c_char_p),
        ("cancel_fd", ctypes.c_int),
        ("mode", ctypes.c_uint32),
        ("lock_delay", ctypes.c_double),
        ("reserved", ctypes.c_uint64 * 4),
    ]


_lib: Optional[ctypes.CDLL] = None
_lib_lock = threading.Lock()


def _candidates() -> list:
    env = os.environ.get("LOCKFN_LIBRARY")
    if env:
        # An explicit choice is final: never fall back to another copy silently.
        return [env]
    here = os.path.dirname(os.path.abspath(__file__))
    # A copy shipped inside the package (a wheel), then the system loader by soname.
    found = [os.path.join(here, n) for n in ("liblockfn.so", SONAME)]
    found = [p for p in found if os.path.exists(p)]
    found.append(SONAME)
    alt = ctypes.util.find_library("lockfn")
    if alt and alt not in found:
        found.append(alt)
    return found


def _declare(lib: ctypes.CDLL) -> None:
    c_int, c_char_p, c_void_p = ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p
    opts_p = ctypes.POINTER(LockOptions)
    lib.lock_options_init.argtypes = [opts_p]
    lib.lock_options_init.restype = None
    lib.lock_acquire.argtypes = [c_char_p, opts_p, ctypes.POINTER(c_void_p)]
    lib.lock_acquire.restype = c_int
    lib.lock_update.argtypes = [c_void_p]
    lib.lock_update.restype = c_int
    lib.lock_release.argtypes = [c_void_p]
    lib.lock_release.restype = c_int
    lib.lock_gc.argtypes = [c_char_p, ctypes.POINTER(ctypes.c_uint)]
    lib.lock_gc.restype = c_int
    lib.lock_token.argtypes = [c_void_p]
    lib.lock_token.restype = ctypes.c_uint64
    # char ** out-parameter: a c_void_p so that ctypes does not copy and lose the pointer.
    lib.lock_status.argtypes = [c_char_p, ctypes.POINTER(c_void_p)]
    lib.lock_status.restype = c_int
    lib.lock_string_free.argtypes = [c_void_p]
    lib.lock_string_free.restype = None
    lib.lock_strerror.argtypes = [c_int]
    lib.lock_strerror.restype = c_char_p
    lib.lock_last_error.argtypes = []
    lib.lock_last_error.restype = c_char_p
    lib.lock_version.argtypes = []
    lib.lock_version.restype = c_char_p


def lib() -> ctypes.CDLL:
    """The loaded library: `LOCKFN_LIBRARY`, else next to this package, else the system's."""
    global _lib
    if _lib is not None:
        return _lib
    with _lib_lock:
        if _lib is None:
            errors = []
            for cand in _candidates():
                try:
                    loaded = ctypes.CDLL(cand)
                except OSError as e:
                    # dlerror() usually starts with the name already
                    errors.append(str(e) if str(e).startswith(cand) else f"{cand}: {e}")
                    continue
                _declare(loaded)
                _lib = loaded
                break
            else:
                if os.environ.get("LOCKFN_LIBRARY"):
                    raise OSError(f"lockfn: cannot load LOCKFN_LIBRARY ({errors[0]})")
                raise OSError(
                    "lockfn: cannot load liblockfn ("
                    + "; ".join(errors)
                    + "): install it (liblockfn0, or `make install`); after `make install`,"
                    + " run ldconfig or set LOCKFN_LIBRARY to the library's path"
                )
    return _lib


def library_path() -> str:
    """The file the library was loaded from (for diagnostics)."""
    loaded = lib()
    return str(loaded._name)
