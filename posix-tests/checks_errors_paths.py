"""Path errors checked for every call: ENOTDIR, ENAMETOOLONG (255 vs 256 bytes and
PATH_MAX), ENOENT, EACCES (search and write permission), ELOOP."""
import errno as E
import os
import stat

from lib import OWNER, check, open_close, touch, utimensat


def _ops(t):
    """name -> (function of the subject path, kind) where kind says what the call does
    with its last component: 'follow' (uses an existing object, following symlinks),
    'nofollow' (uses an existing object itself), 'create' (makes a new name)."""
    other = t.p("other")
    return {
        "stat": (lambda p: os.stat(p), "follow"),
        "lstat": (lambda p: os.lstat(p), "nofollow"),
        "chmod": (lambda p: os.chmod(p, 0o644), "follow"),
        "chown": (lambda p: os.chown(p, -1, -1), "follow"),
        "lchown": (lambda p: os.lchown(p, -1, -1), "nofollow"),
        "open": (lambda p: open_close(p, os.O_RDONLY), "follow"),
        "open-creat": (lambda p: open_close(p, os.O_CREAT | os.O_WRONLY), "create"),
        "mkdir": (lambda p: os.mkdir(p, 0o755), "create"),
        "mkfifo": (lambda p: os.mkfifo(p, 0o644), "create"),
        "mknod": (lambda p: os.mknod(p, 0o644 | stat.S_IFREG), "create"),
        "symlink": (lambda p: os.symlink("x", p), "create"),
        "link-to": (lambda p: os.link(t.p("existing"), p), "create"),
        "link-from": (lambda p: os.link(p, other + "-link"), "nofollow"),
        "rename-to": (lambda p: os.rename(t.p("victim"), p), "create"),
        "rename-from": (lambda p: os.rename(p, other + "-ren"), "nofollow"),
        "unlink": (lambda p: os.unlink(p), "nofollow"),
        "rmdir": (lambda p: os.rmdir(p), "nofollow"),
        "truncate": (lambda p: os.truncate(p, 0), "follow"),
        "utimensat": (lambda p: utimensat(p, None, None), "follow"),
        "readlink": (lambda p: os.readlink(p), "nofollow"),
        "getxattr": (lambda p: os.getxattr(p, "user.x"), "follow"),
        "setxattr": (lambda p: os.setxattr(p, "user.x", b"1"), "follow"),
        "listxattr": (lambda p: os.listxattr(p), "follow"),
        "listdir": (lambda p: os.listdir(p), "follow"),
    }


def _setup(t):
    os.chmod(t.dir, 0o777)
    touch(t.p("file"))
    touch(t.p("existing"))
    touch(t.p("victim"))
    os.chown(t.p("existing"), OWNER.uid, OWNER.gid)
    os.chown(t.p("victim"), OWNER.uid, OWNER.gid)


@check
def enotdir_enoent(t):
    _setup(t)
    for name, (fn, kind) in _ops(t).items():
        t.call(E.ENOTDIR, fn, t.p("file", "x"), what=f"{name}: file as a directory component")
        t.call(E.ENOTDIR, fn, t.p("file", "x", "y"), what=f"{name}: file in the middle of a path")
        t.call(E.ENOENT, fn, t.p("missing", "x"), what=f"{name}: missing directory component")
        if kind != "create":
            t.call(E.ENOENT, fn, t.p("missing"), what=f"{name}: missing last component")
    t.eq(sorted(os.listdir(t.dir)), ["existing", "file", "victim"], "failed calls made nothing")


@check
def enametoolong(t):
    _setup(t)
    long_name = t.p("n" * 256)
    for name, (fn, _kind) in _ops(t).items():
        t.call(E.ENAMETOOLONG, fn, long_name, what=f"{name}: 256-byte last component")
        t.call(E.ENAMETOOLONG, fn, os.path.join(long_name, "x"),
               what=f"{name}: 256-byte directory component")
    # a path of 4096 bytes (no room for the NUL within PATH_MAX), components <= 255
    prefix = t.dir + "/"
    comps = []
    while len(prefix) + sum(len(c) + 1 for c in comps) < 4200:
        comps.append("c" * 200)
    too_long = (prefix + "/".join(comps))[:4096]
    too_long = too_long.rstrip("/") + "z" * (4096 - len(too_long.rstrip("/")))
    assert len(too_long) == 4096
    for name, (fn, _kind) in _ops(t).items():
        t.call(E.ENAMETOOLONG, fn, too_long, what=f"{name}: 4096-byte path")
    t.eq(sorted(os.listdir(t.dir)), ["existing", "file", "victim"], "failed calls made nothing")


@check
def name_255(t):
    """A component of exactly 255 bytes works with every call."""
    n = lambda c: t.p(c * 255)  # noqa: E731
    t.call(0, open_close, n("a"), os.O_CREAT | os.O_WRONLY, what="create a 255-byte name")
    t.call(0, os.mkdir, n("b"), 0o755, what="mkdir a 255-byte name")
    t.call(0, os.mkfifo, n("c"), 0o644, what="mkfifo a 255-byte name")
    t.call(0, os.symlink, "a" * 255, n("d"), what="symlink with a 255-byte name and target")
    t.call(0, os.link, n("a"), n("e"), what="link to a 255-byte name")
    t.call(0, os.rename, n("e"), n("f"), what="rename to a 255-byte name")
    t.call(0, os.mknod, n("g"), 0o644 | stat.S_IFSOCK, what="mknod a 255-byte name")
    names = sorted(os.listdir(t.dir))
    t.eq(names, sorted(c * 255 for c in "abcdfg"), "readdir returns the 255-byte names")
    for c in "abcdfg":
        t.call(0, os.lstat, n(c), what=f"lstat 255-byte name {c}")
    t.eq(os.stat(n("d")).st_ino, os.stat(n("a")).st_ino, "symlink to a 255-byte name resolves")
    t.call(0, os.chmod, n("a"), 0o600, what="chmod a 255-byte name")
    t.call(0, os.truncate, n("a"), 10, what="truncate a 255-byte name")
    t.call(0, os.setxattr, n("a"), "user.k", b"v", what="setxattr on a 255-byte name")
    t.call(0, open_close, os.path.join(n("b"), "z" * 255), os.O_CREAT | os.O_WRONLY,
           what="create a 255-byte name inside a 255-byte dir")
    t.call(0, os.unlink, os.path.join(n("b"), "z" * 255))
    t.call(0, os.rmdir, n("b"), what="rmdir a 255-byte name")
    for c in "acdfg":
        t.call(0, os.unlink, n(c), what=f"unlink 255-byte name {c}")
    t.eq(os.listdir(t.dir), [], "all 255-byte names removed")


@check
def path_max(t):
    """A path of 4095 bytes works; one of 4096 bytes does not."""
    cur = t.dir
    while 4095 - len(cur) - 1 > 255:
        left = 4095 - len(cur) - 1  # bytes for "dir/.../name" after cur + "/"
        cur = os.path.join(cur, "d" * min(250, left - 2))
        os.mkdir(cur, 0o755)
    last = 4095 - len(cur) - 1
    assert 1 <= last <= 255, last
    p = os.path.join(cur, "f" * last)
    assert len(p) == 4095
    t.call(0, open_close, p, os.O_CREAT | os.O_WRONLY, what="create with a 4095-byte path")
    t.call(0, os.stat, p, what="stat with a 4095-byte path")
    t.call(0, os.chmod, p, 0o600, what="chmod with a 4095-byte path")
    t.call(0, os.symlink, p, p[:-1] + "L", what="symlink with 4095-byte path and target")
    t.eq(os.readlink(p[:-1] + "L"), p, "4095-byte target read back")
    t.call(0, os.stat, p[:-1] + "L", what="stat through a symlink with a 4095-byte target")
    t.call(E.ENAMETOOLONG, open_close, p + "g", os.O_CREAT | os.O_WRONLY,
           what="create with a 4096-byte path")
    t.call(E.ENAMETOOLONG, os.stat, p + "g", what="stat with a 4096-byte path")
    t.call(E.ENAMETOOLONG, os.mkdir, p + "g", 0o755, what="mkdir with a 4096-byte path")
    t.call(0, os.unlink, p, what="unlink with a 4095-byte path")
    # relative to a deep cwd the same objects are reachable with short paths
    cwd = os.getcwd()
    os.chdir(cur)
    try:
        t.call(0, open_close, "short", os.O_CREAT | os.O_WRONLY, what="create relative to a deep cwd")
        t.ok(os.path.exists(os.path.join(cur, "short")), "relative create landed in the deep dir")
    finally:
        os.chdir(cwd)


@check
def eacces(t):
    _setup(t)
    ns = t.p("nosearch")
    os.mkdir(ns, 0o755)
    touch(os.path.join(ns, "f"))
    os.mkdir(os.path.join(ns, "sub"), 0o777)
    os.chmod(ns, 0o666)  # read and write but no search
    for name, (fn, _kind) in _ops(t).items():
        t.call(E.EACCES, fn, os.path.join(ns, "f"), user=OWNER,
               what=f"{name}: entry of a directory without search permission")
        t.call(E.EACCES, fn, os.path.join(ns, "sub", "f"), user=OWNER,
               what=f"{name}: path through a directory without search permission")
    # write permission on the parent for calls that change its entries
    nw = t.p("nowrite")
    os.mkdir(nw, 0o755)
    touch(os.path.join(nw, "file"))
    os.mkdir(os.path.join(nw, "dir"), 0o755)
    os.chown(os.path.join(nw, "file"), OWNER.uid, OWNER.gid)
    os.chown(os.path.join(nw, "dir"), OWNER.uid, OWNER.gid)
    subject = {"unlink": "file", "rmdir": "dir", "rename-from": "file"}
    for name, (fn, kind) in _ops(t).items():
        if kind == "create" or name in subject:
            p = os.path.join(nw, subject.get(name, "new"))
            t.call(E.EACCES, fn, p, user=OWNER, what=f"{name}: in a directory without write permission")
    t.eq(sorted(os.listdir(nw)), ["dir", "file"], "no entry changed in the unwritable directory")
    t.call(0, os.stat, os.path.join(nw, "file"), user=OWNER, what="stat in a 755 directory")


@check
def eloop(t):
    _setup(t)
    os.symlink("loop2", t.p("loop1"))
    os.symlink("loop1", t.p("loop2"))
    os.symlink("self", t.p("self"))
    for name, (fn, kind) in _ops(t).items():
        for lp in ("loop1", "self"):
            t.call(E.ELOOP, fn, t.p(lp, "x"), what=f"{name}: symlink loop {lp} inside the path")
            if kind == "follow":
                t.call(E.ELOOP, fn, t.p(lp), what=f"{name}: symlink loop {lp} as last component")
    t.call(E.ELOOP, open_close, t.p("loop1"), os.O_CREAT | os.O_WRONLY,
           what="open O_CREAT of a looping symlink")
    t.call(0, os.lstat, t.p("loop1"), what="lstat of a looping symlink")
    t.eq(os.readlink(t.p("loop1")), "loop2", "readlink of a looping symlink")
    # long chains: 30 links resolve, 45 do not
    touch(t.p("end"))
    prev = "end"
    for i in range(45):
        os.symlink(prev, t.p(f"chain{i}"))
        prev = f"chain{i}"
    t.call(0, os.stat, t.p("chain29"), what="stat through a chain of 30 symlinks")
    t.call(E.ELOOP, os.stat, t.p("chain44"), what="stat through a chain of 45 symlinks")
    t.call(0, os.unlink, t.p("loop1"), what="unlink of a looping symlink")
    t.call(E.ENOENT, os.stat, t.p("loop2"), what="stat once the loop is broken")
