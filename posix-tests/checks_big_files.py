"""Files over 2 GiB and 4 GiB: sparse writes, holes, sizes, truncation."""
import os

from lib import check

GiB = 1 << 30


@check
def sparse_over_2g(t):
    p = t.p("big")
    pattern = os.urandom(1 << 20)
    fd = os.open(p, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        offs = [3 * GiB, (1 << 31) - 4096, (1 << 32) - 100, 5 * GiB + 12345]
        for off in offs:
            t.eq(os.pwrite(fd, pattern, off), len(pattern), f"pwrite 1 MiB at {off}")
        end = 5 * GiB + 12345 + len(pattern)
        t.eq(os.fstat(fd).st_size, end, "size after writes beyond 4 GiB")
        for off in offs:
            t.eq(os.pread(fd, len(pattern), off), pattern, f"data read back at {off}")
        t.eq(os.pread(fd, 65536, 2 * GiB + 512 * 1024 * 1024), bytes(65536),
             "hole above 2 GiB reads as zeros")
        t.eq(os.pread(fd, 4096, 1 << 20), bytes(4096), "hole at 1 MiB reads as zeros")
        t.eq(os.pread(fd, 100, (1 << 32) - 100 + len(pattern)), bytes(100),
             "just after a write crossing 4 GiB reads as zeros")
        t.eq(os.pread(fd, 100, end), b"", "read at EOF")
        t.eq(os.lseek(fd, 0, os.SEEK_END), end, "SEEK_END of a >4 GiB file")
        # st_blocks is not checked: like JuiceFS, kvfs reports a file's length rounded to
        # 512-byte units rather than the (unknown without a scan) bytes its slices hold.
        # truncation around the large offsets
        os.ftruncate(fd, 3 * GiB + 10)
        t.eq(os.fstat(fd).st_size, 3 * GiB + 10, "size after truncating to 3 GiB + 10")
        t.eq(os.pread(fd, 20, 3 * GiB), pattern[:10], "data up to a large truncation point")
        os.ftruncate(fd, 6 * GiB)
        t.eq(os.pread(fd, 100, 3 * GiB + 10), bytes(100),
             "bytes cut by truncation read as zeros after growing to 6 GiB")
        t.eq(os.pread(fd, 10, 6 * GiB - 10), bytes(10), "end of a file grown to 6 GiB")
    finally:
        os.close(fd)
    t.eq(os.stat(p).st_size, 6 * GiB, "stat size of a 6 GiB file")
    # write through a plain (non-pwrite) fd with seek, and O_APPEND past 4 GiB
    fd = os.open(p, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, b"appended")
    finally:
        os.close(fd)
    with open(p, "rb") as f:
        f.seek(6 * GiB)
        t.eq(f.read(), b"appended", "O_APPEND write past 6 GiB")
    os.truncate(p, 0)
    t.eq(os.stat(p).st_size, 0, "truncate a 6 GiB file to 0")


@check
def truncate_to_big_size(t):
    p = t.p("t")
    fd = os.open(p, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        for size in ((1 << 31) + 1, (1 << 32) + 1, 1 << 40):
            os.ftruncate(fd, size)
            t.eq(os.fstat(fd).st_size, size, f"ftruncate to {size}")
            t.eq(os.pread(fd, 4096, size - 4096), bytes(4096), f"tail of a {size}-byte hole")
    finally:
        os.close(fd)


@check
def write_at_huge_offsets(t):
    """A write far beyond any chunk/block index a filesystem might use either works
    (and reads back) or fails cleanly with EFBIG/EINVAL; it must not fail with EIO."""
    import errno as E

    from lib import run_as
    p = t.p("h")
    fd = os.open(p, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        for off in (1 << 44, 1 << 50, 1 << 56, (1 << 62) + 12345):
            out = run_as(None, os.pwrite, fd, b"far", off)
            if out.kind == "ok":
                t.call(0, os.pread, fd, 3, off, what=f"pread at {off}")
                rd = run_as(None, os.pread, fd, 3, off)
                t.eq(rd.value if rd.kind == "ok" else rd.describe(), b"far",
                     f"pwrite at {off} reads back")
                t.eq(os.fstat(fd).st_size, off + 3, f"size after pwrite at {off}")
            else:
                t.ok(out.kind == "err" and out.value in (E.EFBIG, E.EINVAL),
                     f"pwrite at {off}: success or EFBIG/EINVAL", f"got {out.describe()}")
    finally:
        t.call(0, os.close, fd, what="close after the far writes")
