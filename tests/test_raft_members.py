"""Three Raft store members in one process, joined by an in-memory network: replication,
reads and writes through a follower, and a leader that stops."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import pytest
import trio
from kv_contract import KVContract
from test_raft_member import MemoryDisk

from kvfs.kv.api import Put
from kvfs.kv.watchhub import WatchHub
from kvfs.raft import Config, Message, NodeId, bootstrap_state
from kvfs.raftkv.engine import MemberEngine
from kvfs.raftkv.node import RaftNode
from kvfs.raftkv.statemachine import ReplicatedKV

IDS = [NodeId(1), NodeId(2), NodeId(3)]


class LocalNetwork:
    """Delivers each member's messages to the others; a stopped member hears nothing."""

    def __init__(self) -> None:
        self.nodes: dict[NodeId, RaftNode] = {}
        self.down: set[NodeId] = set()

    def endpoint(self, sender: NodeId) -> LocalEndpoint:
        return LocalEndpoint(self, sender)


class LocalEndpoint:
    def __init__(self, network: LocalNetwork, sender: NodeId) -> None:
        self.network = network
        self.sender = sender

    def send(self, messages: list[Message]) -> None:
        if self.sender in self.network.down:
            return
        for message in messages:
            node = self.network.nodes.get(message.to)
            if node is not None and message.to not in self.network.down:
                node.deliver(message)


async def _load(value: object) -> bytes:
    assert isinstance(value, bytes)
    return value


async def start_cluster() -> tuple[LocalNetwork, dict[NodeId, MemberEngine]]:
    network = LocalNetwork()
    engines: dict[NodeId, MemberEngine] = {}
    entries, hard_state = bootstrap_state(IDS)
    for node_id in IDS:
        disk = MemoryDisk()
        disk.save(hard_state, entries, None, True)
        node = RaftNode(Config(node_id), disk, ReplicatedKV(), WatchHub(_load),
                        rng=random.Random(node_id), transport=network.endpoint(node_id),
                        tick_seconds=0.01, snapshot_every=50)
        network.nodes[node_id] = node
        engines[node_id] = await MemberEngine.start(node, timeout=10.0, shared=True)
    return network, engines


async def leader_of(engines: dict[NodeId, MemberEngine]) -> NodeId:
    with trio.fail_after(10):
        while True:
            leaders = [i for i, e in engines.items() if e.is_leader]
            if len(leaders) == 1:
                return leaders[0]
            await trio.sleep(0.01)


async def close_all(engines: dict[NodeId, MemberEngine]) -> None:
    for engine in engines.values():
        await engine.aclose()


class TestThreeMembersAtTheLeader(KVContract):
    @pytest.fixture
    async def kv(self) -> AsyncIterator[MemberEngine]:
        _, engines = await start_cluster()
        leader = await leader_of(engines)
        yield engines[leader]
        await close_all(engines)


async def test_writes_and_reads_through_a_follower_reach_every_member() -> None:
    _, engines = await start_cluster()
    try:
        leader = await leader_of(engines)
        follower = next(i for i in IDS if i != leader)
        for i in range(120):  # past two snapshots (snapshot_every=50)
            res = await engines[follower].commit([], [Put(b"k%03d" % i, b"v%d" % i)])
            assert res.succeeded
        revision = await engines[follower].current_revision()
        for engine in engines.values():
            got = await engine.get(b"k119")
            assert got is not None and got.value == b"v119"
            assert await engine.current_revision() == revision
        states = {i: sorted(e.node.kv.state.data.items()) for i, e in engines.items()}
        assert states[IDS[0]] == states[IDS[1]] == states[IDS[2]]
    finally:
        await close_all(engines)


async def test_the_others_carry_on_when_the_leader_stops() -> None:
    network, engines = await start_cluster()
    try:
        leader = await leader_of(engines)
        survivor = next(i for i in IDS if i != leader)
        assert (await engines[survivor].commit([], [Put(b"before", b"1")])).succeeded
        network.down.add(leader)
        await engines.pop(leader).aclose()
        assert (await engines[survivor].commit([], [Put(b"after", b"2")])).succeeded
        new_leader = await leader_of(engines)
        assert new_leader != leader
        for engine in engines.values():
            assert (await engine.get(b"before")) is not None
            assert (await engine.get(b"after")) is not None
    finally:
        await close_all(engines)
