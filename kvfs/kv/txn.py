"""Optimistic transactions over any :class:`~kvfs.kv.api.KVEngine`, written once for all.

A :class:`Txn` remembers the mod revision of every key it reads and buffers its writes; at
the end it commits once, guarded by "every key I read still has the revision I saw".  On a
failed guard :func:`run_txn` runs the whole function again after a jittered, growing pause.
This is the single place where conflicts are retried.

Over a mount's record cache (:class:`~kvfs.kv.cache.CachedEngine`) reads may be answered
without a round trip.  That is safe for writes because the commit compares every key read
with the revision seen: a stale answer only fails the commit, and the cache forgets the
keys it compared, so the next attempt reads them from the engine.  An attempt that raises
:class:`Retry` (its reads do not fit together) or an error runs again with every read
from the engine (:func:`~kvfs.kv.cache.fresh_reads`), unless the caller takes a cached
error as final (a lookup's ENOENT is as fresh as the watch, like the kernel's own).

Unlike JuiceFS, a transaction that grows past the engine's limits is refused
(:class:`~kvfs.kv.api.TxnTooLarge`) -- it is never committed in parts.  Bulk work is split by
the caller into idempotent steps, each its own transaction.  Stale cached reads can also
build a transaction the engine refuses before checking its compares (a rename over a
directory the cache still shows empty deletes that directory's keys and puts its
attributes), so a refused attempt that may have read from the cache runs again with every
read from the engine, like an attempt that raised.

Reads inside a transaction see the transaction's own buffered writes.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from typing import Any, TypeVar

import trio

from kvfs.kv.api import (
    Compare,
    Conflict,
    Delete,
    EngineUnavailable,
    KeyValue,
    KVEngine,
    Put,
    TxnTooLarge,
    prefix_end,
)
from kvfs.kv.cache import Absent, CachedEngine, fresh_reads, reading_fresh

T = TypeVar("T")

_DELETED = object()

# Who hears of transactions run again, and why: ``"conflict"`` (the commit's compares
# failed), ``"retry"`` (the function raised Retry) or ``"cache"`` (an attempt that read
# from the record cache and raised is checked against the engine).  A mount's metrics set
# it for the mount's tasks, which inherit it; elsewhere nobody listens.
retry_observer: ContextVar[Callable[[Callable[..., Any], str], None] | None] = ContextVar(
    "kvfs_txn_retry_observer", default=None)


class Retry(Exception):
    """Raised by a transaction function whose reads do not fit together -- they were taken
    at different revisions, and something changed in between (an entry read first names an
    inode whose attributes, read next, are gone).  :func:`run_txn` runs the function again,
    exactly as after a failed commit."""


class Txn:
    """One attempt of an optimistic transaction (see module docstring)."""

    def __init__(self, kv: KVEngine) -> None:
        self.kv = kv
        self._read_revs: dict[bytes, int] = {}
        self._cache: dict[bytes, bytes | None] = {}
        self._writes: dict[bytes, object] = {}  # key -> bytes | _DELETED
        self._leases: dict[bytes, int] = {}
        self._on_commit: list[Callable[[], None]] = []
        self._prefix_deletes: list[bytes] = []
        self._absent_keys: list[bytes] = []
        self._absent_groups: list[bytes] = []
        self.revision = 0  # set after a successful commit
        self.maybe_applied = False  # the failed commit's outcome is unknown (CommitResult)

    async def get(self, key: bytes) -> bytes | None:
        """The value of ``key`` as this transaction sees it, recording a guard on it."""
        if key in self._writes:
            w = self._writes[key]
            return None if w is _DELETED else w  # type: ignore[return-value]
        if key in self._cache:
            return self._cache[key]
        kv = await self.kv.get(key)
        self._saw(key, kv)
        return self._cache[key]

    async def prefetch(self, *keys: bytes) -> None:
        """Read several keys in one engine round trip (each is guarded as by :meth:`get`)."""
        want = [k for k in keys if k not in self._writes and k not in self._cache]
        if not want:
            return
        for k, kv in zip(want, await self.kv.get_many(want), strict=True):
            self._saw(k, kv)

    def _saw(self, key: bytes, kv: KeyValue | None) -> None:
        self._read_revs[key] = kv.mod_revision if kv else 0
        self._cache[key] = kv.value if kv else None

    def guard(self, key: bytes, mod_revision: int) -> None:
        """Require ``key`` to still be at ``mod_revision`` at commit (from an earlier read)."""
        self._read_revs.setdefault(key, mod_revision)

    async def scan(self, prefix: bytes, *, limit: int = 0) -> list[KeyValue]:
        """Keys under ``prefix`` (unguarded: guard the owning key instead).

        Always read from the engine: the guard works because the owning key changes with
        every key under the prefix, so a scan taken after the guard's read and checked by
        the guard at commit shows the keys as they are then.  A cached listing may be
        older than a guard read from the engine, and the check would miss that."""
        with fresh_reads():
            res = await self.kv.range(prefix, prefix_end(prefix), limit=limit)
        return res.kvs

    def put(self, key: bytes, value: bytes, lease: int = 0) -> None:
        self._writes[key] = value
        if lease:
            self._leases[key] = lease

    def delete(self, key: bytes) -> None:
        self._writes[key] = _DELETED
        self._leases.pop(key, None)

    def delete_prefix(self, prefix: bytes) -> None:
        """Delete every key under ``prefix`` as one operation (no read needed).  The
        transaction must not also put a key under ``prefix`` (etcd refuses that)."""
        self._prefix_deletes.append(prefix)

    def note_absent(self, *, keys: Sequence[bytes] = (), groups: Sequence[bytes] = ()) -> None:
        """Tell a record cache what this commit shows to be absent: ``keys``, and every
        key under ``groups`` (a new inode's, say), so that reads of them need not ask."""
        self._absent_keys += keys
        self._absent_groups += groups

    def on_commit(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` once this attempt has committed (never for an attempt that retries)."""
        self._on_commit.append(fn)

    async def commit(self) -> bool:
        compares = [Compare(k, r) for k, r in self._read_revs.items()]
        puts = [Put(k, v, self._leases.get(k, 0))  # type: ignore[arg-type]
                for k, v in self._writes.items() if v is not _DELETED]
        deletes = [Delete(k) for k, v in self._writes.items() if v is _DELETED
                   and not any(k.startswith(p) for p in self._prefix_deletes)]
        deletes += [Delete(p, prefix_end(p)) for p in self._prefix_deletes]
        if not puts and not deletes:
            return True
        if isinstance(self.kv, CachedEngine) and (self._absent_keys or self._absent_groups):
            res = await self.kv.commit(compares, puts, deletes,  # type: ignore[arg-type]
                                       absent=Absent(self._absent_keys, self._absent_groups))
        else:
            res = await self.kv.commit(compares, puts, deletes)  # type: ignore[arg-type]
        self.revision = res.revision
        self.maybe_applied = res.maybe_applied
        return res.succeeded

    @property
    def writes(self) -> bool:
        return bool(self._writes or self._prefix_deletes)

async def run_txn(kv: KVEngine, fn: Callable[[Txn], Awaitable[T]], *,
                  attempts: int = 50, confirm_errors: bool = True) -> T:
    """Run ``fn`` in a fresh :class:`Txn` until its commit succeeds.

    ``fn`` must be safe to repeat: it may run several times, and only its last run's
    writes take effect.  Exceptions from ``fn`` abort without writing anything -- after
    one more run with every read from the engine if this one may have read from a record
    cache, unless ``confirm_errors`` is False (see module docstring).  Conflict means
    the last attempt was not applied; if it may have been (``CommitResult.maybe_applied``),
    :class:`EngineUnavailable` says its outcome is unknown.
    """
    delay = 0.0005
    maybe_applied = False
    fresh = reading_fresh()
    for _ in range(attempts):
        maybe_applied = False  # of this attempt, so what the loop leaves is the last one's
        txn = Txn(kv)
        cached = not fresh and isinstance(kv, CachedEngine) and kv.answering()
        try:
            if fresh:
                with fresh_reads():
                    result = await fn(txn)
            else:
                result = await fn(txn)
        except Retry:
            _retried(fn, "retry")
            fresh = fresh or cached
            await trio.sleep(random.uniform(0, delay))
            delay = min(delay * 2, 0.05)
            continue
        except Exception:
            if not cached or not confirm_errors:
                raise
            _retried(fn, "cache")
            fresh = True  # the failure may come from a stale record: check it for real
            continue
        try:
            committed = await txn.commit()
        except TxnTooLarge:
            if not cached:
                raise
            _retried(fn, "cache")
            fresh = True
            continue
        if committed:
            for hook in txn._on_commit:
                hook()
            return result
        _retried(fn, "conflict")
        maybe_applied = txn.maybe_applied
        await trio.sleep(random.uniform(0, delay))
        delay = min(delay * 2, 0.05)
    if maybe_applied:
        # The last attempt may have landed: a caller that undoes work on Conflict must not.
        raise EngineUnavailable("the engine's connection broke during a commit that was "
                                "sent again; its outcome is unknown")
    raise Conflict(f"transaction still conflicting after {attempts} attempts")


def _retried(fn: Callable[..., Any], reason: str) -> None:
    observer = retry_observer.get()
    if observer is not None:
        observer(fn, reason)
