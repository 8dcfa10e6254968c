"""Crash safety: kill -9 the mount daemon while a writer fsyncs; nothing acknowledged is lost.

Each cycle mounts the volume, starts a writer that creates files, fsyncs each and reports
it, kills the daemon at a random moment, clears the dead mount, remounts, and checks every
acknowledged file of every cycle so far, then runs the consistency checker.

``KVFS_CRASH_CYCLES`` sets the number of cycles (default 3; the crash-loop acceptance run
uses 50).
"""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mounting import Mount, fsck, kvfs

pytestmark = pytest.mark.mount

WRITER = r"""
import hashlib, os, sys
root, cycle = sys.argv[1], int(sys.argv[2])
i = 0
while True:
    name = f"c{cycle}-{i}"
    size = int(hashlib.sha256(name.encode()).hexdigest()[:6], 16) % 300_000
    data = hashlib.sha256(name.encode()).digest() * (size // 32 + 1)
    try:
        with open(os.path.join(root, name), "wb") as f:
            f.write(data[:size])
            f.flush()
            os.fsync(f.fileno())
    except OSError:
        sys.exit(0)
    print(name, size, flush=True)
    i += 1
"""


def expected(name: str, size: int) -> bytes:
    data = hashlib.sha256(name.encode()).digest() * (size // 32 + 1)
    return data[:size]


def test_kill9_loses_nothing_acknowledged(tmp_path: Path) -> None:
    cycles = int(os.environ.get("KVFS_CRASH_CYCLES", "3"))
    store = str(tmp_path / "store")
    kvfs("format", store, "crash")
    acked: dict[str, int] = {}
    rng = random.Random(os.environ.get("KVFS_CRASH_SEED", "kvfs"))
    for cycle in range(cycles):
        m = Mount(store, tmp_path / "mnt")
        try:
            writer = subprocess.Popen([sys.executable, "-c", WRITER, str(m.mountpoint),
                                       str(cycle)], stdout=subprocess.PIPE, text=True)
            time.sleep(rng.uniform(0.2, 1.5))
            m.kill9()
            out, _ = writer.communicate(timeout=60)
            for line in out.splitlines():
                name, size_text = line.split()
                acked[name] = int(size_text)
            m = Mount(store, tmp_path / "mnt")
            for name, size in acked.items():
                got = (m.mountpoint / name).read_bytes()
                assert got == expected(name, size), f"cycle {cycle}: {name} differs"
            m.unmount()
        finally:
            m.cleanup()
        fsck(store, after_kill=True)
    assert acked, "the writer never got a file acknowledged"
