"""A Raft store member serving the KV seam in-process: the KV contract, at-most-once
commands, leader-decided lease expiry, snapshots and restarts."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from kv_contract import KVContract

from kvfs.kv.api import Put
from kvfs.kv.state import Command
from kvfs.kv.watchhub import WatchHub
from kvfs.raft import (
    Config,
    Entry,
    HardState,
    MemoryStorage,
    NodeId,
    Snapshot,
    bootstrap_state,
)
from kvfs.raftkv.disk import RaftDisk
from kvfs.raftkv.engine import MemberEngine
from kvfs.raftkv.node import RaftNode
from kvfs.raftkv.statemachine import ReplicatedKV


class MemoryDisk:
    """A volatile Disk for tests of the member itself (no files)."""

    def __init__(self) -> None:
        self._storage = MemoryStorage()
        self.saves = 0

    @property
    def storage(self) -> MemoryStorage:
        return self._storage

    def save(self, hard_state: HardState | None, entries: list[Entry],
             snapshot: Snapshot | None, must_sync: bool) -> None:
        self.saves += 1
        if snapshot is not None:
            self._storage.apply_snapshot(snapshot)
        self._storage.append(entries)
        if hard_state is not None:
            self._storage.set_hard_state(hard_state)

    def save_snapshot(self, snapshot: Snapshot) -> None:
        meta = snapshot.meta
        self._storage.create_snapshot(meta.index, meta.conf_state, snapshot.data)
        self._storage.compact(meta.index)


def one_member_disk() -> MemoryDisk:
    disk = MemoryDisk()
    entries, hard_state = bootstrap_state([NodeId(1)])
    disk.save(hard_state, entries, None, True)
    return disk


async def start_member(disk: MemoryDisk | RaftDisk, **node_options: object) -> MemberEngine:
    kv = ReplicatedKV()
    node = RaftNode(Config(NodeId(1)), disk, kv, WatchHub(_load), rng=random.Random(1),
                    tick_seconds=0.02, **node_options)  # type: ignore[arg-type]
    return await MemberEngine.start(node, timeout=5.0)


async def _load(value: object) -> bytes:
    assert isinstance(value, bytes)
    return value


class TestOneMemberInMemory(KVContract):
    @pytest.fixture
    async def kv(self) -> AsyncIterator[MemberEngine]:
        engine = await start_member(one_member_disk())
        yield engine
        await engine.aclose()


class TestOneMemberOnDisk(KVContract):
    @pytest.fixture
    async def kv(self, tmp_path: Path) -> AsyncIterator[MemberEngine]:
        disk = RaftDisk.create(str(tmp_path / "m1"), "test-cluster", 1, keep_entries=3)
        disk.bootstrap([NodeId(1)])
        engine = await start_member(disk, snapshot_every=3)
        yield engine
        await engine.aclose()
        disk.close()


class TestOneMemberTinySnapshots(KVContract):
    @pytest.fixture
    async def kv(self) -> AsyncIterator[MemberEngine]:
        engine = await start_member(one_member_disk(), snapshot_every=3)
        yield engine
        await engine.aclose()


async def test_a_retried_command_is_applied_once() -> None:
    engine = await start_member(one_member_disk())
    try:
        node = engine.node
        deadline = trio.current_time() + 5
        put: Command = ("txn", [], [(b"k", b"v", 0)], [])
        first = await node.submit(7, 1, put, deadline=deadline)
        again = await node.submit(7, 1, put, deadline=deadline)
        assert again == first
        assert node.kv.state.revision == first.revision  # applied once
        later = await node.submit(7, 2, put, deadline=deadline)
        assert later.revision == first.revision + 1
    finally:
        await engine.aclose()


async def test_a_member_on_disk_keeps_what_it_acknowledged_across_restarts(
        tmp_path: Path) -> None:
    directory = str(tmp_path / "m1")
    disk = RaftDisk.create(directory, "test-cluster", 1, keep_entries=4)
    disk.bootstrap([NodeId(1)])
    revision = 0
    for round_ in range(4):
        engine = await start_member(disk, snapshot_every=4)
        for i in range(7):
            res = await engine.commit([], [Put(b"r%d-%d" % (round_, i), b"x" * i)])
            assert res.succeeded
            revision = res.revision
        lease = await engine.lease_grant(60)
        assert (await engine.commit([], [Put(b"leased%d" % round_, b"", lease)])).succeeded
        revision += 1
        await engine.aclose()
        disk.close()
        disk = RaftDisk.open(directory, cluster_token="test-cluster", member_id=1,
                             keep_entries=4)
    engine = await start_member(disk, snapshot_every=4)
    try:
        assert await engine.current_revision() == revision
        for round_ in range(4):
            got = await engine.get(b"r%d-6" % round_)
            assert got is not None and got.value == b"x" * 6
            assert await engine.get(b"leased%d" % round_) is not None
    finally:
        await engine.aclose()
        disk.close()


async def test_restart_rebuilds_the_state_from_snapshot_and_log() -> None:
    disk = one_member_disk()
    engine = await start_member(disk, snapshot_every=5)
    for i in range(12):
        assert (await engine.commit([], [_put(b"k%d" % i, b"v%d" % i)])).succeeded
    revision = await engine.current_revision()
    await engine.aclose()
    assert disk.storage.snapshot().meta.index > 0
    again = await start_member(disk, snapshot_every=5)
    try:
        assert await again.current_revision() == revision
        got = await again.get(b"k11")
        assert got is not None and got.value == b"v11"
    finally:
        await again.aclose()


def _put(key: bytes, value: bytes) -> Put:
    return Put(key, value)
