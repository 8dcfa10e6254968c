"""fsync / fdatasync / syncfs succeed on files and directories, and what was synced
survives an unmount and a new mount."""
import ctypes
import errno as E
import hashlib
import os
import stat

from lib import _libc, check, read_file, touch, write_file


def syncfs(fd):
    if _libc.syncfs(fd) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


@check
def files(t):
    p = t.p("f")
    for flags, name in ((os.O_CREAT | os.O_RDWR, "O_RDWR"), (os.O_WRONLY, "O_WRONLY"),
                        (os.O_RDONLY, "O_RDONLY"), (os.O_WRONLY | os.O_APPEND, "O_APPEND")):
        fd = os.open(p, flags, 0o644)
        try:
            if flags & (os.O_WRONLY | os.O_RDWR):
                os.write(fd, name.encode())
            t.call(0, os.fsync, fd, what=f"fsync of an {name} fd")
            t.call(0, os.fdatasync, fd, what=f"fdatasync of an {name} fd")
            t.call(0, syncfs, fd, what=f"syncfs through an {name} fd")
        finally:
            os.close(fd)
    t.eq(read_file(p), b"O_WRONLYO_APPEND", "content after writes and syncs")
    fd = os.open(p, os.O_RDWR)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, b"x" * 100000)
        t.call(0, os.fsync, fd, what="fsync after truncate and write")
        t.eq(os.fstat(fd).st_size, 100000, "size after fsync")
        os.unlink(p)
        os.write(fd, b"y")
        t.call(0, os.fsync, fd, what="fsync of an unlinked file")
        t.call(0, os.fdatasync, fd, what="fdatasync of an unlinked file")
    finally:
        os.close(fd)
    os.sync()
    t.ok(True, "sync() returns")


@check
def directories(t):
    os.mkdir(t.p("d"), 0o755)
    fd = os.open(t.p("d"), os.O_RDONLY | os.O_DIRECTORY)
    try:
        t.call(0, os.fsync, fd, what="fsync of an empty directory")
        for i in range(20):
            touch(t.p("d", f"f{i}"))
        os.rename(t.p("d", "f0"), t.p("d", "g0"))
        os.unlink(t.p("d", "f1"))
        t.call(0, os.fsync, fd, what="fsync of a changed directory")
        t.call(0, os.fdatasync, fd, what="fdatasync of a directory")
        t.call(0, syncfs, fd, what="syncfs through a directory fd")
    finally:
        os.close(fd)
    fd = os.open(t.dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        t.call(0, os.fsync, fd, what="fsync of the parent directory")
    finally:
        os.close(fd)
    # O_PATH descriptors cannot be synced
    fd = os.open(t.p("d"), os.O_PATH)
    try:
        t.call(E.EBADF, os.fsync, fd, what="fsync of an O_PATH fd")
    finally:
        os.close(fd)


@check
def durable_after_remount(t):
    """Data and metadata that were fsynced are there after unmount and mount."""
    big = os.urandom(5 << 20 | 12345)
    write_file(t.p("big"), big)
    fd = os.open(t.p("big"), os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    digest = hashlib.sha256(big).hexdigest()
    os.mkdir(t.p("dir"), 0o750)
    for i in range(30):
        write_file(t.p("dir", f"small{i}"), f"content {i}".encode())
    os.rename(t.p("dir", "small0"), t.p("dir", "renamed"))
    os.unlink(t.p("dir", "small1"))
    os.symlink("dir/renamed", t.p("link"))
    os.link(t.p("big"), t.p("big-link"))
    os.chmod(t.p("dir", "small2"), 0o4711)
    os.chown(t.p("dir", "small3"), 12345, 54321)
    os.setxattr(t.p("dir", "small4"), "user.kept", b"value")
    os.mkfifo(t.p("fifo"), 0o640)
    os.mknod(t.p("chr"), 0o600 | stat.S_IFCHR, os.makedev(10, 200))
    fd = os.open(t.p("sparse"), os.O_CREAT | os.O_WRONLY, 0o644)
    os.pwrite(fd, b"tail", 3 << 30)
    os.fdatasync(fd)
    os.close(fd)
    os.utime(t.p("dir", "small5"), ns=(1_234_567_890_123_456_789, 1_111_111_111_222_222_222))
    for d in (t.p("dir"), t.dir):
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        os.fsync(fd)
        os.close(fd)
    t.ok(True, "prepared files for the remount check")

    def verify(v):
        v.eq(hashlib.sha256(read_file(v.p("big"))).hexdigest(), digest, "5 MiB file content")
        v.eq(os.stat(v.p("big")).st_nlink, 2, "nlink of a hard-linked file")
        names = sorted(os.listdir(v.p("dir")))
        want = sorted(["renamed"] + [f"small{i}" for i in range(2, 30)])
        v.eq(names, want, "directory entries (rename and unlink kept)")
        v.eq(read_file(v.p("dir", "renamed")), b"content 0", "renamed file content")
        v.eq(read_file(v.p("dir", "small29")), b"content 29", "small file content")
        v.eq(os.readlink(v.p("link")), "dir/renamed", "symlink target")
        v.eq(stat.S_IMODE(os.stat(v.p("dir", "small2")).st_mode), 0o4711, "mode", fmt=oct)
        v.eq(stat.S_IMODE(os.stat(v.p("dir")).st_mode), 0o750, "directory mode", fmt=oct)
        st = os.stat(v.p("dir", "small3"))
        v.eq((st.st_uid, st.st_gid), (12345, 54321), "owner")
        v.eq(os.getxattr(v.p("dir", "small4"), "user.kept"), b"value", "xattr")
        v.ok(stat.S_ISFIFO(os.lstat(v.p("fifo")).st_mode), "fifo type")
        v.eq(os.lstat(v.p("chr")).st_rdev, os.makedev(10, 200), "device number")
        v.eq(os.stat(v.p("sparse")).st_size, (3 << 30) + 4, "sparse file size")
        with open(v.p("sparse"), "rb") as f:
            f.seek(3 << 30)
            v.eq(f.read(), b"tail", "sparse file tail")
        st = os.stat(v.p("dir", "small5"))
        v.eq((st.st_atime_ns, st.st_mtime_ns),
             (1_234_567_890_123_456_789, 1_111_111_111_222_222_222), "nanosecond times")
    t.after_remount(verify)
