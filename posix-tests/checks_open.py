"""open: O_CREAT/O_EXCL/O_TRUNC/O_NOFOLLOW/O_DIRECTORY, permission matrix, FIFOs,
sockets, creating with mode 0."""
import errno as E
import os
import socket
import stat
import time

from lib import (
    GROUPMATE,
    OBJ_GID,
    OTHER,
    OWNER,
    ROOT,
    check,
    open_close,
    read_file,
    sleep_tick,
    touch,
    write_file,
)

R, W, RW = os.O_RDONLY, os.O_WRONLY, os.O_RDWR


@check
def create_basics(t):
    fd = t.call(0, os.open, t.p("f"), os.O_CREAT | os.O_WRONLY, 0o640)
    if fd is not None:
        os.write(fd, b"abc")
        os.close(fd)
    st = os.stat(t.p("f"))
    t.ok(stat.S_ISREG(st.st_mode), "O_CREAT makes a regular file")
    t.eq(stat.S_IMODE(st.st_mode), 0o640, "mode of the new file", fmt=oct)
    t.eq(st.st_size, 3, "size after writing 3 bytes")
    t.eq(st.st_nlink, 1, "nlink of a new file")
    # O_CREAT on an existing file opens it and keeps its content and mode
    t.call(0, open_close, t.p("f"), os.O_CREAT | os.O_RDWR, 0o777)
    t.eq(read_file(t.p("f")), b"abc", "O_CREAT on an existing file keeps its data")
    t.mode_is(t.p("f"), 0o640, "O_CREAT on an existing file keeps its mode")
    # O_EXCL
    t.call(E.EEXIST, open_close, t.p("f"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    os.mkdir(t.p("d"), 0o755)
    t.call(E.EEXIST, open_close, t.p("d"), os.O_CREAT | os.O_EXCL | os.O_RDONLY)
    os.symlink("nowhere", t.p("dangling"))
    t.call(E.EEXIST, open_close, t.p("dangling"), os.O_CREAT | os.O_EXCL | os.O_WRONLY,
           what="O_CREAT|O_EXCL on a dangling symlink")
    t.ok(not os.path.lexists(t.p("nowhere")), "O_EXCL does not follow a dangling symlink")
    # O_CREAT without O_EXCL through a dangling symlink creates the target
    t.call(0, open_close, t.p("dangling"), os.O_CREAT | os.O_WRONLY, 0o600,
           what="O_CREAT through a dangling symlink")
    t.ok(os.path.isfile(t.p("nowhere")), "O_CREAT through a dangling symlink creates its target")
    # O_TRUNC
    write_file(t.p("g"), b"x" * 10000)
    t.call(0, open_close, t.p("g"), os.O_WRONLY | os.O_TRUNC)
    t.eq(os.stat(t.p("g")).st_size, 0, "O_TRUNC empties the file")
    t.eq(read_file(t.p("g")), b"", "no data after O_TRUNC")
    # O_APPEND
    write_file(t.p("a"), b"12345")
    fd = os.open(t.p("a"), os.O_WRONLY | os.O_APPEND)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, b"67")
    os.close(fd)
    t.eq(read_file(t.p("a")), b"1234567", "O_APPEND writes at the end")


@check
def open_errors(t):
    touch(t.p("f"))
    os.mkdir(t.p("d"), 0o755)
    os.symlink("f", t.p("lf"))
    os.symlink("d", t.p("ld"))
    for flags, name in ((R, "O_RDONLY"), (W, "O_WRONLY"), (os.O_CREAT | W, "O_CREAT|O_WRONLY")):
        t.call(E.ELOOP, open_close, t.p("lf"), flags | os.O_NOFOLLOW,
               what=f"{name}|O_NOFOLLOW on a symlink to a file")
        t.call(E.ELOOP, open_close, t.p("ld"), flags | os.O_NOFOLLOW,
               what=f"{name}|O_NOFOLLOW on a symlink to a dir")
    t.call(0, open_close, t.p("f"), R | os.O_NOFOLLOW, what="O_NOFOLLOW on a regular file")
    t.call(0, open_close, t.p("ld", "."), R | os.O_NOFOLLOW,
           what="O_NOFOLLOW only concerns the last component")
    t.call(E.ENOTDIR, open_close, t.p("f"), R | os.O_DIRECTORY)
    t.call(E.ENOTDIR, open_close, t.p("lf"), R | os.O_DIRECTORY)
    t.call(0, open_close, t.p("ld"), R | os.O_DIRECTORY)
    t.call(E.EISDIR, open_close, t.p("d"), W)
    t.call(E.EISDIR, open_close, t.p("d"), RW)
    t.call(E.EISDIR, open_close, t.p("d"), os.O_CREAT | W)
    t.call(E.EISDIR, open_close, t.p("d"), R | os.O_TRUNC)
    t.call(0, open_close, t.p("d"), R)
    t.call(E.ENOENT, open_close, t.p("missing"), R)
    t.call(E.ENOENT, open_close, t.p("missing", "x"), os.O_CREAT | W)
    t.call(E.ENOENT, open_close, t.p("dangling-none"), W)
    t.call(E.ENOTDIR, open_close, t.p("f", ""), R, what="open('f/')")
    t.call(E.EISDIR, open_close, t.p("new", ""), os.O_CREAT | W, what="O_CREAT of 'new/'")


@check
def fifo_and_socket(t):
    os.mkfifo(t.p("fifo"), 0o666)
    t.call(E.ENXIO, open_close, t.p("fifo"), W | os.O_NONBLOCK,
           what="FIFO O_WRONLY|O_NONBLOCK without a reader")
    rfd = t.call(0, os.open, t.p("fifo"), R | os.O_NONBLOCK,
                 what="FIFO O_RDONLY|O_NONBLOCK without a writer")
    if rfd is not None:
        wfd = t.call(0, os.open, t.p("fifo"), W | os.O_NONBLOCK,
                     what="FIFO O_WRONLY|O_NONBLOCK with a reader")
        if wfd is not None:
            os.write(wfd, b"through the pipe")
            t.eq(os.read(rfd, 100), b"through the pipe", "data passes through the FIFO")
            os.close(wfd)
        os.close(rfd)
    t.eq(os.stat(t.p("fifo")).st_size, 0, "a FIFO's size stays 0")
    # a socket made with mknod and one made with bind
    os.mknod(t.p("sock"), 0o666 | stat.S_IFSOCK)
    t.call(E.ENXIO, open_close, t.p("sock"), R, what="open of a socket made by mknod")
    cwd = os.getcwd()
    os.chdir(t.dir)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        t.call(0, s.bind, "bound", what="bind a unix socket")
        t.ok(stat.S_ISSOCK(os.lstat("bound").st_mode), "bind creates a socket file")
        t.call(E.ENXIO, open_close, t.p("bound"), R, what="open of a bound socket")
        t.call(E.ENXIO, open_close, t.p("bound"), W, what="open O_WRONLY of a bound socket")
        s.listen(1)
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            t.call(0, c.connect, "bound", what="connect to a socket on the filesystem")
        finally:
            c.close()
    finally:
        s.close()
        os.chdir(cwd)


def _expected(user, mode, flags, uid=OWNER.uid, gid=OBJ_GID):
    if user == ROOT:
        return 0
    if user.uid == uid:
        bits = (mode >> 6) & 7
    elif gid in user.groups:
        bits = (mode >> 3) & 7
    else:
        bits = mode & 7
    need = {R: 4, W: 2, RW: 6}[flags]
    return 0 if bits & need == need else E.EACCES


@check
def permission_matrix(t):
    """open read/write by owner, group member, other and root, for many modes."""
    modes = (0o000, 0o400, 0o200, 0o600, 0o040, 0o020, 0o060, 0o004, 0o002, 0o006,
             0o066, 0o606, 0o660, 0o707, 0o077, 0o777, 0o444, 0o222)
    users = {"owner": OWNER, "group": GROUPMATE, "other": OTHER, "root": ROOT}
    path = t.p("f")
    touch(path)
    os.chown(path, OWNER.uid, OBJ_GID)
    for mode in modes:
        os.chmod(path, mode)
        for uname, user in users.items():
            for flags, fname in ((R, "O_RDONLY"), (W, "O_WRONLY"), (RW, "O_RDWR")):
                t.call(_expected(user, mode, flags), open_close, path, flags, user=user,
                       what=f"mode {mode:03o}: {uname} {fname}")


def _x_ok(path):
    if not os.access(path, os.X_OK):
        raise OSError(E.EACCES, "no exec")


@check
def exec_and_search_matrix(t):
    """X_OK for files and search permission on directories, by class."""
    f = t.p("f")
    touch(f)
    os.chown(f, OWNER.uid, OBJ_GID)
    d = t.p("d")
    os.mkdir(d)
    touch(os.path.join(d, "inside"))
    os.chown(d, OWNER.uid, OBJ_GID)
    users = {"owner": OWNER, "group": GROUPMATE, "other": OTHER}
    for mode in (0o100, 0o010, 0o001, 0o011, 0o110, 0o101, 0o000, 0o111, 0o766, 0o676, 0o667):
        os.chmod(f, mode)
        os.chmod(d, mode)
        for uname, user in users.items():
            if user.uid == OWNER.uid:
                bit = mode & 0o100
            elif OBJ_GID in user.groups:
                bit = mode & 0o010
            else:
                bit = mode & 0o001
            exp = 0 if bit else E.EACCES
            t.call(exp, _x_ok, f, user=user, what=f"file mode {mode:03o}: X_OK for {uname}")
            t.call(exp, os.stat, os.path.join(d, "inside"), user=user,
                   what=f"dir mode {mode:03o}: stat of an entry by {uname}")
    # root: exec needs at least one x bit, search always allowed
    for mode, exp in ((0o000, E.EACCES), (0o001, 0), (0o010, 0), (0o100, 0)):
        os.chmod(f, mode)
        t.call(exp, _x_ok, f, what=f"file mode {mode:03o}: X_OK for root")
    os.chmod(d, 0)
    t.call(0, os.stat, os.path.join(d, "inside"), what="root searches a mode 000 directory")
    t.call(0, os.listdir, d, what="root lists a mode 000 directory")
    t.call(E.EACCES, os.listdir, d, user=OWNER, what="owner lists a mode 000 directory")


def _create_mode0_and_write(path):
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0)
    try:
        os.write(fd, b"written through a mode 0 fd")
        os.lseek(fd, 0, os.SEEK_SET)
        data = os.read(fd, 100)
        os.ftruncate(fd, 7)
        os.fsync(fd)
        return data
    finally:
        os.close(fd)


@check
def create_mode0(t):
    os.chmod(t.dir, 0o777)
    for user, tag in ((OWNER, "user"), (ROOT, "root")):
        path = t.p("zero-" + tag)
        got = t.call(0, _create_mode0_and_write, path, user=user,
                     what=f"create mode 0, write, read, ftruncate as {tag}")
        t.eq(got, b"written through a mode 0 fd", f"{tag}: data read back through the fd")
        st = os.stat(path)
        t.eq(stat.S_IMODE(st.st_mode), 0, f"{tag}: mode stays 0", fmt=oct)
        t.eq(st.st_size, 7, f"{tag}: size after ftruncate through the fd")
        t.call(E.EACCES if user != ROOT else 0, open_close, path, R, user=user,
               what=f"reopening a mode 0 file as {tag}")
    # the same with a file created by another user and umask masking everything
    p = t.p("masked")

    def masked():
        old = os.umask(0o777)
        try:
            fd = os.open(p, os.O_CREAT | os.O_WRONLY, 0o666)
        finally:
            os.umask(old)
        try:
            return os.write(fd, b"12345")
        finally:
            os.close(fd)
    t.eq(run_as_value(t, masked, OWNER), 5, "write through an fd whose file umask made 000")
    t.eq(os.stat(p).st_size, 5, "size of the masked file")


def run_as_value(t, fn, user):
    return t.call(0, fn, user=user, what=f"{fn.__name__}")


@check
def trunc_and_write_permissions(t):
    path = t.p("f")
    write_file(path, b"content")
    os.chown(path, OWNER.uid, OBJ_GID)
    os.chmod(path, 0o444)
    t.call(E.EACCES, open_close, path, R | os.O_TRUNC, user=OWNER,
           what="O_RDONLY|O_TRUNC without write permission")
    t.eq(read_file(path), b"content", "failed O_TRUNC keeps the data")
    os.chmod(path, 0o644)
    t.call(E.EACCES, open_close, path, W | os.O_TRUNC, user=OTHER,
           what="O_TRUNC by other without write permission")
    t.call(0, open_close, path, W | os.O_TRUNC, user=OWNER, what="O_TRUNC by owner")
    t.eq(os.stat(path).st_size, 0, "O_TRUNC by owner truncated")
    # O_CREAT on an existing file needs no write permission on the directory
    os.chmod(t.dir, 0o755)
    t.call(0, open_close, path, os.O_CREAT | R, user=OWNER,
           what="O_CREAT of an existing file in an unwritable directory")
    t.call(E.EACCES, open_close, t.p("new"), os.O_CREAT | W, user=OWNER,
           what="O_CREAT of a new file in an unwritable directory")


@check
def parent_times(t):
    """O_CREAT changes the parent's times only when it creates the file (one sleep)."""
    for name in ("new", "old", "excl", "trunc"):
        os.mkdir(t.p(name), 0o755)
    touch(t.p("old", "f"))
    touch(t.p("excl", "f"))
    write_file(t.p("trunc", "f"), b"data")
    dirs = {n: os.stat(t.p(n)) for n in ("new", "old", "excl", "trunc")}
    files = {n: os.stat(t.p(n, "f")) for n in ("old", "excl", "trunc")}
    sleep_tick()
    t.call(0, open_close, t.p("new", "f"), os.O_CREAT | W)
    t.call(0, open_close, t.p("old", "f"), os.O_CREAT | W)
    t.call(E.EEXIST, open_close, t.p("excl", "f"), os.O_CREAT | os.O_EXCL | W)
    t.call(0, open_close, t.p("trunc", "f"), os.O_CREAT | os.O_TRUNC | W)
    t.times(dirs["new"], os.stat(t.p("new")), "parent when O_CREAT creates", changed="mc")
    t.times(dirs["old"], os.stat(t.p("old")), "parent when O_CREAT opens an existing file",
            same="mc")
    t.times(dirs["excl"], os.stat(t.p("excl")), "parent after O_EXCL fails", same="mc")
    t.times(dirs["trunc"], os.stat(t.p("trunc")), "parent of O_TRUNC'ed file", same="mc")
    t.times(files["old"], os.stat(t.p("old", "f")), "existing file opened with O_CREAT",
            same="mc")
    t.times(files["trunc"], os.stat(t.p("trunc", "f")), "file truncated by O_TRUNC",
            changed="mc")
    st = os.stat(t.p("new", "f"))
    now = time.time()
    t.ok(all(abs(getattr(st, f"st_{f}time") - now) < 3 for f in "amc"),
         "times of a file created by open are now")


@check
def rw_positions(t):
    path = t.p("f")
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.write(fd, b"0123456789")
        t.eq(os.pread(fd, 4, 3), b"3456", "pread")
        os.pwrite(fd, b"AB", 8)
        os.pwrite(fd, b"Z", 20)
        t.eq(os.fstat(fd).st_size, 21, "size after pwrite past the end")
        t.eq(os.pread(fd, 100, 0), b"01234567AB" + b"\0" * 10 + b"Z",
             "gap after a pwrite past the end reads as zeros")
        t.eq(os.pread(fd, 10, 21), b"", "read at EOF returns nothing")
        t.eq(os.lseek(fd, 0, os.SEEK_END), 21, "SEEK_END")
    finally:
        os.close(fd)
    # two descriptors see each other's writes
    a = os.open(path, os.O_RDWR)
    b = os.open(path, os.O_RDONLY)
    try:
        os.pwrite(a, b"shared", 0)
        t.eq(os.pread(b, 6, 0), b"shared", "a second fd sees the first fd's write")
    finally:
        os.close(a)
        os.close(b)


@check
def write_read_times(t):
    """write moves mtime and ctime; read and a zero-length write do not (one sleep)."""
    for n in ("w", "r", "w0", "pw"):
        write_file(t.p(n), b"initial")
    b = {n: os.stat(t.p(n)) for n in ("w", "r", "w0", "pw")}
    d0 = os.stat(t.dir)
    sleep_tick()
    fd = os.open(t.p("w"), os.O_WRONLY)
    os.write(fd, b"changed")
    os.close(fd)
    fd = os.open(t.p("pw"), os.O_RDWR)
    os.pwrite(fd, b"x", 100)
    os.close(fd)
    read_file(t.p("r"))
    fd = os.open(t.p("w0"), os.O_WRONLY)
    os.write(fd, b"")
    os.close(fd)
    t.times(b["w"], os.stat(t.p("w")), "write", changed="mc")
    t.times(b["pw"], os.stat(t.p("pw")), "pwrite past the end", changed="mc")
    t.times(b["r"], os.stat(t.p("r")), "read", same="mc")
    t.times(d0, os.stat(t.dir), "parent of written files", same="mc")
