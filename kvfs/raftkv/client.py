"""The ``raft://`` metadata engine: :class:`RaftClientEngine` speaks the client protocol
(:mod:`kvfs.raftkv.protocol`) to the members of a kvfs Raft store.

URL: ``raft://HOST:PORT[,HOST:PORT...]/PREFIX[?cacert=&cert=&key=&timeout=]``
(:mod:`kvfs.raftkv.url`).

Responsibilities and invariants:

* **Namespacing**, as the etcd engine does it: key ``k`` travels as ``PREFIX/k``; an end of
  ``b"\\x00"`` ("to the end") becomes ``prefix_end(PREFIX/)`` -- the end of *this* volume's
  keys -- for ranges, range deletes and watches; the prefix is stripped from every key that
  comes back (a key outside it is a protocol error).  Revisions, leases and compaction are
  store-wide.
* **One connection**, to one member at a time; requests are pipelined on it and answered
  out of order.  The client stays with a member while it answers, and moves to the next
  endpoint (in URL order, wrapping) when the connection fails (refused, reset, TLS failure,
  malformed frame, no answer within the attempt's time) or the member answers
  ``unavailable`` (it has no leader, or is stopping).  A lease keep-alive answered
  ``not_leader`` moves the connection to the hinted leader when the hint is one of the
  URL's endpoints -- or, for an engine opened with ``follow_hints`` (the operator's
  commands: membership changes need the leader, wherever it is), any endpoint the hint
  names, which is then added to the engine's endpoints.  After every endpoint failed once,
  it pauses (50 ms, doubling, at most 0.5 s) before the next round.
* **Bounded waiting.**  Every call gives up with :class:`EngineUnavailable` once the URL's
  ``timeout`` has passed -- never an endless hang.  Each attempt tells the member how long
  it may wait for a leader (a third of the timeout, at least 1 s, never past the deadline),
  and waits for the answer at most that long plus a grace period.
* **At most once.**  Every write (commit, lease grant and revoke, compact) carries a
  ``(client_id, seq)`` that stays the same when the write is re-sent after a failure, to any
  member; the state machine applies it once and answers every copy with the first result.
  The state machine remembers only each client id's *latest* seq, so an id may have only
  one write outstanding for that answer to be exact.  Concurrent writes therefore use
  separate *sessions*: each a random 63-bit client id with its own sequence, at most
  ``max_sessions`` of them, created as concurrency demands and reused (a caller writing
  one thing at a time uses one id, :attr:`client_id`).
* **Watches** resume after a failover on the next member from the revision after the last
  one delivered, so they have no gaps and no duplicates; a member that lags behind the one
  before is filtered (by the member, and again here).  Only whole revisions are delivered.
* Connections are served by trio system tasks (engines are opened without a nursery);
  :meth:`aclose` ends them.
"""

from __future__ import annotations

import itertools
import logging
import math
import secrets
import ssl
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio
import xxhash

from kvfs.kv.api import (
    CommitResult,
    Compare,
    Delete,
    EngineUnavailable,
    KeyValue,
    KVEngine,
    KVError,
    Put,
    RangeResult,
    TxnTooLarge,
    WatchBatch,
    WatchEvent,
    prefix_end,
)
from kvfs.raftkv import protocol as p
from kvfs.raftkv.url import RaftURL, parse_raft_url, split_endpoint

__all__ = ["RaftClientEngine", "RaftURL", "client_ssl_context", "parse_raft_url"]

log = logging.getLogger(__name__)

_GRACE = 2.0  # seconds an answer may take beyond the attempt's time at the member
_GET_MANY_BATCH = 4096  # keys per get_many request (one revision per request)


class _ConnectionLost(Exception):
    """The connection broke; what was in flight on it may be re-sent elsewhere."""


def client_ssl_context(url: RaftURL) -> ssl.SSLContext:
    """The TLS context for ``url`` (its ``cacert``, and ``cert``/``key`` if given)."""
    try:
        context = ssl.create_default_context(cafile=url.cacert)
        if url.cert is not None:
            context.load_cert_chain(url.cert, url.key)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"raft URL: cannot load the TLS files: {_describe(exc)}") from None
    return context


def _describe(exc: BaseException) -> str:
    """One line naming what went wrong (the SSL reason behind a broken stream, if any)."""
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    if isinstance(cause, ssl.SSLError):
        return p.one_line(f"TLS: {cause.reason or cause}")
    if isinstance(cause, OSError) and cause.strerror:
        where = f" {cause.filename}" if cause.filename else ""
        return p.one_line(f"{cause.strerror}{where}")
    return p.one_line(str(cause) or type(cause).__name__)


class _Call:
    """One request in flight: its answers arrive on ``receive`` (closed if the connection
    breaks)."""

    __slots__ = ("op", "send", "receive")

    def __init__(self, op: str) -> None:
        self.op = op
        self.send, self.receive = trio.open_memory_channel[p.Response](math.inf)


class _Connection:
    """One connection to one member, with a reader and a writer in a system task."""

    def __init__(self, endpoint: str, stream: trio.abc.Stream, reader: p.FrameReader,
                 member: int) -> None:
        self.endpoint = endpoint
        self.member = member
        self.error: str | None = None  # why it is no longer usable
        self._stream = stream
        self._reader = reader
        self._ids = itertools.count(1)
        self._calls: dict[int, _Call] = {}
        # Unbounded: queuing never blocks, so a cancelled caller never leaves half a
        # frame behind, and a watch's cancel can be queued from a finally block.
        self._outbox, self._outbox_reader = trio.open_memory_channel[bytes](math.inf)
        self._scope = trio.CancelScope()

    @classmethod
    async def open(cls, endpoint: str, ssl_context: ssl.SSLContext | None) -> _Connection:
        """Connect, shake hands (TLS, then the protocol's hello) and start serving."""
        host, port = split_endpoint(endpoint)
        stream: trio.abc.Stream = await trio.open_tcp_stream(host, port)
        try:
            if ssl_context is not None:
                stream = trio.SSLStream(stream, ssl_context, server_hostname=host,
                                        https_compatible=False)
                await stream.do_handshake()
            await stream.send_all(p.request_frame(0, "hello",
                                                  {"version": p.PROTOCOL_VERSION}))
            reader = p.FrameReader(stream)
            message = await reader.receive()
            if message is None:
                raise p.ProtocolError("the member closed the connection during the hello")
            hello = p.decode_response(message, "hello")
            if hello.error is not None:
                raise hello.error
            if hello.body["version"] != p.PROTOCOL_VERSION:
                raise p.ProtocolError(f"the member answered in protocol version "
                                      f"{hello.body['version']}")
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        conn = cls(endpoint, stream, reader, hello.body["member"])
        trio.lowlevel.spawn_system_task(conn._run, name=f"raft client {endpoint}")
        return conn

    @property
    def alive(self) -> bool:
        return self.error is None

    # -- the system task ---------------------------------------------------------------------

    async def _run(self) -> None:
        reason = "closed"
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._write_loop)
                    reason = await self._read_loop()
                    nursery.cancel_scope.cancel()
        except Exception as exc:  # noqa: BLE001 - a system task must not raise
            log.exception("raft client: connection to %s failed", self.endpoint)
            reason = f"internal error: {_describe(exc)}"
        finally:
            self._fail(reason)
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(self._stream)

    async def _read_loop(self) -> str:
        """Hand each answer to its call; returns why the connection ended."""
        try:
            while True:
                message = await self._reader.receive()
                if message is None:
                    return "the member closed the connection"
                call = self._calls.get(p.response_id(message))
                if call is None:
                    continue  # its caller gave up waiting
                response = p.decode_response(message, call.op)
                if response.kind != "more":
                    del self._calls[response.id]
                call.send.send_nowait(response)
        except p.ProtocolError as exc:
            log.warning("raft client: closing the connection to %s: %s", self.endpoint, exc)
            return f"protocol error: {exc}"
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            return f"connection lost: {_describe(exc)}"

    async def _write_loop(self) -> None:
        try:
            async for frame in self._outbox_reader:
                await self._stream.send_all(frame)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self._fail(f"connection lost: {_describe(exc)}")

    def _fail(self, reason: str) -> None:
        if self.error is None:
            self.error = reason
        self._scope.cancel()
        self._outbox_reader.close()
        for call in self._calls.values():
            call.send.close()
        self._calls.clear()

    def close(self, reason: str) -> None:
        self._fail(reason)

    # -- requests ----------------------------------------------------------------------------

    def start(self, op: str, args: Mapping[str, Any]) -> tuple[int, _Call]:
        """Send a request; its answers arrive on the returned call."""
        if self.error is not None:
            raise _ConnectionLost(self.error)
        rid = next(self._ids)
        try:
            frame = p.request_frame(rid, op, args)
        except p.ProtocolError as exc:
            raise TxnTooLarge(f"raft: request too large to send: {exc}") from None
        call = _Call(op)
        self._calls[rid] = call
        try:
            self._outbox.send_nowait(frame)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            del self._calls[rid]
            raise _ConnectionLost(self.error or "closed") from None
        return rid, call

    def forget(self, rid: int, *, cancel: bool = False) -> None:
        """Stop waiting for ``rid``'s answers; ``cancel`` also asks the member to end it (a
        watch)."""
        if self._calls.pop(rid, None) is not None and cancel and self.error is None:
            try:
                self._outbox.send_nowait(p.request_frame(next(self._ids), "cancel",
                                                         {"target": rid}))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    async def call(self, op: str, args: Mapping[str, Any],
                   until: float) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """One request: the bodies of its parts and of its final answer.  Raises
        :class:`~kvfs.raftkv.protocol.RemoteError` for an error answer and
        :class:`_ConnectionLost` when the connection fails or no answer comes by ``until``
        (then the connection is closed: the member is stuck or the path to it is dead)."""
        rid, call = self.start(op, args)
        parts: list[dict[str, Any]] = []
        try:
            with trio.move_on_at(until):
                while True:
                    try:
                        response = await call.receive.receive()
                    except trio.EndOfChannel:
                        raise _ConnectionLost(self.error or "closed") from None
                    if response.error is not None:
                        raise response.error
                    if response.kind == "more":
                        parts.append(response.body)
                        continue
                    return parts, response.body
            self.close(f"no answer to {op} in time")
            raise _ConnectionLost(f"no answer to {op} in time")
        finally:
            self._calls.pop(rid, None)


@dataclass(slots=True)
class _Session:
    client_id: int
    seq: int = 0


def _new_client_id() -> int:
    return secrets.randbits(63) or 1  # 0 means "no session" to the state machine


class RaftClientEngine(KVEngine):
    """A :class:`KVEngine` on a kvfs Raft store (see module docstring)."""

    shared = True

    def __init__(self, url: RaftURL, ssl_context: ssl.SSLContext | None = None, *,
                 max_sessions: int = 32, follow_hints: bool = False) -> None:
        self.url = url
        self._endpoints = list(url.endpoints)
        self._follow_hints = follow_hints
        self._ssl = ssl_context
        self._pfx = url.key_prefix
        self._pfx_end = prefix_end(self._pfx)
        self._per_try = max(1.0, url.timeout / 3)
        self._index = 0
        self._conn: _Connection | None = None
        self._connect_lock = trio.Lock()
        self._last_error = ""
        self.client_id = _new_client_id()
        self._free_sessions = [_Session(self.client_id)]
        self._session_slots = trio.Semaphore(max_sessions)
        self._closed = False

    @classmethod
    async def open(cls, url: str) -> RaftClientEngine:
        """Parse ``url`` (ValueError), load its TLS files (ValueError) and reach a member
        (EngineUnavailable after the URL's timeout)."""
        parsed = parse_raft_url(url)
        engine = cls(parsed, client_ssl_context(parsed) if parsed.tls else None)
        try:
            await engine.current_revision()
        except BaseException:
            await engine.aclose()
            raise
        return engine

    def describe(self) -> str:
        return self.url.describe()

    def __repr__(self) -> str:
        return f"RaftClientEngine({self.describe()!r})"

    @property
    def current_endpoint(self) -> str:
        """The endpoint (host:port) requests currently go to."""
        return self._endpoints[self._index]

    # -- connections and retries -------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise KVError("raft engine is closed")

    def _unavailable(self) -> EngineUnavailable:
        msg = (f"raft store at {','.join(self._endpoints)}: unavailable for "
               f"{self.url.timeout:g} s")
        if self._last_error:
            msg += f" (last error: {self._last_error})"
        return EngineUnavailable(msg)

    def _note(self, endpoint: str, error: str) -> None:
        self._last_error = p.one_line(f"{endpoint}: {error}")

    def _drop(self, conn: _Connection, reason: str, to: int | None = None) -> None:
        """Leave ``conn`` for the next endpoint (or endpoint number ``to``) -- unless
        another caller already did after the same failure."""
        self._note(conn.endpoint, reason)
        if self._conn is conn:
            self._conn = None
            conn.close(reason)
            self._index = (self._index + 1) % len(self._endpoints) if to is None else to

    async def _connection(self, deadline: float) -> _Connection:
        conn = self._conn
        if conn is not None and conn.alive:
            return conn
        with trio.move_on_at(deadline):
            async with self._connect_lock:
                return await self._connect(deadline)
        self._check_open()
        raise self._unavailable()

    async def _connect(self, deadline: float) -> _Connection:
        failures = 0
        while True:
            self._check_open()
            conn = self._conn
            if conn is not None:
                if conn.alive:
                    return conn
                self._drop(conn, conn.error or "closed")
            endpoint = self._endpoints[self._index]
            error = "no answer to the connection handshake in time"
            try:
                with trio.move_on_at(min(deadline, trio.current_time() + self._per_try)):
                    self._conn = await _Connection.open(endpoint, self._ssl)
                    return self._conn
            except p.RemoteError as exc:
                error = exc.message
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError,
                    p.ProtocolError, ssl.SSLError) as exc:
                error = _describe(exc)
            self._note(endpoint, error)
            self._index = (self._index + 1) % len(self._endpoints)
            failures += 1
            await self._pause(failures, deadline)

    async def _pause(self, failures: int, deadline: float) -> None:
        """Back off after each full round of endpoints failed."""
        n = len(self._endpoints)
        if failures % n == 0:
            pause = min(0.5, 0.05 * 2 ** min(failures // n - 1, 4))
            await trio.sleep(max(0.0, min(pause, deadline - trio.current_time())))

    async def _request(self, op: str, args: dict[str, Any], *, deadline: float | None = None
                       ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Send ``op`` until a member answers it or the deadline passes (see module
        docstring for which failures move on to another member)."""
        self._check_open()
        if deadline is None:
            deadline = trio.current_time() + self.url.timeout
        failures = 0
        while True:
            now = trio.current_time()
            if now >= deadline:
                raise self._unavailable()
            conn = await self._connection(deadline)
            attempt = min(deadline - trio.current_time(), self._per_try)
            if "timeout" in p.REQUEST_ARGS[op]:
                args["timeout"] = max(attempt, 0.001)
            try:
                return await conn.call(op, args, min(deadline, now + attempt + _GRACE))
            except _ConnectionLost as exc:
                self._check_open()
                self._drop(conn, str(exc))
            except p.RemoteError as exc:
                if exc.code == p.NOT_LEADER:
                    if not self._follow_leader(conn, exc):
                        # An election is under way: ask the same member again shortly.
                        await trio.sleep(max(0.0, min(0.05, deadline - trio.current_time())))
                elif exc.code == p.UNAVAILABLE:
                    self._drop(conn, exc.message)
                else:
                    raise exc.to_kv_error() from None
            failures += 1
            await self._pause(failures, deadline)

    def _follow_leader(self, conn: _Connection, exc: p.RemoteError) -> bool:
        """Move towards the leader a ``not_leader`` answer names; False when it names
        none."""
        endpoint = exc.fields.get("endpoint")
        if self._follow_hints and endpoint and endpoint not in self._endpoints:
            self._endpoints.append(endpoint)
        if endpoint in self._endpoints and endpoint != conn.endpoint:
            self._drop(conn, exc.message, to=self._endpoints.index(endpoint))
        elif not exc.fields.get("leader"):
            self._note(conn.endpoint, "no leader yet")
            return False
        else:
            self._drop(conn, exc.message)
        return True

    @asynccontextmanager
    async def _session(self, deadline: float) -> AsyncIterator[_Session]:
        """A session with no other write outstanding (see module docstring)."""
        acquired = False
        with trio.move_on_at(deadline):
            await self._session_slots.acquire()
            acquired = True
        if not acquired:
            raise EngineUnavailable("raft: every client session is busy with a write that "
                                    f"has not finished in {self.url.timeout:g} s")
        session = self._free_sessions.pop() if self._free_sessions else \
            _Session(_new_client_id())
        try:
            yield session
        finally:
            self._free_sessions.append(session)
            self._session_slots.release()

    async def _write(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        self._check_open()
        deadline = trio.current_time() + self.url.timeout
        async with self._session(deadline) as session:
            # The next seq of a session with nothing outstanding; every re-send below
            # carries the same pair.
            session.seq += 1
            args["client_id"], args["seq"] = session.client_id, session.seq
            _, final = await self._request(op, args, deadline=deadline)
            return final

    # -- key mapping -------------------------------------------------------------------------

    def _wire_end(self, end: bytes) -> bytes:
        return self._pfx_end if end == b"\x00" else self._pfx + end

    def _kv(self, item: list[Any]) -> KeyValue:
        return p.kv_from_wire(item, self._pfx)

    # -- KVEngine ----------------------------------------------------------------------------

    async def get(self, key: bytes) -> KeyValue | None:
        _, final = await self._request("get", {"key": self._pfx + key})
        return None if final["kv"] is None else self._kv(final["kv"])

    async def get_many(self, keys: Sequence[bytes]) -> list[KeyValue | None]:
        out: list[KeyValue | None] = []
        for i in range(0, len(keys), _GET_MANY_BATCH):
            wire = [self._pfx + k for k in keys[i:i + _GET_MANY_BATCH]]
            parts, final = await self._request("get_many", {"keys": wire})
            for body in [*parts, final]:
                out.extend(None if kv is None else self._kv(kv) for kv in body["kvs"])
            if len(out) != i + len(wire):
                raise KVError(f"get_many: {len(wire)} keys asked, "
                                      f"{len(out) - i} answered")
        return out

    async def range(self, start: bytes, end: bytes, *, limit: int = 0,
                    keys_only: bool = False) -> RangeResult:
        parts, final = await self._request("range", {
            "start": self._pfx + start, "end": self._wire_end(end), "limit": limit,
            "keys_only": keys_only})
        kvs = [self._kv(kv) for body in [*parts, final] for kv in body["kvs"]]
        return RangeResult(kvs, final["more"], final["revision"])

    async def commit(self, compares: Sequence[Compare], puts: Sequence[Put],
                     deletes: Sequence[Delete] = ()) -> CommitResult:
        self.limits.check(compares, puts, deletes)
        pfx = self._pfx
        final = await self._write("commit", {
            "compares": [[pfx + c.key, c.mod_revision] for c in compares],
            "puts": [[pfx + x.key, x.value, x.lease] for x in puts],
            "deletes": [[pfx + d.key, None if d.range_end is None else
                         self._wire_end(d.range_end)] for d in deletes],
        })
        return CommitResult(final["succeeded"], final["revision"])

    async def watch(self, start: bytes, end: bytes,
                    start_revision: int) -> AsyncIterator[WatchBatch]:
        self._check_open()
        wire = {"start": self._pfx + start, "end": self._wire_end(end)}
        next_revision = start_revision
        # While a member serves the watch there is no deadline; one starts at a failure.
        deadline: float | None = trio.current_time() + self.url.timeout
        failures = 0
        while True:
            self._check_open()
            if deadline is None:
                deadline = trio.current_time() + self.url.timeout
            conn = await self._connection(deadline)
            held: list[WatchEvent] = []  # events of a revision not yet complete
            reason = ""
            call: _Call | None
            try:
                rid, call = conn.start("watch", {**wire, "start_revision": next_revision})
            except _ConnectionLost as exc:
                rid, call, reason = 0, None, str(exc)
            try:
                while call is not None and not reason:
                    try:
                        response = await call.receive.receive()
                    except trio.EndOfChannel:
                        reason = conn.error or "closed"
                        break
                    if response.error is not None:
                        if response.error.code not in (p.UNAVAILABLE, p.NOT_LEADER):
                            raise response.error.to_kv_error() from None
                        reason = response.error.message
                    elif response.kind == "ok":
                        reason = "the member ended the watch (it is shutting down)"
                    else:
                        deadline, failures = None, 0  # the member serves the watch
                        held.extend(
                            event for item in response.body["events"]
                            if (event := p.event_from_wire(item, self._pfx)).mod_revision
                            >= next_revision)
                        if response.body["complete"] and held:
                            batch = WatchBatch(held[-1].mod_revision, held)
                            held = []
                            next_revision = batch.revision + 1
                            yield batch
            finally:
                if conn.alive:
                    conn.forget(rid, cancel=True)
            self._check_open()
            self._drop(conn, reason)
            if deadline is None:
                deadline = trio.current_time() + self.url.timeout
            if trio.current_time() >= deadline:
                raise self._unavailable()
            failures += 1
            await self._pause(failures, deadline)

    async def current_revision(self) -> int:
        _, final = await self._request("current_revision", {})
        return int(final["revision"])

    async def lease_grant(self, ttl: float) -> int:
        if not (ttl > 0 and math.isfinite(ttl)):
            raise ValueError(f"lease TTL must be a positive number of seconds, not {ttl}")
        final = await self._write("lease_grant", {"ttl": float(ttl)})
        return int(final["lease"])

    async def lease_keepalive(self, lease: int) -> bool:
        _, final = await self._request("lease_keepalive", {"lease": lease})
        return bool(final["alive"])

    async def lease_revoke(self, lease: int) -> None:
        await self._write("lease_revoke", {"lease": lease})

    async def compact(self, revision: int) -> None:
        await self._write("compact", {"revision": max(0, revision)})

    async def status(self) -> dict[str, Any]:
        """The status of the member this client talks to: member, leader, leader_endpoint,
        role, term, commit, applied."""
        _, final = await self._request("status", {})
        return final

    # -- operations (kvfs raft member, transfer-leader, snapshot save) ----------------------

    async def member_list(self) -> dict[str, Any]:
        """The member table as of a read barrier: ``members`` (``[id, name, peer_url,
        client_url, learner]`` each), ``leader`` (id, 0 if unknown), ``cluster_token``."""
        _, final = await self._request("member_list", {})
        return final

    async def member_add(self, name: str, peer_url: str, client_url: str, *,
                         learner: bool) -> dict[str, Any]:
        """Add a member (through the leader); returns its id (``member``) and the table
        after the change (``members``, ``cluster_token``)."""
        return await self._write("member_add", {"name": name, "peer_url": peer_url,
                                                "client_url": client_url,
                                                "learner": learner})

    async def member_promote(self, target: str) -> int:
        """Make the learner ``target`` (name or hex id) a voter; returns its id."""
        return int((await self._write("member_promote", {"target": target}))["member"])

    async def member_remove(self, target: str) -> int:
        """Remove member ``target`` (name or hex id); returns its id."""
        return int((await self._write("member_remove", {"target": target}))["member"])

    async def transfer_leader(self, target: str) -> int:
        """Hand leadership to the voter ``target`` and wait until it leads; returns its id."""
        _, final = await self._request("transfer_leader", {"target": target})
        return int(final["leader"])

    async def snapshot(self) -> tuple[int, bytes, str]:
        """A consistent snapshot of the replicated state: (applied index, data, its xxh64
        in hex), checked against the member's own size and hash."""
        parts, final = await self._request("snapshot", {})
        data = b"".join(part["data"] for part in parts)
        digest = f"{xxhash.xxh64_intdigest(data):016x}"
        if len(data) != final["size"] or digest != final["hash"]:
            raise KVError(f"the snapshot arrived damaged: {len(data)} bytes with hash "
                          f"{digest}, the member sent {final['size']} with {final['hash']}")
        return int(final["index"]), data, digest

    async def aclose(self) -> None:
        self._closed = True
        if self._conn is not None:
            self._conn.close("the engine was closed")
            self._conn = None
