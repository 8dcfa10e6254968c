"""renameat2: RENAME_NOREPLACE and RENAME_EXCHANGE."""
import errno as E
import os

from lib import (
    ALL_TYPES,
    OTHER,
    OWNER,
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    check,
    make,
    read_file,
    renameat2,
    touch,
)


@check
def noreplace(t):
    for kind in ALL_TYPES:
        make(t.p("src-" + kind), kind)
        make(t.p("dst-" + kind), kind)
        ino_s, ino_d = os.lstat(t.p("src-" + kind)).st_ino, os.lstat(t.p("dst-" + kind)).st_ino
        t.call(E.EEXIST, renameat2, t.p("src-" + kind), t.p("dst-" + kind), RENAME_NOREPLACE,
               what=f"RENAME_NOREPLACE {kind} onto an existing {kind}")
        t.eq((os.lstat(t.p("src-" + kind)).st_ino, os.lstat(t.p("dst-" + kind)).st_ino),
             (ino_s, ino_d), f"{kind}: nothing changed by a refused NOREPLACE")
        t.call(0, renameat2, t.p("src-" + kind), t.p("new-" + kind), RENAME_NOREPLACE,
               what=f"RENAME_NOREPLACE {kind} to a free name")
        t.eq(os.lstat(t.p("new-" + kind)).st_ino, ino_s, f"{kind}: moved by NOREPLACE")
        t.ok(not os.path.lexists(t.p("src-" + kind)), f"{kind}: old name gone after NOREPLACE")
    os.symlink("nowhere", t.p("dangling"))
    touch(t.p("f"))
    t.call(E.EEXIST, renameat2, t.p("f"), t.p("dangling"), RENAME_NOREPLACE,
           what="RENAME_NOREPLACE onto a dangling symlink")
    os.mkdir(t.p("sub"), 0o755)
    t.call(0, renameat2, t.p("f"), t.p("sub", "f"), RENAME_NOREPLACE,
           what="RENAME_NOREPLACE into another directory")
    t.call(E.ENOENT, renameat2, t.p("missing"), t.p("x"), RENAME_NOREPLACE)


@check
def exchange(t):
    touch(t.p("a"), data=b"AAA")
    touch(t.p("b"), data=b"BBBB")
    ia, ib = os.lstat(t.p("a")).st_ino, os.lstat(t.p("b")).st_ino
    t.call(0, renameat2, t.p("a"), t.p("b"), RENAME_EXCHANGE, what="RENAME_EXCHANGE two files")
    t.eq((os.lstat(t.p("a")).st_ino, os.lstat(t.p("b")).st_ino), (ib, ia), "inodes swapped")
    t.eq((read_file(t.p("a")), read_file(t.p("b"))), (b"BBBB", b"AAA"), "contents swapped")
    # every pair of types, across two directories
    os.mkdir(t.p("x"), 0o755)
    os.mkdir(t.p("y"), 0o755)
    for k1 in ALL_TYPES:
        for k2 in ALL_TYPES:
            p1, p2 = t.p("x", f"{k1}-{k2}"), t.p("y", f"{k1}-{k2}")
            make(p1, k1)
            make(p2, k2)
            i1, i2 = os.lstat(p1).st_ino, os.lstat(p2).st_ino
            nx, ny = os.stat(t.p("x")).st_nlink, os.stat(t.p("y")).st_nlink
            t.call(0, renameat2, p1, p2, RENAME_EXCHANGE, what=f"RENAME_EXCHANGE {k1} <-> {k2}")
            t.eq((os.lstat(p1).st_ino, os.lstat(p2).st_ino), (i2, i1), f"{k1} <-> {k2}: swapped")
            dx = (k2 == "dir") - (k1 == "dir")
            t.eq((os.stat(t.p("x")).st_nlink, os.stat(t.p("y")).st_nlink), (nx + dx, ny - dx),
                 f"{k1} <-> {k2}: parents' nlink")
            for p, par in ((p1, "x"), (p2, "y")):
                if os.path.isdir(p) and not os.path.islink(p):
                    t.eq(os.stat(os.path.join(p, "..")).st_ino, os.stat(t.p(par)).st_ino,
                         f"{k1} <-> {k2}: `..` of the exchanged dir in {par}")
    # errors
    t.call(E.ENOENT, renameat2, t.p("a"), t.p("missing"), RENAME_EXCHANGE,
           what="RENAME_EXCHANGE with a missing target")
    t.call(E.ENOENT, renameat2, t.p("missing"), t.p("a"), RENAME_EXCHANGE,
           what="RENAME_EXCHANGE with a missing source")
    t.call(E.EINVAL, renameat2, t.p("a"), t.p("b"), RENAME_EXCHANGE | RENAME_NOREPLACE,
           what="RENAME_EXCHANGE|RENAME_NOREPLACE")
    os.makedirs(t.p("p", "c"), 0o755)
    t.call(E.EINVAL, renameat2, t.p("p"), t.p("p", "c"), RENAME_EXCHANGE,
           what="RENAME_EXCHANGE of a dir with its own subdir")
    os.makedirs(t.p("full", "sub"), 0o755)
    os.mkdir(t.p("empty"), 0o755)
    t.call(0, renameat2, t.p("full"), t.p("empty"), RENAME_EXCHANGE,
           what="RENAME_EXCHANGE a non-empty dir with an empty one")
    t.eq((os.listdir(t.p("empty")), os.listdir(t.p("full"))), (["sub"], []),
         "non-empty dir exchanged")


@check
def exchange_permissions(t):
    d = t.p("d")
    os.mkdir(d, 0o755)
    os.chown(d, OWNER.uid, OWNER.gid)
    touch(os.path.join(d, "a"))
    touch(os.path.join(d, "b"))
    t.call(E.EACCES, renameat2, os.path.join(d, "a"), os.path.join(d, "b"), RENAME_EXCHANGE,
           user=OTHER, what="RENAME_EXCHANGE in an unwritable dir")
    t.call(0, renameat2, os.path.join(d, "a"), os.path.join(d, "b"), RENAME_EXCHANGE,
           user=OWNER, what="RENAME_EXCHANGE by the dir's owner")
    os.chmod(d, 0o1777)
    t.call(E.EPERM, renameat2, os.path.join(d, "a"), os.path.join(d, "b"), RENAME_EXCHANGE,
           user=OTHER, what="RENAME_EXCHANGE of root's files in a sticky dir")
