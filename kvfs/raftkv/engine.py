"""The KV seam served by a Raft store member running in this process.

:class:`MemberEngine` implements :class:`~kvfs.kv.api.KVEngine` over a
:class:`~kvfs.raftkv.node.RaftNode` whose loop it runs:

* writes (commit, lease grant and revoke, compact) are proposed under this engine's client
  id and a sequence number, and return once applied -- at most once, however often they
  are retried (see :mod:`kvfs.raftkv.statemachine`);
* reads (get, get_many, range, current_revision) pass a ReadIndex barrier first, so they
  are linearizable on any member, then read the local state machine;
* watches are served by the member's watch hub, from its replicated history;
* lease keep-alives go to the leader's lessor.

Every call gives up with :class:`~kvfs.kv.api.EngineUnavailable` after ``timeout`` seconds
without a leader, as the etcd engine does.  With a ``prefix``, the engine sees one volume's
namespace of the store exactly as a ``raft://HOSTS/PREFIX`` client does: key ``k`` is
stored as ``PREFIX/k``, and ranges, deletes and watches to the end stop at the prefix's end.

The node's loop runs as a trio system task owned by the engine (engines are opened and
closed without a nursery, like the others); ``aclose`` cancels it and waits for it.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import AsyncIterator, Sequence

import trio

from kvfs.kv.api import (
    CommitResult,
    Compare,
    Delete,
    EngineUnavailable,
    KeyValue,
    KVEngine,
    KVError,
    Limits,
    Put,
    RangeResult,
    WatchBatch,
    WatchEvent,
    prefix_end,
)
from kvfs.kv.state import ApplyResult, Command
from kvfs.raft import Role
from kvfs.raftkv.node import RaftNode

log = logging.getLogger(__name__)


def _new_client_id() -> int:
    return int.from_bytes(os.urandom(8), "big") >> 1 | 1  # 0 means "no session"


class MemberEngine(KVEngine):
    def __init__(self, node: RaftNode, *, timeout: float = 30.0, limits: Limits | None = None,
                 shared: bool = False, name: str = "raft", prefix: bytes = b"") -> None:
        self.node = node
        # The volume's namespace in the store, as a raft:// URL's prefix gives it: key k is
        # stored as prefix + k, and "to the end" (b"\x00") is the end of the prefix.
        self._pfx = prefix
        self._pfx_end = prefix_end(prefix) if prefix else b"\x00"
        self.timeout = timeout
        if limits is not None:
            self.limits = limits
        self.shared = shared
        self._name = name
        # Sessions of the state machine (client id, last seq), random so two engines (or
        # two runs) never share one.  The state machine remembers only a session's latest
        # seq, and answers an older one as superseded: a seq taken by one task could reach
        # the log after a later seq another task took (a wait for a leader, a proposal
        # dropped and made again), so each write holds a session of its own until it is
        # answered -- sessions are made as concurrency demands and reused.
        self._free_sessions: list[list[int]] = []  # [client id, last seq]
        self._closed = False
        self._cancel = trio.CancelScope()
        self._stopped = trio.Event()

    @classmethod
    async def start(cls, node: RaftNode, **options: object) -> MemberEngine:
        """Start ``node``'s loop and return an engine over it."""
        engine = cls(node, **options)  # type: ignore[arg-type]
        started = trio.Event()

        async def run() -> None:
            try:
                with engine._cancel:
                    async with trio.open_nursery() as nursery:
                        await nursery.start(node.run)
                        started.set()
            except BaseException:  # noqa: BLE001 - a system task must not raise
                log.exception("raft member %s stopped", node.id)
            finally:
                started.set()
                engine._stopped.set()

        trio.lowlevel.spawn_system_task(run)
        await started.wait()
        return engine

    def describe(self) -> str:
        return self._name

    # -- helpers -----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise KVError("engine is closed")

    def _deadline(self) -> float:
        return trio.current_time() + self.timeout

    async def _submit(self, command: Command) -> ApplyResult:
        self._check_open()
        session = self._free_sessions.pop() if self._free_sessions else [_new_client_id(), 0]
        session[1] += 1
        result = await self.node.submit(session[0], session[1], command,
                                        deadline=self._deadline())
        # Reused only once answered: a session whose write failed may still have that
        # write in the log, so it is dropped (the state machine forgets it in time).
        self._free_sessions.append(session)
        return result

    async def _barrier(self) -> None:
        self._check_open()
        await self.node.read_barrier(deadline=self._deadline())

    def _unprefixed(self, kv: KeyValue) -> KeyValue:
        if not self._pfx:
            return kv
        return KeyValue(kv.key[len(self._pfx):], kv.value, kv.mod_revision,
                        kv.create_revision, kv.lease)

    def _end(self, end: bytes) -> bytes:
        return self._pfx_end if end == b"\x00" else self._pfx + end

    # -- KVEngine ----------------------------------------------------------------------------

    async def get(self, key: bytes) -> KeyValue | None:
        await self._barrier()
        kv = self.node.kv.read(self._pfx + key)
        return None if kv is None else self._unprefixed(kv)

    async def get_many(self, keys: Sequence[bytes]) -> list[KeyValue | None]:
        await self._barrier()
        read = self.node.kv.read
        return [None if kv is None else self._unprefixed(kv)
                for kv in (read(self._pfx + key) for key in keys)]

    async def range(self, start: bytes, end: bytes, *, limit: int = 0,
                    keys_only: bool = False) -> RangeResult:
        await self._barrier()
        result = self.node.kv.read_range(self._pfx + start, self._end(end), limit=limit,
                                         keys_only=keys_only)
        return RangeResult([self._unprefixed(kv) for kv in result.kvs], result.more,
                           result.revision)

    async def commit(self, compares: Sequence[Compare], puts: Sequence[Put],
                     deletes: Sequence[Delete] = ()) -> CommitResult:
        self._check_open()
        self.limits.check(compares, puts, deletes)
        pfx = self._pfx
        command: Command = (
            "txn",
            [(pfx + c.key, c.mod_revision) for c in compares],
            [(pfx + p.key, p.value, p.lease) for p in puts],
            [(pfx + d.key, None if d.range_end is None else self._end(d.range_end))
             for d in deletes],
        )
        result = await self._submit(command)
        return CommitResult(result.succeeded, result.revision)

    async def watch(self, start: bytes, end: bytes,
                    start_revision: int) -> AsyncIterator[WatchBatch]:
        self._check_open()
        start, end = self._pfx + start, self._end(end)
        # Catch-up and registration happen with no checkpoint in between.
        catch_up = self.node.kv.state.events_since(start_revision, start, end)
        async for batch in self.node.hub.watch(start, end, catch_up):
            if self._pfx:
                cut = len(self._pfx)
                batch = WatchBatch(batch.revision, [
                    WatchEvent(ev.key[cut:], ev.value, ev.mod_revision) for ev in batch.events])
            yield batch

    async def current_revision(self) -> int:
        await self._barrier()
        return self.node.kv.state.revision

    async def lease_grant(self, ttl: float) -> int:
        if not (ttl > 0 and math.isfinite(ttl)):
            raise ValueError(f"lease TTL must be a positive number of seconds, not {ttl}")
        result = await self._submit(("lease_grant", float(ttl)))
        return result.lease_id

    async def lease_keepalive(self, lease: int) -> bool:
        self._check_open()
        deadline = self._deadline()
        while True:
            renewed = self.node.keepalive(lease)
            if renewed is not None:
                return renewed
            if trio.current_time() >= deadline:
                raise EngineUnavailable("raft: no leader to renew the lease")
            await trio.sleep(self.node.tick_seconds)

    async def lease_revoke(self, lease: int) -> None:
        await self._submit(("lease_revoke", lease))

    async def compact(self, revision: int) -> None:
        await self._barrier()
        await self._submit(("compact", min(revision, self.node.kv.state.revision)))

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._cancel.cancel()
        with trio.move_on_after(10):
            await self._stopped.wait()
        self.node.hub.close()

    @property
    def stopped(self) -> bool:
        """Whether the node's loop has ended (after ``aclose``, unless it hung)."""
        return self._stopped.is_set()

    @property
    def is_leader(self) -> bool:
        return self.node.role is Role.LEADER
