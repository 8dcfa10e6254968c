"""Support code of the posix-tests conformance suite.

A check is a plain function taking a :class:`T` (its context) and registered with
``@check``.  Each check gets a fresh empty directory (``t.dir``, mode 0755, owned by
root) on the filesystem under test, and records any number of assertions through the
``T`` methods.  Calls can be made as another user: the call then runs in a forked
child that drops to that user's groups, gid and uid, and sends back its result or errno
through a pipe.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import pickle
import signal
import stat
import time
from collections.abc import Callable
from typing import Any, NamedTuple

# --------------------------------------------------------------------------- registry

CHECKS: list[tuple[str, Callable[[T], None]]] = []


# (check name, verification function) pairs registered by checks with
# T.after_remount; run.py runs them after unmounting and mounting the volume again.
AFTER_REMOUNT: list[tuple[str, Callable[[T], None], str]] = []


def check(fn: Callable[[T], None]) -> Callable[[T], None]:
    """Register ``fn`` as a check named ``<category>.<function>``."""
    module = fn.__module__.rsplit(".", 1)[-1]
    category = module[len("checks_"):] if module.startswith("checks_") else module
    CHECKS.append((f"{category}.{fn.__name__}", fn))
    return fn


# --------------------------------------------------------------------------- users

class User(NamedTuple):
    uid: int
    gid: int
    groups: tuple[int, ...]

    def __str__(self) -> str:
        return "root" if self.uid == 0 else f"uid {self.uid}"


ROOT = User(0, 0, (0,))
# OWNER usually owns the objects under test.  Its groups are 65533 (primary) and 65532.
OWNER = User(65534, 65533, (65533, 65532))
# GROUPMATE is in group 65532 (the usual group of test objects) but not in 65533.
GROUPMATE = User(65533, 65532, (65532,))
# OTHER shares no group with the others.
OTHER = User(65532, 65531, (65531,))
# A fourth user, used as the owner of directories in sticky-bit checks.
DIROWNER = User(65531, 65530, (65530,))

OBJ_GID = 65532  # the group test objects are usually given (OWNER and GROUPMATE are members)


# --------------------------------------------------------------------------- helpers

def ename(e: int) -> str:
    return errno.errorcode.get(e, str(e))


class Outcome(NamedTuple):
    kind: str      # "ok", "err" or "exc"
    value: Any     # result, errno, or exception text

    def describe(self) -> str:
        if self.kind == "ok":
            return "success"
        if self.kind == "err":
            return ename(self.value)
        return f"exception {self.value}"


def _invoke(fn: Callable[..., Any], args: tuple, kwargs: dict) -> Outcome:
    try:
        return Outcome("ok", fn(*args, **kwargs))
    except OSError as e:
        return Outcome("err", e.errno)
    except Exception as e:  # noqa: BLE001 - reported as a failure
        return Outcome("exc", f"{type(e).__name__}: {e}")


def run_as(user: User | None, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Outcome:
    """Run ``fn(*args, **kwargs)``; as ``user`` in a forked child unless user is None/ROOT."""
    if user is None or user == ROOT:
        return _invoke(fn, args, kwargs)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(r)
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
            signal.alarm(30)
            try:
                os.setgroups(list(user.groups))
                os.setgid(user.gid)
                os.setuid(user.uid)
            except OSError as e:
                out = Outcome("exc", f"could not become {user}: {e}")
            else:
                out = _invoke(fn, args, kwargs)
            try:
                data = pickle.dumps(out)
            except Exception as e:  # noqa: BLE001
                data = pickle.dumps(Outcome("exc", f"unpicklable result: {e}"))
            view = memoryview(data)
            while view:
                n = os.write(w, view)
                view = view[n:]
        finally:
            os._exit(0)
    os.close(w)
    chunks = []
    try:
        while True:
            b = os.read(r, 65536)
            if not b:
                break
            chunks.append(b)
    finally:
        os.close(r)
        _, status = os.waitpid(pid, 0)
    if not chunks:
        return Outcome("exc", f"child died (status {status:#x})")
    return pickle.loads(b"".join(chunks))


def touch(path: str, mode: int = 0o644, data: bytes = b"") -> None:
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode)
    try:
        if data:
            os.write(fd, data)
    finally:
        os.close(fd)


def write_file(path: str, data: bytes, flags: int = os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
               mode: int = 0o644) -> None:
    fd = os.open(path, flags, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def open_close(path: str, flags: int, mode: int = 0o644) -> None:
    """open() and close again; the outcome of open is what matters."""
    os.close(os.open(path, flags, mode))


NONDIR_TYPES = ("reg", "fifo", "sock", "chr", "blk", "symlink")
ALL_TYPES = NONDIR_TYPES + ("dir",)
# types on which chmod/chown are meaningful through the path (symlinks are followed)
MODE_TYPES = ("reg", "dir", "fifo", "sock", "chr", "blk")

CHR_DEV = os.makedev(1, 3)
BLK_DEV = os.makedev(7, 0)


def make(path: str, kind: str, mode: int | None = None) -> None:
    """Create an object of ``kind`` at ``path`` (mode applied with chmod if given)."""
    if kind == "reg":
        touch(path, 0o644)
    elif kind == "dir":
        os.mkdir(path, 0o755)
    elif kind == "fifo":
        os.mkfifo(path, 0o644)
    elif kind == "sock":
        os.mknod(path, 0o644 | stat.S_IFSOCK)
    elif kind == "chr":
        os.mknod(path, 0o644 | stat.S_IFCHR, CHR_DEV)
    elif kind == "blk":
        os.mknod(path, 0o644 | stat.S_IFBLK, BLK_DEV)
    elif kind == "symlink":
        os.symlink("target-of-" + os.path.basename(path), path)
    else:
        raise ValueError(kind)
    if mode is not None and kind != "symlink":
        os.chmod(path, mode)


TYPE_BITS = {"reg": stat.S_IFREG, "dir": stat.S_IFDIR, "fifo": stat.S_IFIFO,
             "sock": stat.S_IFSOCK, "chr": stat.S_IFCHR, "blk": stat.S_IFBLK,
             "symlink": stat.S_IFLNK}


def sleep_tick() -> None:
    """Sleep so that the whole-second clock surely moves."""
    time.sleep(1.02)


def sec(st: os.stat_result, field: str) -> int:
    return getattr(st, f"st_{field}time_ns") // 1_000_000_000


def brief(v: Any) -> str:
    """repr, shortened for long values."""
    if isinstance(v, (bytes, bytearray)) and len(v) > 48:
        kind = "zero " if not any(v) else ""
        return f"<{len(v)} {kind}bytes {bytes(v[:16])!r}...>"
    r = repr(v)
    return r if len(r) <= 300 else r[:140] + f"...<{len(r)} chars>..." + r[-140:]


# --------------------------------------------------------------------------- libc calls

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2


def _check(rc: int, *paths: str) -> None:
    if rc != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), *paths[:1])


def renameat2(old: str, new: str, flags: int) -> None:
    fn = getattr(_libc, "renameat2", None)
    if fn is not None:
        fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                       ctypes.c_uint]
        rc = fn(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), flags)
    else:  # old glibc: raw syscall (x86_64: 316, aarch64: 276)
        import platform
        nr = {"x86_64": 316, "aarch64": 276}[platform.machine()]
        _libc.syscall.restype = ctypes.c_long
        rc = _libc.syscall(ctypes.c_long(nr), ctypes.c_int(AT_FDCWD), os.fsencode(old),
                           ctypes.c_int(AT_FDCWD), os.fsencode(new), ctypes.c_uint(flags))
    _check(rc, old)


AT_SYMLINK_FOLLOW = 0x400


def linkat(src: str, dst: str, flags: int) -> None:
    _libc.linkat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                             ctypes.c_int]
    _check(_libc.linkat(AT_FDCWD, os.fsencode(src), AT_FDCWD, os.fsencode(dst), flags), src)


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


_libc.utimensat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(_Timespec),
                            ctypes.c_int]


def utimensat(path: str, atime: tuple[int, int] | int | None,
              mtime: tuple[int, int] | int | None, follow: bool = True) -> None:
    """utimensat(2).  Each time is (sec, nsec), UTIME_NOW, UTIME_OMIT; both None = NULL."""
    flags = 0 if follow else AT_SYMLINK_NOFOLLOW
    if atime is None and mtime is None:
        rc = _libc.utimensat(AT_FDCWD, os.fsencode(path), None, flags)
        _check(rc, path)
        return
    ts = (_Timespec * 2)()
    for i, v in enumerate((atime, mtime)):
        if isinstance(v, tuple):
            ts[i].tv_sec, ts[i].tv_nsec = v
        else:
            ts[i].tv_sec, ts[i].tv_nsec = 0, v
    _check(_libc.utimensat(AT_FDCWD, os.fsencode(path), ts, flags), path)


# --------------------------------------------------------------------------- context

class CheckTimeout(Exception):
    pass


class T:
    """The context of one check: its directory and its assertion record."""

    def __init__(self, name: str, directory: str):
        self.name = name
        self.dir = directory
        self.passed = 0
        self.failures: list[str] = []

    # paths ----------------------------------------------------------------
    def p(self, *parts: str) -> str:
        return os.path.join(self.dir, *parts)

    def short(self, v: Any) -> str:
        if isinstance(v, (str, bytes)):
            s = os.fsdecode(v)
            if s.startswith(self.dir + "/"):
                s = s[len(self.dir) + 1:]
            elif s == self.dir:
                s = "."
            if len(s) > 60:
                s = f"{s[:24]}...{s[-24:]}<{len(s)} chars>"
            return repr(s)
        return repr(v)

    def after_remount(self, fn: Callable[[T], None]) -> None:
        """Run ``fn(t)`` (t: a fresh T on the same directory) once the volume has been
        unmounted and mounted again (right away when there is nothing to remount)."""
        AFTER_REMOUNT.append((self.name, fn, self.dir))

    # assertions -----------------------------------------------------------
    def ok(self, cond: Any, what: str, detail: str = "") -> bool:
        if cond:
            self.passed += 1
            return True
        self.failures.append(what + (f": {detail}" if detail else ""))
        return False

    def eq(self, got: Any, expected: Any, what: str, fmt: Callable[[Any], str] | None = None) -> bool:
        if got == expected:
            return self.ok(True, what)
        if fmt is None:
            fmt = brief
            if isinstance(got, bytes) and isinstance(expected, bytes) and \
                    max(len(got), len(expected)) > 48:
                diff = next((i for i, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b),
                            min(len(got), len(expected)))
                return self.ok(False, what, f"expected {brief(expected)}, got {brief(got)}; "
                                            f"first difference at byte {diff}")
        return self.ok(False, what, f"expected {fmt(expected)}, got {fmt(got)}")

    def mode_is(self, path: str, expected: int, what: str = "", follow: bool = False) -> bool:
        st = os.stat(path) if follow else os.lstat(path)
        return self.eq(stat.S_IMODE(st.st_mode), expected,
                       what or f"mode of {self.short(path)}", fmt=lambda m: f"{m:04o}")

    def call(self, expected: int | tuple[int, ...] | set[int], fn: Callable[..., Any],
             *args: Any, user: User | None = None, what: str | None = None,
             **kwargs: Any) -> Any:
        """Call ``fn`` (as ``user``) and expect success (0) or one of the given errnos.

        Returns the call's result on success, else None.
        """
        out = run_as(user, fn, *args, **kwargs)
        if isinstance(expected, int):
            expected = (expected,)
        expected = tuple(expected)
        if what is None:
            name = getattr(fn, "__name__", "call")
            argtxt = ", ".join([self.short(a) for a in args]
                               + [f"{k}={self.short(v)}" for k, v in kwargs.items()])
            what = f"{name}({argtxt})"
        if user is not None and user != ROOT:
            what += f" as {user}"
        if expected == (0,):
            good = out.kind == "ok"
            exptxt = "success"
        else:
            good = out.kind == "err" and out.value in expected
            exptxt = "/".join(ename(e) for e in expected)
        self.ok(good, what, f"expected {exptxt}, got {out.describe()}")
        return out.value if out.kind == "ok" else None

    def times(self, before: os.stat_result, after: os.stat_result, what: str,
              changed: str = "", same: str = "") -> None:
        """Compare whole-second a/m/c times: fields in ``changed`` must have advanced,
        those in ``same`` must be equal."""
        for f in changed:
            b, a = sec(before, f), sec(after, f)
            self.ok(a > b, f"{what}: {f}time changes", f"before {b}, after {a}")
        for f in same:
            b, a = sec(before, f), sec(after, f)
            self.ok(a == b, f"{what}: {f}time unchanged", f"before {b}, after {a}")
