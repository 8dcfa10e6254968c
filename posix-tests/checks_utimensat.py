"""utimensat: explicit times, UTIME_NOW, UTIME_OMIT, follow vs no-follow, permissions,
nanoseconds, large times, ctime."""
import errno as E
import os
import time

from lib import (
    ALL_TYPES,
    GROUPMATE,
    OBJ_GID,
    OTHER,
    OWNER,
    UTIME_NOW,
    UTIME_OMIT,
    check,
    make,
    sleep_tick,
    touch,
    utimensat,
)


def ns(st):
    return st.st_atime_ns, st.st_mtime_ns


@check
def explicit_times(t):
    for kind in ("reg", "dir", "fifo", "sock", "chr"):
        path = t.p(kind)
        make(path, kind)
        for a, m in (((1234567890, 123456789), (1234567891, 987654321)),
                     ((1_000_000_000, 0), (900_000_000, 999_999_999)),  # mtime < atime
                     ((2**31, 5), (2**31 + 1, 6)),
                     ((2**32, 0), (2**32 + 12345, 1)),
                     ((2**31 - 1, 999999999), (2**32 - 1, 1)),
                     ((1, 1), (0, 0))):
            t.call(0, utimensat, path, a, m, what=f"{kind}: utimensat {a} {m}")
            want = (a[0] * 10**9 + a[1], m[0] * 10**9 + m[1])
            t.eq(ns(os.stat(path)), want, f"{kind}: a/m times (ns) after setting {a[0]}, {m[0]}")
    # os.utime with seconds only
    path = t.p("reg")
    os.utime(path, (1_600_000_000, 1_500_000_000))
    t.eq(ns(os.stat(path)), (1_600_000_000 * 10**9, 1_500_000_000 * 10**9),
         "utime with whole seconds")


@check
def now_and_omit(t):
    path = t.p("f")
    touch(path)
    utimensat(path, (1000, 1), (2000, 2))
    before = time.time_ns()
    t.call(0, utimensat, path, UTIME_NOW, UTIME_NOW, what="UTIME_NOW both")
    st = os.stat(path)
    after = time.time_ns()
    t.ok(before - 10**9 <= st.st_atime_ns <= after + 10**9
         and before - 10**9 <= st.st_mtime_ns <= after + 10**9,
         "UTIME_NOW sets both times to now", f"{st.st_atime_ns} {st.st_mtime_ns} vs {before}")
    utimensat(path, (1000, 1), (2000, 2))
    t.call(0, utimensat, path, UTIME_OMIT, (3000, 3), what="atime UTIME_OMIT")
    t.eq(ns(os.stat(path)), (1000 * 10**9 + 1, 3000 * 10**9 + 3), "UTIME_OMIT keeps atime")
    t.call(0, utimensat, path, (4000, 4), UTIME_OMIT, what="mtime UTIME_OMIT")
    t.eq(ns(os.stat(path)), (4000 * 10**9 + 4, 3000 * 10**9 + 3), "UTIME_OMIT keeps mtime")
    t.call(0, utimensat, path, UTIME_OMIT, UTIME_OMIT, what="both UTIME_OMIT")
    t.eq(ns(os.stat(path)), (4000 * 10**9 + 4, 3000 * 10**9 + 3), "both UTIME_OMIT: nothing")
    t.call(0, utimensat, path, UTIME_NOW, UTIME_OMIT, what="atime UTIME_NOW, mtime OMIT")
    st = os.stat(path)
    t.ok(abs(st.st_atime - time.time()) < 3 and st.st_mtime_ns == 3000 * 10**9 + 3,
         "only atime set to now")
    t.call(0, utimensat, path, None, None, what="utimensat(NULL)")
    st = os.stat(path)
    t.ok(abs(st.st_mtime - time.time()) < 3 and abs(st.st_atime - time.time()) < 3,
         "NULL times set both to now")
    t.call(E.EINVAL, utimensat, path, (0, 10**9), (0, 0), what="nsec 10**9")
    t.call(E.EINVAL, utimensat, path, (0, 0), (0, -1), what="nsec -1")


@check
def follow(t):
    touch(t.p("f"))
    os.symlink("f", t.p("l"))
    utimensat(t.p("f"), (100, 0), (200, 0))
    t.call(0, utimensat, t.p("l"), (300, 0), (400, 0), what="utimensat through a symlink")
    t.eq(ns(os.stat(t.p("f"))), (300 * 10**9, 400 * 10**9), "following sets the target")
    t.call(0, utimensat, t.p("l"), (500, 7), (600, 8), follow=False,
           what="utimensat AT_SYMLINK_NOFOLLOW")
    t.eq(ns(os.lstat(t.p("l"))), (500 * 10**9 + 7, 600 * 10**9 + 8),
         "AT_SYMLINK_NOFOLLOW sets the symlink's own times")
    t.eq(ns(os.stat(t.p("f"))), (300 * 10**9, 400 * 10**9), "target untouched by NOFOLLOW")
    os.symlink("missing", t.p("dangling"))
    t.call(E.ENOENT, utimensat, t.p("dangling"), (1, 0), (1, 0))
    t.call(0, utimensat, t.p("dangling"), (1, 0), (1, 0), follow=False,
           what="NOFOLLOW on a dangling symlink")


@check
def permissions(t):
    path = t.p("f")
    touch(path)
    os.chown(path, OWNER.uid, OBJ_GID)
    T1, T2 = (1_500_000_000, 5), (1_500_000_001, 6)
    for mode in (0o666, 0o644, 0o444, 0o000):
        os.chmod(path, mode)
        t.call(0, utimensat, path, T1, T2, user=OWNER, what=f"mode {mode:03o}: owner explicit")
        t.call(0, utimensat, path, UTIME_NOW, UTIME_NOW, user=OWNER,
               what=f"mode {mode:03o}: owner UTIME_NOW")
        t.call(0, utimensat, path, None, None, user=OWNER, what=f"mode {mode:03o}: owner NULL")
        t.call(E.EPERM, utimensat, path, T1, T2, user=OTHER, what=f"mode {mode:03o}: other explicit")
        t.call(E.EPERM, utimensat, path, T1, UTIME_OMIT, user=GROUPMATE,
               what=f"mode {mode:03o}: group member explicit atime")
        t.call(0, utimensat, path, T1, T2, what=f"mode {mode:03o}: root explicit")
        other_w = 0 if mode & 0o002 else E.EACCES
        group_w = 0 if mode & 0o020 else E.EACCES
        t.call(other_w, utimensat, path, UTIME_NOW, UTIME_NOW, user=OTHER,
               what=f"mode {mode:03o}: other UTIME_NOW")
        t.call(other_w, utimensat, path, None, None, user=OTHER, what=f"mode {mode:03o}: other NULL")
        t.call(group_w, utimensat, path, UTIME_NOW, UTIME_NOW, user=GROUPMATE,
               what=f"mode {mode:03o}: group member UTIME_NOW")
        t.call(0, utimensat, path, UTIME_OMIT, UTIME_OMIT, user=OTHER,
               what=f"mode {mode:03o}: other UTIME_OMIT both")
    os.chmod(path, 0o666)
    utimensat(path, T1, T2)
    t.call(E.EPERM, utimensat, path, UTIME_NOW, (7, 7), user=OTHER,
           what="other: UTIME_NOW with one explicit time")
    t.eq(ns(os.stat(path)), (T1[0] * 10**9 + T1[1], T2[0] * 10**9 + T2[1]),
         "failed calls changed nothing")


@check
def ctime(t):
    objs = {}
    for kind in ALL_TYPES:
        for case in ("explicit", "now", "omit", "eperm"):
            p = t.p(f"{kind}-{case}")
            make(p, kind)
            os.lchown(p, OWNER.uid, OWNER.gid)
            objs[(kind, case)] = p
    b = {k: os.lstat(p) for k, p in objs.items()}
    sleep_tick()
    for (kind, case), p in objs.items():
        follow = kind != "symlink"
        if case == "explicit":
            t.call(0, utimensat, p, (10, 0), (20, 0), follow=follow, what=f"{kind}: explicit")
        elif case == "now":
            t.call(0, utimensat, p, UTIME_NOW, UTIME_NOW, follow=follow, what=f"{kind}: now")
        elif case == "omit":
            t.call(0, utimensat, p, UTIME_OMIT, UTIME_OMIT, follow=follow, what=f"{kind}: omit")
        else:
            t.call(E.EPERM, utimensat, p, (10, 0), (20, 0), follow=follow, user=OTHER,
                   what=f"{kind}: explicit by other")
    for (kind, case), p in objs.items():
        a = os.lstat(p)
        if case in ("explicit", "now"):
            t.times(b[(kind, case)], a, f"{kind}: utimensat {case}", changed="c")
        else:
            t.times(b[(kind, case)], a, f"{kind}: utimensat {case}", same="c")
