"""An open file stays usable after its last name is gone."""
import os

from lib import OWNER, check, read_file, touch, write_file


@check
def read_write_after_unlink(t):
    path = t.p("f")
    write_file(path, b"before")
    fd = os.open(path, os.O_RDWR)
    fd2 = os.open(path, os.O_RDONLY)
    try:
        t.call(0, os.unlink, path)
        t.ok(not os.path.lexists(path), "name gone")
        t.eq(os.fstat(fd).st_nlink, 0, "nlink 0 through the fd")
        t.eq(os.pread(fd, 100, 0), b"before", "old data readable after unlink")
        t.call(0, os.pwrite, fd, b" and after", 6, what="write after unlink")
        t.eq(os.pread(fd2, 100, 0), b"before and after", "second fd reads the new data")
        big = os.urandom(3 << 20)
        os.pwrite(fd, big, 1 << 20)
        t.eq(os.pread(fd, len(big), 1 << 20), big, "3 MiB written after unlink read back")
        t.call(0, os.ftruncate, fd, 4, what="ftruncate after unlink")
        t.eq(os.pread(fd2, 100, 0), b"befo", "truncated content")
        t.call(0, os.fchmod, fd, 0o600, what="fchmod after unlink")
        t.eq(os.fstat(fd).st_mode & 0o777, 0o600, "mode set after unlink")
        t.call(0, os.fsync, fd, what="fsync after unlink")
        # a new file by the same name is a different one
        write_file(path, b"new file")
        t.ok(os.stat(path).st_ino != os.fstat(fd).st_ino, "new file with the old name is new")
        t.eq(os.pread(fd2, 100, 0), b"befo", "unlinked file unaffected by the new one")
    finally:
        os.close(fd)
        os.close(fd2)
    t.eq(read_file(path), b"new file", "new file intact after the old one is closed")


@check
def replaced_by_rename(t):
    write_file(t.p("f"), b"old content")
    write_file(t.p("g"), b"new")
    fd = os.open(t.p("f"), os.O_RDWR)
    try:
        t.call(0, os.rename, t.p("g"), t.p("f"), what="rename over an open file")
        t.eq(os.pread(fd, 100, 0), b"old content", "open fd still reads the replaced file")
        os.pwrite(fd, b"OLD", 0)
        t.eq(os.pread(fd, 100, 0), b"OLD content", "replaced file still writable")
        t.eq(read_file(t.p("f")), b"new", "the name shows the new file")
    finally:
        os.close(fd)


@check
def many_and_other_user(t):
    os.chmod(t.dir, 0o777)
    fds = []
    try:
        for i in range(20):
            p = t.p(f"f{i}")
            write_file(p, str(i).encode() * 1000)
            fds.append(os.open(p, os.O_RDWR))
            os.unlink(p)
        ok = all(os.pread(fd, 4000, 0) == str(i).encode() * 1000 for i, fd in enumerate(fds))
        t.ok(ok, "20 unlinked open files keep their own data")
    finally:
        for fd in fds:
            os.close(fd)
    t.eq(os.listdir(t.dir), [], "directory empty")

    def user_side(p):
        fd = os.open(p, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            os.unlink(p)
            os.write(fd, b"private")
            return os.pread(fd, 100, 0)
        finally:
            os.close(fd)
    t.eq(t.call(0, user_side, t.p("u"), user=OWNER), b"private",
         "a user's file created, unlinked and used through its fd")
    touch(t.p("after"))
    t.eq(os.listdir(t.dir), ["after"], "nothing left behind by unlinked open files")
