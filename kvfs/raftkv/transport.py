"""The peer transport of a Raft store member: Raft messages over TCP (optionally mutual TLS).

Responsibility: carry the messages of :meth:`RaftNode`'s Readys to the other members and
hand the messages that arrive to :meth:`RaftNode.deliver`; tell the node when a peer is
unreachable (``report_unreachable``) and whether a snapshot message went out
(``report_snapshot``).  Encoding is :mod:`kvfs.raftkv.codec`'s.

Connections.  Each member dials one long-lived connection to every peer and sends on it
only; the peer's messages to us arrive on the connection *it* dialed.  So a pair of members
shares two TCP connections, one per direction, and neither side ever waits for the other
to read before it writes.  The dialing side still reads its connection, to notice at once
when the peer closes it (a restarted peer), instead of at the second write after that.

Wire format.  Every frame is ``[u32 big-endian payload length][payload]``.  A payload is
at most ``max_frame`` bytes (:data:`MAX_FRAME`, 512 MiB: a snapshot message carries the
whole replicated state in one frame, so the bound is large but finite, and a frame over
it ends the connection); handshake frames at most :data:`MAX_HANDSHAKE_FRAME`.  On
connect (after the TLS handshake, with TLS), the dialing side sends a hello frame
``{format, cluster_token, sender_id}``; the accepting side answers with its own hello, or
with a refusal frame ``{format, refused: reason}`` and closes.  Every later frame on the
connection is one encoded :class:`~kvfs.raft.Message`, dialer to acceptor.

A side refuses -- logs a one-line reason and closes -- a peer that speaks another wire
format, has another cluster token (``--initial-cluster-token``: two clusters must never
exchange votes), or whose id is unexpected: the acceptor knows only the ids in its peer
map (and not its own), the dialer expects the id it dialed.  The id in a hello is only
claimed; with TLS, the certificate proves the peer belongs to the cluster's CA.

Loss, not blocking.  Raft tolerates lost messages (they are retried: heartbeats, probes,
client retries), so :meth:`PeerTransport.send` never blocks the node's loop: it appends to
the peer's bounded queue, and a full queue drops its *oldest* message (the newest are the
most useful: a later append or heartbeat supersedes an earlier one) and counts it.  While a
peer is unreachable -- from a failed dial or a broken connection until the next dial --
its queue is emptied and its messages are dropped on arrival: they would only be stale by
the time it is back, and the leader, told ``report_unreachable``, falls back to probing.
Reconnection uses exponential backoff with jitter, so a restarted cluster's members do not
dial in lockstep.

Snapshot reports.  A snapshot message is reported ``ok`` once its frame is written to the
socket (accepted by the kernel; the follower's answer confirms it reached the core) and
``not ok`` when it is dropped or its connection breaks before that.

Invariants: the transport never raises into the node loop (``send`` only queues); a
malformed frame, a refused handshake or a network error costs only its connection; every
queued message is eventually written, dropped and counted, or discarded with its peer.
"""

from __future__ import annotations

import logging
import random
import socket
import ssl
import struct
from collections import deque
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass
from typing import Protocol

import trio

from kvfs.raft import Message, MessageType, NodeId
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
from kvfs.raftkv.node import MemberStopped

log = logging.getLogger(__name__)

MAX_FRAME = 512 * 1024 * 1024
MAX_HANDSHAKE_FRAME = 64 * 1024  # read no more than this from a peer not yet known
_HEADER = struct.Struct(">I")
_COALESCE = 256 * 1024  # small frames are joined into writes of about this size
_RECEIVE = 1 << 20

Address = tuple[str, int]

# What ends one connection without ending the transport.
_CONNECTION_ERRORS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError,
                      trio.TooSlowError)


class Receiver(Protocol):
    """What the transport drives: :class:`~kvfs.raftkv.node.RaftNode` is one."""

    def deliver(self, message: Message) -> None: ...

    def report_unreachable(self, peer: NodeId) -> None: ...

    def report_snapshot(self, peer: NodeId, ok: bool) -> None: ...


class FrameError(Exception):
    """A stream that does not follow the framing (a frame over the limit, a torn frame)."""


class PeerRefused(Exception):
    """A handshake that ended in a refusal, by either side."""


# -- TLS --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TLSConfig:
    """The two sides of mutual TLS: ``server`` accepts peers, ``client`` dials them."""

    server: ssl.SSLContext
    client: ssl.SSLContext


def tls_contexts(cacert: str, cert: str, key: str, *, check_hostname: bool = True
                 ) -> TLSConfig:
    """Contexts for mutual TLS between members that share the CA in ``cacert``.

    Each member presents ``cert`` (with its private ``key``) on both sides: as a server to
    the peers that dial it, and as a client to the peers it dials.  The server requires a
    client certificate signed by the CA; the client verifies the server's certificate
    against the CA and, with ``check_hostname``, that it names the host dialed (a DNS name
    or IP address in its subjectAltName).  TLS 1.2 at least.
    """
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=cacert)
    server.load_cert_chain(cert, key)
    server.verify_mode = ssl.CERT_REQUIRED
    server.minimum_version = ssl.TLSVersion.TLSv1_2
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cacert)
    client.load_cert_chain(cert, key)
    client.check_hostname = check_hostname
    client.verify_mode = ssl.CERT_REQUIRED
    client.minimum_version = ssl.TLSVersion.TLSv1_2
    return TLSConfig(server, client)


# -- statistics -------------------------------------------------------------------------------


@dataclass(slots=True)
class PeerStats:
    sent: int = 0         # messages written to a connection
    dropped: int = 0      # messages dropped: queue full, peer unreachable, frame too large
    connects: int = 0     # handshakes completed
    failures: int = 0     # dials that failed or were refused, connections that broke


@dataclass(slots=True)
class TransportStats:
    received: int = 0     # messages delivered to the node
    refused: int = 0      # inbound connections refused (handshake, TLS)
    malformed: int = 0    # inbound connections closed for a malformed frame
    unroutable: int = 0   # messages to a member with no address, or not addressed to us


# -- framing ----------------------------------------------------------------------------------


def _frame(payload: bytes) -> bytes:
    return _HEADER.pack(len(payload)) + payload


class _FrameReader:
    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    async def read(self, limit: int) -> bytes | None:
        """The next frame's payload; None at a clean end of stream (between frames)."""
        buffer = self.buffer
        while len(buffer) < _HEADER.size:
            if not await self._fill(_RECEIVE):
                if buffer:
                    raise FrameError("connection closed inside a frame header")
                return None
        (size,) = _HEADER.unpack_from(buffer)
        if size > limit:
            raise FrameError(f"frame of {size} bytes exceeds the limit of {limit}")
        end = _HEADER.size + size
        while len(buffer) < end:
            if not await self._fill(_RECEIVE):
                raise FrameError("connection closed inside a frame")
        payload = memoryview(buffer)[_HEADER.size:end].tobytes()
        del buffer[:end]
        return payload

    async def _fill(self, max_bytes: int) -> bool:
        chunk = await self.stream.receive_some(max_bytes)
        self.buffer += chunk
        return bool(chunk)


def _tune(stream: trio.SocketStream) -> None:
    """Notice a vanished peer (no FIN, no RST) within about half a minute, not the kernel's
    default of many minutes: keep-alives on an idle connection, and a bound on how long
    written data may stay unacknowledged."""
    with suppress(OSError):
        stream.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3),
                        ("TCP_USER_TIMEOUT", 30_000)):
        option = getattr(socket, name, None)
        if option is not None:
            with suppress(OSError):
                stream.setsockopt(socket.IPPROTO_TCP, option, value)


def _why(exc: BaseException) -> str:
    """One line naming what ended a connection (trio wraps the OS/TLS error as the cause)."""
    if isinstance(exc, trio.BrokenResourceError) and exc.__cause__ is not None:
        exc = exc.__cause__
    text, name = str(exc), type(exc).__name__
    if not isinstance(exc, (FrameError, PeerRefused, CodecError)):
        text = f"{name}: {text}" if text else name
    return " ".join(text.split())[:300]


class _Throttle:
    """Logs a recurring line (a refused peer retrying every few seconds) at WARNING at most
    once a minute per key, and at DEBUG in between."""

    interval = 60.0

    def __init__(self) -> None:
        self._last: dict[str, float] = {}

    def log(self, key: str, text: str) -> None:
        now = trio.current_time()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            log.debug("%s", text)
            return
        if len(self._last) > 1000:
            self._last.clear()
        self._last[key] = now
        log.warning("%s", text)


# -- the transport ----------------------------------------------------------------------------


class _Peer:
    def __init__(self, node_id: NodeId, address: Address) -> None:
        self.id = node_id
        self.address = address
        self.queue: deque[Message] = deque()
        self.nonempty = trio.Event()
        # False from a failure until the next dial: messages are dropped, not queued.
        self.accepting = True
        self.overflowing = False
        self.connected = False
        self.last_failure = ""
        self.stats = PeerStats()
        self.task = trio.CancelScope()             # the sender task; cancelled on removal
        self.connection: trio.CancelScope | None = None  # cancelled on an address change


class PeerTransport:
    """Raft messages between members over TCP; see the module docstring.

    Run it with ``await nursery.start(transport.run)`` (which returns the bound listen
    address: pass port 0 to get an ephemeral one) and stop it with :meth:`aclose` or by
    cancelling.  A transport runs once; a member "restarts its network" with a new one.
    The receiver (the node) may be attached after construction, since the node itself is
    built with the transport: ``transport.attach(node)`` before ``run``.
    """

    def __init__(self, node_id: NodeId, cluster_token: str, listen: Address,
                 peers: Mapping[NodeId, Address] | None = None, *,
                 receiver: Receiver | None = None, tls: TLSConfig | None = None,
                 queue_limit: int = 4096, max_frame: int = MAX_FRAME,
                 connect_timeout: float = 5.0, handshake_timeout: float = 10.0,
                 backoff: tuple[float, float] = (0.05, 2.0),
                 rng: random.Random | None = None) -> None:
        if queue_limit <= 0 or max_frame <= 0:
            raise ValueError("queue_limit and max_frame must be positive")
        self.id = node_id
        self.cluster_token = cluster_token
        self.listen = listen
        self.listen_address: Address | None = None
        self.receiver = receiver
        self.tls = tls
        self.queue_limit = queue_limit
        self.max_frame = max_frame
        self.connect_timeout = connect_timeout
        self.handshake_timeout = handshake_timeout
        self.backoff = backoff
        self.stats = TransportStats()
        self._rng = rng if rng is not None else random.Random()
        self._peers: dict[NodeId, _Peer] = {}
        self._inbound: dict[NodeId, trio.CancelScope] = {}
        self._nursery: trio.Nursery | None = None
        self._cancel = trio.CancelScope()
        self._started = False
        self._closed = False
        self._stopped = trio.Event()
        self._throttle = _Throttle()
        for peer_id, address in (peers or {}).items():
            self.set_peer(peer_id, address)

    def attach(self, receiver: Receiver) -> None:
        self.receiver = receiver

    # -- peers -------------------------------------------------------------------------------

    @property
    def peers(self) -> dict[NodeId, Address]:
        return {peer.id: peer.address for peer in self._peers.values()}

    def peer_stats(self, peer: NodeId) -> PeerStats:
        return self._peers[peer].stats

    def set_peer(self, peer_id: NodeId, address: Address) -> None:
        """Add a peer, or move it to a new address (its connection is redialed)."""
        if peer_id == self.id or peer_id <= 0:
            raise ValueError(f"not a peer id: {peer_id}")
        address = (address[0], int(address[1]))
        peer = self._peers.get(peer_id)
        if peer is None:
            peer = self._peers[peer_id] = _Peer(peer_id, address)
            if self._nursery is not None:
                self._nursery.start_soon(self._sender, peer)
        elif peer.address != address:
            log.info("raft transport %s: peer %s moves from %s to %s", self.id, peer_id,
                     _show(peer.address), _show(address))
            peer.address = address
            if peer.connection is not None:
                peer.connection.cancel()

    def remove_peer(self, peer_id: NodeId) -> None:
        """Forget a peer: stop dialing it, drop what is queued for it, refuse it from now."""
        peer = self._peers.pop(peer_id, None)
        if peer is not None:
            peer.task.cancel()
            self._discard(peer)
        inbound = self._inbound.pop(peer_id, None)
        if inbound is not None:
            inbound.cancel()

    # -- sending (from the node loop) --------------------------------------------------------

    def send(self, messages: list[Message]) -> None:
        """Queue ``messages`` for their peers; never blocks, never raises."""
        for message in messages:
            peer = self._peers.get(message.to)
            if peer is None:
                self.stats.unroutable += 1
                self._dropped(message)
                continue
            if not peer.accepting or self._closed:
                peer.stats.dropped += 1
                self._dropped(message)
                continue
            if len(peer.queue) >= self.queue_limit:
                peer.stats.dropped += 1
                self._dropped(peer.queue.popleft())
                if not peer.overflowing:
                    # A full queue means the connection is slower than the leader: let it
                    # fall back to probing, which sends one append at a time.
                    peer.overflowing = True
                    log.warning("raft transport %s: queue to peer %s is full; dropping its "
                                "oldest messages", self.id, peer.id)
                    self._report_unreachable(peer.id)
            peer.queue.append(message)
            peer.nonempty.set()

    def _dropped(self, message: Message) -> None:
        if message.type is MessageType.SNAPSHOT:
            self._report_snapshot(message.to, False)

    def _discard(self, peer: _Peer) -> None:
        peer.stats.dropped += len(peer.queue)
        while peer.queue:
            self._dropped(peer.queue.popleft())

    def _report_unreachable(self, peer: NodeId) -> None:
        if self.receiver is not None:
            with suppress(MemberStopped):
                self.receiver.report_unreachable(peer)

    def _report_snapshot(self, peer: NodeId, ok: bool) -> None:
        if self.receiver is not None:
            with suppress(MemberStopped):
                self.receiver.report_snapshot(peer, ok)

    # -- running -----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[Address] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Listen, dial every peer, and serve until cancelled or closed."""
        if self._started:
            raise RuntimeError("a PeerTransport runs once; make a new one to restart")
        if self.receiver is None:
            raise RuntimeError("attach a receiver (the node) before running the transport")
        self._started = True
        try:
            with self._cancel:
                host, port = self.listen
                listeners = await trio.open_tcp_listeners(port, host=host or None)
                sockname = listeners[0].socket.getsockname()
                self.listen_address = (sockname[0], sockname[1])
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    for peer in self._peers.values():
                        nursery.start_soon(self._sender, peer)
                    await nursery.start(trio.serve_listeners, self._serve, listeners)
                    log.info("raft transport %s: listening on %s:%s", self.id,
                             *self.listen_address)
                    task_status.started(self.listen_address)
        finally:
            self._closed = True
            self._nursery = None
            for peer in self._peers.values():
                self._discard(peer)
            self._stopped.set()

    async def aclose(self) -> None:
        """Stop: close every connection and the listener; later sends are dropped."""
        self._closed = True
        self._cancel.cancel()
        if self._started:
            await self._stopped.wait()

    # -- outbound ----------------------------------------------------------------------------

    async def _sender(self, peer: _Peer) -> None:
        low, high = self.backoff
        delay = low
        with peer.task:
            while True:
                peer.accepting = True
                with trio.CancelScope() as peer.connection:
                    failure = "address changed"
                    try:
                        stream, reader = await self._dial(peer)
                    except PeerRefused as exc:
                        failure = str(exc)
                        self._throttle.log(f"{peer.id} {failure}",
                                           f"raft transport {self.id}: peer {peer.id} at "
                                           f"{_show(peer.address)}: {failure}")
                    except (*_CONNECTION_ERRORS, FrameError, CodecError) as exc:
                        failure = _why(exc)
                    else:
                        delay = low
                        failure = await self._pump(peer, stream, reader)
                peer.connection = None
                self._lost(peer, failure)
                # Exponential backoff with jitter in [delay/2, delay).
                await trio.sleep(delay * (0.5 + self._rng.random() / 2))
                delay = min(delay * 2, high)

    async def _dial(self, peer: _Peer) -> tuple[trio.abc.Stream, _FrameReader]:
        host, port = peer.address
        with trio.fail_after(self.connect_timeout):
            tcp = await trio.open_tcp_stream(host, port)
        stream: trio.abc.Stream = tcp
        try:
            _tune(tcp)
            with trio.fail_after(self.handshake_timeout):
                if self.tls is not None:
                    stream = trio.SSLStream(tcp, self.tls.client, server_hostname=host)
                    await stream.do_handshake()
                await stream.send_all(_frame(encode_hello(Hello(self.cluster_token,
                                                                self.id))))
                reader = _FrameReader(stream)
                frame = await reader.read(MAX_HANDSHAKE_FRAME)
            if frame is None:
                raise PeerRefused("closed the connection during the handshake")
            answer = decode_handshake(frame)
            if isinstance(answer, Refusal):
                raise PeerRefused(f"refused us: {answer.reason}")
            problem = self._check_hello(answer, expected=peer.id)
            if problem is not None:
                raise PeerRefused(f"refused: {problem}")
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        peer.stats.connects += 1
        if not peer.connected:
            peer.connected = True
            log.info("raft transport %s: connected to peer %s at %s", self.id, peer.id,
                     _show(peer.address))
        return stream, reader

    async def _pump(self, peer: _Peer, stream: trio.abc.Stream, reader: _FrameReader) -> str:
        """Write ``peer``'s queue to ``stream`` until it breaks; return why it broke."""
        failure = ""
        try:
            async with trio.open_nursery() as nursery:
                async def watch() -> None:
                    # The acceptor never writes after its hello: anything but the end of
                    # the stream is a protocol error, and the end means it closed.
                    nonlocal failure
                    try:
                        frame = await reader.read(MAX_HANDSHAKE_FRAME)
                        failure = ("closed by the peer" if frame is None
                                   else "the peer wrote on a send-only connection")
                    except (*_CONNECTION_ERRORS, FrameError) as exc:
                        failure = _why(exc)
                    nursery.cancel_scope.cancel()

                nursery.start_soon(watch)
                try:
                    await self._write(peer, stream)
                except _CONNECTION_ERRORS as exc:
                    failure = failure or _why(exc)
                    nursery.cancel_scope.cancel()
        finally:
            await trio.aclose_forcefully(stream)
        return failure

    async def _write(self, peer: _Peer, stream: trio.abc.Stream) -> None:
        while True:
            if not peer.queue:
                peer.nonempty = trio.Event()
                await peer.nonempty.wait()
                continue
            chunks: list[bytes] = []
            size = sent = 0
            snapshots: list[Message] = []
            while peer.queue and size < _COALESCE:
                message = peer.queue.popleft()
                payload = encode_message(message)
                if len(payload) > self.max_frame:
                    peer.stats.dropped += 1
                    log.error("raft transport %s: dropped a %s message of %d bytes to peer "
                              "%s: over the frame limit of %d bytes", self.id,
                              message.type.name, len(payload), peer.id, self.max_frame)
                    self._dropped(message)
                    continue
                chunks += (_HEADER.pack(len(payload)), payload)
                size += _HEADER.size + len(payload)
                sent += 1
                if message.type is MessageType.SNAPSHOT:
                    snapshots.append(message)
            try:
                for buffer in _coalesce(chunks):
                    await stream.send_all(buffer)
            except BaseException:
                # Cancelled or broken mid-write: the follower may have part of a frame,
                # which its reader discards with the connection.
                for message in snapshots:
                    self._report_snapshot(message.to, False)
                raise
            peer.stats.sent += sent
            peer.overflowing = False
            for message in snapshots:
                self._report_snapshot(message.to, True)

    def _lost(self, peer: _Peer, failure: str) -> None:
        """A dial failed or a connection ended: drop what waits, tell the node."""
        peer.accepting = False
        peer.stats.failures += 1
        self._discard(peer)
        self._report_unreachable(peer.id)
        if peer.connected:
            peer.connected = False
            log.warning("raft transport %s: lost peer %s at %s: %s", self.id, peer.id,
                        _show(peer.address), failure)
        elif failure != peer.last_failure:
            log.info("raft transport %s: cannot reach peer %s at %s: %s", self.id, peer.id,
                     _show(peer.address), failure)
        peer.last_failure = failure

    # -- inbound -----------------------------------------------------------------------------

    async def _serve(self, tcp: trio.SocketStream) -> None:
        remote = _remote(tcp)
        stream: trio.abc.Stream = tcp
        try:
            _tune(tcp)
            hello = await self._accept(tcp, remote)
            if hello is None:
                return
            stream = hello[1]
            await self._receive(hello[0], stream, hello[2], remote)
        finally:
            await trio.aclose_forcefully(stream)

    async def _accept(self, tcp: trio.SocketStream, remote: str
                      ) -> tuple[NodeId, trio.abc.Stream, _FrameReader] | None:
        """The acceptor's handshake: the peer's id, stream and reader, or None if refused
        (logged, counted, and the connection is for the caller to close)."""
        stream: trio.abc.Stream = tcp
        try:
            with trio.fail_after(self.handshake_timeout):
                if self.tls is not None:
                    stream = trio.SSLStream(tcp, self.tls.server, server_side=True)
                    await stream.do_handshake()
                reader = _FrameReader(stream)
                frame = await reader.read(MAX_HANDSHAKE_FRAME)
                if frame is None:
                    raise PeerRefused("closed before its hello")
                hello = decode_handshake(frame)
                if isinstance(hello, Refusal):
                    raise PeerRefused("sent a refusal instead of a hello")
                problem = self._check_hello(hello, expected=None)
                if problem is not None:
                    with suppress(*_CONNECTION_ERRORS):
                        await stream.send_all(_frame(encode_refusal(Refusal(problem))))
                    raise PeerRefused(f"claiming member {hello.sender_id}: {problem}")
                await stream.send_all(_frame(encode_hello(Hello(self.cluster_token,
                                                                self.id))))
        except (*_CONNECTION_ERRORS, FrameError, CodecError, PeerRefused) as exc:
            self.stats.refused += 1
            # Keyed without the remote port, which changes with every retry.
            why = _why(exc)
            self._throttle.log(f"{remote.rpartition(':')[0]} {why}",
                               f"raft transport {self.id}: refused a connection from "
                               f"{remote}: {why}")
            if stream is not tcp:
                await trio.aclose_forcefully(stream)
            return None
        return hello.sender_id, stream, reader

    async def _receive(self, peer: NodeId, stream: trio.abc.Stream, reader: _FrameReader,
                       remote: str) -> None:
        # One inbound connection per peer: a newer one (the peer redialed, perhaps after
        # a restart we have not noticed yet) replaces the older.
        previous = self._inbound.get(peer)
        if previous is not None:
            previous.cancel()
        receiver = self.receiver
        assert receiver is not None  # run() checks
        with trio.CancelScope() as scope:
            self._inbound[peer] = scope
            try:
                while True:
                    frame = await reader.read(self.max_frame)
                    if frame is None:
                        return
                    message = decode_message(frame)
                    if message.to != self.id:
                        self.stats.unroutable += 1
                        continue
                    self.stats.received += 1
                    try:
                        receiver.deliver(message)
                    except MemberStopped:
                        continue  # the member stopped; its messages go nowhere
            except (FrameError, CodecError) as exc:
                self.stats.malformed += 1
                log.warning("raft transport %s: closing the connection from peer %s (%s): "
                            "%s", self.id, peer, remote, _why(exc))
            except _CONNECTION_ERRORS as exc:
                log.debug("raft transport %s: connection from peer %s (%s) ended: %s",
                          self.id, peer, remote, _why(exc))
            finally:
                if self._inbound.get(peer) is scope:
                    del self._inbound[peer]

    def _check_hello(self, hello: Hello, *, expected: NodeId | None) -> str | None:
        """Why a peer's hello is refused, or None to accept it."""
        if hello.format != FORMAT:
            return f"speaks wire format {hello.format}, we speak {FORMAT}"
        if hello.cluster_token != self.cluster_token:
            return (f"cluster token {hello.cluster_token!r} is not ours "
                    f"({self.cluster_token!r})")
        if expected is not None:
            if hello.sender_id != expected:
                return f"is member {hello.sender_id}, expected member {expected}"
        elif hello.sender_id == self.id:
            return f"claims our own member id {self.id}"
        elif hello.sender_id not in self._peers:
            return f"member id {hello.sender_id} is not a known peer"
        return None


def _coalesce(chunks: list[bytes]) -> list[bytes]:
    """Join runs of small chunks into one write; pass large ones (a snapshot) uncopied."""
    out: list[bytes] = []
    run: list[bytes] = []
    run_size = 0
    for chunk in chunks:
        if len(chunk) >= _COALESCE:
            if run:
                out.append(b"".join(run))
                run, run_size = [], 0
            out.append(chunk)
            continue
        run.append(chunk)
        run_size += len(chunk)
        if run_size >= _COALESCE:
            out.append(b"".join(run))
            run, run_size = [], 0
    if run:
        out.append(b"".join(run))
    return out


def _show(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _remote(stream: trio.SocketStream) -> str:
    try:
        name = stream.socket.getpeername()
    except OSError:
        return "an unknown address"
    return _show((str(name[0]), int(name[1])))
