"""Optimistic transactions over any :class:`~kvfs.kv.api.KVEngine`, written once for all.

A :class:`Txn` remembers the mod revision of every key it reads and buffers its writes; at
the end it commits once, guarded by "every key I read still has the revision I saw".  On a
failed guard :func:`run_txn` runs the whole function again after a jittered, growing pause.
This is the single place where conflicts are retried.

Unlike JuiceFS, a transaction that grows past the engine's limits is refused
(:class:`~kvfs.kv.api.TxnTooLarge`) -- it is never committed in parts.  Bulk work is split by
the caller into idempotent steps, each its own transaction.

Reads inside a transaction see the transaction's own buffered writes.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any, TypeVar

import trio
from sortedcontainers import SortedDict

from kvfs.kv.api import Compare, Conflict, Delete, KeyValue, KVEngine, Put, prefix_end

T = TypeVar("T")

_DELETED = object()

# Who hears of transactions run again, and why: ``"conflict"`` (the commit's compares
# failed), ``"retry"`` (the function raised Retry) or ``"hints"`` (an attempt that used read
# hints is checked against the engine).  A mount's metrics set it for the mount's tasks,
# which inherit it; elsewhere nobody listens and a retry costs one lookup more.
retry_observer: ContextVar[Callable[[Callable[..., Any], str], None] | None] = ContextVar(
    "kvfs_txn_retry_observer", default=None)


class Retry(Exception):
    """Raised by a transaction function whose reads do not fit together -- they were taken
    at different revisions, and something changed in between (an entry read first names an
    inode whose attributes, read next, are gone).  :func:`run_txn` runs the function again,
    exactly as after a failed commit."""


class ReadHints:
    """Values and mod revisions this process last saw, offered to transactions as guesses.

    A transaction may read a key from here instead of the engine.  That is safe because a
    commit compares every key it read with the revision it saw: a stale hint only makes the
    commit fail, and the retry reads from the engine.  An attempt that used hints and then
    raises, or ends without writing (nothing would check it), is run again without them.
    Entries are updated from every committed transaction and dropped when a watch reports
    the key changed elsewhere.
    """

    def __init__(self, limit: int = 200_000) -> None:
        # Sorted, so a deleted prefix is dropped without scanning everything.
        self._items: SortedDict = SortedDict()
        self._limit = limit
        self.hits = 0  # lookups that found a hint (for the mount's metrics)
        self.misses = 0

    def get(self, key: bytes) -> tuple[bytes | None, int] | None:
        hint: tuple[bytes | None, int] | None = self._items.get(key)
        if hint is None:
            self.misses += 1
        else:
            self.hits += 1
        return hint

    def put(self, key: bytes, value: bytes | None, mod_revision: int) -> None:
        """Record ``key``'s state after this process's own commit (``None``: deleted)."""
        if len(self._items) >= self._limit and key not in self._items:
            self._items.clear()  # hints are only guesses: forgetting them all is cheap
        self._items[key] = (value, mod_revision)

    def learn(self, key: bytes, value: bytes | None, mod_revision: int) -> None:
        """Record what a read returned, unless it may be older than what is known: a read
        sent before one of this process's commits can be answered after it, and must not
        bring the older value back (``Metadata.getattr`` answers from hints, and an
        O_APPEND write takes its offset from that answer).

        A present value replaces one of a lower or equal mod revision.  Absence says
        nothing about its age, so a read that contradicts the hint (absent against
        present, or present against absent) drops it rather than guess.
        """
        cur: tuple[bytes | None, int] | None = self._items.get(key)
        if cur is None:
            self.put(key, value, mod_revision)
        elif value is not None and cur[0] is not None:
            if mod_revision >= cur[1]:
                self._items[key] = (value, mod_revision)
        elif (value is None) != (cur[0] is None):
            del self._items[key]

    def drop(self, key: bytes) -> None:
        self._items.pop(key, None)

    def drop_prefix(self, prefix: bytes) -> None:
        for k in list(self._items.irange(prefix, prefix_end(prefix), inclusive=(True, False))):
            del self._items[k]

    def clear(self) -> None:
        self._items.clear()


class Txn:
    """One attempt of an optimistic transaction (see module docstring)."""

    def __init__(self, kv: KVEngine, hints: ReadHints | None = None, *,
                 trust_hints: bool = True) -> None:
        self.kv = kv
        self.hints = hints  # kept up to date with what this attempt reads and commits
        self.trust_hints = trust_hints  # may reads be answered from them?
        self.hinted: list[bytes] = []  # keys read from hints rather than the engine
        self._read_revs: dict[bytes, int] = {}
        self._cache: dict[bytes, bytes | None] = {}
        self._writes: dict[bytes, object] = {}  # key -> bytes | _DELETED
        self._leases: dict[bytes, int] = {}
        self._on_commit: list[Callable[[], None]] = []
        self._prefix_deletes: list[bytes] = []
        self._unhinted: set[bytes] = set()
        self.revision = 0  # set after a successful commit

    async def get(self, key: bytes) -> bytes | None:
        """The value of ``key`` as this transaction sees it, recording a guard on it."""
        if key in self._writes:
            w = self._writes[key]
            return None if w is _DELETED else w  # type: ignore[return-value]
        if key in self._cache:
            return self._cache[key]
        if self._from_hints(key):
            return self._cache[key]
        kv = await self.kv.get(key)
        self._saw(key, kv)
        return self._cache[key]

    async def prefetch(self, *keys: bytes) -> None:
        """Read several keys in one engine round trip (each is guarded as by :meth:`get`)."""
        want = [k for k in keys if k not in self._writes and k not in self._cache
                and not self._from_hints(k)]
        if not want:
            return
        for k, kv in zip(want, await self.kv.get_many(want), strict=True):
            self._saw(k, kv)

    def _from_hints(self, key: bytes) -> bool:
        hint = self.hints.get(key) if self.hints is not None and self.trust_hints else None
        if hint is None:
            return False
        self._cache[key], self._read_revs[key] = hint
        self.hinted.append(key)
        return True

    def _saw(self, key: bytes, kv: KeyValue | None) -> None:
        self._read_revs[key] = kv.mod_revision if kv else 0
        self._cache[key] = kv.value if kv else None
        if self.hints is not None:
            self.hints.learn(key, self._cache[key], self._read_revs[key])

    def guard(self, key: bytes, mod_revision: int) -> None:
        """Require ``key`` to still be at ``mod_revision`` at commit (from an earlier read)."""
        self._read_revs.setdefault(key, mod_revision)

    async def scan(self, prefix: bytes, *, limit: int = 0) -> list[KeyValue]:
        """Keys under ``prefix`` (unguarded: guard the owning key instead)."""
        res = await self.kv.range(prefix, prefix_end(prefix), limit=limit)
        return res.kvs

    def put(self, key: bytes, value: bytes, lease: int = 0, *, hint: bool = True) -> None:
        """Write ``key``; ``hint=False`` keeps the value out of the read hints (data
        blocks: large, and never read back through a transaction)."""
        self._writes[key] = value
        if lease:
            self._leases[key] = lease
        if not hint:
            self._unhinted.add(key)

    def delete(self, key: bytes) -> None:
        self._writes[key] = _DELETED
        self._leases.pop(key, None)

    def delete_prefix(self, prefix: bytes) -> None:
        """Delete every key under ``prefix`` as one operation (no read needed).  The
        transaction must not also put a key under ``prefix`` (etcd refuses that)."""
        self._prefix_deletes.append(prefix)

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
        res = await self.kv.commit(compares, puts, deletes)  # type: ignore[arg-type]
        self.revision = res.revision
        if self.hints is not None:
            self._update_hints(res.succeeded, res.revision)
        return res.succeeded

    @property
    def writes(self) -> bool:
        return bool(self._writes or self._prefix_deletes)

    def _update_hints(self, succeeded: bool, revision: int) -> None:
        hints = self.hints
        assert hints is not None
        if not succeeded:
            for k in self._read_revs:  # some of them changed; we do not know which
                hints.drop(k)
            return
        for p in self._prefix_deletes:
            hints.drop_prefix(p)
        for k, v in self._writes.items():
            if k in self._unhinted:
                continue
            if isinstance(v, bytes):
                hints.put(k, v, revision)
            else:
                hints.put(k, None, 0)


async def run_txn(kv: KVEngine, fn: Callable[[Txn], Awaitable[T]], *,
                  attempts: int = 50, hints: ReadHints | None = None,
                  trust_hints: bool = True) -> T:
    """Run ``fn`` in a fresh :class:`Txn` until its commit succeeds.

    ``fn`` must be safe to repeat: it may run several times, and only its last run's
    writes take effect.  Exceptions from ``fn`` abort without writing anything.  With
    ``hints``, reads may be answered from them (see :class:`ReadHints`) unless
    ``trust_hints`` is False, and they learn from every attempt either way.
    """
    delay = 0.0005
    for _ in range(attempts):
        txn = Txn(kv, hints, trust_hints=trust_hints)
        try:
            result = await fn(txn)
        except Retry:
            _retried(fn, "retry")
            trust_hints = trust_hints and not txn.hinted
            await trio.sleep(random.uniform(0, delay))
            delay = min(delay * 2, 0.05)
            continue
        except Exception:
            if not txn.hinted:
                raise
            _retried(fn, "hints")
            trust_hints = False  # the failure may come from a stale hint: check it for real
            continue
        if txn.hinted and not txn.writes:
            _retried(fn, "hints")
            trust_hints = False  # nothing would verify a read-only answer from hints
            continue
        if await txn.commit():
            for hook in txn._on_commit:
                hook()
            return result
        _retried(fn, "conflict")
        await trio.sleep(random.uniform(0, delay))
        delay = min(delay * 2, 0.05)
    raise Conflict(f"transaction still conflicting after {attempts} attempts")


def _retried(fn: Callable[..., Any], reason: str) -> None:
    observer = retry_observer.get()
    if observer is not None:
        observer(fn, reason)
