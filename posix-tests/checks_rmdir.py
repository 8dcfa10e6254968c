"""rmdir: nlink and times of the parent, ENOTEMPTY, `.`/`..`, sticky rules, EACCES."""
import errno as E
import os

from lib import (
    DIROWNER,
    GROUPMATE,
    NONDIR_TYPES,
    OTHER,
    OWNER,
    ROOT,
    check,
    make,
    sleep_tick,
    touch,
)


@check
def basics(t):
    os.mkdir(t.p("d"), 0o755)
    n0 = os.stat(t.dir).st_nlink
    t.call(0, os.rmdir, t.p("d"))
    t.ok(not os.path.lexists(t.p("d")), "removed dir is gone")
    t.eq(os.stat(t.dir).st_nlink, n0 - 1, "parent nlink drops with rmdir")
    os.makedirs(t.p("a", "b"), 0o755)
    t.call((E.ENOTEMPTY, E.EEXIST), os.rmdir, t.p("a"), what="rmdir of a dir holding a dir")
    os.mkdir(t.p("e"), 0o755)
    for kind in NONDIR_TYPES:
        make(t.p("e", kind), kind)
        t.call((E.ENOTEMPTY, E.EEXIST), os.rmdir, t.p("e"), what=f"rmdir of a dir holding a {kind}")
        os.unlink(t.p("e", kind))
    t.call(0, os.rmdir, t.p("e"), what="rmdir after emptying")
    t.call(E.EINVAL, os.rmdir, t.p("a", "b", "."), what="rmdir of `.`")
    t.call((E.ENOTEMPTY, E.EEXIST), os.rmdir, t.p("a", "b", ".."), what="rmdir of `..`")
    os.mkdir(t.p("emptydir"), 0o755)
    t.call((E.ENOTEMPTY, E.EEXIST, E.EBUSY), os.rmdir, t.p("emptydir", ".."),
           what="rmdir of `..` of an empty dir")
    t.ok(os.path.isdir(t.p("a", "b")), "failed rmdir changed nothing")
    for kind in NONDIR_TYPES:
        make(t.p("x-" + kind), kind)
        t.call(E.ENOTDIR, os.rmdir, t.p("x-" + kind), what=f"rmdir of a {kind}")
    os.symlink("a", t.p("link-to-dir"))
    t.call(E.ENOTDIR, os.rmdir, t.p("link-to-dir"), what="rmdir of a symlink to a dir")
    t.call(E.ENOENT, os.rmdir, t.p("missing"))
    # a removed directory that is still open: its fd sees an empty, unlinked dir
    os.mkdir(t.p("open"), 0o755)
    fd = os.open(t.p("open"), os.O_RDONLY | os.O_DIRECTORY)
    try:
        t.call(0, os.rmdir, t.p("open"), what="rmdir of an open dir")
        t.eq(os.fstat(fd).st_nlink, 0, "nlink of a removed dir seen through its fd")
        t.eq(os.listdir(fd), [], "a removed dir lists empty")
        t.call(E.ENOENT, os.open, "x", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd,
               what="create inside a removed dir")
    finally:
        os.close(fd)


@check
def permissions(t):
    p = t.p("p")
    os.mkdir(p, 0o755)
    os.chown(p, OWNER.uid, OWNER.gid)
    os.mkdir(os.path.join(p, "d"), 0o755)
    t.call(E.EACCES, os.rmdir, os.path.join(p, "d"), user=OTHER, what="rmdir in an unwritable dir")
    os.chmod(p, 0o666)
    t.call(E.EACCES, os.rmdir, os.path.join(p, "d"), user=OWNER, what="rmdir in an unsearchable dir")
    os.chmod(p, 0o555)
    t.call(E.EACCES, os.rmdir, os.path.join(p, "d"), user=OWNER, what="rmdir in own read-only dir")
    os.chmod(p, 0o755)
    t.call(0, os.rmdir, os.path.join(p, "d"), user=OWNER, what="rmdir in own writable dir")


@check
def sticky(t):
    users = {"entry-owner": OWNER, "dir-owner": DIROWNER, "root": ROOT, "other": OTHER,
             "groupmate": GROUPMATE}
    for i, (uname, user) in enumerate(users.items()):
        d = t.p(f"s{i}")
        os.mkdir(d, 0o777)
        os.chown(d, DIROWNER.uid, DIROWNER.gid)
        os.chmod(d, 0o1777)
        e = os.path.join(d, "entry")
        os.mkdir(e, 0o777)
        os.chmod(e, 0o777)
        os.chown(e, OWNER.uid, OWNER.gid)
        exp = 0 if uname in ("entry-owner", "dir-owner", "root") else E.EPERM
        t.call(exp, os.rmdir, e, user=user, what=f"sticky: {uname} removes a dir")


@check
def times(t):
    for n in ("p", "q"):
        os.mkdir(t.p(n), 0o755)
    os.mkdir(t.p("p", "d"), 0o755)
    os.mkdir(t.p("q", "full"), 0o755)
    touch(t.p("q", "full", "x"))
    p0, q0 = os.stat(t.p("p")), os.stat(t.p("q"))
    sleep_tick()
    t.call(0, os.rmdir, t.p("p", "d"))
    t.call((E.ENOTEMPTY, E.EEXIST), os.rmdir, t.p("q", "full"))
    t.times(p0, os.stat(t.p("p")), "parent after rmdir", changed="mc")
    t.times(q0, os.stat(t.p("q")), "parent after failed rmdir", same="mc")
