"""What the embedded store holds in memory: the Raft log it has applied stays on disk only.

The embedded store is a one-member Raft cluster with no followers, so nothing at or before
its snapshot is needed in memory (``hold_entries=0``), while the log on disk still reaches
back to the previous snapshot (the fallback when the newest one is damaged).  An open reads
the log but keeps only the entries after its snapshot, and a clean close takes a snapshot
when that tail is large, so the next open keeps nothing.  Log entries carry values (blocks
included), so this is what bounds the memory of a mount or a ``kvfs dump`` of a volume
written in bulk (docs/operations.md, "Dump and load": 1 GiB measured by hand).

Each test writes 1 MiB values, snapshotting every 8 MiB of them, in a few seconds.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import trio

from kvfs.kv.api import Put
from kvfs.raftkv.embedded import EmbeddedMember, open_embedded

MIB = 1 << 20
SNAPSHOT_BYTES = 8 * MIB
VALUES = 40


def value(n: int) -> bytes:
    return bytes([n % 251]) * MIB


def held_bytes(kv: EmbeddedMember) -> int:
    """Bytes of log entry data the member's mirror holds."""
    disk = kv.disk
    first, last = disk.first_index(), disk.last_index()
    return sum(len(e.data) for e in disk.entries(first, last + 1)) if last >= first else 0


def log_bytes(store: Path) -> int:
    raft = store / "raft"
    return sum((raft / n).stat().st_size for n in os.listdir(raft) if n.startswith("wal-"))


async def open_store(store: Path, create: bool = False) -> EmbeddedMember:
    return await open_embedded(str(store), create=create, snapshot_bytes=SNAPSHOT_BYTES)


async def write_values(kv: EmbeddedMember) -> None:
    for n in range(VALUES):
        await kv.commit([], [Put(b"v%03d" % n, value(n))])


async def check_values(kv: EmbeddedMember) -> None:
    for n in range(VALUES):
        got = await kv.get(b"v%03d" % n)
        assert got is not None and got.value == value(n), n


_CRASH = """
import os, sys, trio
sys.path.insert(0, sys.argv[2])
from test_embedded_memory import open_store, write_values
from pathlib import Path

async def main():
    kv = await open_store(Path(sys.argv[1]), create=True)
    await write_values(kv)
    os._exit(0)  # no close: no snapshot at close, the log tail stays

trio.run(main)
"""


def write_and_crash(store: Path) -> None:
    subprocess.run([sys.executable, "-c", _CRASH, str(store), str(Path(__file__).parent)],
                   check=True, timeout=120)


async def test_a_running_store_holds_only_the_log_after_its_snapshot(tmp_path: Path) -> None:
    kv = await open_store(tmp_path / "vol", create=True)
    try:
        await write_values(kv)
        held = held_bytes(kv)
        on_disk = log_bytes(tmp_path / "vol")
        print(f"held {held / MIB:.1f} MiB of log in memory, {on_disk / MIB:.1f} MiB on disk")
        # At most what was applied since the last snapshot (one value beyond its trigger).
        assert held <= SNAPSHOT_BYTES + MIB
        assert on_disk > held + SNAPSHOT_BYTES  # the disk keeps the fallback's entries
        await check_values(kv)
    finally:
        await kv.aclose()


async def test_a_clean_close_snapshots_so_the_next_open_holds_nothing(tmp_path: Path) -> None:
    store = tmp_path / "vol"
    kv = await open_store(store, create=True)
    try:
        await write_values(kv)
        await kv.commit([], [Put(b"tail", value(99))])  # a tail after the last snapshot
        assert held_bytes(kv) >= MIB
    finally:
        await kv.aclose()
    kv = await open_store(store)
    try:
        assert held_bytes(kv) == 0
        await check_values(kv)
        got = await kv.get(b"tail")
        assert got is not None and got.value == value(99)
    finally:
        await kv.aclose()
    # A close with nothing new to snapshot takes none.
    snapshots = sorted(n for n in os.listdir(store / "raft") if n.startswith("snap-"))
    kv = await open_store(store)
    await kv.aclose()
    assert sorted(n for n in os.listdir(store / "raft") if n.startswith("snap-")) == snapshots


async def test_after_a_crash_an_open_holds_only_the_tail(tmp_path: Path) -> None:
    store = tmp_path / "vol"
    await trio.to_thread.run_sync(write_and_crash, store)
    on_disk = log_bytes(store)
    kv = await open_store(store)
    try:
        held = held_bytes(kv)
        print(f"after a crash: held {held / MIB:.1f} MiB of {on_disk / MIB:.1f} MiB of log")
        assert held <= SNAPSHOT_BYTES + MIB < on_disk
        await check_values(kv)
    finally:
        await kv.aclose()


async def test_a_damaged_newest_snapshot_falls_back_to_the_previous_one(
        tmp_path: Path) -> None:
    store = tmp_path / "vol"
    await trio.to_thread.run_sync(write_and_crash, store)
    raft = store / "raft"
    snapshots = sorted(n for n in os.listdir(raft) if n.startswith("snap-"))
    assert len(snapshots) == 2
    newest = raft / snapshots[-1]
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    newest.write_bytes(bytes(data))
    kv = await open_store(store)
    try:
        await check_values(kv)  # the previous snapshot and the log after it
    finally:
        await kv.aclose()
    assert (raft / (snapshots[-1] + ".damaged")).exists()
