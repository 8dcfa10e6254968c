"""unlink: every non-directory type, nlink/ctime of remaining names, parent times,
directories, sticky rules, EACCES."""
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
def every_type(t):
    for kind in NONDIR_TYPES:
        path = t.p(kind)
        make(path, kind)
        t.call(0, os.unlink, path, what=f"unlink a {kind}")
        t.ok(not os.path.lexists(path), f"{kind}: gone after unlink")
        make(path, kind)
        os.link(path, path + "-2", follow_symlinks=False)
        os.link(path, path + "-3", follow_symlinks=False)
        t.call(0, os.unlink, path, what=f"unlink one of three names of a {kind}")
        t.eq(os.lstat(path + "-2").st_nlink, 2, f"{kind}: nlink of the remaining names")
        t.call(0, os.unlink, path + "-3")
        t.eq(os.lstat(path + "-2").st_nlink, 1, f"{kind}: nlink with one name left")
    t.eq(sorted(os.listdir(t.dir)), sorted(k + "-2" for k in NONDIR_TYPES),
         "directory lists just the remaining names")
    # a symlink is removed, not its target
    touch(t.p("target"))
    os.symlink("target", t.p("link"))
    os.unlink(t.p("link"))
    t.ok(os.path.exists(t.p("target")), "unlink of a symlink leaves its target")


@check
def errors(t):
    os.chmod(t.dir, 0o777)
    os.mkdir(t.p("d"), 0o755)
    t.call((E.EISDIR, E.EPERM), os.unlink, t.p("d"), what="unlink of a directory")
    t.call((E.EISDIR, E.EPERM), os.unlink, t.p("d"), user=OWNER, what="unlink of a directory")
    t.ok(os.path.isdir(t.p("d")), "directory survives unlink")
    t.call(E.ENOENT, os.unlink, t.p("missing"))
    t.call(E.ENOENT, os.unlink, t.p("d", "missing"))
    touch(t.p("f"))
    t.call(E.ENOTDIR, os.unlink, t.p("f", "x"))
    t.call(E.ENOTDIR, os.unlink, t.p("f", ""), what="unlink('f/')")
    p = t.p("p")
    os.mkdir(p, 0o755)
    os.chown(p, OWNER.uid, OWNER.gid)
    touch(os.path.join(p, "f"))
    os.chown(os.path.join(p, "f"), OTHER.uid, OTHER.gid)
    t.call(E.EACCES, os.unlink, os.path.join(p, "f"), user=OTHER,
           what="unlink of own file in another's unwritable dir")
    os.chmod(p, 0o666)
    t.call(E.EACCES, os.unlink, os.path.join(p, "f"), user=OWNER,
           what="unlink in an unsearchable dir")
    os.chmod(p, 0o555)
    t.call(E.EACCES, os.unlink, os.path.join(p, "f"), user=OWNER,
           what="unlink in own read-only dir")
    os.chmod(p, 0o755)
    os.chmod(os.path.join(p, "f"), 0)
    t.call(0, os.unlink, os.path.join(p, "f"), user=OWNER,
           what="unlink of another's mode 0 file in own dir")


@check
def sticky(t):
    users = {"entry-owner": OWNER, "dir-owner": DIROWNER, "root": ROOT, "other": OTHER,
             "groupmate": GROUPMATE}
    i = 0
    for kind in NONDIR_TYPES:
        for uname, user in users.items():
            d = t.p(f"s{i}")
            i += 1
            os.mkdir(d, 0o777)
            os.chown(d, DIROWNER.uid, DIROWNER.gid)
            os.chmod(d, 0o1777)
            e = os.path.join(d, "entry")
            make(e, kind)
            if kind != "symlink":
                os.chmod(e, 0o666)
            os.lchown(e, OWNER.uid, OWNER.gid)
            exp = 0 if uname in ("entry-owner", "dir-owner", "root") else E.EPERM
            t.call(exp, os.unlink, e, user=user, what=f"sticky: {uname} unlinks a {kind}")
            t.eq(os.path.lexists(e), exp != 0, f"sticky: {kind} present after {uname}'s unlink")


@check
def times(t):
    os.mkdir(t.p("p"), 0o755)
    os.mkdir(t.p("q"), 0o755)
    for kind in NONDIR_TYPES:
        make(t.p("p", kind), kind)
        os.link(t.p("p", kind), t.p("p", kind + "-keep"), follow_symlinks=False)
    p0, q0 = os.stat(t.p("p")), os.stat(t.p("q"))
    keep0 = {k: os.lstat(t.p("p", k + "-keep")) for k in NONDIR_TYPES}
    sleep_tick()
    for kind in NONDIR_TYPES:
        t.call(0, os.unlink, t.p("p", kind))
    t.call(E.ENOENT, os.unlink, t.p("q", "missing"))
    t.times(p0, os.stat(t.p("p")), "parent after unlink", changed="mc")
    t.times(q0, os.stat(t.p("q")), "parent after failed unlink", same="mc")
    for kind in NONDIR_TYPES:
        t.times(keep0[kind], os.lstat(t.p("p", kind + "-keep")),
                f"{kind}: remaining name after unlink of another", changed="c", same="m")
