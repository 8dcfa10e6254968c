"""statfs figures: sane, consistent, and moving with usage."""
import os
import time

from lib import check, touch, write_file


def used_blocks(st):
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def remove_from_trash(path, inos):
    """kvfs keeps removed files in ``/.trash/HOUR/<parent>-<ino>-<name>`` at the root of
    the volume (docs/trash.md), where they keep their space until they leave it: remove
    those of inodes ``inos`` for good.  A filesystem without such a trash has nothing."""
    root = os.path.abspath(path)
    while not os.path.ismount(root):
        root = os.path.dirname(root)
    trash = os.path.join(root, ".trash")
    if not os.path.isdir(trash):
        return
    for hour in os.listdir(trash):
        for name in os.listdir(os.path.join(trash, hour)):
            parts = name.split("-", 2)
            if len(parts) == 3 and parts[1].isdigit() and int(parts[1]) in inos:
                os.unlink(os.path.join(trash, hour, name))


@check
def figures(t):
    st = os.statvfs(t.dir)
    t.ok(st.f_bsize > 0 and st.f_frsize > 0, "block sizes positive", f"{st.f_bsize} {st.f_frsize}")
    t.ok(st.f_blocks > 0, "total blocks positive", str(st.f_blocks))
    t.ok(0 <= st.f_bfree <= st.f_blocks, "free blocks within total", f"{st.f_bfree}/{st.f_blocks}")
    t.ok(0 <= st.f_bavail <= st.f_bfree, "available blocks within free", f"{st.f_bavail}/{st.f_bfree}")
    t.ok(st.f_files == 0 or 0 <= st.f_ffree <= st.f_files, "free inodes within total",
         f"{st.f_ffree}/{st.f_files}")
    t.eq(st.f_namemax, 255, "maximum name length")
    touch(t.p("f"))
    fd = os.open(t.p("f"), os.O_RDONLY)
    try:
        fst = os.statvfs(fd)
    finally:
        os.close(fd)
    st2 = os.statvfs(t.p("f"))
    t.eq((fst.f_bsize, fst.f_frsize, fst.f_blocks, fst.f_namemax),
         (st.f_bsize, st.f_frsize, st.f_blocks, st.f_namemax), "fstatvfs agrees with statvfs")
    t.eq((st2.f_bsize, st2.f_blocks), (st.f_bsize, st.f_blocks),
         "statvfs of a file agrees with its directory")


@check
def usage_moves(t):
    before = os.statvfs(t.dir)
    size = 32 << 20
    write_file(t.p("big"), os.urandom(size))
    fd = os.open(t.p("big"), os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    files = [t.p(f"n{i}") for i in range(50)]
    for f in files:
        touch(f)
    after = os.statvfs(t.dir)
    grew = used_blocks(after) - used_blocks(before)
    t.ok(grew >= size // 2, "used space grows after writing 32 MiB",
         f"grew by {grew} bytes")
    t.ok(after.f_bavail < before.f_bavail, "available space shrinks after writing 32 MiB",
         f"{before.f_bavail} -> {after.f_bavail}")
    if before.f_files:
        t.ok((after.f_files - after.f_ffree) - (before.f_files - before.f_ffree) >= 50,
             "used inodes grow by at least 50 after creating 51 files",
             f"{before.f_files - before.f_ffree} -> {after.f_files - after.f_ffree}")
    inos = {os.stat(f).st_ino for f in [t.p("big"), *files]}
    os.unlink(t.p("big"))
    for f in files:
        os.unlink(f)
    remove_from_trash(t.dir, inos)
    deadline = time.monotonic() + 10
    while True:
        freed = os.statvfs(t.dir)
        if used_blocks(after) - used_blocks(freed) >= size // 2 or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    t.ok(used_blocks(after) - used_blocks(freed) >= size // 2,
         "space is given back (within 10 s) after deleting the file",
         f"used {used_blocks(after)} -> {used_blocks(freed)}")
