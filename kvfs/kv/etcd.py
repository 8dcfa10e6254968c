"""The etcd metadata engine: :class:`EtcdEngine` speaks etcd's v3 gRPC API directly.

URL: ``etcd://host:port[,host:port...]/PREFIX[?cacert=&cert=&key=&server_name=&user=&
password_env=&timeout=]`` (see :mod:`kvfs.kv.etcd_url`).

Responsibilities and invariants:

* **Namespacing.**  Key ``k`` is stored at ``PREFIX/k``; every request is confined to
  ``[PREFIX/, prefix_end(PREFIX/))`` (an end of ``b"\\x00"`` means the end of *this* volume's
  keyspace) and the prefix is stripped from everything returned, so two volumes on one
  cluster never see each other's keys.  Revisions, leases and compaction are cluster-wide.
* **One etcd Txn per commit**: compares are ``mod_revision == N`` (etcd gives absent keys
  mod revision 0), success ops are the puts (with their lease) and deletes.  Limits are
  checked before sending; a put with an unknown lease fails like a failed compare.
* **Bounded waiting.**  Every RPC has a deadline.  UNAVAILABLE / DEADLINE_EXCEEDED rotate to
  the next endpoint and retry until the URL's ``timeout`` has passed, then raise
  :class:`EngineUnavailable`.  A commit is only re-sent when the failure shows it was never
  delivered, or when re-sending cannot double-apply it: if a re-sent commit's compares fail
  after an ambiguous failure, the outcome is unknown and :class:`EngineUnavailable` says so.
* **Errors** are classified once, by status code, in :mod:`kvfs.kv.etcd_errors`, and map
  to :mod:`kvfs.kv.api`: NOSPACE → :class:`NoSpace`, oversized or duplicate transactions →
  :class:`TxnTooLarge`, authentication and TLS problems → :class:`EngineAuthError`; an
  unreachable endpoint (refused, or silent behind a partition) is always retried and
  failed over.  All messages are one line and never contain the password.
* grpc calls are awaited through :func:`~kvfs.kv.etcd_bridge.await_future` (no thread per
  call); each watch uses one thread (:class:`~kvfs.kv.etcd_bridge.WatchStream`).
"""

from __future__ import annotations

import math
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import aclosing
from typing import Any

import grpc
import trio
from pyetcd import etcdrpc

from kvfs.kv.api import (
    CommitResult,
    Compacted,
    Compare,
    Delete,
    EngineUnavailable,
    KeyValue,
    KVEngine,
    KVError,
    NoSpace,
    Put,
    RangeResult,
    TxnTooLarge,
    WatchBatch,
    WatchEvent,
    prefix_end,
)
from kvfs.kv.etcd_bridge import (
    Channels,
    StreamEnd,
    Stubs,
    WatchStream,
    await_future,
    one_line,
    rpc_details,
    run_first_response,
)
from kvfs.kv.etcd_errors import Failure, classify
from kvfs.kv.etcd_url import EtcdURL, parse_etcd_url

__all__ = ["EngineAuthError", "EtcdEngine", "EtcdURL", "parse_etcd_url"]

_PAGE = 1000


class EngineAuthError(KVError):
    """etcd refused our credentials (user/password, client certificate or TLS trust)."""


class LeaseNotFound(KVError):
    """etcd does not know the lease (it expired or was revoked)."""


class AuthNotEnabled(KVError):
    """A password was given but the cluster does not use authentication."""


class _Ambiguous(Exception):
    """A mutation failed in a way that may or may not have applied it."""


class _Secret:
    """Holds the password; never shown by repr/str."""

    __slots__ = ("value",)

    def __init__(self, value: str) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "<hidden>"

    __str__ = __repr__


class EtcdEngine(KVEngine):
    """A :class:`KVEngine` on an etcd v3 cluster (see module docstring)."""

    shared = True

    def __init__(self, url: EtcdURL, credentials: grpc.ChannelCredentials | None,
                 password: _Secret | None = None) -> None:
        self.url = url
        self._pfx = url.key_prefix
        self._pfx_len = len(self._pfx)
        self._end = prefix_end(self._pfx)
        self._chans = Channels(url.endpoints, credentials, url.server_name)
        self._password = password
        self._metadata: tuple[tuple[str, str], ...] | None = None
        self._per_try = max(1.0, url.timeout / 3)
        self._page = _PAGE
        self._closed = False

    # -- opening ---------------------------------------------------------------------

    @classmethod
    async def open(cls, url: str) -> EtcdEngine:
        """Parse ``url`` (ValueError), connect, authenticate and probe the cluster once.

        A wrong certificate or password fails with :class:`EngineAuthError`, an unreachable
        cluster with :class:`EngineUnavailable` after the URL's timeout.
        """
        parsed = parse_etcd_url(url)
        credentials = None
        if parsed.tls:
            files = {}
            for name in ("cacert", "cert", "key"):
                path = getattr(parsed, name)
                if path is not None:
                    try:
                        with open(path, "rb") as f:
                            files[name] = f.read()
                    except OSError as exc:
                        raise ValueError(f"cannot read {name} file {path}: "
                                         f"{exc.strerror or exc}") from None
            credentials = grpc.ssl_channel_credentials(
                root_certificates=files["cacert"], private_key=files.get("key"),
                certificate_chain=files.get("cert"))
        password = None
        if parsed.user is not None:
            value = os.environ.get(parsed.password_env)
            if value is None:
                raise ValueError(f"etcd user {parsed.user!r} needs a password in the "
                                 f"environment variable {parsed.password_env}")
            password = _Secret(value)
        engine = cls(parsed, credentials, password)
        try:
            if password is not None:
                await engine._authenticate()
            await engine.current_revision()
        except BaseException:
            await engine.aclose()
            raise
        return engine

    def describe(self) -> str:
        return self.url.describe()

    @property
    def current_endpoint(self) -> str:
        """The endpoint (host:port) requests currently go to."""
        return self._chans.endpoint

    def __repr__(self) -> str:
        return f"EtcdEngine({self.describe()!r})"

    # -- calling etcd --------------------------------------------------------------------

    def _where(self) -> str:
        return f"etcd at {','.join(self.url.endpoints)}"

    def _classify(self, exc: grpc.RpcError) -> tuple[Failure, str]:
        code, details = rpc_details(exc)
        failure = classify(code, details, tls=self.url.tls)
        if failure is Failure.OTHER:
            details = f"{code.name}: {details}"  # an unexpected error: say which
        return failure, details

    def _map_error(self, failure: Failure, details: str, endpoint: str) -> KVError:
        """The :mod:`kvfs.kv.api` error for a failure that is not retried."""
        where = self._where()
        if failure is Failure.NO_SPACE:
            return NoSpace(f"{where}: database space exceeded (NOSPACE alarm; compact, "
                           "defragment and `etcdctl alarm disarm`)")
        if failure is Failure.TOO_LARGE:
            return TxnTooLarge(f"{where}: {one_line(details)}")
        if failure is Failure.COMPACTED:
            return Compacted(0, 0)
        if failure is Failure.LEASE_NOT_FOUND:
            return LeaseNotFound(f"{where}: {one_line(details)}")
        if failure is Failure.TLS:
            return EngineAuthError(f"{where}: TLS handshake with {endpoint} failed: "
                                   f"{one_line(details, 200)}")
        if failure in (Failure.AUTH, Failure.AUTH_TOKEN_EXPIRED):
            return EngineAuthError(f"{where}: authentication failed: {one_line(details)}")
        if failure is Failure.AUTH_NOT_ENABLED:
            return AuthNotEnabled(f"{where}: {one_line(details)}")
        return KVError(f"{where}: {one_line(details)}")

    def _unavailable(self, last: str) -> EngineUnavailable:
        msg = f"{self._where()}: unreachable for {self.url.timeout:g} s"
        if last:
            msg += f" (last error: {one_line(last, 200)})"
        return EngineUnavailable(msg)

    async def _call(self, make: Callable[[Stubs, float, Any], Awaitable[Any]], *,
                    mutation: bool = False, deadline: float | None = None,
                    authenticated: bool = True) -> Any:
        """Run ``make(stubs, timeout, metadata)`` until it succeeds or the deadline passes.

        Raises :class:`_Ambiguous` for a ``mutation`` that may have been applied.
        """
        if self._closed:
            raise KVError(f"{self._where()}: engine is closed")
        if deadline is None:
            deadline = trio.current_time() + self.url.timeout
        last = ""
        failures = 0
        reauthed = False
        while True:
            remaining = deadline - trio.current_time()
            if remaining <= 0:
                raise self._unavailable(last)
            index, stubs = self._chans.current()
            md = self._metadata if authenticated else None
            try:
                return await make(stubs, min(remaining, self._per_try), md)
            except grpc.RpcError as exc:
                failure, details = self._classify(exc)
                if self._closed:
                    raise KVError(f"{self._where()}: engine is closed") from None
                if (failure is Failure.AUTH_TOKEN_EXPIRED and authenticated
                        and self._password is not None and not reauthed):
                    reauthed = True
                    await self._authenticate(deadline)
                    continue
                if not failure.transient:
                    raise self._map_error(failure, details,
                                          self.url.endpoints[index]) from None
                last = details
                self._chans.rotate(index)
                if mutation and failure is Failure.MAYBE_SENT:
                    raise _Ambiguous(details) from None
                failures += 1
                if failures % len(self.url.endpoints) == 0:
                    pause = min(0.5, 0.05 * 2 ** (failures // len(self.url.endpoints)))
                    await trio.sleep(min(pause, max(0.0, deadline - trio.current_time())))

    async def _unary(self, service: str, method: str, request: Any, **kw: Any) -> Any:
        def make(stubs: Stubs, timeout: float, md: Any) -> Awaitable[Any]:
            rpc = getattr(getattr(stubs, service), method)
            return await_future(rpc.future(request, timeout=timeout, metadata=md))

        return await self._call(make, **kw)

    async def _authenticate(self, deadline: float | None = None) -> None:
        assert self._password is not None and self.url.user is not None
        req = etcdrpc.AuthenticateRequest(name=self.url.user, password=self._password.value)
        try:
            resp = await self._unary("auth", "Authenticate", req, authenticated=False,
                                     deadline=deadline)
        except AuthNotEnabled:
            self._metadata = None
            return
        except KVError as exc:
            if isinstance(exc, EngineUnavailable):
                raise
            raise EngineAuthError(f"{self._where()}: authentication as user "
                                  f"{self.url.user!r} failed (check the password in "
                                  f"${self.url.password_env})") from None
        self._metadata = (("token", resp.token),)

    # -- key mapping ---------------------------------------------------------------------

    def _wire_end(self, end: bytes) -> bytes:
        return self._end if end == b"\x00" else self._pfx + end

    def _kv(self, kv: Any) -> KeyValue:
        return KeyValue(kv.key[self._pfx_len:], kv.value, kv.mod_revision, kv.create_revision,
                        kv.lease)

    # -- KVEngine ----------------------------------------------------------------------

    async def get(self, key: bytes) -> KeyValue | None:
        resp = await self._unary("kv", "Range", etcdrpc.RangeRequest(key=self._pfx + key))
        return self._kv(resp.kvs[0]) if resp.kvs else None

    async def get_many(self, keys: Sequence[bytes]) -> list[KeyValue | None]:
        # One read-only Txn of point Ranges per 128 keys: one round trip, one revision.
        out: list[KeyValue | None] = []
        for i in range(0, len(keys), self.limits.max_ops):
            part = keys[i:i + self.limits.max_ops]
            ops = [etcdrpc.RequestOp(request_range=etcdrpc.RangeRequest(key=self._pfx + k))
                   for k in part]
            resp = await self._unary("kv", "Txn", etcdrpc.TxnRequest(success=ops))
            for r in resp.responses:
                kvs = r.response_range.kvs
                out.append(self._kv(kvs[0]) if kvs else None)
        return out

    async def range(self, start: bytes, end: bytes, *, limit: int = 0,
                    keys_only: bool = False) -> RangeResult:
        while True:
            try:
                return await self._range(start, end, limit, keys_only)
            except Compacted:  # a pinned page fell behind a compaction: start again
                continue

    async def _range(self, start: bytes, end: bytes, limit: int,
                     keys_only: bool) -> RangeResult:
        key, range_end = self._pfx + start, self._wire_end(end)
        kvs: list[KeyValue] = []
        rev = 0
        while True:
            want = self._page if not limit else min(self._page, limit - len(kvs))
            req = etcdrpc.RangeRequest(key=key, range_end=range_end, limit=want,
                                       revision=rev, keys_only=keys_only)
            try:
                resp = await self._unary("kv", "Range", req)
            except TxnTooLarge:  # the page exceeded the receive limit: smaller pages
                if self._page == 1:
                    raise
                self._page = max(1, self._page // 4)
                continue
            if not rev:
                rev = resp.header.revision
            kvs.extend(self._kv(kv) for kv in resp.kvs)
            if not resp.more:
                return RangeResult(kvs, False, rev)
            if limit and len(kvs) >= limit:
                return RangeResult(kvs, True, rev)
            key = resp.kvs[-1].key + b"\x00"

    async def commit(self, compares: Sequence[Compare], puts: Sequence[Put],
                     deletes: Sequence[Delete] = ()) -> CommitResult:
        self.limits.check(compares, puts, deletes)
        pfx = self._pfx
        cmp = [etcdrpc.Compare(result=etcdrpc.Compare.EQUAL, target=etcdrpc.Compare.MOD,
                               key=pfx + c.key, mod_revision=c.mod_revision)
               for c in compares]
        ops = [etcdrpc.RequestOp(request_put=etcdrpc.PutRequest(
            key=pfx + p.key, value=p.value, lease=p.lease)) for p in puts]
        for d in deletes:
            dr = (etcdrpc.DeleteRangeRequest(key=pfx + d.key) if d.range_end is None else
                  etcdrpc.DeleteRangeRequest(key=pfx + d.key,
                                             range_end=self._wire_end(d.range_end)))
            ops.append(etcdrpc.RequestOp(request_delete_range=dr))
        req = etcdrpc.TxnRequest(compare=cmp, success=ops)
        deadline = trio.current_time() + self.url.timeout
        ambiguous = False
        while True:
            try:
                resp = await self._unary("kv", "Txn", req, mutation=True, deadline=deadline)
                break
            except _Ambiguous:
                ambiguous = True
            except LeaseNotFound:
                return CommitResult(False, await self.current_revision())
        if ambiguous and not resp.succeeded:
            return await self._settle_ambiguous(puts, deletes, resp.header.revision)
        return CommitResult(resp.succeeded, resp.header.revision)

    async def _settle_ambiguous(self, puts: Sequence[Put], deletes: Sequence[Delete],
                                revision: int) -> CommitResult:
        """A commit was resent after its connection broke, and the resend's compares
        failed: either another writer got in between, or the first send was applied.
        Its writes tell which -- every put value in place (and every deleted key gone)
        means it was applied; anything else may be a conflict or the first send overwritten
        since, so the result says the outcome is unknown (``maybe_applied``)."""
        single = [d.key for d in deletes if d.range_end is None]
        if not puts and not single:
            raise EngineUnavailable(f"{self._where()}: connection lost during a commit and "
                                    "its outcome is unknown")
        got = await self.get_many([p.key for p in puts] + single)
        put_state, del_state = got[:len(puts)], got[len(puts):]
        applied = all(g is not None and g.value == p.value for g, p in zip(put_state, puts,
                                                                               strict=True))
        applied = applied and all(g is None for g in del_state)
        if applied:
            revs = [g.mod_revision for g in put_state if g is not None]
            return CommitResult(True, max(revs) if revs else revision)
        return CommitResult(False, revision, maybe_applied=True)

    async def watch(self, start: bytes, end: bytes,
                    start_revision: int) -> AsyncIterator[WatchBatch]:
        create = etcdrpc.WatchCreateRequest(key=self._pfx + start, range_end=self._wire_end(end),
                                            start_revision=start_revision)
        next_rev = start_revision
        deadline = trio.current_time() + self.url.timeout
        failures = 0
        while True:
            if self._closed:
                raise KVError(f"{self._where()}: engine is closed")
            index, stubs = self._chans.current()
            create.start_revision = next_rev
            error: Any = None
            with WatchStream(stubs, create, self._metadata) as stream:
                async with aclosing(stream.receive()) as responses:
                    async for item in responses:
                        if isinstance(item, (grpc.RpcError, StreamEnd)):
                            error = item
                            break
                        if item.compact_revision:
                            raise Compacted(next_rev, item.compact_revision)
                        if item.canceled:
                            raise self._watch_canceled(item.cancel_reason)
                        if not item.events:
                            continue
                        deadline = trio.current_time() + self.url.timeout
                        failures = 0
                        events = [WatchEvent(ev.kv.key[self._pfx_len:],
                                             None if ev.type == 1 else ev.kv.value,
                                             ev.kv.mod_revision) for ev in item.events]
                        next_rev = events[-1].mod_revision + 1
                        yield WatchBatch(events[-1].mod_revision, events)
            if self._closed:
                raise KVError(f"{self._where()}: engine is closed")
            details = ""
            if isinstance(error, grpc.RpcError):
                failure, details = self._classify(error)
                if not failure.transient:
                    raise self._map_error(failure, details, self.url.endpoints[index])
            # The stream broke (member gone): resume from next_rev on the next endpoint.
            self._chans.rotate(index)
            if trio.current_time() >= deadline:
                raise self._unavailable(details)
            failures += 1
            await trio.sleep(min(0.5, 0.02 * 2 ** failures))

    def _watch_canceled(self, reason: str) -> KVError:
        low = reason.lower()
        if "auth" in low or "permission" in low:
            return EngineAuthError(f"{self._where()}: watch refused: {one_line(reason)}")
        return KVError(f"{self._where()}: watch canceled: {one_line(reason)}")

    async def current_revision(self) -> int:
        req = etcdrpc.RangeRequest(key=self._pfx, count_only=True)
        resp = await self._unary("kv", "Range", req)
        return int(resp.header.revision)

    async def lease_grant(self, ttl: float) -> int:
        if not (ttl > 0 and math.isfinite(ttl)):
            raise ValueError(f"lease TTL must be a positive number of seconds, not {ttl}")
        req = etcdrpc.LeaseGrantRequest(TTL=max(1, math.ceil(ttl)))
        resp = await self._unary("lease", "LeaseGrant", req)
        if resp.error:
            raise KVError(f"{self._where()}: lease grant failed: {one_line(resp.error)}")
        return int(resp.ID)

    async def lease_keepalive(self, lease: int) -> bool:
        req = etcdrpc.LeaseKeepAliveRequest(ID=lease)

        def make(stubs: Stubs, timeout: float, md: Any) -> Awaitable[Any]:
            return run_first_response(stubs.lease.LeaseKeepAlive, req, timeout, md)

        try:
            resp = await self._call(make)
        except LeaseNotFound:
            return False
        return resp is not None and resp.TTL > 0

    async def lease_revoke(self, lease: int) -> None:
        try:
            await self._unary("lease", "LeaseRevoke", etcdrpc.LeaseRevokeRequest(ID=lease))
        except LeaseNotFound:
            pass

    async def compact(self, revision: int) -> None:
        revision = min(revision, await self.current_revision())
        try:
            await self._unary("kv", "Compact",
                              etcdrpc.CompactionRequest(revision=revision, physical=False))
        except Compacted:
            pass  # already compacted at or past ``revision``

    async def aclose(self) -> None:
        self._closed = True
        self._chans.close()
