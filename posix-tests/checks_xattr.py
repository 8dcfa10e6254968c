"""Extended attributes: user.* and trusted.*, XATTR_CREATE/REPLACE, ENODATA, sizes,
list/remove, permissions, ctime."""
import ctypes
import errno as E
import os

from lib import GROUPMATE, OBJ_GID, OTHER, OWNER, _libc, check, make, sleep_tick, touch

_libc.getxattr.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t]
_libc.getxattr.restype = ctypes.c_ssize_t
_libc.listxattr.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t]
_libc.listxattr.restype = ctypes.c_ssize_t


def getxattr_size(path, name, bufsize):
    """getxattr with a caller-sized buffer; returns the length reported."""
    buf = ctypes.create_string_buffer(max(bufsize, 1))
    n = _libc.getxattr(os.fsencode(path), name.encode(), buf if bufsize else None, bufsize)
    if n < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return n


def listxattr_size(path, bufsize):
    buf = ctypes.create_string_buffer(max(bufsize, 1))
    n = _libc.listxattr(os.fsencode(path), buf if bufsize else None, bufsize)
    if n < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return n


@check
def basics(t):
    for kind in ("reg", "dir"):
        p = t.p(kind)
        make(p, kind)
        t.eq(os.listxattr(p), [], f"{kind}: no xattrs on a new object")
        t.call(0, os.setxattr, p, "user.a", b"1", what=f"{kind}: set user.a")
        t.call(0, os.setxattr, p, "user.b", b"", what=f"{kind}: set empty user.b")
        t.call(0, os.setxattr, p, "trusted.c", b"\0\1\2\xff", what=f"{kind}: set trusted.c")
        t.eq(os.getxattr(p, "user.a"), b"1", f"{kind}: get user.a")
        t.eq(os.getxattr(p, "user.b"), b"", f"{kind}: get empty value")
        t.eq(os.getxattr(p, "trusted.c"), b"\0\1\2\xff", f"{kind}: binary value round trip")
        t.eq(sorted(os.listxattr(p)), ["trusted.c", "user.a", "user.b"], f"{kind}: listxattr")
        t.call(0, os.setxattr, p, "user.a", b"22", what=f"{kind}: overwrite user.a")
        t.eq(os.getxattr(p, "user.a"), b"22", f"{kind}: overwritten value")
        t.call(E.EEXIST, os.setxattr, p, "user.a", b"3", os.XATTR_CREATE,
               what=f"{kind}: XATTR_CREATE of an existing name")
        t.call(0, os.setxattr, p, "user.new", b"n", os.XATTR_CREATE,
               what=f"{kind}: XATTR_CREATE of a new name")
        t.call(E.ENODATA, os.setxattr, p, "user.none", b"3", os.XATTR_REPLACE,
               what=f"{kind}: XATTR_REPLACE of a missing name")
        t.call(0, os.setxattr, p, "user.a", b"333", os.XATTR_REPLACE,
               what=f"{kind}: XATTR_REPLACE of an existing name")
        t.eq(os.getxattr(p, "user.a"), b"333", f"{kind}: replaced value")
        t.call(E.ENODATA, os.getxattr, p, "user.none", what=f"{kind}: get a missing name")
        t.call(E.ENODATA, os.removexattr, p, "user.none", what=f"{kind}: remove a missing name")
        t.call(0, os.removexattr, p, "user.a", what=f"{kind}: remove user.a")
        t.call(E.ENODATA, os.getxattr, p, "user.a", what=f"{kind}: get a removed name")
        t.eq(sorted(os.listxattr(p)), ["trusted.c", "user.b", "user.new"],
             f"{kind}: list after remove")
        # names differing only by namespace are distinct
        os.setxattr(p, "trusted.b", b"T")
        t.eq((os.getxattr(p, "user.b"), os.getxattr(p, "trusted.b")), (b"", b"T"),
             f"{kind}: user.b and trusted.b are distinct")
    # fd variants and symlink following
    p = t.p("reg")
    fd = os.open(p, os.O_RDONLY)
    try:
        t.call(0, os.setxattr, fd, "user.fd", b"via fd", what="fsetxattr")
        t.eq(os.getxattr(fd, "user.fd"), b"via fd", "fgetxattr")
        t.ok("user.fd" in os.listxattr(fd), "flistxattr")
    finally:
        os.close(fd)
    os.symlink("reg", t.p("link"))
    t.eq(os.getxattr(t.p("link"), "user.fd"), b"via fd", "getxattr follows symlinks")
    t.call(E.ENODATA, os.getxattr, t.p("link"), "user.fd", follow_symlinks=False,
           what="lgetxattr of a symlink")
    t.call(E.EPERM, os.setxattr, t.p("link"), "user.x", b"1", follow_symlinks=False,
           what="lsetxattr user.* on a symlink")
    t.call(0, os.setxattr, t.p("link"), "trusted.x", b"1", follow_symlinks=False,
           what="lsetxattr trusted.* on a symlink")
    t.eq(os.getxattr(t.p("link"), "trusted.x", follow_symlinks=False), b"1",
         "trusted.* on a symlink itself")
    t.ok("trusted.x" not in os.listxattr(p), "the symlink's xattr is not its target's")
    # xattrs survive rename and are shared by hard links
    os.rename(p, t.p("renamed"))
    os.link(t.p("renamed"), t.p("hard"))
    t.eq(os.getxattr(t.p("hard"), "user.fd"), b"via fd", "xattrs kept by rename, shared by link")


@check
def limits(t):
    p = t.p("f")
    touch(p)
    for size in (1, 255, 256, 4095, 4096, 4097, 16384, 65535, 65536):
        val = os.urandom(size)
        t.call(0, os.setxattr, p, f"user.s{size}", val, what=f"set a {size}-byte value")
        got = os.getxattr(p, f"user.s{size}") if f"user.s{size}" in os.listxattr(p) else None
        t.ok(got == val, f"{size}-byte value read back",
             f"got {None if got is None else len(got)} bytes")
    t.call(E.E2BIG, os.setxattr, p, "user.big", b"x" * 65537, what="set a 65537-byte value")
    t.call(0, os.setxattr, p, "user." + "n" * 250, b"v", what="255-byte attribute name")
    t.eq(os.getxattr(p, "user." + "n" * 250), b"v", "value of the 255-byte name")
    t.call(E.ERANGE, os.setxattr, p, "user." + "n" * 251, b"v", what="256-byte attribute name")
    t.call(E.ERANGE, os.getxattr, p, "user." + "n" * 251, what="get a 256-byte name")
    t.call((E.EINVAL, E.ENODATA, E.EOPNOTSUPP, E.ERANGE), os.setxattr, p, "", b"v",
           what="empty attribute name")
    t.call(E.EOPNOTSUPP, os.setxattr, p, "nonamespace", b"v", what="name without a namespace")
    t.call(E.EOPNOTSUPP, os.setxattr, p, "bogus.name", b"v", what="unknown namespace")
    t.call(E.EOPNOTSUPP, os.getxattr, p, "bogus.name", what="get in an unknown namespace")
    # buffer sizes: size query and ERANGE for a short buffer
    os.setxattr(p, "user.ten", b"0123456789")
    t.eq(t.call(0, getxattr_size, p, "user.ten", 0, what="getxattr size query"), 10,
         "getxattr with size 0 returns the value length")
    t.call(E.ERANGE, getxattr_size, p, "user.ten", 5, what="getxattr into a 5-byte buffer")
    full = listxattr_size(p, 0)
    t.eq(full, sum(len(n) + 1 for n in os.listxattr(p)), "listxattr size query")
    t.call(E.ERANGE, listxattr_size, p, 3, what="listxattr into a 3-byte buffer")
    # many names
    q = t.p("many")
    touch(q)
    for i in range(100):
        os.setxattr(q, f"user.k{i:03d}", str(i).encode())
    t.eq(sorted(os.listxattr(q)), [f"user.k{i:03d}" for i in range(100)], "list of 100 names")
    t.ok(all(os.getxattr(q, f"user.k{i:03d}") == str(i).encode() for i in range(100)),
         "100 values read back")
    for i in range(0, 100, 2):
        os.removexattr(q, f"user.k{i:03d}")
    t.eq(sorted(os.listxattr(q)), [f"user.k{i:03d}" for i in range(1, 100, 2)],
         "list after removing every other name")


@check
def permissions(t):
    p = t.p("f")
    touch(p)
    os.chown(p, OWNER.uid, OBJ_GID)
    os.setxattr(p, "user.x", b"1")
    os.setxattr(p, "trusted.t", b"2")
    os.chmod(p, 0o640)
    t.call(0, os.setxattr, p, "user.y", b"1", user=OWNER, what="owner sets user.* (rw-)")
    t.eq(t.call(0, os.getxattr, p, "user.x", user=GROUPMATE, what="group member reads user.*"),
         b"1", "value read by a group member")
    t.call(E.EACCES, os.setxattr, p, "user.y", b"2", user=GROUPMATE,
           what="group member without write permission sets user.*")
    t.call(E.EACCES, os.removexattr, p, "user.y", user=GROUPMATE,
           what="group member without write permission removes user.*")
    t.call(E.EACCES, os.getxattr, p, "user.x", user=OTHER,
           what="other without read permission gets user.*")
    os.chmod(p, 0o646)
    t.call(0, os.setxattr, p, "user.z", b"o", user=OTHER, what="other with write permission sets user.*")
    # trusted.* is for privileged callers only
    t.call(E.EPERM, os.setxattr, p, "trusted.u", b"1", user=OWNER, what="owner sets trusted.*")
    t.call(E.ENODATA, os.getxattr, p, "trusted.t", user=OWNER, what="owner gets trusted.*")
    lst = t.call(0, os.listxattr, p, user=OWNER, what="owner lists xattrs")
    t.ok(lst is not None and "trusted.t" not in lst and "user.x" in lst,
         "trusted.* names are hidden from unprivileged callers", repr(lst))
    # sticky directory: only the owner may set user.* xattrs
    d = t.p("sticky")
    os.mkdir(d, 0o777)
    os.chmod(d, 0o1777)
    os.chown(d, OWNER.uid, OWNER.gid)
    t.call(E.EPERM, os.setxattr, d, "user.s", b"1", user=OTHER,
           what="non-owner sets user.* on a sticky world-writable dir")
    t.call(0, os.setxattr, d, "user.s", b"1", user=OWNER, what="owner sets user.* on a sticky dir")
    # user.* only on regular files and directories
    os.mkfifo(t.p("fifo"), 0o666)
    t.call(E.EPERM, os.setxattr, t.p("fifo"), "user.x", b"1", what="user.* on a fifo")
    t.call(E.ENODATA, os.getxattr, t.p("fifo"), "user.x", what="get user.* on a fifo")


@check
def ctime(t):
    names = ("set", "replace", "remove", "fail", "get")
    for n in names:
        touch(t.p(n))
        os.setxattr(t.p(n), "user.x", b"v")
    b = {n: os.stat(t.p(n)) for n in names}
    sleep_tick()
    os.setxattr(t.p("set"), "user.new", b"v")
    os.setxattr(t.p("replace"), "user.x", b"w")
    os.removexattr(t.p("remove"), "user.x")
    t.call(E.EEXIST, os.setxattr, t.p("fail"), "user.x", b"z", os.XATTR_CREATE)
    os.getxattr(t.p("get"), "user.x")
    os.listxattr(t.p("get"))
    for n in ("set", "replace", "remove"):
        t.times(b[n], os.stat(t.p(n)), f"{n} xattr", changed="c", same="m")
    t.times(b["fail"], os.stat(t.p("fail")), "failed setxattr", same="mc")
    t.times(b["get"], os.stat(t.p("get")), "get/list xattr", same="mc")
