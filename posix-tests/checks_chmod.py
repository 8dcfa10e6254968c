"""chmod: modes of every file type, symlink following, ownership rules, SUID/SGID rules."""
import errno as E
import os
import stat

from lib import GROUPMATE, MODE_TYPES, OBJ_GID, OTHER, OWNER, check, make, sleep_tick, write_file


@check
def modes_every_type(t):
    for kind in MODE_TYPES:
        path = t.p(kind)
        make(path, kind)
        for mode in (0o644, 0o000, 0o7777, 0o4755, 0o2755, 0o1777, 0o0111, 0o0421):
            t.call(0, os.chmod, path, mode)
            t.mode_is(path, mode, f"{kind}: mode after chmod {mode:04o}")
        t.ok(stat.S_IFMT(os.lstat(path).st_mode) == stat.S_IFMT(
            {"reg": stat.S_IFREG, "dir": stat.S_IFDIR, "fifo": stat.S_IFIFO,
             "sock": stat.S_IFSOCK, "chr": stat.S_IFCHR, "blk": stat.S_IFBLK}[kind]),
            f"{kind}: file type kept by chmod")


@check
def follows_symlink(t):
    make(t.p("f"), "reg", 0o644)
    os.symlink("f", t.p("l"))
    t.call(0, os.chmod, t.p("l"), 0o600)
    t.mode_is(t.p("f"), 0o600, "chmod through a symlink changes the target")
    t.eq(stat.S_IMODE(os.lstat(t.p("l")).st_mode), 0o777, "symlink's own mode stays 0777",
         fmt=oct)
    fd = os.open(t.p("f"), os.O_RDONLY)
    try:
        t.call(0, os.fchmod, fd, 0o640, what="fchmod(fd of f)")
    finally:
        os.close(fd)
    t.mode_is(t.p("f"), 0o640, "mode after fchmod")
    os.symlink("missing", t.p("dangling"))
    t.call(E.ENOENT, os.chmod, t.p("dangling"), 0o600)


@check
def owner_rules(t):
    for kind in MODE_TYPES:
        path = t.p(kind)
        make(path, kind, 0o644)
        os.chown(path, OWNER.uid, OBJ_GID)
        t.call(E.EPERM, os.chmod, path, 0o600, user=GROUPMATE, what=f"{kind}: chmod by group member")
        t.call(E.EPERM, os.chmod, path, 0o600, user=OTHER, what=f"{kind}: chmod by other user")
        t.mode_is(path, 0o644, f"{kind}: mode unchanged after EPERM")
        t.call(0, os.chmod, path, 0o750, user=OWNER, what=f"{kind}: chmod by owner")
        t.mode_is(path, 0o750, f"{kind}: mode after owner's chmod")
        t.call(0, os.chmod, path, 0o711, what=f"{kind}: chmod by root")
        t.mode_is(path, 0o711, f"{kind}: mode after root's chmod")
        # an owner may set SUID on its own object
        t.call(0, os.chmod, path, 0o4755, user=OWNER, what=f"{kind}: owner sets SUID")
        t.mode_is(path, 0o4755, f"{kind}: SUID set by owner kept")


@check
def sgid_dropped_for_nonmember(t):
    for kind in ("reg", "dir"):
        path = t.p(kind)
        make(path, kind, 0o755)
        # owned by OWNER but group 0, which OWNER is not in
        os.chown(path, OWNER.uid, 0)
        t.call(0, os.chmod, path, 0o2755, user=OWNER, what=f"{kind}: owner not in group sets SGID")
        t.mode_is(path, 0o0755, f"{kind}: SGID dropped when caller not in the group")
        t.call(0, os.chmod, path, 0o6755, user=OWNER, what=f"{kind}: owner sets SUID|SGID")
        t.mode_is(path, 0o4755, f"{kind}: only SGID dropped, SUID kept")
        # group is one of OWNER's supplementary groups: SGID kept
        os.chown(path, OWNER.uid, OBJ_GID)
        t.call(0, os.chmod, path, 0o2755, user=OWNER, what=f"{kind}: member sets SGID")
        t.mode_is(path, 0o2755, f"{kind}: SGID kept for a member of the group")
        # root may always set it
        os.chown(path, OWNER.uid, 0)
        t.call(0, os.chmod, path, 0o2755, what=f"{kind}: root sets SGID")
        t.mode_is(path, 0o2755, f"{kind}: SGID kept when root sets it")


def _append(path):
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, b"more")
    finally:
        os.close(fd)


@check
def nonowner_write_clears_suid(t):
    cases = [("suid", 0o4777, 0o0777), ("sgid", 0o2777, 0o0777), ("both", 0o6777, 0o0777)]
    for label, mode, after in cases:
        path = t.p(label)
        write_file(path, b"data")
        os.chown(path, OWNER.uid, OBJ_GID)
        os.chmod(path, mode)
        t.call(0, _append, path, user=OTHER, what=f"{label}: write by non-owner")
        t.mode_is(path, after, f"{label}: SUID/SGID cleared by a non-owner's write")
        t.eq(os.stat(path).st_size, 8, f"{label}: write landed")
    # a non-owner's truncate clears them too
    path = t.p("trunc")
    write_file(path, b"data")
    os.chown(path, OWNER.uid, OBJ_GID)
    os.chmod(path, 0o6777)
    t.call(0, os.truncate, path, 1, user=OTHER, what="truncate by non-owner")
    t.mode_is(path, 0o0777, "SUID/SGID cleared by a non-owner's truncate")


@check
def ctime(t):
    """ctime changes on successful chmod only (one sleep for all objects)."""
    paths = {}
    for kind in MODE_TYPES:
        for case in ("root", "owner", "eperm"):
            path = t.p(f"{kind}-{case}")
            make(path, kind, 0o644)
            os.chown(path, OWNER.uid, OBJ_GID)
            paths[(kind, case)] = path
    os.symlink("reg-root", t.p("link"))
    before = {k: os.lstat(p) for k, p in paths.items()}
    sleep_tick()
    for (kind, case), path in paths.items():
        if case == "root":
            target = t.p("link") if kind == "reg" else path
            t.call(0, os.chmod, target, 0o600, what=f"{kind}: chmod by root")
        elif case == "owner":
            t.call(0, os.chmod, path, 0o600, user=OWNER, what=f"{kind}: chmod by owner")
        else:
            t.call(E.EPERM, os.chmod, path, 0o600, user=OTHER, what=f"{kind}: chmod by other")
    for (kind, case), path in paths.items():
        after = os.lstat(path)
        if case == "eperm":
            t.times(before[(kind, case)], after, f"{kind}: failed chmod", same="mc")
        else:
            t.times(before[(kind, case)], after, f"{kind}: chmod by {case}", changed="c",
                    same="m")
