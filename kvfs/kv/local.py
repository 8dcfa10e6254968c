"""An in-process engine over :class:`~kvfs.kv.state.KVState`: the base of memory and embedded.

:class:`LocalEngine` turns the synchronous state machine into a :class:`KVEngine`: it checks
limits, expires leases, delivers watches to live watchers, and makes commits durable through
:meth:`LocalEngine._persist` with *group commit* -- commands applied while a flush is in
flight are written and fsync'd together by the next flush, so many concurrent FUSE requests
share one fsync.

Durability contract: a command is applied to the in-memory state first (so that concurrent
transactions serialise without awaiting), then the caller waits until its log record is
durable.  A command is only reported to its caller and to watchers once durable.  The log
is ordered, so a durable command implies every earlier command is durable too.  If the log
cannot be written the engine is poisoned: the in-memory state is ahead of the disk, so every
later call fails rather than acknowledge something that would be lost.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from typing import Any

import trio

from kvfs.kv.api import (
    CommitResult,
    Compare,
    Delete,
    KeyValue,
    KVEngine,
    KVError,
    Limits,
    Put,
    RangeResult,
    WatchBatch,
)
from kvfs.kv.state import ApplyResult, Command, Entry, Event, KVState
from kvfs.kv.watchhub import WatchHub


class LocalEngine(KVEngine):
    """A KV engine whose state lives in this process (see module docstring)."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.state = KVState()
        if limits is not None:
            self.limits = limits
        self._lease_deadline: dict[int, float] = {}
        self._watch_hub = WatchHub(self._load_value)
        self._closed = False
        self._poisoned: BaseException | None = None
        # group commit
        self._unflushed: list[Command] = []
        self._seq_applied = 0  # commands handed to the log
        self._seq_durable = 0  # commands known durable
        self._flushing = False
        self._durable_changed = trio.Event()
        # notifications held back until their command is durable: (seq, events, dropped)
        self._held: deque[tuple[int, list[Event], list[Any]]] = deque()

    # -- hooks for persistent subclasses -----------------------------------------------

    def _write_log(self, commands: list[Command]) -> None:
        """Durably append ``commands`` (runs in a worker thread).  Memory: nothing."""

    async def _store_value(self, value: bytes) -> Any:
        """Turn a value about to be put into what the state machine holds."""
        return value

    async def _load_value(self, stored: Any) -> bytes:
        """Turn a stored value back into bytes."""
        return stored  # type: ignore[no-any-return]

    def _release_values(self, dropped: list[Any]) -> None:
        """Free stored values no longer referenced (called once that is durable)."""

    def _after_flush(self) -> None:
        """Called on the event loop after each flush (snapshots hook in here)."""

    @property
    def _needs_log(self) -> bool:
        return False

    # -- internals ---------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise KVError("engine is closed")
        if self._poisoned is not None:
            raise KVError(f"engine stopped after a log write failed: {self._poisoned}")

    async def _apply(self, cmd: Command) -> ApplyResult:
        """Apply ``cmd`` now; return once it is durable and its watchers are notified."""
        before = self.state.revision
        # Revoking a lease with no keys removes it without a new revision; log it anyway.
        revokes_lease = cmd[0] == "lease_revoke" and cmd[1] in self.state.leases
        res = self.state.apply(cmd)
        # Lease grants and compactions change state without a new revision.
        changed = (self.state.revision != before or revokes_lease
                   or cmd[0] in ("lease_grant", "compact"))
        if not changed:
            return res
        events = self._events_of(res) if cmd[0] in ("txn", "lease_revoke") else []
        if not self._needs_log:
            self._notify(events)
            self._release_values(res.dropped)
            return res
        self._unflushed.append(cmd)
        self._seq_applied += 1
        seq = self._seq_applied
        self._held.append((seq, events, res.dropped))
        await self._wait_durable(seq)
        return res

    def _events_of(self, res: ApplyResult) -> list[Event]:
        if not res.succeeded:
            return []
        hist = self.state.history
        out: list[Event] = []
        for ev in reversed(hist):
            if ev.mod_revision != res.revision:
                break
            out.append(ev)
        out.reverse()
        return out

    async def _wait_durable(self, seq: int) -> None:
        while self._seq_durable < seq:
            if self._poisoned is not None:
                raise KVError(f"log write failed: {self._poisoned}")
            if not self._flushing:
                await self._flush()
            else:
                changed = self._durable_changed
                await changed.wait()

    async def _flush(self) -> None:
        self._flushing = True
        try:
            batch, self._unflushed = self._unflushed, []
            upto = self._seq_applied
            try:
                await trio.to_thread.run_sync(self._write_log, batch)
            except BaseException as exc:  # noqa: BLE001 - any failure poisons the engine
                self._poisoned = exc
                raise KVError(f"log write failed: {exc}") from exc
            self._seq_durable = upto
            while self._held and self._held[0][0] <= upto:
                _, events, dropped = self._held.popleft()
                self._notify(events)
                self._release_values(dropped)
            self._after_flush()
        finally:
            self._flushing = False
            ev, self._durable_changed = self._durable_changed, trio.Event()
            ev.set()

    def _notify(self, events: list[Event]) -> None:
        self._watch_hub.notify(events)

    async def _expire_leases(self) -> None:
        if not self._lease_deadline:
            return
        now = time.monotonic()
        for lease_id, deadline in list(self._lease_deadline.items()):
            if deadline <= now:
                self._lease_deadline.pop(lease_id, None)
                await self._apply(("lease_revoke", lease_id))

    async def _kv(self, key: bytes, entry: Entry, keys_only: bool = False) -> KeyValue:
        value = b"" if keys_only else await self._load_value(entry.value)
        return KeyValue(key, value, entry.mod_revision, entry.create_revision, entry.lease)

    # -- KVEngine ----------------------------------------------------------------------

    async def get(self, key: bytes) -> KeyValue | None:
        self._check_open()
        await self._expire_leases()
        entry = self.state.get(key)
        if entry is None:
            return None
        return await self._kv(key, entry)

    async def range(self, start: bytes, end: bytes, *, limit: int = 0,
                    keys_only: bool = False) -> RangeResult:
        self._check_open()
        await self._expire_leases()
        rev = self.state.revision
        picked: list[tuple[bytes, Entry]] = []
        more = False
        for key, entry in self.state.scan(start, end):
            if limit and len(picked) >= limit:
                more = True
                break
            picked.append((key, entry))
        kvs = [await self._kv(k, e, keys_only) for k, e in picked]
        return RangeResult(kvs, more, rev)

    async def commit(self, compares: Sequence[Compare], puts: Sequence[Put],
                     deletes: Sequence[Delete] = ()) -> CommitResult:
        self._check_open()
        self.limits.check(compares, puts, deletes)
        await self._expire_leases()
        stored = [(p.key, await self._store_value(p.value), p.lease) for p in puts]
        cmd: Command = (
            "txn",
            [(c.key, c.mod_revision) for c in compares],
            stored,
            [(d.key, d.range_end) for d in deletes],
        )
        res = await self._apply(cmd)
        if not res.succeeded:
            self._release_values([v for _, v, _ in stored])
        return CommitResult(res.succeeded, res.revision)

    async def watch(self, start: bytes, end: bytes,
                    start_revision: int) -> AsyncIterator[WatchBatch]:
        self._check_open()
        # Catch-up and registration happen with no await in between, so nothing is missed.
        catch_up = self.state.events_since(start_revision, start, end)
        async for batch in self._watch_hub.watch(start, end, catch_up):
            yield batch

    async def current_revision(self) -> int:
        self._check_open()
        return self.state.revision

    async def lease_grant(self, ttl: float) -> int:
        self._check_open()
        if not (ttl > 0 and math.isfinite(ttl)):
            raise ValueError(f"lease TTL must be a positive number of seconds, not {ttl}")
        res = await self._apply(("lease_grant", ttl))
        self._lease_deadline[res.lease_id] = time.monotonic() + ttl
        return res.lease_id

    async def lease_keepalive(self, lease: int) -> bool:
        self._check_open()
        await self._expire_leases()
        held = self.state.leases.get(lease)
        if held is None:
            return False
        self._lease_deadline[lease] = time.monotonic() + held.ttl
        return True

    async def lease_revoke(self, lease: int) -> None:
        self._check_open()
        self._lease_deadline.pop(lease, None)
        await self._apply(("lease_revoke", lease))

    async def compact(self, revision: int) -> None:
        self._check_open()
        await self._apply(("compact", min(revision, self.state.revision)))

    def restore_lease_deadlines(self) -> None:
        """After recovery every lease gets a full TTL again (as etcd does on restart)."""
        now = time.monotonic()
        self._lease_deadline = {lid: now + lease.ttl for lid, lease in self.state.leases.items()}

    async def aclose(self) -> None:
        self._closed = True
        self._watch_hub.close()


class MemoryEngine(LocalEngine):
    """A volatile engine for tests (``mem://``): everything is lost when the process ends."""

    def describe(self) -> str:
        return "memory"
