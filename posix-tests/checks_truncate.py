"""truncate / ftruncate: shrink, grow with zeros, times, permissions, errors."""
import errno as E
import os

from lib import GROUPMATE, OBJ_GID, OTHER, OWNER, check, read_file, run_as, sleep_tick, write_file


@check
def shrink_and_grow(t):
    path = t.p("f")
    data = bytes(range(256)) * 40  # 10240 bytes
    write_file(path, data)
    for size in (5000, 4096, 100, 1, 0):
        t.call(0, os.truncate, path, size)
        t.eq(os.stat(path).st_size, size, f"size after truncate to {size}")
        t.eq(read_file(path), data[:size], f"content after shrinking to {size}")
    write_file(path, b"abc")
    for size in (10, 4096, 4097, 1 << 20, (1 << 20) + 7, 5 << 20):
        t.call(0, os.truncate, path, size)
        t.eq(os.stat(path).st_size, size, f"size after growing to {size}")
    content = read_file(path)
    t.ok(content[:3] == b"abc" and content[3:].count(0) == len(content) - 3,
         "grown part reads as zeros")
    # shrink then grow: the dropped bytes must not come back
    write_file(path, b"Z" * 3000000)
    os.truncate(path, 10)
    os.truncate(path, 3000000)
    content = read_file(path)
    t.ok(content[:10] == b"Z" * 10 and content[10:] == bytes(len(content) - 10),
         "bytes cut by a shrink read as zeros after growing again",
         f"{content[10:].count(ord('Z'))} stale bytes")
    # ftruncate
    fd = os.open(path, os.O_RDWR)
    try:
        t.call(0, os.ftruncate, fd, 123)
        t.eq(os.fstat(fd).st_size, 123, "size after ftruncate")
        os.pwrite(fd, b"end", 200)
        t.eq(os.fstat(fd).st_size, 203, "size after writing past a truncated end")
        t.eq(os.pread(fd, 77, 123), bytes(77), "hole between truncated end and a later write")
    finally:
        os.close(fd)
    # through a symlink
    os.symlink("f", t.p("l"))
    t.call(0, os.truncate, t.p("l"), 7)
    t.eq(os.stat(path).st_size, 7, "truncate follows a symlink")


@check
def errors(t):
    path = t.p("f")
    write_file(path, b"hello")
    t.call(E.EINVAL, os.truncate, path, -1, what="truncate to -1")
    t.call(E.EINVAL, os.truncate, path, -(1 << 40), what="truncate to -2**40")
    t.eq(os.stat(path).st_size, 5, "size unchanged by failed truncates")
    # beyond the largest file size: EFBIG (or EINVAL); a filesystem whose limit is
    # larger (tmpfs allows 2**63-1) must then report exactly the size asked for
    for size in (999999999999999999, (1 << 63) - 1):
        for how in ("truncate", "ftruncate"):
            os.truncate(path, 5)
            fd = os.open(path, os.O_WRONLY)
            try:
                fn = (lambda n=size: os.truncate(path, n)) if how == "truncate" else \
                    (lambda f=fd, n=size: os.ftruncate(f, n))
                out = run_as(None, fn)
                got = os.fstat(fd).st_size
            finally:
                os.close(fd)
            if out.kind == "err":
                t.ok(out.value in (E.EFBIG, E.EINVAL) and got == 5,
                     f"{how} to {size}: EFBIG/EINVAL and size kept",
                     f"got {out.describe()}, size {got}")
            else:
                t.ok(out.kind == "ok" and got == size, f"{how} to {size}: accepted, so the "
                     "size must be exact", f"got {out.describe()}, size {got}")
    os.truncate(path, 5)
    fd = os.open(path, os.O_WRONLY)
    try:
        t.call(E.EINVAL, os.ftruncate, fd, -1, what="ftruncate to -1")
    finally:
        os.close(fd)
    fd = os.open(path, os.O_RDONLY)
    try:
        t.call((E.EINVAL, E.EBADF), os.ftruncate, fd, 1, what="ftruncate of a read-only fd")
    finally:
        os.close(fd)
    os.mkdir(t.p("d"), 0o755)
    t.call(E.EISDIR, os.truncate, t.p("d"), 0)
    t.call(E.ENOENT, os.truncate, t.p("missing"), 0)
    t.call(E.ENOTDIR, os.truncate, t.p("f", "x"), 0)
    os.mkfifo(t.p("fifo"), 0o666)
    t.call(E.EINVAL, os.truncate, t.p("fifo"), 0, what="truncate of a fifo")


@check
def permissions(t):
    path = t.p("f")
    write_file(path, b"x" * 100)
    os.chown(path, OWNER.uid, OBJ_GID)
    for mode, user, exp, who in ((0o644, OTHER, E.EACCES, "other, 644"),
                                 (0o644, GROUPMATE, E.EACCES, "group member, 644"),
                                 (0o444, OWNER, E.EACCES, "owner, 444"),
                                 (0o464, OWNER, E.EACCES, "owner, 464"),
                                 (0o666, OTHER, 0, "other, 666"),
                                 (0o446, GROUPMATE, E.EACCES, "group member, 446"),
                                 (0o424, GROUPMATE, 0, "group member, 424"),
                                 (0o600, OWNER, 0, "owner, 600")):
        os.chmod(path, mode)
        t.call(exp, os.truncate, path, 50, user=user, what=f"truncate by {who}")
    os.chmod(path, 0o644)
    t.call(0, os.truncate, path, 10, what="root truncates")
    os.chmod(path, 0)
    t.call(0, os.truncate, path, 11, what="root truncates a mode 0 file")

    # ftruncate on an fd opened for write works even when the mode forbids writing
    def ftrunc_after_chmod(p):
        fd = os.open(p, os.O_WRONLY)
        try:
            os.fchmod(fd, 0)
            os.ftruncate(fd, 3)
            return os.fstat(fd).st_size
        finally:
            os.close(fd)
    os.chmod(path, 0o644)
    t.eq(t.call(0, ftrunc_after_chmod, path, user=OWNER), 3,
         "ftruncate through a write fd after chmod 0")

    def create0_ftrunc(p):
        fd = os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0)
        try:
            os.ftruncate(fd, 4096)
            return os.fstat(fd).st_size
        finally:
            os.close(fd)
    os.chmod(t.dir, 0o777)
    t.eq(t.call(0, create0_ftrunc, t.p("zero"), user=OWNER), 4096,
         "ftruncate through the fd that created a mode 0 file")
    t.call(E.EACCES, os.truncate, t.p("zero"), 0, user=OWNER, what="truncate of own mode 0 file")


@check
def times(t):
    names = ("shrink", "grow", "same", "ftrunc", "fail")
    for n in names:
        write_file(t.p(n), b"x" * 1000)
    os.chown(t.p("fail"), OWNER.uid, OWNER.gid)
    os.chmod(t.p("fail"), 0o444)
    b = {n: os.stat(t.p(n)) for n in names}
    sleep_tick()
    os.truncate(t.p("shrink"), 10)
    os.truncate(t.p("grow"), 100000)
    os.truncate(t.p("same"), 1000)
    fd = os.open(t.p("ftrunc"), os.O_WRONLY)
    os.ftruncate(fd, 1)
    os.close(fd)
    t.call(E.EACCES, os.truncate, t.p("fail"), 0, user=OWNER, what="truncate without permission")
    for n in ("shrink", "grow", "ftrunc", "same"):
        t.times(b[n], os.stat(t.p(n)), f"{n} truncate", changed="mc")
    t.times(b["fail"], os.stat(t.p("fail")), "failed truncate", same="mc")
