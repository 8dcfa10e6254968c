"""Tests specific to the embedded durable store (kvfs.kv.embedded): files, crashes, recovery."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import trio

from kvfs.kv.api import Compacted, Delete, Put, StoreCorrupt, StoreLocked, prefix_end
from kvfs.kv.embedded import EmbeddedEngine
from kvfs.kv.valuefiles import ValueRef
from kvfs.kv.wal import list_segments

BIG = 200 * 1024


def big_value(tag: int, size: int = BIG) -> bytes:
    return (b"%08d" % tag) * (size // 8)


async def put(kv: EmbeddedEngine, key: bytes, value: bytes, lease: int = 0) -> int:
    res = await kv.commit([], [Put(key, value, lease)])
    assert res.succeeded
    return res.revision


def files(store: Path, pattern: str) -> list[Path]:
    return sorted(store.glob(pattern))


def last_segment(store: Path) -> Path:
    segs = list_segments(str(store))
    assert segs
    return Path(segs[-1][1])


# -- reopening ---------------------------------------------------------------------------

@pytest.mark.parametrize("snapshots", [False, True], ids=["wal-only", "snapshots"])
async def test_reopen_preserves_everything(tmp_path: Path, snapshots: bool) -> None:
    store = tmp_path / "s"
    opts: dict[str, Any] = (dict(snapshot_every=4, segment_bytes=300) if snapshots
                            else dict(snapshot_every=10**9, snapshot_wal_bytes=1 << 40))
    kv = await EmbeddedEngine.open(str(store), **opts)
    r_small = await put(kv, b"small", b"s")
    r_big = await put(kv, b"big", big_value(1))
    await put(kv, b"gone", b"x")
    await kv.commit([], [], [Delete(b"gone")])
    lease = await kv.lease_grant(120)
    r_leased = await put(kv, b"leased", b"l", lease)
    empty_lease = await kv.lease_grant(120)
    await kv.lease_revoke(empty_lease)  # no keys: must still be forgotten after reopen
    for i in range(10):
        await put(kv, b"n/%d" % i, b"%d" % i)
    await kv.compact(r_leased)
    rev = await kv.current_revision()
    await kv.aclose()
    if snapshots:
        assert files(store, "snap-*.snap")
    else:
        assert not files(store, "snap-*")

    for _round in range(2):
        kv = await EmbeddedEngine.open(str(store), **opts)
        try:
            assert await kv.current_revision() == rev
            small, bigkv = await kv.get(b"small"), await kv.get(b"big")
            assert small is not None and (small.value, small.mod_revision) == (b"s", r_small)
            assert bigkv is not None and bigkv.value == big_value(1)
            assert bigkv.mod_revision == bigkv.create_revision == r_big
            assert await kv.get(b"gone") is None
            leased = await kv.get(b"leased")
            assert leased is not None and leased.lease == lease
            assert await kv.lease_keepalive(lease)
            assert not await kv.lease_keepalive(empty_lease)
            assert kv.state.compacted == r_leased
            res = await kv.range(b"n/", prefix_end(b"n/"))
            assert [x.value for x in res.kvs] == [b"%d" % i for i in range(10)]
            with pytest.raises(Compacted):
                async for _ in kv.watch(b"", b"\x00", 1):
                    break
            new_lease = await kv.lease_grant(10)
            assert new_lease not in (lease, empty_lease)
            await kv.lease_revoke(new_lease)
            rev = await kv.current_revision()
        finally:
            await kv.aclose()


async def test_lease_revoke_survives_restart(tmp_path: Path) -> None:
    kv = await EmbeddedEngine.open(str(tmp_path))
    lease = await kv.lease_grant(60)
    await put(kv, b"k", b"v", lease)
    await kv.lease_revoke(lease)
    await kv.aclose()
    kv = await EmbeddedEngine.open(str(tmp_path))
    try:
        assert await kv.get(b"k") is None
        assert not await kv.lease_keepalive(lease)
    finally:
        await kv.aclose()


async def test_closed_engine_refuses_calls(tmp_path: Path) -> None:
    kv = await EmbeddedEngine.open(str(tmp_path))
    await kv.aclose()
    await kv.aclose()  # idempotent
    with pytest.raises(Exception, match="closed"):
        await kv.get(b"a")


# -- crashes -----------------------------------------------------------------------------

CHILD = textwrap.dedent("""
    import sys, trio
    from kvfs.kv.api import Put
    from kvfs.kv.embedded import EmbeddedEngine

    def value(key):
        n = int(key.split(b"-")[1])
        return key * (20000 if n % 5 == 0 else 3)

    async def worker(kv, task):
        i = 0
        while True:
            key = b"t%d-%d" % (task, i)
            res = await kv.commit([], [Put(key, value(key))])
            assert res.succeeded
            print(key.decode(), res.revision, flush=True)
            i += 1

    async def main():
        kv = await EmbeddedEngine.open(sys.argv[1], snapshot_every=40, segment_bytes=4096,
                                       large_value_bytes=1024)
        print("ready", flush=True)
        async with trio.open_nursery() as n:
            for task in range(int(sys.argv[2])):
                n.start_soon(worker, kv, task)

    trio.run(main)
""")


def _child_value(key: bytes) -> bytes:
    n = int(key.split(b"-")[1])
    return key * (20000 if n % 5 == 0 else 3)


def _run_and_kill(store: Path, tasks: int, acks_wanted: int) -> list[tuple[bytes, int]]:
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(store), str(tasks)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    acked: list[tuple[bytes, int]] = []
    try:
        assert proc.stdout.readline().strip() == b"ready", proc.stderr.read()  # type: ignore[union-attr]
        while len(acked) < acks_wanted:
            line = proc.stdout.readline()
            assert line, proc.stderr.read()  # type: ignore[union-attr]
            key, rev = line.split()
            acked.append((key, int(rev)))
    finally:
        proc.send_signal(signal.SIGKILL)
        rest, _ = proc.communicate(timeout=30)
    for line in rest.splitlines():  # printed before the kill: acknowledged too
        parts = line.split()
        if len(parts) == 2:
            acked.append((parts[0], int(parts[1])))
    return acked


@pytest.mark.parametrize("tasks", [1, 6])
async def test_recovery_after_kill9(tmp_path: Path, tasks: int) -> None:
    store = tmp_path / "s"
    all_acked: list[tuple[bytes, int]] = []
    for round_ in range(3):
        acked = await trio.to_thread.run_sync(_run_and_kill, store, tasks, 150 + 70 * round_)
        # Each round's child starts its keys again at 0: later rounds overwrite earlier keys.
        all_acked = [(k, r) for k, r in all_acked if k not in {a for a, _ in acked}] + acked
        kv = await EmbeddedEngine.open(str(store), large_value_bytes=1024)
        try:
            for key, rev in all_acked:
                got = await kv.get(key)
                assert got is not None, key
                assert got.value == _child_value(key)
                # A later round may have written the key again (the same value) and been
                # killed before printing the acknowledgement: a newer revision is fine,
                # an older one would be a lost acknowledged write.
                assert got.mod_revision >= rev
            assert await kv.current_revision() >= max(r for _, r in all_acked)
            # No value file without a reference survives recovery.
            referenced = {e.value.name for _, e in kv.state.snapshot_items()
                          if isinstance(e.value, ValueRef)}
            assert set(os.listdir(store / "values")) == referenced
        finally:
            await kv.aclose()


async def test_torn_tail_incomplete_record(tmp_path: Path,
                                           caplog: pytest.LogCaptureFixture) -> None:
    kv = await EmbeddedEngine.open(str(tmp_path))
    for i in range(5):
        await put(kv, b"k%d" % i, b"v%d" % i)
    await kv.aclose()
    seg = last_segment(tmp_path)
    size = seg.stat().st_size
    with open(seg, "ab") as f:
        f.write(b"\x00\x00\x01\x00\x12\x34")  # a header cut short by the crash
    with caplog.at_level(logging.WARNING):
        kv = await EmbeddedEngine.open(str(tmp_path))
    try:
        assert "torn tail" in caplog.text
        assert seg.stat().st_size == size
        for i in range(5):
            got = await kv.get(b"k%d" % i)
            assert got is not None and got.value == b"v%d" % i
        await put(kv, b"after", b"a")
    finally:
        await kv.aclose()
    kv = await EmbeddedEngine.open(str(tmp_path))
    try:
        assert await kv.get(b"after") is not None
    finally:
        await kv.aclose()


@pytest.mark.parametrize("damage", ["checksum", "short", "zeros"])
async def test_torn_tail_last_record(tmp_path: Path, damage: str) -> None:
    kv = await EmbeddedEngine.open(str(tmp_path))
    for i in range(5):
        await put(kv, b"k%d" % i, b"v%d" % i)
    rev4 = await kv.current_revision()
    await put(kv, b"last", b"L" * 100)
    await kv.aclose()
    seg = last_segment(tmp_path)
    data = bytearray(seg.read_bytes())
    if damage == "checksum":
        data[-1] ^= 0xFF
    elif damage == "short":
        del data[-10:]
    else:
        data += bytes(4096)  # a crash can leave zero-filled blocks after the data
        data[-4096 - 1] ^= 0xFF
    seg.write_bytes(bytes(data))
    kv = await EmbeddedEngine.open(str(tmp_path))
    try:
        assert await kv.get(b"last") is None
        assert await kv.current_revision() == rev4
        for i in range(5):
            assert await kv.get(b"k%d" % i) is not None
    finally:
        await kv.aclose()


async def test_corrupted_middle_raises(tmp_path: Path) -> None:
    kv = await EmbeddedEngine.open(str(tmp_path))
    for i in range(5):
        await put(kv, b"k%d" % i, b"v%d" % i)
    await kv.aclose()
    seg = last_segment(tmp_path)
    data = bytearray(seg.read_bytes())
    data[14] ^= 0x01  # inside the first record's payload
    seg.write_bytes(bytes(data))
    for _ in range(2):  # a failed open releases the lock
        with pytest.raises(StoreCorrupt) as info:
            await EmbeddedEngine.open(str(tmp_path))
        msg = str(info.value)
        assert str(seg) in msg and "offset 0" in msg and "\n" not in msg
    assert seg.read_bytes() == bytes(data)  # nothing was truncated


async def test_corrupted_value_file(tmp_path: Path) -> None:
    kv = await EmbeddedEngine.open(str(tmp_path))
    try:
        await put(kv, b"big", big_value(7))
        entry = kv.state.get(b"big")
        assert entry is not None and isinstance(entry.value, ValueRef)
        path = tmp_path / "values" / entry.value.name
        data = bytearray(path.read_bytes())
        data[1000] ^= 0x01
        path.write_bytes(bytes(data))
        with pytest.raises(StoreCorrupt, match=str(path)):
            await kv.get(b"big")
    finally:
        await kv.aclose()


async def test_missing_value_file_is_corruption(tmp_path: Path) -> None:
    kv = await EmbeddedEngine.open(str(tmp_path))
    await put(kv, b"big", big_value(7))
    entry = kv.state.get(b"big")
    assert entry is not None and isinstance(entry.value, ValueRef)
    await kv.aclose()
    (tmp_path / "values" / entry.value.name).unlink()
    with pytest.raises(StoreCorrupt, match=entry.value.name):
        await EmbeddedEngine.open(str(tmp_path))


async def test_damaged_snapshot_without_log_is_corruption(tmp_path: Path) -> None:
    kv = await EmbeddedEngine.open(str(tmp_path), segment_bytes=100)
    for i in range(20):
        await put(kv, b"k%d" % i, b"v")
    await kv.checkpoint()
    await put(kv, b"after", b"v")
    await kv.aclose()
    [snap] = files(tmp_path, "snap-*.snap")
    data = bytearray(snap.read_bytes())
    data[30] ^= 0x01
    snap.write_bytes(bytes(data))
    with pytest.raises(StoreCorrupt, match="snapshot"):
        await EmbeddedEngine.open(str(tmp_path))


# -- locking -----------------------------------------------------------------------------

async def test_second_open_in_process_is_refused(tmp_path: Path) -> None:
    kv = await EmbeddedEngine.open(str(tmp_path))
    try:
        with pytest.raises(StoreLocked) as info:
            await EmbeddedEngine.open(str(tmp_path))
        msg = str(info.value)
        assert f"pid {os.getpid()}" in msg and str(tmp_path) in msg and "\n" not in msg
    finally:
        await kv.aclose()
    kv = await EmbeddedEngine.open(str(tmp_path))  # released by aclose
    await kv.aclose()


HOLDER = textwrap.dedent("""
    import sys, time, trio
    from kvfs.kv.embedded import EmbeddedEngine

    async def main():
        await EmbeddedEngine.open(sys.argv[1])
        print("ready", flush=True)
        await trio.sleep(60)

    trio.run(main)
""")


async def test_lock_held_by_other_process(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)],
                            stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = await trio.to_thread.run_sync(proc.stdout.readline)
        assert line.strip() == b"ready"
        with pytest.raises(StoreLocked) as info:
            await EmbeddedEngine.open(str(tmp_path))
        assert f"pid {proc.pid} " in str(info.value)
        assert str(tmp_path) in str(info.value)
    finally:
        proc.kill()
        await trio.to_thread.run_sync(proc.wait)
    kv = await EmbeddedEngine.open(str(tmp_path))  # the lock died with its holder
    await kv.aclose()


# -- snapshots ---------------------------------------------------------------------------

async def test_snapshots_truncate_the_log(tmp_path: Path) -> None:
    opts: dict[str, Any] = dict(snapshot_every=25, segment_bytes=512, large_value_bytes=1024)
    kv = await EmbeddedEngine.open(str(tmp_path), **opts)
    expected: dict[bytes, bytes] = {}
    try:
        for i in range(300):
            key = b"k%03d" % (i % 120)
            value = big_value(i, 2048) if i % 7 == 0 else b"v%d" % i
            await put(kv, key, value)
            expected[key] = value
            if i % 50 == 49:
                await kv.commit([], [], [Delete(b"k%03d" % (i % 120))])
                expected.pop(b"k%03d" % (i % 120))
        await kv.checkpoint()
        assert kv.snapshots_written >= 10
        assert len(files(tmp_path, "snap-*.snap")) == 1
        assert not files(tmp_path, "snap-*.tmp")
        assert len(files(tmp_path, "wal-*.log")) <= 2
    finally:
        await kv.aclose()
    for _ in range(2):
        kv = await EmbeddedEngine.open(str(tmp_path), **opts)
        try:
            res = await kv.range(b"", b"\x00")
            assert {x.key: x.value for x in res.kvs} == expected
            for i in range(40):
                await put(kv, b"more%d" % i, b"m")
                expected[b"more%d" % i] = b"m"
        finally:
            await kv.aclose()


async def test_value_dropped_after_snapshot_is_replayed(tmp_path: Path) -> None:
    """A snapshot may name a value file freed later; recovery must not need it."""
    kv = await EmbeddedEngine.open(str(tmp_path), snapshot_every=10**9)
    await put(kv, b"a", big_value(1))
    await put(kv, b"b", big_value(2))
    await kv.checkpoint()
    await put(kv, b"a", b"small")  # frees a's file; the snapshot still names it
    await kv.commit([], [], [Delete(b"b")])
    assert os.listdir(tmp_path / "values") == []
    await kv.aclose()
    kv = await EmbeddedEngine.open(str(tmp_path))
    try:
        got = await kv.get(b"a")
        assert got is not None and got.value == b"small"
        assert await kv.get(b"b") is None
    finally:
        await kv.aclose()


async def test_snapshots_during_concurrent_commits(tmp_path: Path) -> None:
    kv = await EmbeddedEngine.open(str(tmp_path), snapshot_every=500)
    try:
        async with trio.open_nursery() as nursery:
            for t in range(10):
                async def work(t: int = t) -> None:
                    for i in range(150):
                        await put(kv, b"t%d/%d" % (t, i), b"x" * 50)
                nursery.start_soon(work)
        assert kv.snapshots_written >= 1
        assert len((await kv.range(b"t", b"u")).kvs) == 1500
    finally:
        await kv.aclose()


# -- large values ------------------------------------------------------------------------

async def test_large_values_live_in_files_not_memory(tmp_path: Path) -> None:
    mib = 1024 * 1024
    kv = await EmbeddedEngine.open(str(tmp_path))
    try:
        tracemalloc.start()
        try:
            base, _ = tracemalloc.get_traced_memory()

            async def writer(t: int) -> None:
                for i in range(t, 200, 4):
                    await put(kv, b"blk/%03d" % i, bytes([i]) * mib)

            async with trio.open_nursery() as nursery:
                for t in range(4):
                    nursery.start_soon(writer, t)
            held, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert held - base < 20 * mib, f"{(held - base) / mib:.1f} MiB still allocated"
        for _key, entry in kv.state.snapshot_items():
            assert isinstance(entry.value, ValueRef)
        for ev in kv.state.history:
            assert not isinstance(ev.value, bytes) or len(ev.value) <= 64 * 1024
        assert len(os.listdir(tmp_path / "values")) == 200
        got = await kv.get(b"blk/123")
        assert got is not None and got.value == bytes([123]) * mib
        # Small values stay inline; overwritten and deleted large values free their files.
        for i in range(100):
            await put(kv, b"blk/%03d" % i, b"tiny")
        small = kv.state.get(b"blk/000")
        assert small is not None and small.value == b"tiny"
        await kv.commit([], [], [Delete(b"blk/150", b"blk/200")])
        assert len(os.listdir(tmp_path / "values")) == 50
    finally:
        await kv.aclose()


async def test_orphan_value_files_removed(tmp_path: Path) -> None:
    kv = await EmbeddedEngine.open(str(tmp_path))
    await put(kv, b"keep", big_value(1))
    # A value written for a commit that never reached the log (e.g. a crash in between).
    orphan = await trio.to_thread.run_sync(kv._values.write, big_value(2))
    await kv.aclose()
    (tmp_path / "values" / "stray-file").write_bytes(b"junk")
    names = set(os.listdir(tmp_path / "values"))
    assert orphan.name in names and "stray-file" in names
    kv = await EmbeddedEngine.open(str(tmp_path))
    try:
        assert len(os.listdir(tmp_path / "values")) == 1
        got = await kv.get(b"keep")
        assert got is not None and got.value == big_value(1)
    finally:
        await kv.aclose()


async def test_failed_compare_frees_its_value_file(tmp_path: Path) -> None:
    from kvfs.kv.api import Compare

    kv = await EmbeddedEngine.open(str(tmp_path))
    try:
        await put(kv, b"x", b"1")
        res = await kv.commit([Compare(b"x", 0)], [Put(b"big", big_value(3))])
        assert not res.succeeded
        assert os.listdir(tmp_path / "values") == []
    finally:
        await kv.aclose()


async def test_read_racing_overwrite_sees_a_whole_value(tmp_path: Path) -> None:
    kv = await EmbeddedEngine.open(str(tmp_path))
    values = [big_value(i, 512 * 1024) for i in range(6)]
    try:
        await put(kv, b"hot", values[0])
        await put(kv, b"hot2", values[0])

        async def overwrite() -> None:
            for v in values[1:]:
                await kv.commit([], [Put(b"hot", v), Put(b"hot2", v)])

        async def read() -> None:
            for _ in range(15):
                got = await kv.get(b"hot")
                assert got is not None and got.value in values
                res = await kv.range(b"hot", b"hot3")
                assert [x.value in values for x in res.kvs] == [True, True]

        async with trio.open_nursery() as nursery:
            nursery.start_soon(overwrite)
            for _ in range(4):
                nursery.start_soon(read)
        assert len(os.listdir(tmp_path / "values")) == 2
    finally:
        await kv.aclose()
