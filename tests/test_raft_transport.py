"""The Raft store's peer transport: the message codec, framing and handshake over real
sockets on 127.0.0.1, and three members joined by it (plain TCP and mutual TLS)."""

from __future__ import annotations

import logging
import random
import ssl
import struct
import subprocess
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
import pytest
import trio
from kv_contract import KVContract
from test_raft_member import MemoryDisk

from kvfs.kv.api import Put
from kvfs.kv.watchhub import WatchHub
from kvfs.raft import (
    Config,
    ConfState,
    Entry,
    EntryKind,
    Message,
    MessageType,
    NodeId,
    Snapshot,
    SnapshotMeta,
    bootstrap_state,
)
from kvfs.raftkv.codec import (
    FORMAT,
    CodecError,
    Hello,
    Refusal,
    decode_handshake,
    decode_message,
    encode_hello,
    encode_message,
    encode_refusal,
)
from kvfs.raftkv.engine import MemberEngine
from kvfs.raftkv.node import RaftNode
from kvfs.raftkv.statemachine import ReplicatedKV
from kvfs.raftkv.transport import (
    MAX_HANDSHAKE_FRAME,
    Address,
    PeerTransport,
    TLSConfig,
    tls_contexts,
)

IDS = [NodeId(1), NodeId(2), NodeId(3)]
TOKEN = "kvfs-test-cluster"
LOCAL: Address = ("127.0.0.1", 0)
N = NodeId


# -- codec ------------------------------------------------------------------------------------


SNAPSHOT = Snapshot(SnapshotMeta(1234, 7, ConfState(frozenset({N(1), N(2), N(5)}),
                                                    frozenset({N(9)}))),
                    b"\x00state\xff" * 100)
ENTRIES = (Entry(7, 11, EntryKind.NORMAL, b"command"), Entry(7, 12, EntryKind.CONF_CHANGE,
                                                               b"\x01" * 9),
           Entry(8, 13))


def sample(kind: MessageType) -> Message:
    """A message of ``kind`` with every field set away from its default (the codec carries
    every field whatever the type; the extremes check the integer range)."""
    return Message(kind, to=N(2), sender=N(2**64 - 1), term=2**64 - 1, log_term=6,
                   index=10, entries=ENTRIES, commit=9, reject=True, reject_hint=3,
                   snapshot=SNAPSHOT, context=b"read\x00ctx")


@pytest.mark.parametrize("kind", list(MessageType))
def test_every_message_type_round_trips(kind: MessageType) -> None:
    full = sample(kind)
    assert decode_message(encode_message(full)) == full
    bare = Message(kind, to=N(3), sender=N(1))
    assert decode_message(encode_message(bare)) == bare


def test_an_empty_snapshot_and_empty_data_round_trip() -> None:
    message = Message(MessageType.SNAPSHOT, N(1), N(2),
                      snapshot=Snapshot(SnapshotMeta(0, 0, ConfState())))
    assert decode_message(encode_message(message)) == message


def _mutate(items: list[object], position: int, value: object) -> bytes:
    items = list(items)
    items[position] = value
    return msgpack.packb(items, use_bin_type=True)


def test_malformed_messages_raise_codec_error() -> None:
    good = msgpack.unpackb(encode_message(sample(MessageType.APPEND)), raw=False)
    bad = [
        b"", b"\xc1", b"\x93\x01", encode_message(sample(MessageType.VOTE)) + b"\x00",
        msgpack.packb({"format": FORMAT}), msgpack.packb(good[:-1], use_bin_type=True),
        msgpack.packb([*good, 0], use_bin_type=True),
        _mutate(good, 0, FORMAT + 1),      # another format
        _mutate(good, 0, True),            # true is not 1
        _mutate(good, 1, 99),              # unknown type
        _mutate(good, 1, "app"),
        _mutate(good, 2, 0),               # node id 0
        _mutate(good, 3, -1),
        _mutate(good, 4, -(2**63)),
        _mutate(good, 4, 1.5),
        _mutate(good, 5, False),
        _mutate(good, 7, [[1, 2, 7, b""]]),    # unknown entry kind
        _mutate(good, 7, [[1, 2, 0]]),
        _mutate(good, 7, [[1, 2, 0, "text"]]),
        _mutate(good, 7, {}),
        _mutate(good, 9, 1),               # reject must be a bool
        _mutate(good, 11, [1, 1, [1], [1], b""]),   # voter and learner
        _mutate(good, 11, [1, 1, [1, 1], [], b""]),  # a voter twice
        _mutate(good, 11, [1, 1, [0], [], b""]),
        _mutate(good, 11, [1, 1, [], []]),
        _mutate(good, 12, "context"),
        msgpack.packb([[[[[[[[[]]]]]]]]] * 3),
    ]
    for frame in bad:
        with pytest.raises(CodecError):
            decode_message(frame)


def test_no_truncation_or_corruption_escapes_as_another_error() -> None:
    rng = random.Random(7)
    for kind in MessageType:
        frame = encode_message(sample(kind))
        for cut in range(len(frame)):
            with pytest.raises(CodecError):
                decode_message(frame[:cut])
        for _ in range(300):
            corrupt = bytearray(frame)
            for _ in range(rng.randint(1, 4)):
                corrupt[rng.randrange(len(corrupt))] = rng.randrange(256)
            try:
                decode_message(bytes(corrupt))
            except CodecError:
                pass


def test_handshake_records_round_trip_and_are_strict() -> None:
    hello = Hello("token", N(3))
    assert decode_handshake(encode_hello(hello)) == hello
    assert decode_handshake(encode_refusal(Refusal("why"))) == Refusal("why")
    # Another format decodes (to be refused in words), not as garbage.
    assert decode_handshake(encode_hello(Hello("t", N(1), format=7))).format == 7
    for record in ({"format": 1, "cluster_token": "t"},
                   {"format": 1, "cluster_token": "t", "sender_id": 0},
                   {"format": 1, "cluster_token": b"t", "sender_id": 1},
                   {"format": 1, "cluster_token": "t", "sender_id": 1, "extra": 1},
                   {"format": "1", "refused": "x"}, {"format": 1, "refused": 5},
                   [1, "t", 1]):
        with pytest.raises(CodecError):
            decode_handshake(msgpack.packb(record, use_bin_type=True))


# -- transports with a recording receiver -----------------------------------------------------


@dataclass
class Recorder:
    """A receiver that records what the transport hands to the node."""

    messages: list[Message] = field(default_factory=list)
    unreachable: list[NodeId] = field(default_factory=list)
    snapshots: list[tuple[NodeId, bool]] = field(default_factory=list)

    def deliver(self, message: Message) -> None:
        self.messages.append(message)

    def report_unreachable(self, peer: NodeId) -> None:
        self.unreachable.append(peer)

    def report_snapshot(self, peer: NodeId, ok: bool) -> None:
        self.snapshots.append((peer, ok))


async def eventually(predicate: Callable[[], bool], timeout: float = 20) -> None:
    """Wait until ``predicate`` holds; the bound only turns a hang into a failure."""
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


def to(peer: NodeId, kind: MessageType, sender: NodeId = IDS[0], **fields: object
       ) -> Message:
    return Message(kind, to=peer, sender=sender, **fields)  # type: ignore[arg-type]


async def test_every_message_type_crosses_and_a_snapshot_is_reported() -> None:
    a, b = Recorder(), Recorder()
    ta = PeerTransport(N(1), TOKEN, LOCAL, receiver=a)
    tb = PeerTransport(N(2), TOKEN, LOCAL, receiver=b)
    async with trio.open_nursery() as nursery:
        ta.set_peer(N(2), await nursery.start(tb.run))
        tb.set_peer(N(1), await nursery.start(ta.run))
        sent = [sample(kind) for kind in MessageType]
        ta.send(sent)
        await eventually(lambda: len(b.messages) == len(sent))
        assert b.messages == sent  # in order, intact
        assert a.snapshots == [(N(2), True)]
        back = [to(N(1), MessageType.APPEND_RESPONSE, N(2), index=i) for i in range(50)]
        tb.send(back)
        await eventually(lambda: len(a.messages) == len(back))
        assert a.messages == back
        assert ta.peer_stats(N(2)).dropped == 0
        # A large snapshot crosses in one frame, between small messages, and is reported.
        big = Snapshot(SnapshotMeta(99, 3, ConfState(frozenset(IDS))),
                       random.Random(1).randbytes(24 << 20))
        around = [to(N(2), MessageType.HEARTBEAT, commit=1),
                  to(N(2), MessageType.SNAPSHOT, snapshot=big),
                  to(N(2), MessageType.HEARTBEAT, commit=2)]
        del b.messages[:]
        ta.send(around)
        await eventually(lambda: len(b.messages) == 3)
        assert b.messages == around
        assert a.snapshots == [(N(2), True), (N(2), True)]
        await ta.aclose()
        await tb.aclose()


async def test_a_full_queue_drops_its_oldest_messages_and_counts_them() -> None:
    a, b = Recorder(), Recorder()
    tb = PeerTransport(N(2), TOKEN, LOCAL, receiver=b)
    async with trio.open_nursery() as nursery:
        address = await nursery.start(tb.run)
        ta = PeerTransport(N(1), TOKEN, LOCAL, {N(2): address}, receiver=a, queue_limit=3)
        tb.set_peer(N(1), ("127.0.0.1", 1))
        # Not running yet: the messages wait in the queue, which keeps the newest three.
        ta.send([to(N(2), MessageType.SNAPSHOT, snapshot=SNAPSHOT)]
                + [to(N(2), MessageType.HEARTBEAT, commit=i) for i in range(1, 6)])
        assert ta.peer_stats(N(2)).dropped == 3
        assert a.snapshots == [(N(2), False)]  # the dropped snapshot is reported failed
        assert a.unreachable == [N(2)]          # once per overflow, not per message
        await nursery.start(ta.run)
        await eventually(lambda: len(b.messages) == 3)
        assert [m.commit for m in b.messages] == [3, 4, 5]
        ta.send([to(N(3), MessageType.HEARTBEAT)])  # nobody: dropped, counted
        assert ta.stats.unroutable == 1
        nursery.cancel_scope.cancel()


async def test_a_message_over_the_frame_limit_is_dropped_and_a_snapshot_reported_failed(
        ) -> None:
    a, b = Recorder(), Recorder()
    tb = PeerTransport(N(2), TOKEN, LOCAL, {N(1): ("127.0.0.1", 1)}, receiver=b)
    async with trio.open_nursery() as nursery:
        address = await nursery.start(tb.run)
        ta = PeerTransport(N(1), TOKEN, LOCAL, {N(2): address}, receiver=a, max_frame=1024)
        await nursery.start(ta.run)
        huge = Snapshot(SnapshotMeta(5, 1, ConfState(frozenset(IDS))), b"x" * 2048)
        ta.send([to(N(2), MessageType.SNAPSHOT, snapshot=huge),
                 to(N(2), MessageType.HEARTBEAT, commit=7)])
        await eventually(lambda: len(b.messages) == 1)
        assert b.messages[0].commit == 7
        assert a.snapshots == [(N(2), False)]
        assert ta.peer_stats(N(2)).dropped == 1
        nursery.cancel_scope.cancel()


async def test_a_peer_moved_to_another_address_is_redialed_and_a_removed_one_refused(
        ) -> None:
    a, b, b2 = Recorder(), Recorder(), Recorder()
    ta = PeerTransport(N(1), TOKEN, LOCAL, receiver=a)
    tb = PeerTransport(N(2), TOKEN, LOCAL, receiver=b)
    async with trio.open_nursery() as nursery:
        ta.set_peer(N(2), await nursery.start(tb.run))
        tb.set_peer(N(1), await nursery.start(ta.run))
        ta.send([to(N(2), MessageType.HEARTBEAT, commit=1)])
        await eventually(lambda: len(b.messages) == 1)
        # Member 2 comes back on another port (a new host, say): only the map changes.
        assert ta.listen_address is not None
        tb2 = PeerTransport(N(2), TOKEN, LOCAL, {N(1): ta.listen_address}, receiver=b2)
        ta.set_peer(N(2), await nursery.start(tb2.run))
        await tb.aclose()

        def resend() -> bool:
            ta.send([to(N(2), MessageType.HEARTBEAT, commit=2)])  # the first may be dropped
            return bool(b2.messages)

        await eventually(resend)
        assert b2.messages[0].commit == 2 and len(b.messages) == 1
        # Member 1 forgets member 2 (a membership change removed it): 2 is refused.
        ta.remove_peer(N(2))
        refused = ta.stats.refused
        tb2.send([to(N(1), MessageType.HEARTBEAT_RESPONSE, N(2))])
        await eventually(lambda: ta.stats.refused > refused)
        assert a.messages == []
        assert N(2) not in ta.peers
        nursery.cancel_scope.cancel()


async def _raw_hello(address: Address, hello: Hello) -> tuple[trio.SocketStream, object]:
    """Dial ``address`` as a peer would, send ``hello``; the stream and the answer."""
    stream = await trio.open_tcp_stream(*address)
    payload = encode_hello(hello)
    await stream.send_all(struct.pack(">I", len(payload)) + payload)
    return stream, await _read_frame(stream)


async def _read_frame(stream: trio.abc.Stream) -> object:
    """One handshake frame, decoded; None if the stream ends first."""
    data = b""
    while True:
        if len(data) >= 4:
            size = struct.unpack(">I", data[:4])[0]
            assert size <= MAX_HANDSHAKE_FRAME
            if len(data) >= 4 + size:
                return decode_handshake(data[4:4 + size])
        chunk = await stream.receive_some()
        if not chunk:
            return None
        data += chunk


async def _closed(stream: trio.abc.Stream) -> bool:
    """Whether the other side closed ``stream`` (reading it ends, or breaks); closes ours."""
    try:
        while await stream.receive_some():
            pass
    except trio.BrokenResourceError:
        pass
    finally:
        await stream.aclose()
    return True


async def test_handshakes_refuse_strangers_and_malformed_frames_cost_the_connection(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="kvfs.raftkv.transport")
    b = Recorder()
    tb = PeerTransport(N(2), TOKEN, LOCAL, {N(1): ("127.0.0.1", 1)}, receiver=b)
    async with trio.open_nursery() as nursery:
        address = await nursery.start(tb.run)
        with trio.fail_after(20):
            for hello, reason in ((Hello("another-cluster", N(1)), "cluster token"),
                                  (Hello(TOKEN, N(9)), "not a known peer"),
                                  (Hello(TOKEN, N(2)), "our own member id"),
                                  (Hello(TOKEN, N(1), format=FORMAT + 1), "wire format")):
                stream, answer = await _raw_hello(address, hello)
                assert isinstance(answer, Refusal) and reason in answer.reason
                assert await _closed(stream)
            assert tb.stats.refused == 4
            assert "cluster token 'another-cluster' is not ours" in caplog.text

            # An accepted peer that sends garbage, or announces a frame over the limit,
            # loses its connection; the transport carries on.
            for junk in (struct.pack(">I", 3) + b"\xc1\xc1\xc1",
                         struct.pack(">I", tb.max_frame + 1)):
                stream, answer = await _raw_hello(address, Hello(TOKEN, N(1)))
                assert answer == Hello(TOKEN, N(2))
                await stream.send_all(junk)
                assert await _closed(stream)
            assert tb.stats.malformed == 2
            stream, answer = await _raw_hello(address, Hello(TOKEN, N(1)))
            payload = encode_message(to(N(2), MessageType.HEARTBEAT, commit=5))
            await stream.send_all(struct.pack(">I", len(payload)) + payload)
            await eventually(lambda: len(b.messages) == 1)
            assert b.messages[0].commit == 5
            await stream.aclose()
        nursery.cancel_scope.cancel()


# -- three members over TCP -------------------------------------------------------------------


async def _load(value: object) -> bytes:
    assert isinstance(value, bytes)
    return value


class Cluster:
    def __init__(self) -> None:
        self.transports: dict[NodeId, PeerTransport] = {}
        self.engines: dict[NodeId, MemberEngine] = {}

    async def leader(self, among: list[NodeId] | None = None) -> NodeId:
        engines = {i: e for i, e in self.engines.items() if among is None or i in among}
        with trio.fail_after(20):
            while True:
                leaders = [i for i, e in engines.items() if e.is_leader]
                if len(leaders) == 1:
                    return leaders[0]
                await trio.sleep(0.01)

    async def aclose(self) -> None:
        for engine in self.engines.values():
            await engine.aclose()
        for transport in self.transports.values():
            await transport.aclose()


async def start_cluster(nursery: trio.Nursery, *, tokens: dict[NodeId, str] | None = None,
                        tls: dict[NodeId, TLSConfig] | None = None) -> Cluster:
    """Three members on ephemeral ports: listeners first, then every peer address."""
    cluster = Cluster()
    entries, hard_state = bootstrap_state(IDS)
    nodes = {}
    for node_id in IDS:
        disk = MemoryDisk()
        disk.save(hard_state, entries, None, True)
        transport = PeerTransport(node_id, (tokens or {}).get(node_id, TOKEN), LOCAL,
                                  tls=(tls or {}).get(node_id), rng=random.Random(node_id))
        node = RaftNode(Config(node_id), disk, ReplicatedKV(), WatchHub(_load),
                        rng=random.Random(node_id), transport=transport,
                        tick_seconds=0.01, snapshot_every=50)
        transport.attach(node)
        await nursery.start(transport.run)
        cluster.transports[node_id] = transport
        nodes[node_id] = node
    for node_id, transport in cluster.transports.items():
        for peer_id, peer in cluster.transports.items():
            if peer_id != node_id:
                assert peer.listen_address is not None
                transport.set_peer(peer_id, peer.listen_address)
    for node_id, node in nodes.items():
        cluster.engines[node_id] = await MemberEngine.start(node, timeout=20.0, shared=True)
    return cluster


class TestThreeMembersOverTCPAtTheLeader(KVContract):
    @pytest.fixture
    async def kv(self) -> AsyncIterator[MemberEngine]:
        async with trio.open_nursery() as nursery:
            cluster = await start_cluster(nursery)
            leader = await cluster.leader()
            yield cluster.engines[leader]
            await cluster.aclose()
            nursery.cancel_scope.cancel()


async def test_a_member_whose_network_restarts_catches_up_by_snapshot() -> None:
    async with trio.open_nursery() as nursery:
        cluster = await start_cluster(nursery)
        leader = await cluster.leader()
        lagging = next(i for i in IDS if i != leader)
        engines, transports = cluster.engines, cluster.transports
        assert (await engines[lagging].commit([], [Put(b"before", b"1")])).succeeded
        old = transports[lagging]
        await old.aclose()
        # Past two of the leader's snapshots (snapshot_every=50): its log no longer holds
        # what the lagging member misses, so it must send a snapshot over the wire.
        for i in range(120):
            assert (await engines[leader].commit([], [Put(b"k%03d" % i, b"v%d" % i)])
                    ).succeeded
        assert engines[lagging].node.kv.state.data.get(b"k119") is None
        await eventually(lambda: transports[leader].peer_stats(lagging).failures > 0)

        # The same member, the same listen address, a new transport.
        assert old.listen_address is not None
        node = engines[lagging].node
        inbox = Recorder()
        new = PeerTransport(lagging, TOKEN, old.listen_address, old.peers,
                            receiver=_Tee(inbox, node))
        node.transport = new
        transports[lagging] = new
        await nursery.start(new.run)
        got = await engines[lagging].get(b"k119")  # a linearizable read at the member
        assert got is not None and got.value == b"v119"
        assert any(m.type is MessageType.SNAPSHOT for m in inbox.messages)
        await eventually(lambda: engines[leader].node.kv.applied_index
                         == engines[lagging].node.kv.applied_index)
        states = {i: sorted(e.node.kv.state.data.items()) for i, e in engines.items()}
        assert states[leader] == states[lagging]
        await cluster.aclose()
        nursery.cancel_scope.cancel()


@dataclass
class _Tee:
    """Records what reaches a node, and passes it on."""

    record: Recorder
    node: RaftNode

    def deliver(self, message: Message) -> None:
        self.record.deliver(message)
        self.node.deliver(message)

    def report_unreachable(self, peer: NodeId) -> None:
        self.node.report_unreachable(peer)

    def report_snapshot(self, peer: NodeId, ok: bool) -> None:
        self.node.report_snapshot(peer, ok)


async def test_a_member_of_another_cluster_is_refused_and_the_rest_carry_on(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="kvfs.raftkv.transport")
    stranger = IDS[2]
    async with trio.open_nursery() as nursery:
        cluster = await start_cluster(nursery, tokens={stranger: "another-cluster"})
        engines, transports = cluster.engines, cluster.transports
        leader = await cluster.leader(among=IDS[:2])
        follower = next(i for i in IDS[:2] if i != leader)
        assert (await engines[follower].commit([], [Put(b"key", b"value")])).succeeded
        got = await engines[leader].get(b"key")
        assert got is not None and got.value == b"value"
        # Both directions were refused: the stranger dialed the others, and they it.
        await eventually(lambda: all(transports[i].stats.refused > 0 for i in IDS))
        assert transports[stranger].stats.received == 0
        assert all(transports[i].peer_stats(stranger).connects == 0 for i in IDS[:2])
        assert engines[stranger].node.kv.state.data.get(b"key") is None
        assert "cluster token 'another-cluster' is not ours" in caplog.text
        await cluster.aclose()
        nursery.cancel_scope.cancel()


# -- mutual TLS -------------------------------------------------------------------------------


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throwaway CA and one certificate per member (for 127.0.0.1), made with the
    openssl command (the venv has no ``cryptography``)."""
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-keyout", d / "ca.key", "-out", d / "ca.crt", "-days", "2",
             "-subj", "/CN=kvfs test CA", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    (d / "member.ext").write_text(
        "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n")
    for node_id in IDS:
        name = f"member{node_id}"
        _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-keyout", d / f"{name}.key", "-out", d / f"{name}.csr",
                 "-subj", f"/CN={name}")
        _openssl("x509", "-req", "-in", d / f"{name}.csr", "-CA", d / "ca.crt",
                 "-CAkey", d / "ca.key", "-CAcreateserial", "-days", "2",
                 "-extfile", d / "member.ext", "-out", d / f"{name}.crt")
    return d


def member_tls(pki: Path) -> dict[NodeId, TLSConfig]:
    return {i: tls_contexts(str(pki / "ca.crt"), str(pki / f"member{i}.crt"),
                            str(pki / f"member{i}.key")) for i in IDS}


async def test_members_over_mutual_tls_and_a_peer_without_a_certificate_is_refused(
        pki: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="kvfs.raftkv.transport")
    async with trio.open_nursery() as nursery:
        cluster = await start_cluster(nursery, tls=member_tls(pki))
        engines, transports = cluster.engines, cluster.transports
        leader = await cluster.leader()
        follower = next(i for i in IDS if i != leader)
        for i in range(60):  # past a snapshot: the snapshot path over TLS too
            assert (await engines[follower].commit([], [Put(b"k%d" % i, b"v")])).succeeded
        for engine in engines.values():
            assert await engine.get(b"k59") is not None

        # A client that trusts the CA but shows no certificate of its own.
        target = transports[follower]
        assert target.listen_address is not None
        refused = target.stats.refused
        bare = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        with trio.fail_after(20):
            tcp = await trio.open_tcp_stream(*target.listen_address)
            stream = trio.SSLStream(tcp, bare, server_hostname="127.0.0.1")
            answer: object = None
            try:
                # With TLS 1.3 the client's handshake completes before the server has
                # checked it; the refusal shows on the first read.
                await stream.do_handshake()
                payload = encode_hello(Hello(TOKEN, leader))
                await stream.send_all(struct.pack(">I", len(payload)) + payload)
                answer = await _read_frame(stream)
            except trio.BrokenResourceError:
                pass
            assert answer is None  # never a hello: the server spoke no word of Raft
            await trio.aclose_forcefully(stream)
        await eventually(lambda: target.stats.refused > refused)
        assert "certificate" in caplog.text
        # The cluster does not mind.
        assert (await engines[leader].commit([], [Put(b"after", b"1")])).succeeded
        await cluster.aclose()
        nursery.cancel_scope.cancel()
