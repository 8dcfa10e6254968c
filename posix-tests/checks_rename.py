"""rename: inode kept, replacement, directory moves, sticky directories, errors, times."""
import errno as E
import os

from lib import (
    ALL_TYPES,
    DIROWNER,
    GROUPMATE,
    NONDIR_TYPES,
    OTHER,
    OWNER,
    ROOT,
    check,
    make,
    read_file,
    sleep_tick,
    touch,
    write_file,
)


@check
def keeps_inode(t):
    os.mkdir(t.p("other"), 0o755)
    for kind in ALL_TYPES:
        a = t.p(kind)
        make(a, kind)
        st0 = os.lstat(a)
        t.call(0, os.rename, a, t.p(kind + "-renamed"), what=f"{kind}: rename in one dir")
        st1 = os.lstat(t.p(kind + "-renamed"))
        t.eq(st1.st_ino, st0.st_ino, f"{kind}: inode kept by rename")
        t.ok(not os.path.lexists(a), f"{kind}: old name gone")
        t.call(0, os.rename, t.p(kind + "-renamed"), t.p("other", kind), what=f"{kind}: rename to another dir")
        st2 = os.lstat(t.p("other", kind))
        t.eq((st2.st_ino, st2.st_mode, st2.st_uid, st2.st_nlink),
             (st0.st_ino, st0.st_mode, st0.st_uid, st0.st_nlink),
             f"{kind}: inode, mode, owner and nlink kept across directories")
        if kind == "symlink":
            t.eq(os.readlink(t.p("other", kind)), "target-of-symlink", "symlink target kept")
    write_file(t.p("data"), b"x" * 100000)
    os.rename(t.p("data"), t.p("other", "data"))
    t.eq(read_file(t.p("other", "data")), b"x" * 100000, "file data kept by rename")
    t.eq(sorted(os.listdir(t.p("other"))), sorted(list(ALL_TYPES) + ["data"]),
         "listing after renames")
    # renaming onto another name of the same inode does nothing
    touch(t.p("h1"))
    os.link(t.p("h1"), t.p("h2"))
    t.call(0, os.rename, t.p("h1"), t.p("h2"), what="rename between hard links of one inode")
    t.ok(os.path.exists(t.p("h1")) and os.path.exists(t.p("h2")),
         "both hard links remain after renaming one onto the other")
    t.call(0, os.rename, t.p("h1"), t.p("h1"), what="rename onto itself")
    t.ok(os.path.exists(t.p("h1")), "rename onto itself keeps the file")


@check
def replace_target(t):
    for kind in NONDIR_TYPES:
        for tkind in NONDIR_TYPES:
            src, dst = t.p(f"s-{kind}-{tkind}"), t.p(f"d-{kind}-{tkind}")
            make(src, kind)
            make(dst, tkind)
            ino = os.lstat(src).st_ino
            t.call(0, os.rename, src, dst, what=f"rename {kind} over {tkind}")
            t.eq(os.lstat(dst).st_ino, ino, f"{kind} over {tkind}: target name has source inode")
            t.ok(not os.path.lexists(src), f"{kind} over {tkind}: source name gone")
    # directory over an empty directory
    os.mkdir(t.p("da"), 0o755)
    touch(t.p("da", "inside"))
    os.mkdir(t.p("db"), 0o755)
    n0 = os.stat(t.dir).st_nlink
    ino = os.stat(t.p("da")).st_ino
    t.call(0, os.rename, t.p("da"), t.p("db"), what="directory over an empty directory")
    t.eq(os.stat(t.p("db")).st_ino, ino, "target directory name has the source's inode")
    t.eq(os.listdir(t.p("db")), ["inside"], "moved directory keeps its content")
    t.eq(os.stat(t.dir).st_nlink, n0 - 1, "parent nlink drops when a directory replaces another")
    # replacing a multiply-linked target
    touch(t.p("src"), data=b"new")
    touch(t.p("tgt"), data=b"old")
    os.link(t.p("tgt"), t.p("tgt-link"))
    t.call(0, os.rename, t.p("src"), t.p("tgt"), what="rename over a file with two links")
    t.eq(os.stat(t.p("tgt-link")).st_nlink, 1, "nlink of the replaced inode drops")
    t.eq(read_file(t.p("tgt-link")), b"old", "the replaced inode's data survives via its other link")
    t.eq(read_file(t.p("tgt")), b"new", "the target name has the new data")


@check
def directory_moves(t):
    a, b = t.p("a"), t.p("b")
    os.mkdir(a, 0o755)
    os.mkdir(b, 0o755)
    os.mkdir(os.path.join(a, "d"), 0o755)
    os.mkdir(os.path.join(a, "d", "sub"), 0o755)
    na, nb = os.stat(a).st_nlink, os.stat(b).st_nlink
    t.call(0, os.rename, os.path.join(a, "d"), os.path.join(b, "d"), what="move a dir to another parent")
    t.eq(os.stat(a).st_nlink, na - 1, "old parent's nlink drops")
    t.eq(os.stat(b).st_nlink, nb + 1, "new parent's nlink grows")
    t.eq(os.stat(os.path.join(b, "d", "..")).st_ino, os.stat(b).st_ino,
         "`..` of the moved dir is the new parent")
    t.eq(os.stat(os.path.join(b, "d")).st_nlink, 3, "moved dir keeps its nlink")
    t.eq(os.stat(os.path.join(b, "d", "sub", "..", "..")).st_ino, os.stat(b).st_ino,
         "`..` chain below the moved dir")
    # a dir renamed within its parent keeps the parent's nlink
    t.call(0, os.rename, os.path.join(b, "d"), os.path.join(b, "e"), what="rename a dir in place")
    t.eq(os.stat(b).st_nlink, nb + 1, "nlink unchanged by an in-place rename")
    # moving it back up
    t.call(0, os.rename, os.path.join(b, "e"), t.p("e"), what="move a dir up")
    t.eq(os.stat(t.p("e", "..")).st_ino, os.stat(t.dir).st_ino, "`..` after moving up")
    t.eq(os.stat(b).st_nlink, nb, "nlink after moving the dir up")
    # move a deep directory tree down into a sibling
    t.call(0, os.rename, t.p("e"), os.path.join(a, "e"), what="move a dir down")
    t.eq(os.listdir(os.path.join(a, "e")), ["sub"], "content after moving down")


@check
def errors(t):
    os.makedirs(t.p("d", "sub", "deeper"), 0o755)
    touch(t.p("f"))
    t.call(E.EINVAL, os.rename, t.p("d"), t.p("d", "sub", "x"), what="move a dir into its subdir")
    t.call(E.EINVAL, os.rename, t.p("d"), t.p("d", "x"), what="move a dir into itself")
    t.call(E.EINVAL, os.rename, t.p("d"), t.p("d", "sub", "deeper", "x"),
           what="move a dir into a grandchild")
    t.call((E.EINVAL, E.ENOTEMPTY, E.EEXIST), os.rename, t.p("d", "sub"), t.p("d"),
           what="rename a dir onto its own parent")
    t.call((E.EINVAL, E.EBUSY), os.rename, t.p("d", "."), t.p("x"), what="rename of `.`")
    t.call((E.EINVAL, E.EBUSY), os.rename, t.p("d", ".."), t.p("x"), what="rename of `..`")
    t.call((E.EINVAL, E.EBUSY, E.EEXIST, E.ENOTEMPTY), os.rename, t.p("f"), t.p("d", "."),
           what="rename onto `.`")
    # non-empty target directory
    os.mkdir(t.p("src"), 0o755)
    os.mkdir(t.p("full"), 0o755)
    touch(t.p("full", "x"))
    t.call((E.ENOTEMPTY, E.EEXIST), os.rename, t.p("src"), t.p("full"),
           what="dir onto a non-empty dir")
    os.mkdir(t.p("full2"), 0o755)
    os.mkdir(t.p("full2", "subdir"), 0o755)
    t.call((E.ENOTEMPTY, E.EEXIST), os.rename, t.p("src"), t.p("full2"),
           what="dir onto a dir holding a subdir")
    # type mismatches
    for kind in NONDIR_TYPES:
        make(t.p("nd-" + kind), kind)
        t.call(E.ENOTDIR, os.rename, t.p("src"), t.p("nd-" + kind), what=f"dir onto a {kind}")
        t.call(E.EISDIR, os.rename, t.p("nd-" + kind), t.p("src"), what=f"{kind} onto a dir")
    t.call(E.ENOENT, os.rename, t.p("missing"), t.p("y"))
    t.call(E.ENOENT, os.rename, t.p("f"), t.p("missing", "y"))
    t.call(E.ENOTDIR, os.rename, t.p("f"), t.p("f2", ""), what="rename of a file to 'name/'")
    t.ok(os.path.isdir(t.p("src")) and os.listdir(t.p("full")) == ["x"],
         "failed renames change nothing")


@check
def permissions(t):
    src, dst = t.p("src"), t.p("dst")
    for d in (src, dst):
        os.mkdir(d, 0o755)
        os.chown(d, OWNER.uid, OWNER.gid)
    for name in ("f1", "f2", "f3"):
        touch(os.path.join(src, name))
    os.chmod(dst, 0o555)
    t.call(E.EACCES, os.rename, os.path.join(src, "f1"), os.path.join(dst, "f1"), user=OWNER,
           what="rename into an unwritable dir")
    os.chmod(dst, 0o755)
    os.chmod(src, 0o555)
    t.call(E.EACCES, os.rename, os.path.join(src, "f1"), os.path.join(dst, "f1"), user=OWNER,
           what="rename out of an unwritable dir")
    os.chmod(src, 0o666)
    t.call(E.EACCES, os.rename, os.path.join(src, "f1"), os.path.join(dst, "f1"), user=OWNER,
           what="rename out of an unsearchable dir")
    os.chmod(src, 0o755)
    t.call(E.EACCES, os.rename, os.path.join(src, "f1"), os.path.join(dst, "f1"), user=OTHER,
           what="rename by a user without write permission on either dir")
    t.call(0, os.rename, os.path.join(src, "f1"), os.path.join(dst, "f1"), user=OWNER,
           what="rename with write permission on both dirs")
    # moving a directory to another parent needs write permission on the directory itself
    os.mkdir(os.path.join(src, "sub"), 0o755)
    os.chown(os.path.join(src, "sub"), OTHER.uid, OTHER.gid)
    t.call(E.EACCES, os.rename, os.path.join(src, "sub"), os.path.join(dst, "sub"),
           user=OWNER, what="move another user's unwritable dir to another parent")
    t.call(0, os.rename, os.path.join(src, "sub"), os.path.join(src, "sub2"), user=OWNER,
           what="rename another user's dir within the same parent")
    os.chmod(os.path.join(src, "sub2"), 0o777)
    t.call(0, os.rename, os.path.join(src, "sub2"), os.path.join(dst, "sub"), user=OWNER,
           what="move another user's writable dir to another parent")


def _sticky_setup(t, name, dir_owner, entry_owner, kind):
    d = t.p(name)
    os.mkdir(d, 0o777)
    os.chown(d, dir_owner.uid, dir_owner.gid)
    os.chmod(d, 0o1777)
    e = os.path.join(d, "entry")
    make(e, kind)
    if kind != "symlink":
        os.chmod(e, 0o777 if kind != "dir" else 0o777)
    os.lchown(e, entry_owner.uid, entry_owner.gid)
    return d, e


@check
def sticky(t):
    """In a sticky directory only the entry's owner, the directory's owner or root may
    rename or replace an entry."""
    users = {"entry-owner": OWNER, "dir-owner": DIROWNER, "other": OTHER, "root": ROOT,
             "groupmate": GROUPMATE}
    i = 0
    for kind in ALL_TYPES:
        for uname, user in users.items():
            allowed = uname in ("entry-owner", "dir-owner", "root")
            exp = 0 if allowed else E.EPERM
            # rename the entry away (within the sticky dir)
            d, e = _sticky_setup(t, f"s{i}", DIROWNER, OWNER, kind)
            i += 1
            t.call(exp, os.rename, e, os.path.join(d, "moved"), user=user,
                   what=f"sticky: {uname} renames {kind}")
            # rename the entry out to a world-writable non-sticky dir
            d, e = _sticky_setup(t, f"s{i}", DIROWNER, OWNER, kind)
            i += 1
            out = t.p(f"out{i}")
            os.mkdir(out, 0o777)
            os.chmod(out, 0o777)
            t.call(exp, os.rename, e, os.path.join(out, "x"), user=user,
                   what=f"sticky: {uname} moves {kind} out")
            # replace the entry with the caller's own object
            d, e = _sticky_setup(t, f"s{i}", DIROWNER, OWNER, kind)
            i += 1
            own = os.path.join(d, "own")
            make(own, kind)
            os.lchown(own, user.uid, user.gid)
            if kind == "dir":
                os.chmod(own, 0o777)
            t.call(exp, os.rename, own, e, user=user,
                   what=f"sticky: {uname} replaces another's {kind}")
    # when the same user owns dir and entry nothing changes; root-owned sticky dir
    d, e = _sticky_setup(t, "rootdir", ROOT, OWNER, "reg")
    t.call(E.EPERM, os.rename, e, os.path.join(d, "x"), user=OTHER,
           what="sticky root dir: other renames owner's file")
    t.call(0, os.rename, e, os.path.join(d, "x"), user=OWNER,
           what="sticky root dir: owner renames own file")


@check
def times(t):
    """rename updates both parents' mtime/ctime and the renamed inode's ctime (one sleep)."""
    os.mkdir(t.p("a"), 0o755)
    os.mkdir(t.p("b"), 0o755)
    os.mkdir(t.p("c"), 0o755)
    for kind in ALL_TYPES:
        make(t.p("a", kind), kind)
        make(t.p("c", kind), kind)
    touch(t.p("c", "tgt"))
    os.link(t.p("c", "tgt"), t.p("c", "tgt2"))
    touch(t.p("c", "src"))
    os.mkdir(t.p("e"), 0o755)
    touch(t.p("e", "f"))
    os.mkdir(t.p("e", "d"), 0o755)
    os.mkdir(t.p("e", "full"), 0o755)
    touch(t.p("e", "full", "x"))
    b0 = {n: os.lstat(t.p(n)) for n in ("a", "b", "c", "e")}
    objs = {k: os.lstat(t.p("a", k)) for k in ALL_TYPES}
    objs_c = {k: os.lstat(t.p("c", k)) for k in ALL_TYPES}
    tgt0 = os.lstat(t.p("c", "tgt"))
    sleep_tick()
    for kind in ALL_TYPES:
        t.call(0, os.rename, t.p("a", kind), t.p("b", kind), what=f"{kind}: move")
        t.call(0, os.rename, t.p("c", kind), t.p("c", kind + "-2"), what=f"{kind}: in-place rename")
    t.call(0, os.rename, t.p("c", "src"), t.p("c", "tgt"), what="rename over a 2-link file")
    t.call((E.ENOTEMPTY, E.EEXIST), os.rename, t.p("e", "d"), t.p("e", "full"))
    t.call(E.EISDIR, os.rename, t.p("e", "f"), t.p("e", "d"))
    t.times(b0["a"], os.lstat(t.p("a")), "source parent", changed="mc")
    t.times(b0["b"], os.lstat(t.p("b")), "target parent", changed="mc")
    t.times(b0["c"], os.lstat(t.p("c")), "parent of in-place renames", changed="mc")
    t.times(b0["e"], os.lstat(t.p("e")), "parent after failed renames", same="mc")
    for kind in ALL_TYPES:
        t.times(objs[kind], os.lstat(t.p("b", kind)), f"{kind}: moved inode", changed="c",
                same="m")
        t.times(objs_c[kind], os.lstat(t.p("c", kind + "-2")), f"{kind}: renamed inode",
                changed="c", same="m")
    t.times(tgt0, os.lstat(t.p("c", "tgt2")), "replaced inode with another link", changed="c",
            same="m")
