"""The Raft store's client protocol over real sockets: every member serves clients
(:mod:`kvfs.raftkv.server`) and the ``raft://`` engine (:mod:`kvfs.raftkv.client`) talks to
them -- the KV contract, at-most-once commits across a cut connection, failover, watches
that survive it, bounded waiting, TLS, strict framing and URL errors.

The members run in this process, joined by the in-memory ``LocalNetwork`` of
``test_raft_members`` (the peer transport is not under test here); clients reach them over
TCP on 127.0.0.1 with ephemeral ports.
"""

from __future__ import annotations

import logging
import random
import socket
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio
from etcd_cluster import make_certs
from kv_contract import KVContract, put
from test_raft_member import MemoryDisk
from test_raft_members import LocalNetwork

from kvfs.kv.api import Delete, EngineUnavailable, Put, WatchEvent, prefix_end
from kvfs.kv.watchhub import WatchHub
from kvfs.raft import Config, NodeId, bootstrap_state
from kvfs.raftkv import protocol as p
from kvfs.raftkv.client import RaftClientEngine
from kvfs.raftkv.engine import MemberEngine
from kvfs.raftkv.node import RaftNode
from kvfs.raftkv.server import RaftServer, server_ssl_context
from kvfs.raftkv.statemachine import ReplicatedKV
from kvfs.raftkv.url import parse_raft_url
from kvfs.volume import VolumeError, open_engine


async def _load(value: object) -> bytes:
    assert isinstance(value, bytes)
    return value


class Cluster:
    """Members in this process, each with a client server on its own port."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self.network = LocalNetwork()
        self.engines: dict[NodeId, MemberEngine] = {}
        self.endpoints: dict[int, str] = {}  # shared with the servers: leader hints
        self.scopes: dict[NodeId, trio.CancelScope] = {}

    async def start(self, size: int, **server_options: Any) -> None:
        ids = [NodeId(i) for i in range(1, size + 1)]
        entries, hard_state = bootstrap_state(ids)
        for node_id in ids:
            disk = MemoryDisk()
            disk.save(hard_state, entries, None, True)
            node = RaftNode(Config(node_id), disk, ReplicatedKV(), WatchHub(_load),
                            rng=random.Random(node_id),
                            transport=self.network.endpoint(node_id),
                            tick_seconds=0.01, snapshot_every=50)
            self.network.nodes[node_id] = node
            self.engines[node_id] = await MemberEngine.start(node, timeout=10.0)
            server = RaftServer(node, client_endpoints=self.endpoints, **server_options)
            scope = trio.CancelScope()
            port = await self.nursery.start(self._serve, server, scope)
            self.scopes[node_id] = scope
            self.endpoints[node_id] = f"127.0.0.1:{port}"

    @staticmethod
    async def _serve(server: RaftServer, scope: trio.CancelScope,
                     task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        with scope:
            await server.serve("127.0.0.1", 0, task_status=task_status)

    def url(self, *order: int, prefix: str = "t", query: str = "") -> str:
        """A raft:// URL naming the members in ``order`` (the client starts with the first)."""
        hosts = ",".join(self.endpoints[i] for i in order)
        return f"raft://{hosts}/{prefix}" + (f"?{query}" if query else "")

    async def leader(self) -> NodeId:
        with trio.fail_after(10):
            while True:
                leaders = [i for i, e in self.engines.items() if e.is_leader]
                if len(leaders) == 1:
                    return leaders[0]
                await trio.sleep(0.01)

    async def stop(self, node_id: NodeId) -> None:
        """The member falls silent: its server, its loop and its peer traffic stop."""
        self.network.down.add(node_id)
        self.scopes[node_id].cancel()
        await self.engines.pop(node_id).aclose()

    async def close(self) -> None:
        for node_id in list(self.engines):
            await self.stop(node_id)


@asynccontextmanager
async def running(size: int, **server_options: Any) -> AsyncIterator[Cluster]:
    async with trio.open_nursery() as nursery:
        cluster = Cluster(nursery)
        try:
            await cluster.start(size, **server_options)
            yield cluster
        finally:
            await cluster.close()
            nursery.cancel_scope.cancel()  # and whatever a test started beside the members


@asynccontextmanager
async def client(url: str) -> AsyncIterator[RaftClientEngine]:
    engine = await open_engine(url)  # the way volumes open it
    assert isinstance(engine, RaftClientEngine) and engine.shared
    try:
        yield engine
    finally:
        await engine.aclose()


# -- the KV contract --------------------------------------------------------------------------


class TestOneMember(KVContract):
    @pytest.fixture
    async def kv(self) -> AsyncIterator[RaftClientEngine]:
        async with running(1) as cluster, client(cluster.url(1)) as engine:
            yield engine


class TestThreeMembersAtTheLeader(KVContract):
    @pytest.fixture
    async def kv(self) -> AsyncIterator[RaftClientEngine]:
        async with running(3) as cluster:
            leader = await cluster.leader()
            others = [i for i in cluster.engines if i != leader]
            async with client(cluster.url(leader, *others)) as engine:
                yield engine


class TestThreeMembersThroughAFollower(KVContract):
    """Reads and writes through a follower (lease keep-alives move on to the leader)."""

    @pytest.fixture
    async def kv(self) -> AsyncIterator[RaftClientEngine]:
        async with running(3) as cluster:
            leader = await cluster.leader()
            follower = next(i for i in cluster.engines if i != leader)
            async with client(cluster.url(follower, leader)) as engine:
                yield engine


# -- sessions, failover, watches --------------------------------------------------------------


class CuttingProxy:
    """Passes one client's frames to a member and back; armed, it cuts both connections at
    the first commit -- right after passing it on, or once the member has answered it
    (that answer is kept in :attr:`dropped` and never reaches the client)."""

    def __init__(self, target: str, *, after_answer: bool) -> None:
        self.target = target
        self.after_answer = after_answer
        self.armed = False
        self.commit_id: int | None = None
        self.dropped: dict[str, Any] | None = None
        self.port = 0

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, downstream: trio.SocketStream) -> None:
        host, port = self.target.split(":")
        upstream = await trio.open_tcp_stream(host, int(port))
        async with downstream, upstream, trio.open_nursery() as nursery:
            nursery.start_soon(self._pump_requests, downstream, upstream, nursery)
            nursery.start_soon(self._pump_answers, upstream, downstream, nursery)

    async def _pump_requests(self, src: trio.SocketStream, dst: trio.SocketStream,
                             nursery: trio.Nursery) -> None:
        reader = p.FrameReader(src)
        while (message := await reader.receive()) is not None:
            await dst.send_all(p.encode_frame(message))
            if self.armed and message["op"] == "commit":
                self.armed = False
                self.commit_id = message["id"]
                if not self.after_answer:
                    nursery.cancel_scope.cancel()
        nursery.cancel_scope.cancel()

    async def _pump_answers(self, src: trio.SocketStream, dst: trio.SocketStream,
                            nursery: trio.Nursery) -> None:
        reader = p.FrameReader(src)
        while (message := await reader.receive()) is not None:
            if self.commit_id is not None and message["id"] == self.commit_id:
                self.dropped = message["ok"]
                nursery.cancel_scope.cancel()
                return
            await dst.send_all(p.encode_frame(message))
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("after_answer", [True, False], ids=["after-answer", "before-answer"])
async def test_a_commit_resent_after_a_cut_connection_is_applied_once(
        after_answer: bool) -> None:
    async with running(3) as cluster:
        leader = await cluster.leader()
        first, second = [i for i in cluster.engines if i != leader]
        proxy = CuttingProxy(cluster.endpoints[first], after_answer=after_answer)
        await cluster.nursery.start(proxy.serve)
        via_proxy = f"127.0.0.1:{proxy.port}"
        url = f"raft://{via_proxy},{cluster.endpoints[second]}/t"
        async with client(url) as engine:
            before = await engine.current_revision()
            proxy.armed = True
            res = await engine.commit([], [Put(b"once", b"1")])  # a blind put: not idempotent
            assert proxy.commit_id is not None  # the cut happened during this commit
            assert engine.current_endpoint != via_proxy  # ... and it was re-sent elsewhere
            if after_answer:
                assert proxy.dropped is not None
                assert (res.succeeded, res.revision) == (proxy.dropped["succeeded"],
                                                         proxy.dropped["revision"])
            assert res.succeeded and res.revision == before + 1
            assert await engine.current_revision() == before + 1  # applied exactly once
            got = await engine.get(b"once")
            assert got is not None and got.mod_revision == res.revision


async def test_the_client_carries_on_when_its_member_stops() -> None:
    async with running(3) as cluster:
        leader = await cluster.leader()
        others = [i for i in cluster.engines if i != leader]
        async with client(cluster.url(leader, *others, query="timeout=10")) as engine:
            r1 = await put(engine, b"before", b"1")
            await cluster.stop(leader)
            r2 = await put(engine, b"after", b"2")
            assert r2 > r1
            assert engine.current_endpoint != cluster.endpoints[leader]
            got = await engine.get_many([b"before", b"after"])
            assert [g.value if g else None for g in got] == [b"1", b"2"]
            # The lease keep-alive finds the new leader.
            lease = await engine.lease_grant(30)
            assert await engine.lease_keepalive(lease)
            assert engine.current_endpoint == cluster.endpoints[await cluster.leader()]


async def test_a_watch_survives_a_failover_without_gaps_or_duplicates() -> None:
    async with running(3) as cluster:
        leader = await cluster.leader()
        first, second = [i for i in cluster.engines if i != leader]
        async with client(cluster.url(leader, first, second)) as watching, \
                client(cluster.url(first, second)) as writing:
            start = await writing.current_revision() + 1
            events: list[WatchEvent] = []
            done = trio.Event()

            async def watcher(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                              ) -> None:
                async with aclosing(watching.watch(b"w/", prefix_end(b"w/"), start)) as it:  # type: ignore[type-var]
                    task_status.started()
                    async for batch in it:
                        assert batch.revision == batch.events[-1].mod_revision
                        events.extend(batch.events)
                        if len(events) >= 12:
                            done.set()
                            return

            with trio.fail_after(30):
                async with trio.open_nursery() as nursery:
                    await nursery.start(watcher)
                    revisions = [await put(writing, b"w/%02d" % i, b"v%d" % i)
                                 for i in range(6)]
                    await put(writing, b"other", b"x")  # outside the watched range
                    while len(events) < 6:
                        await trio.sleep(0.01)
                    await cluster.stop(leader)  # the watch's member
                    revisions += [await put(writing, b"w/%02d" % i, b"v%d" % i)
                                  for i in range(6, 12)]
                    await done.wait()
            assert [(e.key, e.value, e.mod_revision) for e in events] == [
                (b"w/%02d" % i, b"v%d" % i, revisions[i]) for i in range(12)]
            assert watching.current_endpoint != cluster.endpoints[leader]


async def test_concurrent_writes_of_one_client_are_each_applied_once() -> None:
    async with running(3) as cluster:
        leader = await cluster.leader()
        follower = next(i for i in cluster.engines if i != leader)
        async with client(cluster.url(follower)) as engine:
            before = await engine.current_revision()
            revisions: list[int] = []

            async def write(i: int) -> None:
                revisions.append(await put(engine, b"c%02d" % i, b"%d" % i))

            async with trio.open_nursery() as nursery:
                for i in range(40):
                    nursery.start_soon(write, i)
            assert sorted(revisions) == list(range(before + 1, before + 41))
            assert await engine.current_revision() == before + 40


async def test_a_connection_queues_requests_beyond_its_bound() -> None:
    async with running(1, max_requests=2) as cluster, client(cluster.url(1)) as engine:
        results: list[object] = []

        async def one(i: int) -> None:
            if i % 2:
                results.append(await put(engine, b"q%02d" % i, b"v"))
            else:
                results.append(await engine.get_many([b"q%02d" % (i + 1)]))

        async with trio.open_nursery() as nursery:
            for i in range(30):
                nursery.start_soon(one, i)
        assert len(results) == 30
        assert len((await engine.range(b"q", b"r")).kvs) == 15


async def test_a_revision_larger_than_a_frame_part_reaches_a_watch_whole() -> None:
    async with running(1) as cluster, client(cluster.url(1)) as engine:
        value = b"x" * (380 * 1024)  # four of them: one revision, more than PART_BYTES
        assert 3 * len(value) > p.PART_BYTES
        res = await engine.commit([], [Put(b"big%d" % i, value) for i in range(4)])
        batches = []
        with trio.fail_after(10):
            async with aclosing(engine.watch(b"big", b"bih", res.revision)) as it:  # type: ignore[type-var]
                async for batch in it:
                    batches.append(batch)
                    break
        assert [(len(b.events), b.revision) for b in batches] == [(4, res.revision)]
        got = await engine.range(b"big", b"bih")  # also more than one part
        assert [kv.value for kv in got.kvs] == [value] * 4


async def test_prefixes_keep_volumes_apart() -> None:
    async with running(1) as cluster, client(cluster.url(1, prefix="a")) as a, \
            client(cluster.url(1, prefix="b")) as b:
        await put(a, b"k", b"from a")
        rb = await put(b, b"k", b"from b")
        await put(b, b"\xff", b"end of b")
        assert [(kv.key, kv.value) for kv in (await a.range(b"", b"\x00")).kvs] == [
            (b"k", b"from a")]
        await a.commit([], [], [Delete(b"", b"\x00")])
        got = await b.get(b"k")
        assert got is not None and got.value == b"from b" and got.mod_revision == rb
        events: list[WatchEvent] = []
        async with aclosing(b.watch(b"", b"\x00", rb)) as it:  # type: ignore[type-var]
            async for batch in it:
                events.extend(batch.events)
                if len(events) >= 2:
                    break
        assert [e.key for e in events] == [b"k", b"\xff"]


async def test_status_names_the_member_and_its_leader() -> None:
    async with running(3) as cluster:
        leader = await cluster.leader()
        follower = next(i for i in cluster.engines if i != leader)
        async with client(cluster.url(follower)) as engine:
            status = await engine.status()
            assert status["member"] == follower and status["role"] == "follower"
            assert status["leader"] == leader
            assert status["leader_endpoint"] == cluster.endpoints[leader]
            assert status["applied"] >= 1 and status["term"] >= 1


# -- bounded waiting ----------------------------------------------------------------------------


async def test_timeout_bounds_calls_when_every_member_is_down() -> None:
    async with running(1) as cluster:
        async with client(cluster.url(1, query="timeout=0.5")) as engine:
            await put(engine, b"k", b"v")
            start = await engine.current_revision()
            with trio.fail_after(30):  # a guard against a hang, not a timing assertion
                async with aclosing(engine.watch(b"", b"\x00", start)) as it:  # type: ignore[type-var]
                    async for _ in it:
                        break  # the existing key's event: the watch is up
                    await cluster.stop(NodeId(1))
                    with pytest.raises(EngineUnavailable, match="unavailable for 0.5 s"):
                        async for _ in it:
                            pass
                with pytest.raises(EngineUnavailable):
                    await engine.get(b"k")
                with pytest.raises(EngineUnavailable):
                    await engine.commit([], [Put(b"k", b"w")])
                with pytest.raises(EngineUnavailable):
                    await engine.lease_keepalive(1)


async def test_a_member_cut_off_from_its_peers_sends_the_client_elsewhere_at_once() -> None:
    """A member that has known no leader for two election timeouts answers ``unavailable``
    without waiting, so a client that starts there moves on instead of spending its whole
    attempt (a third of a 60 s timeout) on it."""
    async with running(3) as cluster:
        leader = await cluster.leader()
        cut = next(i for i in cluster.engines if i != leader)
        others = [i for i in cluster.engines if i != cut]
        cluster.network.down.add(cut)  # no peer traffic; its client port still answers
        node = cluster.network.nodes[cut]
        with trio.fail_after(30):
            while node.leaderless_for() <= 2 * node.retry_interval():
                await trio.sleep(0.01)
        with trio.fail_after(10):  # far below the 20 s an attempt could wait there
            async with client(cluster.url(cut, *others, query="timeout=60")) as engine:
                await put(engine, b"k", b"v")
                assert engine.current_endpoint != cluster.endpoints[cut]


async def test_timeout_bounds_calls_when_the_quorum_is_lost() -> None:
    async with running(3) as cluster:
        leader = await cluster.leader()
        survivor = next(i for i in cluster.engines if i != leader)
        async with client(cluster.url(survivor, query="timeout=1")) as engine:
            await put(engine, b"k", b"v")
            for node_id in [i for i in cluster.engines if i != survivor]:
                await cluster.stop(node_id)
            with trio.fail_after(30):
                with pytest.raises(EngineUnavailable, match="unavailable|no leader|in time"):
                    await engine.commit([], [Put(b"k", b"w")])
                with pytest.raises(EngineUnavailable):
                    await engine.get(b"k")


async def test_opening_an_unreachable_store_fails_in_time() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with trio.fail_after(30):
        with pytest.raises(EngineUnavailable, match=f"127.0.0.1:{port}"):
            await RaftClientEngine.open(f"raft://127.0.0.1:{port}/t?timeout=0.3")


# -- TLS ----------------------------------------------------------------------------------------


async def test_tls_with_client_certificates(tmp_path: Path) -> None:
    certs = make_certs(tmp_path)
    context = server_ssl_context(str(certs.server_cert), str(certs.server_key),
                                 client_ca=str(certs.ca))
    async with running(1, ssl_context=context) as cluster:
        good = f"cacert={certs.ca}&cert={certs.client_cert}&key={certs.client_key}"
        async with client(cluster.url(1, query=good)) as engine:
            await put(engine, b"k", b"v")
            got = await engine.get(b"k")
            assert got is not None and got.value == b"v"
        refused = [f"cacert={certs.ca}&timeout=0.5",  # no client certificate
                   f"cacert={certs.ca}&cert={certs.other_cert}&key={certs.other_key}"
                   "&timeout=0.5",  # one the member does not trust
                   f"cacert={certs.other_ca}&cert={certs.client_cert}"
                   f"&key={certs.client_key}&timeout=0.5"]  # a member we do not trust
        for query in refused:
            with trio.fail_after(30), pytest.raises(EngineUnavailable, match="TLS"):
                await RaftClientEngine.open(cluster.url(1, query=query))
        with trio.fail_after(30), pytest.raises(EngineUnavailable):
            await RaftClientEngine.open(cluster.url(1, query="timeout=0.5"))  # plain TCP


# -- strict framing -----------------------------------------------------------------------------


def _frame(message: object) -> bytes:
    body = msgpack.packb(message, use_bin_type=True)
    return len(body).to_bytes(4, "big") + body


_HELLO = _frame({"id": 0, "op": "hello", "args": {"version": 1}})


async def _exchange(port: int, *frames: bytes) -> list[dict[str, Any]]:
    """Send ``frames``, then read answers until the member closes the connection."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        for frame in frames:
            await stream.send_all(frame)
        reader = p.FrameReader(stream)
        answers = []
        with trio.fail_after(10):
            while (message := await reader.receive()) is not None:
                answers.append(message)
        return answers


@pytest.mark.parametrize("frames, reason", [
    ([b"\xff\xff\xff\xff"], "frame length"),
    ([b"\x00\x00\x00\x03abc"], "not valid msgpack"),
    ([_frame([1, 2, 3])], "not a map"),
    ([_frame({"id": 1, "op": "get", "args": {"key": b"k", "timeout": 1}})], "not hello"),
    ([_HELLO, _frame({"id": 1, "op": "get", "args": {"key": "text", "timeout": 1}})],
     "get.key: expected bytes"),
    ([_HELLO, _frame({"id": 1, "op": "get", "args": {"key": b"k"}})], "missing field"),
    ([_HELLO, _frame({"id": True, "op": "status", "args": {}})], "request.id"),
    ([_HELLO, _frame({"id": 1, "op": "status", "args": {}, "x": 1})], "unexpected field"),
    ([_frame({"id": 0, "op": "hello", "args": {"version": 99}})], "version 99"),
], ids=["length", "msgpack", "not-a-map", "before-hello", "wrong-type", "missing",
        "bool-id", "extra-key", "version"])
async def test_a_malformed_frame_closes_only_its_connection(
        frames: list[bytes], reason: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="kvfs.raftkv.server")
    async with running(1) as cluster:
        port = int(cluster.endpoints[1].rsplit(":", 1)[1])
        answers = await _exchange(port, *frames)
        assert all("error" in a or a.get("ok", {}).get("version") == 1 for a in answers)
        closing = [r.getMessage() for r in caplog.records if "closing" in r.getMessage()]
        assert len(closing) == 1 and reason in closing[0] and "\n" not in closing[0]
        async with client(cluster.url(1)) as engine:  # the server still serves
            await put(engine, b"k", b"v")


async def test_an_unknown_op_is_answered_and_the_connection_stays() -> None:
    async with running(1) as cluster:
        port = int(cluster.endpoints[1].rsplit(":", 1)[1])
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(_HELLO + _frame({"id": 5, "op": "frobnicate", "args": {}})
                                  + _frame({"id": 6, "op": "status", "args": {}}))
            reader = p.FrameReader(stream)
            with trio.fail_after(10):
                answers = [await reader.receive() for _ in range(3)]
        assert answers[1] == {"id": 5, "error": {"code": "bad_request",
                                                 "message": "unknown op 'frobnicate'"}}
        assert answers[2] is not None and answers[2]["ok"]["member"] == 1


# -- URLs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("url, message", [
    ("etcd://h:1/p", "not a raft URL"),
    ("raft:///p", "at least one member"),
    ("raft://h:1", "needs a volume prefix"),
    ("raft://h:1/", "needs a volume prefix"),
    ("raft://h:1/a/b", "invalid raft URL prefix"),
    ("raft://h/p", "needs a port"),
    ("raft://h:0/p", "invalid port"),
    ("raft://h:99999/p", "invalid port"),
    ("raft://h:1,,h:2/p", "invalid raft URL endpoint"),
    ("raft://h:1,h:1/p", "twice"),
    ("raft://h:1/p?password=x", "unknown raft URL parameter"),
    ("raft://h:1/p?timeout=0", "timeout must be"),
    ("raft://h:1/p?timeout=abc", "timeout must be"),
    ("raft://h:1/p?timeout=1&timeout=2", "given twice"),
    ("raft://h:1/p?cacert=", "is empty"),
    ("raft://h:1/p?cacert=/ca&cert=/c", "together"),
    ("raft://h:1/p?cert=/c&key=/k", "need cacert"),
    ("raft://h:1/p?junk", "unknown raft URL parameter"),
    ("raft://h:1/p?&&", "malformed"),
    ("raft://h:1/p\nx", "invalid raft URL prefix"),
])
async def test_bad_urls_give_one_line_errors(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        parse_raft_url(url)
    assert "\n" not in str(info.value)
    if url.startswith("raft://"):
        with pytest.raises(VolumeError, match=message):
            await open_engine(url)


async def test_unreadable_tls_files_give_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(VolumeError, match="cannot load the TLS files") as info:
        await open_engine(f"raft://127.0.0.1:1/p?cacert={tmp_path}/missing.pem")
    assert "\n" not in str(info.value)


def test_a_good_url() -> None:
    url = parse_raft_url("raft://a:1,[::1]:2,b.example:3/vol-1?timeout=2.5&cacert=/c")
    assert url.endpoints == ("a:1", "[::1]:2", "b.example:3")
    assert url.prefix == "vol-1" and url.key_prefix == b"vol-1/"
    assert url.timeout == 2.5 and url.tls
    assert parse_raft_url(url.describe()) == url
