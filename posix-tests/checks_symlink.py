"""symlink: stored unresolved, lstat vs stat, EEXIST, target lengths, EACCES, times."""
import errno as E
import os
import stat

from lib import ALL_TYPES, OTHER, OWNER, check, make, sleep_tick, touch


@check
def basics(t):
    targets = ["plain", "../up/../and/down", "/absolute/path/that/does/not/exist", "a b\tc",
               "with/trailing/", ".", "..", "\u00e9t\u00e9-\u65e5\u672c"]
    for i, target in enumerate(targets):
        path = t.p(f"l{i}")
        t.call(0, os.symlink, target, path)
        t.eq(os.readlink(path), target, f"readlink returns the target unresolved ({target!r})")
        st = os.lstat(path)
        t.ok(stat.S_ISLNK(st.st_mode), f"lstat of {target!r} link is a symlink")
        t.eq(st.st_size, len(target.encode()), f"symlink size = target length ({target!r})")
        t.eq(stat.S_IMODE(st.st_mode), 0o777, "symlink mode", fmt=oct)
    # binary target bytes are kept exactly
    raw = bytes(range(1, 256)).replace(b"/", b"")
    t.call(0, os.symlink, raw, os.fsencode(t.p("raw")), what="symlink with every byte value")
    t.eq(os.readlink(os.fsencode(t.p("raw"))), raw, "every byte of a target kept")
    # stat follows, lstat does not
    touch(t.p("f"), 0o640, b"12345")
    os.symlink("f", t.p("lf"))
    st, lst = os.stat(t.p("lf")), os.lstat(t.p("lf"))
    t.eq(st.st_ino, os.stat(t.p("f")).st_ino, "stat of a symlink is its target's")
    t.ok(stat.S_ISREG(st.st_mode) and st.st_size == 5, "stat sees the target's type and size")
    t.ok(lst.st_ino != st.st_ino, "lstat sees the link itself")
    with open(t.p("lf"), "rb") as f:
        t.eq(f.read(), b"12345", "reading through a symlink")
    # chains and directories
    os.symlink("lf", t.p("lf2"))
    t.eq(os.stat(t.p("lf2")).st_ino, os.stat(t.p("f")).st_ino, "chain of two symlinks")
    os.mkdir(t.p("d"), 0o755)
    touch(t.p("d", "inside"))
    os.symlink("d", t.p("ld"))
    t.eq(os.listdir(t.p("ld")), ["inside"], "listing through a symlink to a dir")
    os.symlink(t.p("d", "inside"), t.p("abs"))
    t.eq(os.stat(t.p("abs")).st_ino, os.stat(t.p("d", "inside")).st_ino, "absolute target")
    # dangling
    os.symlink("nothing-here", t.p("dangling"))
    t.call(E.ENOENT, os.stat, t.p("dangling"))
    t.call(0, os.lstat, t.p("dangling"))
    # relative targets resolve from the link's directory
    os.symlink("../f", t.p("d", "up"))
    t.eq(os.stat(t.p("d", "up")).st_ino, os.stat(t.p("f")).st_ino, "relative target resolved "
         "from the link's directory")


@check
def errors(t):
    for kind in ALL_TYPES:
        make(t.p("x-" + kind), kind)
        t.call(E.EEXIST, os.symlink, "t", t.p("x-" + kind), what=f"symlink over an existing {kind}")
    t.call(E.ENOENT, os.symlink, "t", t.p("missing", "l"))
    t.call(E.ENOENT, os.symlink, "", t.p("empty-target"), what="symlink with an empty target")
    os.mkdir(t.p("ro"), 0o755)
    os.chown(t.p("ro"), OWNER.uid, OWNER.gid)
    os.chmod(t.p("ro"), 0o555)
    t.call(E.EACCES, os.symlink, "t", t.p("ro", "l"), user=OWNER, what="symlink in an unwritable dir")
    os.chmod(t.p("ro"), 0o666)
    t.call(E.EACCES, os.symlink, "t", t.p("ro", "l"), user=OWNER, what="symlink in an unsearchable dir")
    os.chmod(t.p("ro"), 0o755)
    t.call(E.EACCES, os.symlink, "t", t.p("ro", "l"), user=OTHER, what="symlink in another's dir")
    t.call(0, os.symlink, "t", t.p("ro", "l"), user=OWNER, what="symlink in own writable dir")
    t.call(E.EINVAL, os.readlink, t.p("x-reg"), what="readlink of a regular file")
    t.call(E.EINVAL, os.readlink, t.p("x-dir"), what="readlink of a directory")


@check
def target_lengths(t):
    for n in (1, 254, 255, 256, 1000, 1024, 2048, 4000, 4094, 4095):
        # components of up to 255 bytes, so the target could also be resolved
        comps, left = [], n
        while left > 0:
            c = min(left, 200)
            if left - c == 1:
                c -= 1
            comps.append("x" * c if left - c == 0 else "y" * (c - 1))
            left -= c
        target = "/".join(comps)[:n]
        target = target + "z" * (n - len(target))
        path = t.p(f"len{n}")
        t.call(0, os.symlink, target, path, what=f"symlink with a {n}-byte target")
        if os.path.lexists(path):
            t.eq(os.readlink(path), target, f"{n}-byte target read back")
            t.eq(os.lstat(path).st_size, n, f"size of a symlink with a {n}-byte target")
    t.call(0, os.symlink, "q" * 300, t.p("long-component"),
           what="symlink target with a 300-byte component")
    t.call(E.ENAMETOOLONG, os.symlink, "a" * 4096, t.p("len4096"),
           what="symlink with a 4096-byte target")
    t.ok(not os.path.lexists(t.p("len4096")), "nothing created by a refused symlink")


@check
def times(t):
    os.mkdir(t.p("p"), 0o755)
    os.mkdir(t.p("q"), 0o755)
    touch(t.p("q", "x"))
    touch(t.p("target"))
    p0, q0, tg0 = os.stat(t.p("p")), os.stat(t.p("q")), os.stat(t.p("target"))
    sleep_tick()
    t.call(0, os.symlink, "../target", t.p("p", "l"))
    t.call(E.EEXIST, os.symlink, "whatever", t.p("q", "x"))
    t.times(p0, os.stat(t.p("p")), "parent after symlink", changed="mc")
    t.times(q0, os.stat(t.p("q")), "parent after failed symlink", same="mc")
    t.times(tg0, os.stat(t.p("target")), "symlink's target", same="mc")
    st = os.lstat(t.p("p", "l"))
    t.ok(all(sec(st, f) >= sec(p0, "m") + 1 for f in "amc"), "new symlink's times are new")


from lib import sec  # noqa: E402
