"""lockfn: one lock API over POSIX semaphores (``sem:``), Proxmox pmxcfs (``pmxcfs:``),
ZooKeeper (``zk:``) and Consul (``consul:``).

A thin ctypes binding of liblockfn; all lock logic lives in the library::

    import lockfn

    with lockfn.Lock("sem:backup", holder="nightly backup") as lock:
        print("token", lock.token)

    lock = lockfn.Lock("pmxcfs:vm-100")
    if lock.acquire(timeout=10):           # False on timeout, like threading.Lock
        try:
            lock.update()                  # renew; LockLost if the lock is gone
        finally:
            lock.release()

Ctrl-C (or any signal with a Python handler) while waiting stops the wait at once and the
handler runs: ``KeyboardInterrupt`` is raised and nothing is left behind. A handler that does
not raise lets the wait go on with the time left.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import signal
import threading
import time
from typing import Any, Dict, Optional, Union

from . import _ffi
from ._ffi import library_path

__all__ = [
    "Lock",
    "status",
    "gc",
    "version",
    "library_path",
    "LockError",
    "LockBusy",
    "LockInvalid",
    "LockLost",
    "LockNotHeld",
    "LockUnavailable",
    "LockPermissionError",
    "LockCanceled",
    "LockForked",
    "LockInternalError",
]

__version__ = "0.1.0"


class LockError(Exception):
    """A lockfn failure. ``code`` is the library's LOCK_* code, ``target`` the lock (if any)."""

    code: int = -1

    def __init__(self, message: str, code: Optional[int] = None, target: Optional[str] = None):
        super().__init__(message)
        if code is not None:
            self.code = code
        self.target = target
        self.message = message

    def __str__(self) -> str:
        return self.message


class LockBusy(LockError, TimeoutError):
    """Held elsewhere: a try-once failed or the timeout passed (raised by ``with``)."""

    code = _ffi.LOCK_BUSY


class LockInvalid(LockError, ValueError):
    """A malformed target or name, or bad options."""

    code = _ffi.LOCK_EINVAL


class LockLost(LockError):
    """The lock was held and is gone (session expired, lock removed): stop the work."""

    code = _ffi.LOCK_ELOST


class LockNotHeld(LockError, RuntimeError):
    """Released a lock that is not held (a double release), like threading.Lock's RuntimeError."""

    code = _ffi.LOCK_ENOTHELD


class LockUnavailable(LockError, ConnectionError):
    """The service cannot be reached, is not running, or the backend is not in this build."""

    code = _ffi.LOCK_EUNAVAILABLE


class LockPermissionError(LockError, PermissionError):
    """The service or the operating system refused access."""

    code = _ffi.LOCK_EPERM


class LockCanceled(LockError):
    """The wait was cancelled (through the library's cancel fd, not by a Python signal)."""

    code = _ffi.LOCK_ECANCELED


class LockForked(LockError):
    """The lock belongs to the parent process; in the child it is an error, the parent keeps it."""

    code = _ffi.LOCK_EFORKED


class LockInternalError(LockError):
    """A bug in lockfn or an answer from the service that makes no sense."""

    code = _ffi.LOCK_EINTERNAL


_ERRORS = {
    cls.code: cls
    for cls in (
        LockBusy,
        LockInvalid,
        LockLost,
        LockNotHeld,
        LockUnavailable,
        LockPermissionError,
        LockCanceled,
        LockForked,
        LockInternalError,
    )
}


def _error(rc: int, target: Optional[str] = None) -> LockError:
    lib = _ffi.lib()
    detail = (lib.lock_last_error() or b"").decode("utf-8", "replace")
    if not detail:
        detail = (lib.lock_strerror(rc) or b"").decode("utf-8", "replace")
    cls = _ERRORS.get(rc, LockError)
    return cls(detail, rc, target)


def _encode(text: str, what: str) -> bytes:
    if not isinstance(text, str):
        raise LockInvalid(f"{what} must be a str, not {type(text).__name__}", _ffi.LOCK_EINVAL)
    if "\0" in text:
        raise LockInvalid(f"{what} contains a NUL character", _ffi.LOCK_EINVAL)
    return text.encode("utf-8", "surrogateescape")


def _check_signals() -> None:
    """Run pending Python signal handlers now (they may raise, e.g. KeyboardInterrupt)."""
    try:
        check = ctypes.pythonapi.PyErr_CheckSignals
    except (AttributeError, ValueError):  # pragma: no cover - ctypes without pythonapi
        return
    check.argtypes = []
    check.restype = ctypes.c_int
    check()  # a PyDLL function: an exception set by a handler is raised here


class _SignalWakeup:
    """While active in the main thread, a signal with a Python handler makes ``fd`` readable.

    The write end of a private pipe becomes the process's wakeup fd (``signal.set_wakeup_fd``)
    for the duration of one wait; afterwards the application's previous wakeup fd is restored
    and whatever bytes (signal numbers) arrived are forwarded to it, so an event loop's own
    self-pipe still learns about the signal. In other threads (where set_wakeup_fd is not
    allowed) ``fd`` is -1: signals are delivered to the main thread anyway.
    """

    def __init__(self) -> None:
        self.fd = -1
        self.signalled = False
        self._w = -1
        self._prev = -1

    def __enter__(self) -> "_SignalWakeup":
        if threading.current_thread() is not threading.main_thread():
            return self
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            self._prev = signal.set_wakeup_fd(w)
        except (ValueError, OSError):
            os.close(r)
            os.close(w)
            return self
        self.fd, self._w = r, w
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.fd < 0:
            return
        # Nested try/finally: a KeyboardInterrupt raised by the handler of the signal that
        # ended the wait may land anywhere in here; every step still runs.
        data = b""
        try:
            try:
                signal.set_wakeup_fd(self._prev)
            except (ValueError, OSError):
                # The application's fd was closed meanwhile: leave no fd of ours installed.
                signal.set_wakeup_fd(-1)
        finally:
            try:
                while True:
                    try:
                        chunk = os.read(self.fd, 512)
                    except OSError:  # BlockingIOError: drained
                        break
                    if not chunk:
                        break
                    data += chunk
            finally:
                os.close(self.fd)
                os.close(self._w)
                self.fd = -1
        if data:
            self.signalled = True
            if self._prev >= 0:
                try:
                    os.write(self._prev, data)
                except OSError:
                    pass


def _uint32(value, what: str, target: str) -> int:
    """``value`` as the C ``uint32_t`` field it goes into. Only the conversion is checked
    (ctypes would wrap -1 to 4294967295 or truncate 2.5); what the value means (limit >= 1,
    a service's ttl range) is the library's to judge, and its error comes through."""
    whole = not isinstance(value, bool) and (
        isinstance(value, int)
        or (isinstance(value, float) and math.isfinite(value) and value == int(value)))
    if not whole or not 0 <= value <= 0xFFFFFFFF:
        raise LockInvalid(f"{what} must be a whole number from 0 to 4294967295 "
                          f"(lock_options.{what} is a uint32_t), not {value!r}",
                          _ffi.LOCK_EINVAL, target)
    return int(value)


def _check_timeout(timeout) -> float:
    """A timeout as threading.Lock takes it: seconds >= 0, or -1 for forever. NaN and other
    negatives raise ValueError; one too long for the clock (inf, 1e300) means forever."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise ValueError(f"timeout must be a number of seconds, not {timeout!r}")
    if math.isnan(timeout):
        raise ValueError("timeout must be a number of seconds, not nan")
    if timeout < 0 and timeout != -1:
        raise ValueError("timeout value must be a non-negative number or -1")
    if timeout >= threading.TIMEOUT_MAX:
        return -1
    return timeout


def _acquire_handle(target: bytes, name: str, opts: _ffi.LockOptions,
                    timeout: float) -> Union[int, LockError]:
    """Acquire through the library: the handle, or the library's busy error (try-once failed
    or the time is up), which ``with`` raises as it is."""
    lib = _ffi.lib()
    deadline = None if timeout < 0 else time.monotonic() + timeout
    # Uncontended fast path: one try without the signal plumbing (nothing to interrupt).
    opts.timeout = 0.0
    opts.cancel_fd = -1
    out = ctypes.c_void_p()
    try:
        rc = lib.lock_acquire(target, ctypes.byref(opts), ctypes.byref(out))
    except BaseException:
        if out.value:
            lib.lock_release(out)
        raise
    if rc == _ffi.LOCK_OK:
        return out.value
    if rc != _ffi.LOCK_BUSY:
        raise _error(rc, name)
    if timeout == 0:
        return _error(rc, name)
    while True:
        opts.timeout = -1.0 if deadline is None else max(0.0, deadline - time.monotonic())
        out = ctypes.c_void_p()
        try:
            with _SignalWakeup() as wake:
                opts.cancel_fd = wake.fd
                rc = lib.lock_acquire(target, ctypes.byref(opts), ctypes.byref(out))
        except BaseException:
            # A signal handler raised right as the call returned: if the lock was acquired in
            # that instant, give it back so that nothing is left behind.
            if out.value:
                lib.lock_release(out)
            raise
        if rc == _ffi.LOCK_OK:
            return out.value
        if rc == _ffi.LOCK_BUSY:
            return _error(rc, name)
        if rc == _ffi.LOCK_ECANCELED and wake.signalled:
            _check_signals()  # raises KeyboardInterrupt & co.
            # The handler returned: wait on for the time left (PEP 475); with none left, the
            # next call is a last try once, whose busy error is the library's.
            continue
        raise _error(rc, name)


class Lock:
    """A lock named by a target string: ``sem:NAME``, ``pmxcfs:NAME``, ``zk:NAME``,
    ``consul:NAME``, ``zk://h:p/PATH``, ``consul://h:p/KEY`` or a bare ``NAME``.

    Works like :class:`threading.Lock` (``acquire(blocking=True, timeout=-1) -> bool``,
    ``release()``, ``locked()``, context manager) across processes and hosts; ``held`` says
    whether this object holds it.

    :param ttl: seconds the lock survives without :meth:`update` where the service has a TTL.
    :param limit: holders at once; > 1 makes a counting semaphore.
    :param shared: a read lock (many readers or one writer).
    :param holder: free text stored in the holder record (see :func:`status`).
    :param timeout: how long ``with lock:`` waits (default forever); it raises
        :class:`LockBusy` when the time is up.
    :param auto_renew: renew in a background thread of the library while held.
    :param reentrant: a second acquisition by this process succeeds at once (each needs its
        own release; use separate Lock objects).
    """

    def __init__(
        self,
        target: str,
        *,
        ttl: Optional[int] = None,
        limit: int = 1,
        shared: bool = False,
        holder: Optional[str] = None,
        timeout: float = -1,
        auto_renew: bool = False,
        reentrant: bool = False,
    ) -> None:
        self.target = target
        self._target = _encode(target, "target")
        self._holder = None if holder is None else _encode(holder, "holder")
        self.ttl = None if ttl is None else _uint32(ttl, "ttl", target)
        self.limit = _uint32(limit, "limit", target)
        self.shared = bool(shared)
        self.timeout = -1 if timeout is None else _check_timeout(timeout)
        flags = 0
        if shared:
            flags |= _ffi.LOCK_FLAG_SHARED
        if auto_renew:
            flags |= _ffi.LOCK_FLAG_AUTO_RENEW
        if reentrant:
            flags |= _ffi.LOCK_FLAG_REENTRANT
        self._flags = flags
        self._handle: Optional[int] = None
        self._pid = 0
        self._lost_reported = False
        # Serialises threads that share this one object, like threading.Lock; never held
        # while another object of this process waits for the same target.
        self._local = threading.Lock()

    def __repr__(self) -> str:
        state = f"held, token {self.token}" if self.held else "not held"
        return f"<lockfn.Lock {self.target!r} {state}>"

    def _options(self) -> _ffi.LockOptions:
        opts = _ffi.LockOptions()
        _ffi.lib().lock_options_init(ctypes.byref(opts))
        if opts.size != ctypes.sizeof(opts):
            raise LockInternalError(
                f"liblockfn's lock_options is {opts.size} bytes, this binding knows "
                f"{ctypes.sizeof(opts)}: the library and the binding are from different versions"
            )
        opts.ttl = self.ttl or 0
        opts.limit = self.limit
        opts.flags = self._flags
        opts.holder = self._holder
        return opts

    def _inherited(self) -> bool:
        """This object was copied by fork() while it held a lock: the handle is the parent's.
        Only the binding's own state needs this (its thread lock is a copy that no thread of
        this process will release); what the handle may do is the library's answer."""
        return self._handle is not None and self._pid != os.getpid()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        """Take the lock: True when held, False when busy (``blocking=False``) or when
        ``timeout`` seconds passed (``-1``: wait forever). Errors raise :class:`LockError`."""
        return self._acquire(blocking, timeout) is None

    def _acquire(self, blocking: bool, timeout: float) -> Optional[LockError]:
        """None when acquired, else the busy error to raise from ``with``."""
        if not blocking:
            if timeout != -1:
                raise ValueError("can't specify a timeout for a non-blocking call")
            timeout = 0
        elif timeout is None:
            timeout = -1
        else:
            timeout = _check_timeout(timeout)
        if self._inherited():
            # Not a wait on the copied thread lock: the library's LOCK_EFORKED and message
            # (lock_update of an inherited handle touches nothing, see lockfn.h).
            raise _error(_ffi.lib().lock_update(self._handle), self.target)
        start = time.monotonic()
        if timeout < 0:
            got = self._local.acquire()
        else:
            got = self._local.acquire(True, timeout) if timeout > 0 else self._local.acquire(False)
        if not got:
            # Another thread holds this very object: the library was not asked.
            return LockBusy(f"lock {self.target} is busy: held by another thread through the "
                            f"same Lock object (waited {timeout} s)", _ffi.LOCK_BUSY, self.target)
        try:
            left = -1.0 if timeout < 0 else max(0.0, timeout - (time.monotonic() - start))
            handle = _acquire_handle(self._target, self.target, self._options(), left)
        except BaseException:
            self._local.release()
            raise
        if isinstance(handle, LockError):
            self._local.release()
            return handle
        self._handle = handle
        self._pid = os.getpid()
        self._lost_reported = False
        return None

    def release(self) -> None:
        """Give the lock up. :class:`LockNotHeld` if not held (a double release);
        :class:`LockLost` if it had been lost before (and :meth:`update` did not say so)."""
        handle = self._handle
        if handle is None:
            raise LockNotHeld(f"release of lock {self.target} that is not held",
                              _ffi.LOCK_ENOTHELD, self.target)
        self._handle = None
        lost_reported = self._lost_reported
        # In a child after fork() the library forgets its copy of the handle and answers
        # LOCK_EFORKED; the parent's lock is untouched.
        rc = _ffi.lib().lock_release(handle)
        try:
            self._local.release()  # a plain Lock: any thread (of a forked child too) may
        except RuntimeError:
            pass
        if rc == _ffi.LOCK_OK or (rc == _ffi.LOCK_ELOST and lost_reported):
            return
        raise _error(rc, self.target)

    def update(self) -> None:
        """Renew the lock and check it is still ours; :class:`LockLost` if it is gone."""
        handle = self._handle
        if handle is None:
            raise LockNotHeld(f"update of lock {self.target} that is not held",
                              _ffi.LOCK_ENOTHELD, self.target)
        rc = _ffi.lib().lock_update(handle)
        if rc != _ffi.LOCK_OK:
            if rc == _ffi.LOCK_ELOST:
                self._lost_reported = True
            raise _error(rc, self.target)

    @property
    def held(self) -> bool:
        """True while this object holds the lock."""
        return self._handle is not None and self._pid == os.getpid()

    def locked(self) -> bool:
        """True if the lock is taken, by this object or anyone else (like threading.Lock's and
        pmxlock's ``locked()``; asks the service, never acquires). With ``limit > 1``: True
        when no slot is free."""
        if self.held:
            return True
        st = status(self.target)
        if self.limit > 1 and isinstance(st.get("available"), int):
            return bool(st["available"] == 0)
        return bool(st.get("held"))

    @property
    def token(self) -> Optional[int]:
        """The fencing token of the current acquisition (grows with every acquisition of the
        same lock), or None when not held."""
        handle = self._handle
        if handle is None:
            return None
        return int(_ffi.lib().lock_token(handle)) or None

    def __enter__(self) -> "Lock":
        busy = self._acquire(True, self.timeout)
        if busy is not None:
            raise busy
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self._handle is None:
            return  # released inside the block
        if exc_type is not None:
            try:
                self.release()
            except LockError:
                pass  # the body's exception says more
        else:
            self.release()

    def __del__(self) -> None:
        handle = getattr(self, "_handle", None)
        if handle is not None:
            # In a child after fork() the library only forgets its copy (LOCK_EFORKED).
            try:
                _ffi.lib().lock_release(handle)
            except Exception:
                pass


def status(target: str) -> Dict[str, Any]:
    """Who holds ``target``: a dict with ``target``, ``service``, ``held``, ``limit``,
    ``available`` and ``holders`` (host, pid, start_time, boot_id, since, token, holder,
    state alive/dead/remote)."""
    lib = _ffi.lib()
    out = ctypes.c_void_p()
    rc = lib.lock_status(_encode(target, "target"), ctypes.byref(out))
    if rc != _ffi.LOCK_OK:
        raise _error(rc, target)
    try:
        text = ctypes.string_at(out.value).decode("utf-8", "replace")
    finally:
        lib.lock_string_free(out)
    result: Dict[str, Any] = json.loads(text)
    return result


def gc(scope: Optional[str] = None) -> int:
    """Clean what dead holders on this host left behind; returns how many items were removed.
    ``scope``: "sem", "pmxcfs", "zk", "consul", optionally ":PREFIX"; None for sem and pmxcfs."""
    lib = _ffi.lib()
    removed = ctypes.c_uint(0)
    rc = lib.lock_gc(None if scope is None else _encode(scope, "scope"), ctypes.byref(removed))
    if rc != _ffi.LOCK_OK:
        raise _error(rc, scope)
    return int(removed.value)


def version() -> str:
    """The version of the loaded liblockfn."""
    return (_ffi.lib().lock_version() or b"").decode()
