"""Appends racing a flush started by another descriptor of the same file.

Found by the fault suite (tests/test_faults.py): its loggers append and fsync through one
descriptor, and the test process forks (etcd restarts, ``ip``); every fork + exec closes
the child's copies of the descriptors, and each close sends the daemon a FLUSH.  A FLUSH
takes the file's buffered writes out of the buffer while it commits them, and an
``O_APPEND`` write arriving meanwhile computed its offset from the committed length alone
-- on top of the data in flight.  Acknowledged records were overwritten.

Here the FLUSHes come from a thread that opens and closes the file in a loop, with no
fault at all.  The kernel serialises write and fsync on one inode, but not close, so the
race needs no timing luck beyond a few thousand records.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from etcd_cluster import Member, etcd_procs, etcd_single, unique_prefix
from mounting import Mount, fsck, kvfs

pytestmark = pytest.mark.mount

__all__ = ["etcd_procs", "etcd_single"]  # fixtures used by this module

RECORDS = 2000


def _record(i: int) -> bytes:
    return f"record {i:06d}".ljust(31).encode() + b"\n"


def test_appends_survive_flushes_from_other_descriptors(etcd_single: Member,
                                                        tmp_path: Path) -> None:
    url = f"etcd://{etcd_single.endpoint}/{unique_prefix('aflush')}"
    kvfs("format", url, "aflush")
    m = Mount(url, tmp_path / "m")
    try:
        path = m.mountpoint / "log"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        done = threading.Event()

        def closer() -> None:
            while not done.is_set():
                os.close(os.open(path, os.O_RDONLY))

        t = threading.Thread(target=closer, daemon=True)
        t.start()
        try:
            for i in range(0, RECORDS, 2):  # two appends, then one fsync acknowledges both
                os.write(fd, _record(i))
                os.write(fd, _record(i + 1))
                os.fsync(fd)
        finally:
            done.set()
            t.join(60)
            os.close(fd)
        data = path.read_bytes()
        want = b"".join(_record(i) for i in range(RECORDS))
        if data != want:
            got = {data[o:o + 32] for o in range(0, len(data), 32)}
            lost = [i for i in range(RECORDS) if _record(i) not in got]
            pytest.fail(f"{len(lost)} of {RECORDS} acknowledged appends lost (e.g. records "
                        f"{lost[:5]}); file is {len(data)} bytes, not {len(want)}",
                        pytrace=False)
        m.unmount()
    finally:
        m.cleanup()
    fsck(url)
