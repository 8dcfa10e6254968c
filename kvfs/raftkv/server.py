"""The client server of one Raft store member: the KV seam over TCP (optionally TLS).

Every member runs one :class:`RaftServer` next to its :class:`~kvfs.raftkv.node.RaftNode`;
a ``raft://`` client (:mod:`kvfs.raftkv.client`) may talk to any of them.  The wire format
is :mod:`kvfs.raftkv.protocol`.  What each op does here mirrors the in-process
:class:`~kvfs.raftkv.engine.MemberEngine`:

* **writes** (commit, lease grant and revoke, compact) go through ``node.submit`` under the
  *client's* ``(client_id, seq)``, so a write re-sent after a broken connection -- to this
  member or any other -- is applied at most once and answered with the first result;
* **reads** (get, get_many, range, current_revision) pass ``node.read_barrier`` and then
  read the local state machine in one synchronous step (one revision per answer);
* **watches** are served from the member's watch hub with the catch-up taken from the same
  state with no checkpoint in between, exactly as ``MemberEngine.watch`` does; a start
  below the retained history is answered ``compacted``;
* **lease keep-alives** are answered by the leader only; any other member answers
  ``not_leader`` with the leader's id and client endpoint (from ``client_endpoints``);
* **membership, leadership transfer and snapshots** are served by
  :class:`~kvfs.raftkv.admin.MemberAdmin` (membership changes by the leader only, answered
  ``not_leader`` elsewhere like keep-alives); a snapshot is streamed in parts of about
  :data:`~kvfs.raftkv.protocol.PART_BYTES`.

Connections: each request runs in its own task, so answers may leave out of order; at most
``max_requests`` ordinary requests (and ``max_watches`` watches) run at once per
connection -- beyond that the server stops reading, which pushes back on the client
through TCP.  One writer task per connection sends the answers, whole frames only.

Invariants: a malformed frame closes only its connection, with a one-line log message; no
request or connection failure ends the server.  How long a request may wait for a leader
is the client's ``timeout`` for that attempt, capped by ``max_timeout``.  With an
``ssl_context`` the server speaks only TLS; whether it demands a client certificate is the
context's ``verify_mode`` (:func:`server_ssl_context` sets ``CERT_REQUIRED`` when given a
client CA).  A member that has known no leader for two election timeouts answers
``unavailable`` at once (see :meth:`RaftServer.deadline`).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterable, Iterator, Mapping
from contextlib import aclosing
from typing import Any

import trio

from kvfs.kv.api import Compacted, Compare, Delete, KeyValue, KVError, Limits, Put, WatchEvent
from kvfs.kv.state import Command
from kvfs.raft import Role
from kvfs.raftkv import protocol as p
from kvfs.raftkv.admin import MemberAdmin, NotLeader
from kvfs.raftkv.node import MemberStopped, RaftNode

# A member without a leader for this many election timeouts answers "unavailable" at once.
LEADERLESS_ELECTIONS = 2

log = logging.getLogger(__name__)

_ROLE_NAMES = {Role.LEADER: "leader", Role.FOLLOWER: "follower"}


def server_ssl_context(cert: str, key: str, client_ca: str | None = None) -> ssl.SSLContext:
    """A TLS context for :class:`RaftServer`: its certificate and key, and -- when
    ``client_ca`` is given -- a demand for a client certificate signed by that CA."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    if client_ca is not None:
        context.load_verify_locations(client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class _Closing(Exception):
    """Close this connection (the reason is logged once)."""


class RaftServer:
    def __init__(self, node: RaftNode, *, ssl_context: ssl.SSLContext | None = None,
                 client_endpoints: Mapping[int, str] | None = None,
                 cluster_token: str = "",
                 limits: Limits | None = None, max_requests: int = 64,
                 max_watches: int = 1024, max_timeout: float = 60.0,
                 hello_timeout: float = 10.0) -> None:
        """``client_endpoints`` maps member ids to their client ``host:port`` (for leader
        hints); it is read when a hint is given, so it may be filled in after binding (the
        member keeps it in step with the member table).  ``cluster_token`` derives the id
        of a member added by name."""
        self.node = node
        self.admin = MemberAdmin(node, cluster_token)
        self.ssl_context = ssl_context
        self.client_endpoints = client_endpoints if client_endpoints is not None else {}
        self.limits = limits or Limits()
        self.max_requests = max_requests
        self.max_watches = max_watches
        self.max_timeout = max_timeout
        self.hello_timeout = hello_timeout  # a connection that never says hello is dropped
        self.port = 0

    async def serve(self, host: str, port: int, *,
                    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on ``host:port`` (0: any free port) until cancelled.  Started with the
        bound port."""
        listeners: list[Any] = await trio.open_tcp_listeners(port, host=host)
        self.port = int(listeners[0].socket.getsockname()[1])
        if self.ssl_context is not None:
            listeners = [trio.SSLListener(listener, self.ssl_context,
                                          https_compatible=False) for listener in listeners]
        task_status.started(self.port)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.abc.Stream) -> None:
        peer = _peer(stream)
        try:
            await _Connection(self, stream, peer).run()
        except _Closing as exc:
            log.warning("raft client %s: closing the connection: %s", peer, exc)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            cause = exc.__cause__
            if isinstance(cause, ssl.SSLError):
                log.warning("raft client %s: TLS failed: %s", peer,
                            p.one_line(cause.reason or str(cause)))
            else:
                log.debug("raft client %s: connection lost: %r", peer, exc)
        except Exception:  # noqa: BLE001 - one connection's bug must not end the server
            log.exception("raft client %s: closing the connection after an internal error",
                          peer)
        finally:
            # Forcefully: a graceful TLS close could wait on a client that stopped reading.
            await trio.aclose_forcefully(stream)

    # -- the answers -------------------------------------------------------------------------

    def deadline(self, args: Mapping[str, Any]) -> float:
        """Until when a request may wait for a leader: the client's time for the attempt --
        or none at all when this member has known no leader for two election timeouts (it
        is cut off, or the cluster has lost its majority), so the client tries another
        member at once instead of waiting out its attempt here."""
        node = self.node
        if (node.leaderless_for() > LEADERLESS_ELECTIONS * node.retry_interval()
                and not node.sole_voter()):
            return trio.current_time()
        return trio.current_time() + min(args["timeout"], self.max_timeout)

    def leader_hint(self) -> dict[str, Any]:
        leader = int(self.node.leader)
        return {"leader": leader, "endpoint": self.client_endpoints.get(leader)}

    def status(self) -> dict[str, Any]:
        node = self.node
        # Term, leader and role from one look at the core: the loop learns of a new
        # leader only when it handles the next Ready, so its own view may lag the term.
        core = node.rawnode.status()
        hard, soft = core.hard_state, core.soft_state
        leader = int(soft.leader)
        return {"member": int(node.id), "leader": leader,
                "leader_endpoint": self.client_endpoints.get(leader) if leader else None,
                "role": _ROLE_NAMES.get(soft.role, soft.role.name.lower()),
                "term": hard.term, "commit": hard.commit, "applied": node.kv.applied_index}


def _peer(stream: trio.abc.Stream) -> str:
    inner: Any = stream
    while isinstance(inner, trio.SSLStream):
        inner = inner.transport_stream
    try:
        host, port = inner.socket.getpeername()[:2]
        return f"{host}:{port}"
    except (AttributeError, OSError):
        return "?"


def _wire_kv(kv: KeyValue) -> list[Any]:
    return [kv.key, kv.value, kv.mod_revision, kv.create_revision, kv.lease]


class _Connection:
    """One client connection: reads requests, runs each in a task, writes answers."""

    def __init__(self, server: RaftServer, stream: trio.abc.Stream, peer: str) -> None:
        self.server = server
        self.node = server.node
        self.stream = stream
        self.peer = peer
        self._requests = trio.Semaphore(server.max_requests)
        self._in_flight: set[int] = set()
        self._watches: dict[int, trio.CancelScope] = {}  # only watches can be cancelled
        # Answers go through one writer task: a request cancelled while its answer is
        # queued leaves nothing half-written on the wire.
        self._outbox, self._outbox_reader = trio.open_memory_channel[bytes](16)
        self._cancel = trio.CancelScope()
        self._ended: BaseException | None = None

    async def send(self, frame: bytes) -> None:
        await self._outbox.send(frame)

    async def _write(self) -> None:
        try:
            async for frame in self._outbox_reader:
                await self.stream.send_all(frame)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._end(exc)

    def _end(self, why: BaseException) -> None:
        """End the connection (the first reason is the one reported)."""
        if self._ended is None:
            self._ended = why
        self._cancel.cancel()

    async def run(self) -> None:
        """Serve the connection until the client leaves; raises why it ended otherwise
        (:class:`_Closing` for a protocol violation)."""
        reader = p.FrameReader(self.stream)
        try:
            with trio.move_on_after(self.server.hello_timeout) as hello_scope:
                if not await self._hello(reader):
                    return
        except p.ProtocolError as exc:
            raise _Closing(str(exc)) from None
        if hello_scope.cancelled_caught:
            raise _Closing(f"no hello within {self.server.hello_timeout:g} s")
        with self._cancel:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write)
                try:
                    await self._read_requests(reader, nursery)
                except p.ProtocolError as exc:
                    self._end(_Closing(str(exc)))
                except (_Closing, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    self._end(exc)
                finally:
                    # The client is gone or broke the protocol: nobody awaits the answers.
                    nursery.cancel_scope.cancel()
        if self._ended is not None:
            raise self._ended

    async def _hello(self, reader: p.FrameReader) -> bool:
        """The version handshake, before any other request is read (answered directly:
        the writer task is not running yet)."""
        first = await reader.receive()
        if first is None:
            return False
        hello = p.decode_request(first)
        if hello.op != "hello" or hello.args is None:
            raise _Closing(f"the first request is {p.one_line(hello.op)!r}, not hello")
        version = hello.args["version"]
        if version != p.PROTOCOL_VERSION:
            await self.stream.send_all(p.error_frame(
                hello.id, p.BAD_REQUEST, f"protocol version {version} is not supported "
                f"(this member speaks {p.PROTOCOL_VERSION})"))
            raise _Closing(f"client speaks protocol version {version}")
        await self.stream.send_all(p.ok_frame(hello.id, {"version": p.PROTOCOL_VERSION,
                                                         "member": int(self.node.id)}))
        return True

    async def _read_requests(self, reader: p.FrameReader, nursery: trio.Nursery) -> None:
        while True:
            message = await reader.receive()
            if message is None:
                return
            request = p.decode_request(message)
            if request.id in self._in_flight:
                raise _Closing(f"request id {request.id} is already in flight")
            if request.args is None:
                await self.send(p.error_frame(request.id, p.BAD_REQUEST,
                                              f"unknown op {p.one_line(request.op)!r}"))
                continue
            if request.op == "hello":
                raise _Closing("hello sent twice")
            if request.op == "cancel":
                scope = self._watches.get(request.args["target"])
                if scope is not None:
                    scope.cancel()
                await self.send(p.ok_frame(request.id, {}))
                continue
            if request.op == "watch":
                if len(self._watches) >= self.server.max_watches:
                    await self.send(p.error_frame(
                        request.id, p.FAILED, f"too many watches on one connection "
                        f"(at most {self.server.max_watches})"))
                    continue
                self._in_flight.add(request.id)
                self._watches[request.id] = trio.CancelScope()
                nursery.start_soon(self._run_watch, request)
            else:
                # Bounded concurrency: wait for a free slot before reading on.
                await self._requests.acquire()
                self._in_flight.add(request.id)
                nursery.start_soon(self._run_request, request)

    async def _run_request(self, request: p.Request) -> None:
        try:
            frames: Iterable[bytes]
            try:
                frames = await self._dispatch(request.op, request.args or {}, request.id)
            except KVError as exc:
                frames = [_error(request.id, exc)]
            except (_NotLeader, NotLeader):
                frames = [p.error_frame(request.id, p.NOT_LEADER,
                                        f"member {self.node.id} is not the leader",
                                        **self.server.leader_hint())]
            except Exception as exc:  # noqa: BLE001 - a bug answers one request, not more
                log.exception("raft client %s: %s failed", self.peer, request.op)
                frames = [p.error_frame(request.id, p.FAILED, f"internal error in "
                                        f"{request.op}: {p.one_line(repr(exc))}")]
            for frame in frames:
                await self.send(frame)
        finally:
            self._in_flight.discard(request.id)
            self._requests.release()

    # -- ordinary requests: each returns the frames of its answer ----------------------------

    async def _dispatch(self, op: str, args: dict[str, Any], rid: int) -> Iterable[bytes]:
        node = self.node
        if op == "status":
            return [p.ok_frame(rid, self.server.status())]
        if op == "lease_keepalive":
            alive = node.keepalive(args["lease"])
            if alive is None:
                raise _NotLeader
            return [p.ok_frame(rid, {"alive": alive})]
        deadline = self.server.deadline(args)
        admin = self.server.admin
        if op == "member_list":
            return [p.ok_frame(rid, await admin.member_list(deadline))]
        if op in ("member_add", "member_promote", "member_remove"):
            serve = {"member_add": admin.member_add, "member_promote": admin.member_promote,
                     "member_remove": admin.member_remove}[op]
            return [p.ok_frame(rid, await serve(args, deadline))]
        if op == "transfer_leader":
            return [p.ok_frame(rid, await admin.transfer_leader(args["target"], deadline))]
        if op == "snapshot":
            snap = await admin.snapshot(deadline)
            return self._snapshot_parts(rid, snap.data, {"index": snap.index,
                                                         "size": len(snap.data),
                                                         "hash": snap.hash})
        if op == "commit":
            compares = [(k, r) for k, r in args["compares"]]
            puts = [(k, v, lease) for k, v, lease in args["puts"]]
            deletes = [(k, e) for k, e in args["deletes"]]
            self._check_limits(compares, puts, deletes)
            result = await node.submit(args["client_id"], args["seq"],
                                       ("txn", compares, puts, deletes), deadline=deadline)
            return [p.ok_frame(rid, {"succeeded": result.succeeded,
                                     "revision": result.revision})]
        if op == "lease_grant":
            result = await self._submit(args, ("lease_grant", args["ttl"]), deadline)
            return [p.ok_frame(rid, {"lease": result.lease_id})]
        if op == "lease_revoke":
            await self._submit(args, ("lease_revoke", args["lease"]), deadline)
            return [p.ok_frame(rid, {})]
        if op == "compact":
            await node.read_barrier(deadline=deadline)
            # Never past what exists; a retry of an applied compaction is answered from the
            # session table whatever this member computes here.
            revision = min(args["revision"], node.kv.state.revision)
            await self._submit(args, ("compact", revision), deadline)
            return [p.ok_frame(rid, {})]
        await node.read_barrier(deadline=deadline)
        # From here to the end, no checkpoint: every answer is one revision of the state.
        kv_store = node.kv
        if op == "current_revision":
            return [p.ok_frame(rid, {"revision": kv_store.state.revision})]
        if op == "get":
            got = kv_store.read(args["key"])
            return [p.ok_frame(rid, {"kv": None if got is None else _wire_kv(got),
                                     "revision": kv_store.state.revision})]
        if op == "get_many":
            kvs: list[Any] = []
            for key in args["keys"]:
                got = kv_store.read(key)
                kvs.append(None if got is None else _wire_kv(got))
            return self._parts(rid, kvs, {})
        if op == "range":
            found = kv_store.read_range(args["start"], args["end"], limit=args["limit"],
                                        keys_only=args["keys_only"])
            return self._parts(rid, [_wire_kv(kv) for kv in found.kvs],
                               {"more": found.more, "revision": found.revision})
        raise AssertionError(f"op {op!r} has a schema but no handler")

    async def _submit(self, args: dict[str, Any], command: Command, deadline: float) -> Any:
        return await self.node.submit(args["client_id"], args["seq"], command,
                                      deadline=deadline)

    def _check_limits(self, compares: list[Any], puts: list[Any], deletes: list[Any]) -> None:
        # The client checks too; this guards the log against clients with other limits.
        self.server.limits.check([Compare(k, r) for k, r in compares],
                                 [Put(k, v, lease) for k, v, lease in puts],
                                 [Delete(k, e) for k, e in deletes])

    @staticmethod
    def _parts(rid: int, kvs: list[Any], final: dict[str, Any]) -> Iterator[bytes]:
        """An answer of many key-values cut into frames of about PART_BYTES each, encoded
        one at a time as they are sent (``kvs`` was taken whole: one revision)."""
        start, size = 0, 0
        for i, kv in enumerate(kvs):
            size += 24 if kv is None else p.kv_size(kv[0], kv[1])
            if size >= p.PART_BYTES and i + 1 < len(kvs):
                yield p.more_frame(rid, {"kvs": kvs[start:i + 1]})
                start, size = i + 1, 0
        yield p.ok_frame(rid, {"kvs": kvs[start:], **final})

    @staticmethod
    def _snapshot_parts(rid: int, data: bytes, final: dict[str, Any]) -> Iterator[bytes]:
        """A snapshot as ``data`` parts of PART_BYTES, then the final answer."""
        view = memoryview(data)
        for start in range(0, len(data), p.PART_BYTES):
            yield p.more_frame(rid, {"data": bytes(view[start:start + p.PART_BYTES])})
        yield p.ok_frame(rid, final)

    # -- watches -----------------------------------------------------------------------------

    async def _run_watch(self, request: p.Request) -> None:
        args = request.args or {}
        rid = request.id
        scope = self._watches[rid]
        try:
            with scope:
                try:
                    await self._watch(rid, args["start"], args["end"], args["start_revision"])
                    final = p.ok_frame(rid, {})
                except KVError as exc:
                    final = _error(rid, exc)
                except Exception as exc:  # noqa: BLE001 - a bug ends one watch, not more
                    log.exception("raft client %s: watch failed", self.peer)
                    final = p.error_frame(rid, p.FAILED, f"internal error in watch: "
                                          f"{p.one_line(repr(exc))}")
                await self.send(final)
            if scope.cancelled_caught:
                await self.send(p.ok_frame(rid, {}))  # cancelled by the client
        finally:
            self._in_flight.discard(rid)
            del self._watches[rid]

    async def _watch(self, rid: int, start: bytes, end: bytes, next_revision: int) -> None:
        state = self.node.kv.state
        if next_revision < state.history_start:
            raise Compacted(next_revision, state.history_start)
        await self.send(p.more_frame(rid, {"events": [], "complete": True}))
        hub = self.node.hub
        while True:
            # Catch-up and registration with no checkpoint in between (see WatchHub.watch).
            catch_up = self.node.kv.state.events_since(next_revision, start, end)
            try:
                async with aclosing(hub.watch(start, end, catch_up)) as batches:  # type: ignore[type-var]
                    async for batch in batches:
                        # A lagging member notifies revisions the client has already seen
                        # elsewhere (it resumed here after a failover): skip them.
                        events = [e for e in batch.events if e.mod_revision >= next_revision]
                        if not events:
                            continue
                        for frame in _event_parts(rid, events):
                            await self.send(frame)
                        next_revision = events[-1].mod_revision + 1
                return  # the hub closed: the member is shutting down
            except Compacted:
                # This member installed a snapshot and its hub dropped every watch; the
                # snapshot carries history, so go on from it unless it lacks our revision
                # (then events_since above raises Compacted to the client).
                continue


def _error(rid: int, exc: KVError) -> bytes:
    if isinstance(exc, MemberStopped):
        # This member is out of service; another one may well answer.
        return p.error_frame(rid, p.UNAVAILABLE, str(exc))
    code, message, fields = p.error_of(exc)
    return p.error_frame(rid, code, message, **fields)


def _event_parts(rid: int, events: list[WatchEvent]) -> Iterator[bytes]:
    """Watch parts of about PART_BYTES; ``complete`` tells whether a part ends at a
    revision boundary (the events of a hub batch are always whole revisions)."""
    part: list[Any] = []
    size = 0
    for i, event in enumerate(events):
        part.append([event.key, event.value, event.mod_revision])
        size += p.kv_size(event.key, event.value or b"")
        last = i + 1 == len(events)
        if last or size >= p.PART_BYTES:
            complete = last or events[i + 1].mod_revision != event.mod_revision
            yield p.more_frame(rid, {"events": part, "complete": complete})
            part, size = [], 0


class _NotLeader(Exception):
    """A request only the leader answers reached another member."""

