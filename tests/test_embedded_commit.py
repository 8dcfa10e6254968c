"""What keeps the embedded store's commits cheap, and that it costs nothing in safety.

* The Raft disk's in-memory mirror of the log is updated in place (no copy per save), and
  still never shows a reader in another thread half of a write.
* The embedded member's snapshots leave out the watch history (only its own restarts
  read them), while snapshots that carry it -- every one written before, and the earlier
  layout's conversion -- still restore it.
* With a snapshot scale, snapshots of a large state come rarer: the log since the last
  one must weigh a share of it, or the byte bound.  Snapshots are packed off the loop.
* A sequential commit writes the log once: the commit index that follows is held back
  until the next batch, a tick, or the close -- and a process killed meanwhile loses no
  acknowledged commit (the lone member commits its log again when it next leads).
* Its sync runs on the loop when no other task waits and syncs have been quick, in a
  worker thread otherwise.

Each test runs in a second or two.
"""

from __future__ import annotations

import random
import subprocess
import sys
import threading
from pathlib import Path

import msgpack
import pytest
import trio

from kvfs.kv.api import Compacted, Put
from kvfs.kv.watchhub import WatchHub
from kvfs.raft import Config, Entry, HardState, MemoryStorage, NodeId, Snapshot, bootstrap_state
from kvfs.raftkv import node as node_module
from kvfs.raftkv.disk import RaftDisk
from kvfs.raftkv.embedded import EmbeddedMember, open_embedded
from kvfs.raftkv.engine import MemberEngine
from kvfs.raftkv.node import RaftNode
from kvfs.raftkv.statemachine import ReplicatedKV

# -- the mirror, updated in place ------------------------------------------------------------


def test_an_append_after_the_last_entry_extends_the_list_a_reader_holds() -> None:
    storage = MemoryStorage()
    storage.append([Entry(1, i) for i in range(1, 4)])
    held = storage._entries
    seen = storage.entries(1, 4)
    storage.append([Entry(1, 4), Entry(1, 5)])
    assert storage._entries is held  # no copy of the log
    assert [e.index for e in seen] == [1, 2, 3]  # what a reader took is its own
    assert storage.last_index() == 5


def test_replacing_a_suffix_publishes_a_new_list() -> None:
    storage = MemoryStorage()
    storage.append([Entry(1, i) for i in range(1, 6)])
    held = storage._entries
    storage.append([Entry(2, 3), Entry(2, 4)])
    # A reader still on the old list sees the whole old log, never a shortened one.
    assert [e.index for e in held[1:]] == [1, 2, 3, 4, 5]
    assert [(e.index, e.term) for e in storage.entries(1, 5)] == [
        (1, 1), (2, 1), (3, 2), (4, 2)]


# -- snapshots without the watch history -----------------------------------------------------

def _snapshot_fields(kv: EmbeddedMember) -> dict[str, object]:
    data = kv.disk.storage.snapshot().data
    fields = msgpack.unpackb(data, raw=False)
    assert isinstance(fields, dict)
    return fields


async def _write(kv: EmbeddedMember, n: int, tag: bytes) -> int:
    revision = 0
    for i in range(n):
        revision = (await kv.commit([], [Put(b"k/%s/%03d" % (tag, i), b"v%d" % i)])).revision
    return revision


async def test_the_embedded_members_snapshots_leave_out_the_watch_history(
        tmp_path: Path) -> None:
    kv = await open_embedded(str(tmp_path / "vol"), create=True, snapshot_every=5)
    try:
        first = await _write(kv, 12, b"a")
        fields = _snapshot_fields(kv)
        assert fields["history"] == []
        assert fields["history_start"] == fields["revision"] + 1  # type: ignore[operator]
        # The running member still has the history: a watch from the first write works.
        with trio.fail_after(10):
            async for batch in kv.watch(b"k/", b"k0", first - 11):
                assert batch.events
                break
    finally:
        await kv.aclose()
    kv = await open_embedded(str(tmp_path / "vol"), snapshot_every=5)
    try:
        revision = await kv.current_revision()
        got = await kv.get(b"k/a/011")
        assert got is not None and got.value == b"v11"
        # After a restart the history starts at the snapshot: older revisions are gone
        # (no watch outlives the process that could want them) ...
        with pytest.raises(Compacted):
            async for _ in kv.watch(b"k/", b"k0", 1):
                break
        # ... and a watch from the current revision on sees what follows.
        later = await _write(kv, 1, b"b")
        with trio.fail_after(10):
            async for batch in kv.watch(b"k/", b"k0", revision + 1):
                assert [ev.mod_revision for ev in batch.events] == [later]
                break
    finally:
        await kv.aclose()


async def test_a_snapshot_with_the_history_still_restores_it(tmp_path: Path) -> None:
    """What every embedded volume written before holds: snapshots with the history."""
    kv = await open_embedded(str(tmp_path / "vol"), create=True, snapshot_every=5)
    try:
        kv.node.snapshot_history = True  # as the earlier code took them
        first = await _write(kv, 12, b"a")
        assert _snapshot_fields(kv)["history"] != []
    finally:
        await kv.aclose()
    kv = await open_embedded(str(tmp_path / "vol"), snapshot_every=5)
    try:
        got = await kv.get(b"k/a/000")
        assert got is not None and got.value == b"v0"
        revisions: list[int] = []
        with trio.fail_after(10):
            async for batch in kv.watch(b"k/", b"k0", first - 11):
                revisions += [ev.mod_revision for ev in batch.events]
                if len(revisions) >= 12:
                    break
        assert revisions == list(range(first - 11, first + 1))
    finally:
        await kv.aclose()


# -- the size-relative snapshot trigger ------------------------------------------------------

class _MemoryDisk:
    """A volatile Disk: just the mirror."""

    def __init__(self) -> None:
        self.storage = MemoryStorage()
        entries, hard_state = bootstrap_state([NodeId(1)])
        self.save(hard_state, entries, None, True)

    def save(self, hard_state: HardState | None, entries: list[Entry],
             snapshot: Snapshot | None, must_sync: bool) -> None:
        if snapshot is not None:
            self.storage.apply_snapshot(snapshot)
        self.storage.append(entries)
        if hard_state is not None:
            self.storage.set_hard_state(hard_state)

    def save_snapshot(self, snapshot: Snapshot) -> None:
        meta = snapshot.meta
        self.storage.create_snapshot(meta.index, meta.conf_state, snapshot.data)
        self.storage.compact(meta.index)


async def _load(value: object) -> bytes:
    assert isinstance(value, bytes)
    return value


async def test_a_scaled_trigger_waits_for_the_log_to_weigh_a_share_of_the_snapshot() -> None:
    disk = _MemoryDisk()
    kv = ReplicatedKV()
    node = RaftNode(Config(NodeId(1)), disk, kv, WatchHub(_load), rng=random.Random(1),
                    tick_seconds=0.02, snapshot_every=3, snapshot_scale=0.5)
    engine = await MemberEngine.start(node, timeout=5.0)
    try:
        # A large state, and a snapshot of it (the log then outweighs every snapshot
        # before: the next one comes within 3 entries).
        for i in range(3):
            await engine.commit([], [Put(b"big%d" % i, bytes(20_000))])
        last_big = node.kv.applied_index
        for i in range(10):
            if disk.storage.snapshot().meta.index >= last_big:
                break
            await engine.commit([], [Put(b"pre%d" % i, b"x" * 50)])
        held = disk.storage.snapshot()
        assert held.meta.index >= last_big and len(held.data) > 60_000
        # Small writes: past the count, but far from half the snapshot's weight.
        for i in range(20):
            await engine.commit([], [Put(b"small%d" % i, b"x" * 50)])
        assert disk.storage.snapshot().meta.index == held.meta.index
        # Once the log weighs half the snapshot, the next one is taken.
        for i in range(20, 300):
            await engine.commit([], [Put(b"small%d" % i, b"x" * 50)])
            if disk.storage.snapshot().meta.index > held.meta.index:
                break
        assert disk.storage.snapshot().meta.index > held.meta.index
        print(f"next snapshot after {i + 1} small writes "
              f"(snapshot of {len(held.data)} bytes)")
    finally:
        await engine.aclose()


# -- one write per commit: the commit index held back ----------------------------------------

async def test_a_sequential_commit_writes_the_log_once(tmp_path: Path) -> None:
    kv = await open_embedded(str(tmp_path / "vol"), create=True)
    try:
        await kv.commit([], [Put(b"first", b"")])  # the member leads, its entry applied
        wal = kv.disk._wal
        assert wal is not None
        writes: list[int] = []
        append = wal.append

        def counted(payloads: list[bytes], *, sync: bool = True) -> int:
            writes.append(len(payloads))
            return append(payloads, sync=sync)

        wal.append = counted  # type: ignore[method-assign]
        for i in range(20):
            await kv.commit([], [Put(b"k%d" % i, b"v")])
        # One write per commit (its entries, with the commit index before them); a tick
        # may add one of the commit index held back.
        assert 20 <= len(writes) <= 22, writes
    finally:
        await kv.aclose()
    disk = RaftDisk.open(str(tmp_path / "vol" / "raft"))
    try:
        assert disk.hard_state.commit == disk.last_index()  # the close wrote it
    finally:
        disk.close()


_KILLED = """
import os, sys, time, trio
from kvfs.kv.api import Put
from kvfs.raftkv.embedded import open_embedded

async def main():
    kv = await open_embedded(sys.argv[1], create=True)
    for i in range(50):
        await kv.commit([], [Put(b"k%02d" % i, b"v%d" % i)])
    if sys.argv[2] == "idle":
        await trio.sleep(1.0)  # ten ticks: the commit index held back gets written
    os._exit(0)  # as kill -9: no close

trio.run(main)
"""


@pytest.mark.parametrize("when", ["busy", "idle"])
def test_a_process_killed_loses_no_acknowledged_commit(tmp_path: Path, when: str) -> None:
    store = tmp_path / "vol"
    subprocess.run([sys.executable, "-c", _KILLED, str(store), when], check=True,
                   timeout=120)
    disk = RaftDisk.open(str(store / "raft"))
    try:
        committed, last = disk.hard_state.commit, disk.last_index()
    finally:
        disk.close()
    print(f"{when}: commit index {committed} of {last} on disk")
    if when == "idle":
        assert committed == last

    async def check() -> None:
        kv = await open_embedded(str(store))
        try:
            for i in range(50):
                got = await kv.get(b"k%02d" % i)
                assert got is not None and got.value == b"v%d" % i, i
        finally:
            await kv.aclose()

    trio.run(check)


# -- the sync on the loop when nothing else waits --------------------------------------------

async def _threads_of_saves(kv: EmbeddedMember, commits: int) -> list[bool]:
    """Whether each synced save of ``commits`` sequential commits ran on the loop's thread."""
    loop_thread = threading.current_thread()
    on_loop: list[bool] = []
    save = kv.disk.save

    def watched(hard_state: HardState | None, entries: list[Entry],
                snapshot: Snapshot | None, must_sync: bool) -> None:
        if must_sync:
            on_loop.append(threading.current_thread() is loop_thread)
        save(hard_state, entries, snapshot, must_sync)

    kv.disk.save = watched  # type: ignore[method-assign, assignment]
    for i in range(commits):
        await kv.commit([], [Put(b"k%d" % i, b"v")])
    return on_loop


async def test_a_lone_commit_syncs_on_the_loop(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # However slow this machine's disk is just now: only the "nothing else waits" rule.
    monkeypatch.setattr(node_module, "_INLINE_SYNC_SECONDS", 3600.0)
    kv = await open_embedded(str(tmp_path / "vol"), create=True)
    try:
        await kv.commit([], [Put(b"first", b"")])
        on_loop = await _threads_of_saves(kv, 20)
        print(f"{sum(on_loop)} of {len(on_loop)} syncs on the loop")
        # A tick may be waiting to run now and then: that sync goes to a worker thread.
        assert sum(on_loop) >= 15
    finally:
        await kv.aclose()


async def test_slow_syncs_go_to_a_worker_thread(tmp_path: Path) -> None:
    kv = await open_embedded(str(tmp_path / "vol"), create=True)
    try:
        await kv.commit([], [Put(b"first", b"")])
        kv.node._sync_seconds = 1.0  # as after syncs of a second each
        on_loop = await _threads_of_saves(kv, 20)
        assert on_loop and not any(on_loop)  # the average comes down slowly: 1 s * (7/8)**20
    finally:
        await kv.aclose()


async def test_snapshots_are_packed_off_the_loop(tmp_path: Path) -> None:
    kv = await open_embedded(str(tmp_path / "vol"), create=True, snapshot_every=5)
    try:
        machine = kv.node.kv
        pack = machine.snapshot
        threads: list[threading.Thread] = []

        def watched(*, history: bool = True) -> bytes:
            threads.append(threading.current_thread())
            return pack(history=history)

        machine.snapshot = watched  # type: ignore[method-assign]
        await _write(kv, 12, b"a")
        assert threads and threading.current_thread() not in threads
    finally:
        await kv.aclose()
