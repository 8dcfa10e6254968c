"""``O_APPEND`` writes land at the file's true end, or acknowledged appends are lost.

Both cases were found by the fault suite (tests/test_faults.py), whose loggers append and
fsync records through one descriptor:

* **A flush started by another descriptor.**  The test process forks (etcd restarts,
  ``ip``); every fork + exec closes the child's copies of the descriptors, and each close
  sends the daemon a FLUSH.  A FLUSH takes the file's buffered writes out of the buffer
  while it commits them, and an append arriving meanwhile computed its offset from the
  committed length alone -- on top of the data in flight.  Here the FLUSHes come from a
  thread that opens and closes the file in a loop, with no fault at all; the kernel
  serialises write and fsync on one inode, but not close.
* **An append during an outage.**  While etcd is unreachable a mount answers attribute
  requests from what it last *read* of an inode (kvfs/meta/offline.py) -- older than its
  own later writes to that file.  An append then took that old length as the file's end
  and overwrote acknowledged records once etcd was back.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from pathlib import Path

import pytest
from etcd_cluster import EtcdProcesses, Member, etcd_procs, etcd_single, unique_prefix
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


def test_appends_during_an_outage_land_at_the_end(etcd_procs: EtcdProcesses,
                                                  tmp_path: Path) -> None:
    member = etcd_procs.member("append-outage")  # killed and restarted: not the shared one
    try:
        url = f"etcd://{member.endpoint}/{unique_prefix('aout')}?timeout=2"
        kvfs("format", url, "aout")
        m = Mount(url, tmp_path / "m")
        try:
            path = m.mountpoint / "log"
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            for i in range(10):
                os.write(fd, _record(i))
                os.fsync(fd)
                if i == 2:  # an open reads the attributes afresh: the mount remembers them
                    os.close(os.open(path, os.O_RDONLY))
            member.kill()
            with pytest.raises(OSError) as unknown:  # the mount now serves what it knows
                os.stat(m.mountpoint / "not-cached")
            assert unknown.value.errno == errno.EIO
            os.write(fd, _record(10))  # buffered: fails at fsync, not here
            member.start()
            member.wait_healthy()
            deadline = time.monotonic() + 60
            while True:  # the same descriptor works again once etcd is back
                try:
                    os.fsync(fd)
                    break
                except OSError as e:
                    assert e.errno == errno.EIO and time.monotonic() < deadline, e
                    time.sleep(0.2)
            os.close(fd)
            want = b"".join(_record(i) for i in range(11))
            deadline = time.monotonic() + 30
            while (data := path.read_bytes()) != want:  # the mount may still be offline
                if time.monotonic() > deadline:
                    got = [data[o:o + 13].decode() for o in range(0, len(data), 32)]
                    pytest.fail(f"the file holds {got}, not records 0-10 in order",
                                pytrace=False)
                time.sleep(0.2)
            m.unmount()
        finally:
            m.cleanup()
        fsck(url)
    finally:
        member.kill()
