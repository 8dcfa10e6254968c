"""link: nlink counting for every non-directory type, shared attributes, errors, times."""
import errno as E
import os

from lib import (
    ALL_TYPES,
    AT_SYMLINK_FOLLOW,
    NONDIR_TYPES,
    OTHER,
    OWNER,
    check,
    linkat,
    make,
    sleep_tick,
    touch,
)


def hardlink(src, dst):
    os.link(src, dst, follow_symlinks=False)


@check
def nlink_every_type(t):
    for kind in NONDIR_TYPES:
        a, b, c = t.p(kind + "-a"), t.p(kind + "-b"), t.p(kind + "-c")
        make(a, kind)
        t.eq(os.lstat(a).st_nlink, 1, f"{kind}: nlink of a new object")
        t.call(0, hardlink, a, b, what=f"{kind}: link a b")
        t.call(0, hardlink, b, c, what=f"{kind}: link b c")
        sts = [os.lstat(x) for x in (a, b, c)]
        for name, st in zip("abc", sts, strict=False):
            t.eq(st.st_nlink, 3, f"{kind}: nlink of {name} with 3 names")
        t.ok(len({st.st_ino for st in sts}) == 1, f"{kind}: all names share the inode")
        if kind != "symlink":
            os.chmod(b, 0o651)
        os.lchown(c, 4321, 8765)
        sts = [os.lstat(x) for x in (a, b, c)]
        t.ok(len({(st.st_mode, st.st_uid, st.st_gid) for st in sts}) == 1,
             f"{kind}: all names share mode and owner",
             str([(oct(st.st_mode), st.st_uid, st.st_gid) for st in sts]))
        if kind == "symlink":
            t.eq(os.readlink(c), os.readlink(a), "symlink: hard link has the same target")
        os.unlink(a)
        t.eq(os.lstat(b).st_nlink, 2, f"{kind}: nlink after unlinking one of 3 names")
        os.unlink(c)
        t.eq(os.lstat(b).st_nlink, 1, f"{kind}: nlink after unlinking two of 3 names")


@check
def data_shared(t):
    touch(t.p("f"), 0o644, b"hello")
    os.link(t.p("f"), t.p("g"))
    with open(t.p("g"), "ab") as f:
        f.write(b" world")
    with open(t.p("f"), "rb") as f:
        t.eq(f.read(), b"hello world", "data written through one name is seen through another")
    os.unlink(t.p("f"))
    with open(t.p("g"), "rb") as f:
        t.eq(f.read(), b"hello world", "data kept after the first name is gone")
    # link through a symlink with AT_SYMLINK_FOLLOW links the target
    os.symlink("g", t.p("sl"))
    t.call(0, linkat, t.p("sl"), t.p("h"), AT_SYMLINK_FOLLOW, what="linkat(sl, h, AT_SYMLINK_FOLLOW)")
    t.eq(os.lstat(t.p("h")).st_ino, os.lstat(t.p("g")).st_ino,
         "link with AT_SYMLINK_FOLLOW links the symlink's target")


@check
def errors(t):
    touch(t.p("f"))
    os.mkdir(t.p("d"), 0o755)
    for kind in ALL_TYPES:
        make(t.p("x-" + kind), kind)
        t.call(E.EEXIST, hardlink, t.p("f"), t.p("x-" + kind), what=f"link onto existing {kind}")
    os.symlink("nowhere", t.p("dangling"))
    t.call(E.EEXIST, hardlink, t.p("f"), t.p("dangling"), what="link onto a dangling symlink")
    t.call(E.EPERM, hardlink, t.p("d"), t.p("d2"), what="link to a directory")
    t.call(E.EPERM, hardlink, t.p("d"), t.p("d2"), user=OWNER, what="link to a directory")
    t.call(E.ENOENT, hardlink, t.p("missing"), t.p("new"))
    t.call(E.ENOENT, hardlink, t.p("f"), t.p("missing", "new"))
    t.ok(not os.path.lexists(t.p("d2")) and not os.path.lexists(t.p("new")),
         "failed links create nothing")


def _sysctl(name):
    try:
        with open("/proc/sys/" + name) as f:
            return f.read().strip()
    except OSError:
        return None


@check
def permissions(t):
    src, dst = t.p("src"), t.p("dst")
    os.mkdir(src, 0o755)
    os.mkdir(dst, 0o755)
    os.chown(src, OWNER.uid, OWNER.gid)
    os.chown(dst, OWNER.uid, OWNER.gid)
    touch(os.path.join(src, "f"))
    os.chown(os.path.join(src, "f"), OWNER.uid, OWNER.gid)
    f = os.path.join(src, "f")
    t.call(0, hardlink, f, os.path.join(dst, "ok"), user=OWNER, what="owner links across dirs")
    os.chmod(dst, 0o555)
    t.call(E.EACCES, hardlink, f, os.path.join(dst, "no"), user=OWNER,
           what="link into a directory without write permission")
    os.chmod(dst, 0o755)
    os.chmod(src, 0o644)
    t.call(E.EACCES, hardlink, f, os.path.join(dst, "no"), user=OWNER,
           what="link from a directory without search permission")
    os.chmod(src, 0o755)
    os.chmod(dst, 0o666)
    t.call(E.EACCES, hardlink, f, os.path.join(dst, "no"), user=OWNER,
           what="link into a directory without search permission")
    os.chmod(dst, 0o777)
    if _sysctl("fs/protected_hardlinks") == "1":
        t.call(E.EPERM, hardlink, f, os.path.join(dst, "no"), user=OTHER,
               what="link to a file other neither owns nor may write (protected_hardlinks)")
    t.ok(not os.path.lexists(os.path.join(dst, "no")), "failed links create nothing")
    t.eq(os.stat(f).st_nlink, 2, "nlink counts only the successful link")


@check
def times(t):
    """link changes the inode's ctime and the new parent's mtime/ctime (one sleep)."""
    objs = {}
    for kind in NONDIR_TYPES:
        d = t.p("d-" + kind)
        os.mkdir(d, 0o755)
        make(os.path.join(d, "a"), kind)
        objs[kind] = d
    os.mkdir(t.p("other"), 0o755)
    make(t.p("x"), "reg")
    make(t.p("exists"), "reg")
    before = {k: (os.lstat(os.path.join(d, "a")), os.lstat(d)) for k, d in objs.items()}
    other0, x0, t0 = os.lstat(t.p("other")), os.lstat(t.p("x")), os.lstat(t.dir)
    sleep_tick()
    for kind, d in objs.items():
        t.call(0, hardlink, os.path.join(d, "a"), os.path.join(d, "b"), what=f"{kind}: link")
    t.call(0, hardlink, t.p("x"), t.p("other", "x2"), what="link into another directory")
    t.call(E.EEXIST, hardlink, t.p("x"), t.p("exists"))
    for kind, d in objs.items():
        st0, dst0 = before[kind]
        t.times(st0, os.lstat(os.path.join(d, "a")), f"{kind}: linked inode", changed="c",
                same="m")
        t.times(dst0, os.lstat(d), f"{kind}: parent of new link", changed="mc")
    t.times(other0, os.lstat(t.p("other")), "new parent of cross-dir link", changed="mc")
    t.times(t0, os.lstat(t.dir), "source parent of cross-dir link (and failed link)", same="mc")
    t.times(x0, os.lstat(t.p("x")), "inode of a cross-dir link", changed="c")
