"""The embedded store as a one-member Raft cluster (kvfs.raftkv.embedded): its layout, large
values kept in files and freed, restarts, and the conversion of volumes of the earlier
embedded store -- including a conversion cut short at each of its steps."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

from kvfs.kv.api import Compacted, Put
from kvfs.kv.embedded import EmbeddedEngine
from kvfs.raftkv.disk import RaftDisk
from kvfs.raftkv.embedded import EMBEDDED_MEMBER, EmbeddedMember, convert_legacy, open_embedded
from kvfs.raftkv.members import member_id
from kvfs.volume import VolumeError, open_engine

BIG = 200_000  # over the 64 KiB threshold: a value file


def big(n: int) -> bytes:
    return bytes([n % 251]) * BIG


def value_files(store: Path) -> set[str]:
    return set(os.listdir(store / "raft" / "values"))


async def test_a_new_store_is_a_one_member_cluster_of_its_own(tmp_path: Path) -> None:
    store = tmp_path / "vol"
    kv = await open_embedded(str(store), create=True)
    try:
        await kv.commit([], [Put(b"k", b"v")])
        assert kv.is_leader
        token = kv.disk.cluster_token
        assert token.startswith("embedded-")
        assert kv.disk.member_id == member_id(EMBEDDED_MEMBER, token)
        assert [m.name for m in kv.node.kv.members.members.values()] == [EMBEDDED_MEMBER]
    finally:
        await kv.aclose()
    assert sorted(os.listdir(store)) == ["raft"]
    with RaftDisk.open(str(store / "raft")) as disk:  # an ordinary member data directory
        assert disk.cluster_token == token


async def test_large_values_live_in_files_and_are_freed(tmp_path: Path) -> None:
    store = tmp_path / "vol"
    kv = await open_embedded(str(store), create=True, snapshot_every=5, snapshot_bytes=1 << 20)
    try:
        for round_ in range(12):
            for key in range(3):
                await kv.commit([], [Put(b"big%d" % key, big(round_ * 3 + key))])
        entry = kv.node.kv.state.get(b"default/big0")  # the volume's namespace
        assert entry is not None and not isinstance(entry.value, bytes)  # a ref, not bytes
        got = await kv.get(b"big0")
        assert got is not None and got.value == big(33)
        # The watch history still holds every overwritten value...
        assert len(value_files(store)) == 36
        # ...until it is compacted away; then, once no snapshot needs them, they are freed:
        # the live three stay, and those the last two snapshots refer to.
        await kv.compact(await kv.current_revision())
        for n in range(12):
            await kv.commit([], [Put(b"small%d" % n, b"x")])
        assert len(value_files(store)) <= 6
    finally:
        await kv.aclose()
    kv = await open_embedded(str(store))
    try:
        for key in range(3):
            got = await kv.get(b"big%d" % key)
            assert got is not None and got.value == big(33 + key)
    finally:
        await kv.aclose()


async def test_a_watch_of_old_revisions_reads_values_from_files(tmp_path: Path) -> None:
    kv = await open_embedded(str(tmp_path / "vol"), create=True)
    try:
        first = (await kv.commit([], [Put(b"w", big(1))])).revision
        await kv.commit([], [Put(b"w", big(2))])
        seen: list[bytes | None] = []
        with trio.fail_after(10):
            async for batch in kv.watch(b"w", b"x", first):
                seen += [ev.value for ev in batch.events]
                if len(seen) == 2:
                    break
        assert seen == [big(1), big(2)]
    finally:
        await kv.aclose()


async def _legacy_volume(path: Path) -> int:
    """An earlier embedded store with small and large values, a lease, a delete, and a
    compaction; returns its revision."""
    old = await EmbeddedEngine.open(str(path))
    try:
        lease = await old.lease_grant(600)
        await old.commit([], [Put(b"small", b"s"), Put(b"large", big(7))])
        await old.commit([], [Put(b"leased", b"l", lease)])
        await old.commit([], [Put(b"gone", big(8))])
        await old.commit([], [], [])
        rev = (await old.commit([], [Put(b"large2", big(9))])).revision
        await old.compact(2)
        return rev
    finally:
        await old.aclose()


async def _check_converted(kv: EmbeddedMember, revision: int) -> None:
    assert await kv.current_revision() == revision
    for key, value in ((b"small", b"s"), (b"large", big(7)), (b"large2", big(9)),
                       (b"leased", b"l")):
        got = await kv.get(key)
        assert got is not None and got.value == value, key
    leased = await kv.get(b"leased")
    assert leased is not None and leased.lease
    # The watch history came along: a watch from after the compaction replays it.
    with pytest.raises(Compacted):
        async for _ in kv.watch(b"", b"\xff", 1):
            break
    with trio.fail_after(10):
        async for batch in kv.watch(b"large2", b"large3", revision):
            assert [ev.value for ev in batch.events] == [big(9)]
            break


async def test_an_earlier_embedded_store_is_converted_on_open(tmp_path: Path) -> None:
    store = tmp_path / "vol"
    revision = await _legacy_volume(store)
    kv = await open_engine(str(store))  # the way mounts open it
    assert isinstance(kv, EmbeddedMember)
    try:
        await _check_converted(kv, revision)
        await kv.commit([], [Put(b"after", big(10))])
    finally:
        await kv.aclose()
    assert sorted(os.listdir(store)) == ["LOCK", "raft"]  # the old log and files are gone
    kv = await open_embedded(str(store))
    try:
        after = await kv.get(b"after")
        assert after is not None and after.value == big(10)
    finally:
        await kv.aclose()


async def test_a_conversion_cut_short_is_done_again(tmp_path: Path) -> None:
    store = tmp_path / "vol"
    revision = await _legacy_volume(store)
    (store / "raft.new").mkdir()  # a conversion that died before its commit point
    (store / "raft.new" / "IDENTITY").write_text("half-written")
    kv = await open_embedded(str(store))
    try:
        await _check_converted(kv, revision)
    finally:
        await kv.aclose()


async def test_a_conversion_cut_short_after_its_commit_point_is_finished(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = tmp_path / "vol"
    revision = await _legacy_volume(store)

    def die(path: str) -> None:
        raise RuntimeError("power cut")

    monkeypatch.setattr("kvfs.raftkv.embedded._remove_legacy", die)
    with pytest.raises(RuntimeError):
        await convert_legacy(str(store))
    monkeypatch.undo()
    assert (store / "raft").is_dir() and any(n.startswith("wal-") for n in os.listdir(store))
    kv = await open_embedded(str(store))
    try:
        await _check_converted(kv, revision)
    finally:
        await kv.aclose()
    assert not any(n.startswith(("wal-", "snap-")) for n in os.listdir(store))


async def test_an_empty_directory_is_no_volume(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(VolumeError, match="no kvfs volume here"):
        await open_engine(str(tmp_path / "empty"))
    assert os.listdir(tmp_path / "empty") == []
