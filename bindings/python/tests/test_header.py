"""The binding's copies of the C ABI (ctypes cannot read a header) against include/lockfn.h,
the version against lock_version() and the soname against the built library."""

import ctypes
import os
import re
import shutil
import subprocess

import pytest

import lockfn
from lockfn import _ffi
from conftest import PKG, ROOT

HEADER = os.path.join(ROOT, "include", "lockfn.h")


def header():
    with open(HEADER) as f:
        return f.read()


def header_defines(prefix):
    return {m[0]: int(m[1]) for m in re.findall(rf"^#define ({prefix}\w+) (\d+)$", header(), re.M)}


def header_struct_fields():
    """[(name, C type)] of `struct lock_options`, in order."""
    body = re.search(r"typedef struct lock_options \{(.*?)\} lock_options;", header(), re.S)
    assert body, "no struct lock_options in lockfn.h"
    fields = []
    for line in body.group(1).splitlines():
        line = line.strip()
        if not line or line.startswith("//"):
            continue
        m = re.fullmatch(r"(.+?)\s*\b(\w+)(\[\d+\])?;", line)
        assert m, f"cannot read this field of lockfn.h: {line!r}"
        fields.append((m[2], m[1].replace(" *", "*") + (m[3] or "")))
    return fields


def header_functions():
    """{name: number of parameters} of the functions lockfn.h declares."""
    out = {}
    for ret, name, params in re.findall(r"^([\w ]+?\**)\s*(lock_\w+)\((.*?)\);$", header(), re.M):
        out[name] = 0 if params.strip() == "void" else len(params.split(","))
    return out


C_TYPES = {
    "uint32_t": ctypes.c_uint32,
    "double": ctypes.c_double,
    "const char*": ctypes.c_char_p,
    "int": ctypes.c_int,
    "uint64_t[4]": ctypes.c_uint64 * 4,
}


def test_error_codes_are_the_headers():
    want = {k: v for k, v in header_defines("LOCK_").items() if not k.startswith("LOCK_FLAG_")}
    assert len(want) >= 10, want
    have = {k: getattr(_ffi, k) for k in dir(_ffi) if re.fullmatch(r"LOCK_(?!FLAG_)[A-Z]+", k)}
    assert have == want


def test_flags_are_the_headers():
    want = header_defines("LOCK_FLAG_")
    assert len(want) >= 4, want
    have = {k: getattr(_ffi, k) for k in dir(_ffi) if k.startswith("LOCK_FLAG_")}
    assert have == want


def test_every_code_has_its_exception_class():
    codes = {v for k, v in header_defines("LOCK_").items()
             if not k.startswith("LOCK_FLAG_") and k != "LOCK_OK"}
    assert {c for c in codes if lockfn._ERRORS.get(c)} == codes


def test_options_struct_is_the_headers():
    want = header_struct_fields()
    have = [(name, ctype) for name, ctype in _ffi.LockOptions._fields_]
    assert [n for n, _ in have] == [n for n, _ in want]
    for (name, ctype), (_, ctext) in zip(have, want):
        assert ctext in C_TYPES, f"lockfn.h field {name} has a type this test does not know: {ctext}"
        expected = C_TYPES[ctext]
        assert ctypes.sizeof(ctype) == ctypes.sizeof(expected), name
        assert getattr(ctype, "_type_", ctype) == getattr(expected, "_type_", expected), name
    # and the library agrees on its size (lock_options_init sets `size`)
    opts = _ffi.LockOptions()
    _ffi.lib().lock_options_init(ctypes.byref(opts))
    assert opts.size == ctypes.sizeof(_ffi.LockOptions)
    assert (opts.limit, opts.cancel_fd, opts.mode) == (1, -1, 0o600)


def test_functions_declared_as_in_the_header():
    want = header_functions()
    assert "lock_acquire" in want and len(want) >= 11, want
    lib = _ffi.lib()
    for name, nparams in want.items():
        fn = getattr(lib, name)
        assert fn.argtypes is not None, f"{name} is in lockfn.h but not declared by _ffi"
        assert len(fn.argtypes) == nparams, name


def test_version_is_the_librarys():
    v = lockfn.version()
    assert re.fullmatch(r"\d+\.\d+\.\d+", v), v
    assert lockfn.__version__ == v
    with open(os.path.join(PKG, "pyproject.toml")) as f:
        assert re.search(rf'^version = "{re.escape(v)}"$', f.read(), re.M)


def test_soname_is_the_librarys():
    if not shutil.which("readelf"):
        pytest.skip("no readelf (binutils) to read the library's soname")
    out = subprocess.run(["readelf", "-d", lockfn.library_path()], capture_output=True,
                         text=True, check=True).stdout
    m = re.search(r"\(SONAME\).*\[(.+)\]", out)
    assert m, "the library has no soname"
    assert m[1] == _ffi.SONAME
