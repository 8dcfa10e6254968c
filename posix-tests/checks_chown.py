"""chown / lchown: who may change what, symlink following, SUID/SGID clearing, ctime."""
import errno as E
import os

from lib import ALL_TYPES, GROUPMATE, MODE_TYPES, OBJ_GID, OTHER, OWNER, check, make, sleep_tick


def owner_of(path, follow=False):
    st = os.stat(path) if follow else os.lstat(path)
    return (st.st_uid, st.st_gid)


@check
def root_sets_any_ids(t):
    ids = [(65535, 65535), (123456, 654321), (2**31 - 1, 2**31 - 1), (2**31, 2**31 + 5),
           (4294967294, 4294967294), (0, 0), (1, 2)]
    for kind in ALL_TYPES:
        path = t.p(kind)
        make(path, kind)
        for uid, gid in ids:
            t.call(0, os.lchown, path, uid, gid, what=f"{kind}: lchown {uid}:{gid}")
            t.eq(owner_of(path), (uid, gid), f"{kind}: owner after lchown {uid}:{gid}")
        t.call(0, os.lchown, path, 4242, -1, what=f"{kind}: lchown uid only")
        t.eq(owner_of(path), (4242, 2), f"{kind}: gid kept by chown(uid, -1)")
        t.call(0, os.lchown, path, -1, 4343, what=f"{kind}: lchown gid only")
        t.eq(owner_of(path), (4242, 4343), f"{kind}: uid kept by chown(-1, gid)")


@check
def follow_vs_nofollow(t):
    make(t.p("f"), "reg")
    os.symlink("f", t.p("l"))
    lst0 = owner_of(t.p("l"))
    t.call(0, os.chown, t.p("l"), 321, 654, what="chown through symlink")
    t.eq(owner_of(t.p("f")), (321, 654), "chown follows the symlink")
    t.eq(owner_of(t.p("l")), lst0, "chown leaves the symlink itself alone")
    t.call(0, os.lchown, t.p("l"), 987, 789, what="lchown of symlink")
    t.eq(owner_of(t.p("l")), (987, 789), "lchown changes the symlink")
    t.eq(owner_of(t.p("f")), (321, 654), "lchown leaves the target alone")
    fd = os.open(t.p("f"), os.O_RDONLY)
    try:
        t.call(0, os.fchown, fd, 111, 222, what="fchown")
    finally:
        os.close(fd)
    t.eq(owner_of(t.p("f")), (111, 222), "owner after fchown")
    os.symlink("missing", t.p("dangling"))
    t.call(E.ENOENT, os.chown, t.p("dangling"), 1, 1)
    t.call(0, os.lchown, t.p("dangling"), 1, 1)


@check
def unprivileged_rules(t):
    for kind in ALL_TYPES:
        path = t.p(kind)
        make(path, kind)
        os.lchown(path, OWNER.uid, OWNER.gid)
        # owner: group to its primary and supplementary groups
        t.call(0, os.lchown, path, -1, OBJ_GID, user=OWNER, what=f"{kind}: owner chgrp to supplementary group")
        t.eq(owner_of(path), (OWNER.uid, OBJ_GID), f"{kind}: owner after chgrp")
        t.call(0, os.lchown, path, OWNER.uid, OWNER.gid, user=OWNER, what=f"{kind}: owner chown(self, primary group)")
        t.eq(owner_of(path), (OWNER.uid, OWNER.gid), f"{kind}: owner after chown(self, group)")
        # owner: to a group it is not in, or another uid
        t.call(E.EPERM, os.lchown, path, -1, OTHER.gid, user=OWNER, what=f"{kind}: owner chgrp to foreign group")
        t.call(E.EPERM, os.lchown, path, OTHER.uid, -1, user=OWNER, what=f"{kind}: owner gives file away")
        t.call(E.EPERM, os.lchown, path, OTHER.uid, OWNER.gid, user=OWNER, what=f"{kind}: owner chown(other uid, own group)")
        # non-owner, even to a group both are in
        t.call(E.EPERM, os.lchown, path, -1, OBJ_GID, user=GROUPMATE, what=f"{kind}: non-owner chgrp")
        t.call(E.EPERM, os.lchown, path, GROUPMATE.uid, -1, user=GROUPMATE, what=f"{kind}: non-owner takes file")
        t.eq(owner_of(path), (OWNER.uid, OWNER.gid), f"{kind}: owner unchanged after EPERMs")
        # chown(-1, -1) is allowed to anyone
        t.call(0, os.lchown, path, -1, -1, user=OTHER, what=f"{kind}: chown(-1, -1) by non-owner")
        t.call(0, os.lchown, path, -1, -1, user=OWNER, what=f"{kind}: chown(-1, -1) by owner")
        t.eq(owner_of(path), (OWNER.uid, OWNER.gid), f"{kind}: owner unchanged after chown(-1,-1)")


@check
def suid_sgid_cleared(t):
    # (mode before, mode after) of a regular file when ownership changes
    cases = [(0o6555, 0o0555), (0o4555, 0o0555), (0o2555, 0o0555), (0o2545, 0o2545)]
    for i, (before, after) in enumerate(cases):
        for who in ("root", "owner"):
            path = t.p(f"f{i}-{who}")
            make(path, "reg", 0)
            os.chown(path, OWNER.uid, OWNER.gid)
            os.chmod(path, before)
            if who == "root":
                t.call(0, os.chown, path, 777, 888, what=f"root chown of {before:04o} file")
            else:
                t.call(0, os.chown, path, -1, OBJ_GID, user=OWNER,
                       what=f"owner chgrp of {before:04o} file")
            t.mode_is(path, after, f"{who} changes owner of a {before:04o} file")
    # directories keep SUID/SGID on Linux
    d = t.p("dir")
    make(d, "dir")
    os.chown(d, OWNER.uid, OWNER.gid)
    os.chmod(d, 0o6755)
    t.call(0, os.chown, d, 777, 888, what="root chown of 6755 directory")
    t.mode_is(d, 0o6755, "directory keeps SUID/SGID on chown")


@check
def ctime(t):
    """ctime changes on successful chown only (one sleep for all objects)."""
    paths = {}
    for kind in MODE_TYPES + ("symlink",):
        for case in ("root", "owner", "eperm"):
            path = t.p(f"{kind}-{case}")
            make(path, kind)
            os.lchown(path, OWNER.uid, OWNER.gid)
            paths[(kind, case)] = path
    before = {k: os.lstat(p) for k, p in paths.items()}
    sleep_tick()
    for (kind, case), path in paths.items():
        if case == "root":
            t.call(0, os.lchown, path, 5555, 6666, what=f"{kind}: lchown by root")
        elif case == "owner":
            t.call(0, os.lchown, path, -1, OBJ_GID, user=OWNER, what=f"{kind}: chgrp by owner")
        else:
            t.call(E.EPERM, os.lchown, path, OTHER.uid, -1, user=OWNER,
                   what=f"{kind}: give away by owner")
    for (kind, case), path in paths.items():
        after = os.lstat(path)
        if case == "eperm":
            t.times(before[(kind, case)], after, f"{kind}: failed chown", same="mc")
        else:
            t.times(before[(kind, case)], after, f"{kind}: chown by {case}", changed="c",
                    same="m")
