"""mkdir / mkfifo / mknod: modes and umask, ownership, setgid directories, devices, times."""
import errno as E
import os
import stat
import time

from lib import ALL_TYPES, OTHER, OWNER, ROOT, check, make, sleep_tick, touch


def _with_umask(mask, fn, *args):
    old = os.umask(mask)
    try:
        return fn(*args)
    finally:
        os.umask(old)


def _mknod_kind(kind):
    return {"mkdir": lambda p, m: os.mkdir(p, m),
            "mkfifo": lambda p, m: os.mkfifo(p, m),
            "mknod-fifo": lambda p, m: os.mknod(p, m | stat.S_IFIFO),
            "mknod-reg": lambda p, m: os.mknod(p, m | stat.S_IFREG),
            "mknod-sock": lambda p, m: os.mknod(p, m | stat.S_IFSOCK),
            "mknod-chr": lambda p, m: os.mknod(p, m | stat.S_IFCHR, os.makedev(1, 5)),
            "mknod-blk": lambda p, m: os.mknod(p, m | stat.S_IFBLK, os.makedev(7, 1)),
            "open": lambda p, m: os.close(os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, m)),
            }[kind]


MAKERS = ("mkdir", "mkfifo", "mknod-fifo", "mknod-reg", "mknod-sock", "mknod-chr",
          "mknod-blk", "open")
TYPE_OF = {"mkdir": stat.S_IFDIR, "mkfifo": stat.S_IFIFO, "mknod-fifo": stat.S_IFIFO,
           "mknod-reg": stat.S_IFREG, "mknod-sock": stat.S_IFSOCK,
           "mknod-chr": stat.S_IFCHR, "mknod-blk": stat.S_IFBLK, "open": stat.S_IFREG}


@check
def mode_and_umask(t):
    for maker in MAKERS:
        fn = _mknod_kind(maker)
        for i, (mode, mask, expected) in enumerate([(0o755, 0, 0o755), (0o777, 0o022, 0o755),
                                                    (0o640, 0o077, 0o600), (0o777, 0o777, 0),
                                                    (0o151, 0o000, 0o151)]):
            path = t.p(f"{maker}-{i}")
            t.call(0, _with_umask, mask, fn, path, mode,
                   what=f"{maker} mode {mode:04o} umask {mask:03o}")
            st = os.lstat(path)
            t.eq(stat.S_IFMT(st.st_mode), TYPE_OF[maker], f"{maker}: file type")
            t.eq(stat.S_IMODE(st.st_mode), expected,
                 f"{maker}: mode {mode:04o} with umask {mask:03o}", fmt=lambda m: f"{m:04o}")
    # sticky bit requested by mkdir is kept
    os.mkdir(t.p("sticky"), 0o1777)
    t.mode_is(t.p("sticky"), 0o1777, "mkdir 1777 keeps the sticky bit")


@check
def new_dir_links(t):
    p0 = os.stat(t.dir).st_nlink
    os.mkdir(t.p("d"), 0o755)
    t.eq(os.stat(t.p("d")).st_nlink, 2, "nlink of a new directory")
    t.eq(os.stat(t.dir).st_nlink, p0 + 1, "parent nlink grows by one with mkdir")
    os.mkdir(t.p("d", "sub"), 0o755)
    t.eq(os.stat(t.p("d")).st_nlink, 3, "nlink of a directory with one subdirectory")
    touch(t.p("d", "file"))
    t.eq(os.stat(t.p("d")).st_nlink, 3, "a file does not change the directory's nlink")
    t.eq(os.stat(t.p("d", "sub", "..")).st_ino, os.stat(t.p("d")).st_ino, "`..` of new dir")
    t.eq(sorted(os.listdir(t.p("d"))), ["file", "sub"], "listing of a new directory")


@check
def owner_and_group(t):
    os.chmod(t.dir, 0o777)
    for maker in MAKERS:
        if maker in ("mknod-chr", "mknod-blk"):
            continue
        path = t.p(maker)
        t.call(0, _mknod_kind(maker), path, 0o755, user=OWNER, what=f"{maker} as user")
        st = os.lstat(path)
        t.eq((st.st_uid, st.st_gid), (OWNER.uid, OWNER.gid),
             f"{maker}: owner is the effective uid and gid")
    os.symlink("x", t.p("sl-root"))
    t.call(0, os.symlink, "x", t.p("sl-user"), user=OWNER)
    t.eq((os.lstat(t.p("sl-user")).st_uid, os.lstat(t.p("sl-user")).st_gid),
         (OWNER.uid, OWNER.gid), "symlink owned by its creator")
    # device nodes need privilege
    t.call(E.EPERM, os.mknod, t.p("chr-user"), 0o644 | stat.S_IFCHR, os.makedev(1, 3),
           user=OWNER, what="mknod of a char device by a user")
    t.call(E.EPERM, os.mknod, t.p("blk-user"), 0o644 | stat.S_IFBLK, os.makedev(7, 0),
           user=OWNER, what="mknod of a block device by a user")


@check
def setgid_directory(t):
    sg = t.p("sg")
    os.mkdir(sg, 0o777)
    os.chown(sg, 0, 4000)  # a group none of the users is in
    os.chmod(sg, 0o2777)
    for user in (ROOT, OWNER):
        tag = "root" if user == ROOT else "user"
        for maker in ("mkdir", "mkfifo", "mknod-sock", "open"):
            path = os.path.join(sg, f"{maker}-{tag}")
            t.call(0, _mknod_kind(maker), path, 0o755, user=user, what=f"{maker} in a setgid dir")
            st = os.lstat(path)
            t.eq(st.st_gid, 4000, f"{maker} by {tag} in setgid dir: group is the parent's")
            t.eq(st.st_uid, user.uid, f"{maker} by {tag} in setgid dir: owner is the caller")
            if maker == "mkdir":
                t.ok(st.st_mode & stat.S_ISGID, f"mkdir by {tag}: subdirectory inherits setgid",
                     oct(st.st_mode))
            else:
                t.ok(not st.st_mode & stat.S_ISGID, f"{maker} by {tag}: no setgid bit on a non-directory",
                     oct(st.st_mode))
        t.call(0, os.symlink, "t", os.path.join(sg, "sl-" + tag), user=user)
        t.eq(os.lstat(os.path.join(sg, "sl-" + tag)).st_gid, 4000,
             f"symlink by {tag} in setgid dir: group is the parent's")
    # inheritance goes on down the tree
    deep = os.path.join(sg, "mkdir-user", "deeper")
    t.call(0, os.mkdir, deep, 0o755, user=OWNER)
    st = os.stat(deep)
    t.ok(st.st_gid == 4000 and st.st_mode & stat.S_ISGID,
         "setgid and group inherited by a grandchild", f"gid {st.st_gid} mode {st.st_mode:o}")
    # a non-member creating a file with S_ISGID requested and group-exec: bit stripped
    p = os.path.join(sg, "sgid-req")
    t.call(0, lambda: os.close(os.open(p, os.O_CREAT | os.O_WRONLY, 0o2775)), user=OWNER,
           what="user creates a 2775 file in a setgid dir of a foreign group")
    t.ok(not os.stat(p).st_mode & stat.S_ISGID,
         "SGID requested by a non-member is stripped", oct(os.stat(p).st_mode))
    # without setgid on the parent the creator's group is used
    plain = t.p("plain")
    os.mkdir(plain, 0o777)
    os.chown(plain, 0, 4000)
    t.call(0, os.mkdir, os.path.join(plain, "d"), 0o755, user=OWNER)
    st = os.stat(os.path.join(plain, "d"))
    t.eq(st.st_gid, OWNER.gid, "without setgid parent the group is the caller's egid")
    t.ok(not st.st_mode & stat.S_ISGID, "no setgid inherited from a plain parent")


@check
def devices(t):
    devs = [(stat.S_IFCHR, 1, 3), (stat.S_IFCHR, 4, 64), (stat.S_IFCHR, 255, 255),
            (stat.S_IFCHR, 4095, 1048575), (stat.S_IFBLK, 7, 0), (stat.S_IFBLK, 8, 17),
            (stat.S_IFBLK, 259, 123456), (stat.S_IFCHR, 0, 0)]
    for i, (kind, major, minor) in enumerate(devs):
        path = t.p(f"dev{i}")
        name = "chr" if kind == stat.S_IFCHR else "blk"
        t.call(0, os.mknod, path, 0o640 | kind, os.makedev(major, minor),
               what=f"mknod {name} {major}:{minor}")
        st = os.lstat(path)
        t.eq(stat.S_IFMT(st.st_mode), kind, f"{name} {major}:{minor}: type")
        t.eq((os.major(st.st_rdev), os.minor(st.st_rdev)), (major, minor),
             f"{name} {major}:{minor}: major/minor preserved")
        t.mode_is(path, 0o640, f"{name} {major}:{minor}: mode")
    # a hard link and a rename keep the device number
    os.link(t.p("dev3"), t.p("dev3-link"))
    os.rename(t.p("dev3-link"), t.p("dev3-moved"))
    t.eq(os.lstat(t.p("dev3-moved")).st_rdev, os.makedev(4095, 1048575),
         "rdev kept by link and rename")
    # non-device types report rdev 0
    os.mkfifo(t.p("fifo"), 0o644)
    t.eq(os.lstat(t.p("fifo")).st_rdev, 0, "rdev of a fifo")


@check
def errors(t):
    for kind in ALL_TYPES:
        path = t.p("x-" + kind)
        make(path, kind)
        for maker in ("mkdir", "mkfifo", "mknod-reg", "mknod-chr"):
            t.call(E.EEXIST, _mknod_kind(maker), path, 0o755, what=f"{maker} over existing {kind}")
    os.symlink("nowhere", t.p("dangling"))
    t.call(E.EEXIST, os.mkdir, t.p("dangling"), 0o755, what="mkdir over a dangling symlink")
    t.call(E.EEXIST, os.mkfifo, t.p("dangling"), 0o644, what="mkfifo over a dangling symlink")
    t.ok(not os.path.exists(t.p("nowhere")), "nothing created at a dangling symlink's target")
    t.call(E.ENOENT, os.mkdir, t.p("missing", "d"), 0o755)
    t.call(E.ENOENT, os.mkfifo, t.p("missing", "f"), 0o644)
    # unwritable parent
    ro = t.p("ro")
    os.mkdir(ro, 0o755)
    os.chown(ro, OWNER.uid, OWNER.gid)
    os.chmod(ro, 0o555)
    for maker in ("mkdir", "mkfifo", "mknod-reg", "mknod-sock", "open"):
        t.call(E.EACCES, _mknod_kind(maker), os.path.join(ro, maker), 0o755, user=OWNER,
               what=f"{maker} in an unwritable directory")
        t.call(E.EACCES, _mknod_kind(maker), os.path.join(ro, maker), 0o755, user=OTHER,
               what=f"{maker} in another's unwritable directory")
    t.eq(os.listdir(ro), [], "nothing created in an unwritable directory")
    # EINVAL for an unknown file type with mknod
    t.call(E.EINVAL, os.mknod, t.p("weird"), 0o644 | 0o030000, what="mknod of type 030000")
    t.call(E.EPERM, os.mknod, t.p("weird"), 0o755 | stat.S_IFDIR, what="mknod of a directory")


@check
def times(t):
    """A new entry's times are now; its parent's mtime/ctime move (one sleep for all)."""
    parents = {}
    for maker in MAKERS + ("symlink",):
        d = t.p("d-" + maker)
        os.mkdir(d, 0o755)
        parents[maker] = d
    os.mkdir(t.p("d-fail"), 0o755)
    touch(t.p("d-fail", "exists"))
    before = {m: os.stat(d) for m, d in parents.items()}
    fail0 = os.stat(t.p("d-fail"))
    sleep_tick()
    now = int(time.time())
    for maker, d in parents.items():
        path = os.path.join(d, "new")
        if maker == "symlink":
            os.symlink("somewhere", path)
        else:
            _mknod_kind(maker)(path, 0o644)
        st = os.lstat(path)
        for f in "amc":
            t.ok(abs(int(getattr(st, f"st_{f}time")) - now) <= 2,
                 f"{maker}: {f}time of new entry is now",
                 f"{int(getattr(st, f'st_{f}time'))} vs now {now}")
        t.times(before[maker], os.stat(d), f"{maker}: parent", changed="mc")
    t.call(E.EEXIST, os.mkdir, t.p("d-fail", "exists"), 0o755)
    t.call(E.EEXIST, os.mkfifo, t.p("d-fail", "exists"), 0o644)
    t.times(fail0, os.stat(t.p("d-fail")), "parent after failed mkdir/mkfifo", same="mc")
