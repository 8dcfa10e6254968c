"""One cache of metadata records per mount, kept coherent by a watch on the engine.

:class:`CachedEngine` wraps a mount's engine.  Keys in one cached range (a mount's inode
keyspace) are remembered as the engine last showed them -- values, absences, and whole
*groups* (a directory's entries, an inode's xattrs: every key under one prefix) -- and
reads of them are answered without a round trip while the cache may answer.  Keys outside
the range, and keys written with a lease, are never cached.

The cache learns from three sources, all ordered by revision, so an entry never goes back
to an older state:

  * reads that went to the engine (a read's answer is kept only if nothing about its key
    was learned while it was in flight: the watch may already have delivered a newer
    state, which the older answer must not replace);
  * this mount's own commits, applied at their revision before the commit returns, so a
    mount always reads its own writes;
  * the watch, which delivers every change to the range -- other mounts' and our own --
    and which is applied before listeners (the kernel invalidator) hear of it, so a
    kernel that drops a name and asks again finds the new state here.

Listeners hear only other mounts' changes: this mount's own were told to the kernel in
its replies.  A change at the revision of one of this mount's answered commits is not
handed on; one that matches a commit still in flight (same key, same value) -- etcd's
watch often delivers a change before the commit's own answer -- is held back until that
commit answers, then handed on unless the commit's revision shows it was the commit's.

When the cache may answer (:meth:`CachedEngine.answering`): while the watch is running
and has delivered every change this mount committed more than ``max_lag`` seconds ago --
or always, for an engine no other process writes (``shared`` False: every change comes
through this cache).  Otherwise -- the watch broke, or it lags -- reads go to the engine
(and still refresh the cache).  Inside :func:`fresh_reads` reads always go to the engine:
transactions retried after a conflict and close-to-open checks use it.

While the engine is unreachable the cache is *offline*: every cached answer is served at
once (the last-known state), whatever the watch's health; uncached reads still try the
engine and fail after its bounded timeout; :meth:`CachedEngine.run` probes the engine
every second and turns the cache online when it answers.

A commit whose compares fail forgets the keys it compared: some of them were stale.

Memory is bounded by ``limit_bytes`` (keys, values and a fixed overhead per entry); the
least recently used entry goes first, and a group loses its completeness when any of its
members goes.  Changes the watch reports for keys this mount holds nothing about cost a
dictionary lookup and are not stored.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import trio
from sortedcontainers import SortedDict

from kvfs.kv.api import (
    CommitResult,
    Compacted,
    Compare,
    Delete,
    EngineUnavailable,
    KeyValue,
    KVEngine,
    KVError,
    Put,
    RangeResult,
    WatchBatch,
    WatchEvent,
    prefix_end,
)
from kvfs.kv.delegating import DelegatingEngine
from kvfs.kv.state import in_range

log = logging.getLogger("kvfs.cache")

# Bytes an entry costs beyond its key and value: the entry object, its KeyValue, and the
# slots of the two dictionaries that hold it (measured with tracemalloc on CPython 3.11).
ENTRY_OVERHEAD = 240

_fresh: ContextVar[bool] = ContextVar("kvfs_cache_fresh", default=False)


@contextmanager
def fresh_reads() -> Iterator[None]:
    """Within this block (and tasks it starts), cached engines read from the engine."""
    token = _fresh.set(True)
    try:
        yield
    finally:
        _fresh.reset(token)


def reading_fresh() -> bool:
    """Whether the current task is inside :func:`fresh_reads`."""
    return _fresh.get()


GroupOf = Callable[[bytes], "bytes | None"]


@dataclass(slots=True)
class _Entry:
    kv: KeyValue | None  # None: the key is absent
    revision: int  # the revision this state was seen at (0: absent, age unknown)
    size: int
    learned: int  # the cache's epoch when this state was learned


class RecordCache:
    """Keys' last-known states, bounded, with complete groups (see module docstring).

    Entries sit in a sorted map (groups and range deletes are key ranges) and in an LRU
    order.  Invariants: every key in both; ``_bytes`` is the sum of the entries' sizes; a
    complete group's present keys are exactly its present entries; an entry's revision
    never decreases except by being dropped.
    """

    def __init__(self, limit_bytes: int, group_of: GroupOf) -> None:
        self.limit_bytes = limit_bytes
        self.group_of = group_of
        self._entries: SortedDict = SortedDict()  # key -> _Entry
        self._lru: OrderedDict[bytes, None] = OrderedDict()
        self._complete: set[bytes] = set()
        self._bytes = 0
        # Reads in flight, and what changed while they were: a read started at epoch e
        # may fill only keys (and groups) not changed after e.
        self._epoch = 0
        self._inflight = 0
        self._changed: dict[bytes, int] = {}
        # The newest revision of each of those changes: this mount's own commit at
        # revision r is overtaken only by a change newer than r (the watch often delivers
        # the commit's own change before the commit's answer).
        self._changed_rev: dict[bytes, int] = {}
        # Range deletes while reads were in flight, as (start, end, epoch): they delete
        # keys the cache may hold nothing about, which a read in flight may have found.
        self._changed_ranges: list[tuple[bytes, bytes, int]] = []
        # This mount's range deletes the watch has yet to pass, as (start, end, revision):
        # a key in the range the cache held nothing about (absent from a complete group,
        # say) may still have older changes on their way from the watch, and those must
        # not bring it back.
        self._range_deletes: list[tuple[bytes, bytes, int]] = []
        self._floor = 0  # reads started before this epoch fill nothing
        self.hits = 0
        self.misses = 0

    # -- answering -------------------------------------------------------------------

    def lookup(self, key: bytes) -> tuple[bool, KeyValue | None]:
        """``(True, state)`` when the key's state is known, else ``(False, None)``."""
        e: _Entry | None = self._entries.get(key)
        if e is not None:
            self._lru.move_to_end(key)
            self.hits += 1
            return True, e.kv
        g = self.group_of(key)
        if g is not None and g in self._complete:
            self.hits += 1
            return True, None  # not a member of a complete group: absent
        self.misses += 1
        return False, None

    def knows(self, key: bytes) -> bool:
        """Whether ``key``'s state is known (without counting a hit or a miss)."""
        if key in self._entries:
            return True
        g = self.group_of(key)
        return g is not None and g in self._complete

    def complete(self, group: bytes) -> bool:
        """Whether every key of ``group`` is known (absent keys too)."""
        return group in self._complete

    def listing(self, group: bytes, start: bytes, end: bytes, limit: int,
                keys_only: bool) -> tuple[list[KeyValue], bool] | None:
        """The present keys of ``group`` in ``[start, end)`` (at most ``limit``, 0: all)
        and whether more follow, or None when the group is not complete."""
        if group not in self._complete:
            self.misses += 1
            return None
        self.hits += 1
        out: list[KeyValue] = []
        more = False
        for k in self._entries.irange(start, end, inclusive=(True, False)):
            kv = self._entries[k].kv
            if kv is None:
                continue
            if limit and len(out) == limit:
                more = True
                break
            self._lru.move_to_end(k)
            out.append(KeyValue(kv.key, b"", kv.mod_revision, kv.create_revision)
                       if keys_only else kv)
        return out, more

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    # -- learning from reads ---------------------------------------------------------

    def begin_read(self) -> int:
        """Mark a read to the engine as started; returns its epoch for :meth:`fill`."""
        self._inflight += 1
        return self._epoch

    def end_read(self) -> None:
        self._inflight -= 1
        if self._inflight == 0:
            self._changed.clear()
            self._changed_rev.clear()
            self._changed_ranges.clear()
            self._floor = self._epoch

    def _stale(self, key: bytes, started: int, end: bytes | None = None, *,
               seen: int | None = None) -> bool:
        """Whether ``key`` (or, with ``end``, any key in ``[key, end)``) changed after
        epoch ``started``.  ``seen``: the revision of the state the read found, which
        only a newer change makes stale."""
        if started < self._floor:
            return True
        if self._changed.get(key, -1) > started and (
                seen is None or self._changed_rev.get(key, 0) > seen):
            return True
        end = end or key + b"\x00"
        return any(epoch > started and s < end and (key < e or e == b"\x00")
                   for s, e, epoch in self._changed_ranges)

    def fill(self, key: bytes, kv: KeyValue | None, started: int) -> None:
        """Keep what a read started at epoch ``started`` found for ``key``.

        A present value carries its revision, so against a kept entry the newer one wins;
        but a key the cache held nothing about may have had a change the cache did not
        keep while the read was out: its value is kept only if no such change was newer.
        Absence carries no revision at all: it is kept only if nothing about the key
        arrived meanwhile.  (A read of several keys at once -- an open's attributes and
        first chunk list -- must not lose one key's answer to a change no newer than it,
        or that key is read again later, newer than the others it is used with.)"""
        e: _Entry | None = self._entries.get(key)
        if (kv is None or e is None) and self._stale(
                key, started, seen=None if kv is None else kv.mod_revision):
            return
        g = self.group_of(key)
        if kv is None:
            if e is not None and e.kv is not None:
                if e.learned > started:
                    # Learned from another read while this one was out (a change would
                    # have made this one stale): either answer may be the newer.
                    self._remove(key)
                else:
                    # Known before the read began, so the key was deleted since
                    # e.revision: absent from then on, and changes older than that -- the
                    # watch may still bring some -- cannot bring the entry back.  Its
                    # listing, though, is one revision no longer: this absence may be
                    # newer than the rest.
                    self._set(key, None, e.revision)
                    if g is not None:
                        self._complete.discard(g)
            elif e is None and (g is None or g not in self._complete):
                self._set(key, None, 0)
        elif e is None or kv.mod_revision >= e.revision:
            self._set(key, kv, kv.mod_revision)
        self._evict()

    def fill_group(self, group: bytes, kvs: Sequence[KeyValue], started: int) -> None:
        """Keep a complete read of every key under ``group``."""
        if self._stale(group, started, prefix_end(group)) or any(
                self._stale(kv.key, started) for kv in kvs):
            return
        size = sum(len(kv.key) + len(kv.value) + ENTRY_OVERHEAD for kv in kvs)
        if size > self.limit_bytes // 4:
            return  # too big to keep whole: listing it again beats evicting everything
        listed = {kv.key for kv in kvs}
        # Present entries the listing lacks were removed since they were learned.
        gone = [k for k in self._entries.irange(group, prefix_end(group),
                                                inclusive=(True, False))
                if k not in listed and self._entries[k].kv is not None]
        for k in gone:
            self._remove(k)
        for kv in kvs:
            e: _Entry | None = self._entries.get(kv.key)
            if e is None or kv.mod_revision >= e.revision:
                self._set(kv.key, kv, kv.mod_revision)
        self._complete.add(group)
        self._evict()

    # -- learning from changes -------------------------------------------------------

    def apply(self, key: bytes, value: bytes | None, revision: int, *,
              store: bool = False, store_since: int = 0, lease: int = 0) -> None:
        """A change to ``key`` at ``revision`` (``value`` None: deleted).  Kept when the
        cache holds the key or its complete group, or ``store`` (this mount's own commit,
        sent at epoch ``store_since`` of :meth:`begin_read`); forgotten when written with
        a lease."""
        overtaken = store and (store_since < self._floor
                               or self._changed_rev.get(key, 0) > revision)
        self._epoch += 1
        g = self.group_of(key)
        if self._inflight:
            self._changed[key] = self._epoch
            if revision > self._changed_rev.get(key, 0):
                self._changed_rev[key] = revision
            if g is not None:
                self._changed[g] = self._epoch
            if len(self._changed) > 100_000:  # bound it: fail every read in flight
                self._changed.clear()
                self._changed_rev.clear()
                self._floor = self._epoch + 1
        e: _Entry | None = self._entries.get(key)
        if e is not None and e.revision > revision:
            return  # older than what is known
        if any(r > revision and in_range(key, start, end)
               for start, end, r in self._range_deletes):
            return  # older than one of this mount's range deletes
        if lease:
            if e is not None:
                self._remove(key)
            return
        if e is None and (g is None or g not in self._complete) and (
                not store or overtaken):
            # Nothing known here about it: not worth keeping -- or this mount's own commit,
            # overtaken while in flight by a change the cache did not keep either, which
            # may be newer.
            return
        if value is None:
            self._set(key, None, revision)
        else:
            created = e.kv.create_revision if e is not None and e.kv is not None else revision
            self._set(key, KeyValue(key, value, revision, created), revision)
        self._evict()

    def apply_range_delete(self, start: bytes, end: bytes, revision: int, *,
                           until_watched: bool = False) -> None:
        """Every key in ``[start, end)`` deleted at ``revision``.  ``until_watched``: this
        mount's own delete, which older changes the watch has yet to deliver must not
        undo; it is remembered until :meth:`watched` passes ``revision``."""
        if until_watched:
            self._range_deletes.append((start, end, revision))
            if len(self._range_deletes) > 10_000:  # bound it: forget everything instead
                self.clear()
        if self._inflight:
            self._epoch += 1
            self._changed_ranges.append((start, end, self._epoch))
            if len(self._changed_ranges) > 10_000:  # bound it: fail every read in flight
                self._changed_ranges.clear()
                self._floor = self._epoch + 1
        for k in list(self._entries.irange(start, end, inclusive=(True, False))):
            self.apply(k, None, revision)

    def drop(self, key: bytes) -> None:
        """Forget ``key`` (its group is no longer complete either)."""
        if key in self._entries:
            self._remove(key)
        g = self.group_of(key)
        if g is not None:
            self._complete.discard(g)

    def drop_range(self, start: bytes, end: bytes) -> None:
        for k in list(self._entries.irange(start, end, inclusive=(True, False))):
            self.drop(k)

    def watched(self, revision: int) -> None:
        """The watch has delivered every change up to ``revision``."""
        if self._range_deletes:
            self._range_deletes = [d for d in self._range_deletes if d[2] > revision]

    def clear(self) -> None:
        self._range_deletes.clear()
        self._entries.clear()
        self._lru.clear()
        self._complete.clear()
        self._bytes = 0
        self._floor = self._epoch + 1

    # -- storage ---------------------------------------------------------------------

    def _set(self, key: bytes, kv: KeyValue | None, revision: int) -> None:
        old: _Entry | None = self._entries.get(key)
        if old is not None:
            self._bytes -= old.size
        size = len(key) + (len(kv.value) if kv is not None else 0) + ENTRY_OVERHEAD
        # A new epoch, so that a read in flight can tell this state from one known before
        # it began (see fill).
        self._epoch += 1
        self._entries[key] = _Entry(kv, revision, size, self._epoch)
        self._lru[key] = None
        self._lru.move_to_end(key)
        self._bytes += size

    def _remove(self, key: bytes) -> None:
        e: _Entry = self._entries.pop(key)
        del self._lru[key]
        self._bytes -= e.size
        if e.kv is not None:
            g = self.group_of(key)
            if g is not None:
                self._complete.discard(g)

    def _evict(self) -> None:
        while self._bytes > self.limit_bytes and self._lru:
            self._remove(next(iter(self._lru)))


Listener = Callable[[WatchBatch | None], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Absent:
    """What a commit shows to be absent at its revision: ``keys``, and every key under
    each of ``groups`` (a new inode's chunks, xattrs and entries, say)."""

    keys: Sequence[bytes] = ()
    groups: Sequence[bytes] = ()


class _OwnRevisions:
    """The revisions of this mount's recent successful commits (bounded: the oldest are
    forgotten first, long after the watch has delivered them)."""

    def __init__(self, limit: int = 100_000) -> None:
        self._order: deque[int] = deque()
        self._set: set[int] = set()
        self._limit = limit

    def add(self, revision: int) -> None:
        if revision in self._set:
            return
        self._order.append(revision)
        self._set.add(revision)
        if len(self._order) > self._limit:
            self._set.discard(self._order.popleft())

    def __contains__(self, revision: object) -> bool:
        return revision in self._set


@dataclass(slots=True)
class _Flight:
    """One of this mount's commits in flight: what it writes, and the watch's events that
    look like its own (the same key and value) held back from listeners until it answers."""

    writes: dict[bytes, bytes | None]  # key -> value put (None: deleted)
    ranges: list[tuple[bytes, bytes]]  # ranges deleted
    withheld: list[WatchEvent]

    def wrote(self, ev: WatchEvent) -> bool:
        if ev.key in self.writes:
            return self.writes[ev.key] == ev.value
        return ev.value is None and any(s <= ev.key < e for s, e in self.ranges)


class CachedEngine(DelegatingEngine):
    """An engine whose reads of one key range are cached (see module docstring).

    :meth:`run` is the mount's one watch of the range; :meth:`listen` registers a
    listener that hears other mounts' changes of every batch after the cache applied it,
    and ``None`` when the watch could not resume (compacted past) and everything was
    forgotten.
    """

    def __init__(self, inner: KVEngine, *, prefix: bytes, group_of: GroupOf,
                 limit_bytes: int = 64 << 20, max_lag: float = 2.0) -> None:
        super().__init__(inner)
        self.cache = RecordCache(limit_bytes, group_of)
        self.start, self.end = prefix, prefix_end(prefix)
        self.max_lag = max_lag
        # No other process writes an unshared engine: the cache alone is coherent.
        self.authoritative = not inner.shared
        self.revision = 0  # the watch has delivered every change up to here
        self.watching = False
        # Whether the cache learns: an engine others write is learned from only once the
        # watch knows where it starts, or changes made before then would never reach it.
        self.learning = self.authoritative
        self.offline = False  # the engine is unreachable: serve what is cached
        # Entries forgotten by commits whose outcome is unknown, kept to answer while
        # the engine is unreachable (and only then); cleared once it answers again.
        self._outage_only: dict[bytes, KeyValue | None] = {}
        self._listeners: list[Listener] = []
        # A listing is one answer about many keys, so it must show the group as it was at
        # one revision.  A group filled by a read at revision r, or changed by this
        # mount's own commit at r, may lack other mounts' changes before r that the watch
        # has yet to deliver: it answers again once the watch has reached r.
        self._group_wait: dict[bytes, int] = {}
        # This mount's commits to the range not yet delivered by the watch: (revision,
        # when committed).  The oldest one's age is the watch's lag.
        self._undelivered: deque[tuple[int, float]] = deque()
        # Listeners must not take this mount's own changes for another mount's (coherence
        # would drop the kernel's entry for them).  Those the watch delivers after their
        # commit answered are known by revision; those it delivers before -- etcd's watch
        # often does -- match a commit in flight (same key, same value) and are held back
        # from listeners until that commit answers, then handed on unless they were the
        # commit's own.  Nothing else waits: other mounts' changes reach listeners at once.
        self._own = _OwnRevisions()
        self._flights: dict[int, _Flight] = {}
        self._flight_seq = 0
        self._late_send, self._late_recv = trio.open_memory_channel[WatchBatch](math.inf)

    # -- health ----------------------------------------------------------------------

    def lag(self) -> float:
        """Seconds the watch is behind this mount's own commits (0: caught up)."""
        if not self._undelivered:
            return 0.0
        return max(0.0, trio.current_time() - self._undelivered[0][1])

    def answering(self) -> bool:
        """May cached entries answer reads now (see module docstring)?"""
        if _fresh.get():
            return self.offline
        return self.authoritative or self.offline or (
            self.watching and self.lag() <= self.max_lag)

    def _cached(self, key: bytes) -> bool:
        return self.start <= key and (key < self.end or self.end == b"\x00")

    # -- the watch -------------------------------------------------------------------

    def listen(self, listener: Listener) -> None:
        self._listeners.append(listener)

    async def run(self, *, since: int | None = None,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Probe the engine while offline and, on a shared engine, watch the range from
        revision ``since`` + 1 (default: the current one)."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._probe)
            if not self.authoritative:
                nursery.start_soon(self._deliver_late)
                await nursery.start(self._watch, since)
            task_status.started()

    async def _probe(self) -> None:
        while True:
            await trio.sleep(1.0)
            if not self.offline:
                continue
            try:
                await self.inner.current_revision()
            except KVError:
                continue
            log.warning("metadata engine reachable again")
            self._online()

    def _set_aside(self, key: bytes) -> None:
        if self._cached(key) and self.cache.knows(key):
            self._outage_only[key] = self.cache.lookup(key)[1]

    def _known_offline(self, key: bytes) -> tuple[bool, KeyValue | None]:
        """What an outage serves for ``key``: the cache's entry, or one set aside."""
        known, kv = self.cache.lookup(key) if self._cached(key) else (False, None)
        if not known and key in self._outage_only:
            return True, self._outage_only[key]
        return known, kv

    def _online(self) -> None:
        self.offline = False
        self._outage_only.clear()

    def _went_offline(self) -> None:
        if not self.offline:
            log.warning("metadata engine unreachable: serving cached metadata")
        self.offline = True

    async def _watch(self, since: int | None,
                     task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.revision = await self.inner.current_revision() if since is None else since
        self.learning = True
        task_status.started()
        while True:
            try:
                self.watching = True
                async for batch in self.inner.watch(self.start, self.end, self.revision + 1):
                    self._apply(batch)
                    batch = self._others(batch)
                    for listener in self._listeners:
                        await listener(batch)
            except Compacted:
                log.warning("watch fell behind compaction; forgetting every cached record")
                self.cache.clear()
                self._group_wait.clear()
                self.revision = await self._current_or(self.revision)
                self._undelivered.clear()
                for listener in self._listeners:
                    await listener(None)
            except KVError as exc:
                self.watching = False
                log.warning("watch interrupted (%s); resuming from revision %d", exc,
                            self.revision + 1)
                await trio.sleep(1.0)
            finally:
                self.watching = False

    def _others(self, batch: WatchBatch) -> WatchBatch:
        """``batch`` without this mount's own changes, and with those that may be a commit
        in flight's held back by that flight."""
        passed: list[WatchEvent] = []
        for ev in batch.events:
            if ev.mod_revision in self._own:
                continue
            for flight in self._flights.values():
                if flight.wrote(ev):
                    flight.withheld.append(ev)
                    break
            else:
                passed.append(ev)
        return batch if len(passed) == len(batch.events) else WatchBatch(batch.revision, passed)

    async def _deliver_late(self) -> None:
        async for batch in self._late_recv:
            for listener in self._listeners:
                await listener(batch)

    async def _current_or(self, fallback: int) -> int:
        try:
            return await self.inner.current_revision()
        except KVError:
            return fallback

    def _apply(self, batch: WatchBatch) -> None:
        for ev in batch.events:
            self.cache.apply(ev.key, ev.value, ev.mod_revision)
        self.revision = max(self.revision, batch.revision)
        self.cache.watched(self.revision)
        while self._undelivered and self._undelivered[0][0] <= self.revision:
            self._undelivered.popleft()

    # -- reads -----------------------------------------------------------------------

    async def get(self, key: bytes) -> KeyValue | None:
        if not self._cached(key):
            return await self.inner.get(key)
        if self.answering():
            known, kv = self.cache.lookup(key)
            if known:
                return kv
        started = self.cache.begin_read()
        try:
            kv = await self.inner.get(key)
        except EngineUnavailable:
            self._went_offline()
            known, kv = self._known_offline(key)
            if known:
                return kv
            raise
        else:
            self._online()
            if self.learning and not (kv and kv.lease):
                self._fill(key, kv, started)
            return kv
        finally:
            self.cache.end_read()

    async def get_many(self, keys: Sequence[bytes]) -> list[KeyValue | None]:
        out: dict[bytes, KeyValue | None] = {}
        want: list[bytes] = []
        answering = self.answering()
        for k in keys:
            if answering and self._cached(k):
                known, kv = self.cache.lookup(k)
                if known:
                    out[k] = kv
                    continue
            want.append(k)
        if want:
            started = self.cache.begin_read()
            try:
                got = await self.inner.get_many(want)
            except EngineUnavailable:
                self._went_offline()
                for k in want:
                    known, kv = self._known_offline(k)
                    if not known:
                        raise
                    out[k] = kv
            else:
                self._online()
                for k, kv in zip(want, got, strict=True):
                    out[k] = kv
                    if self.learning and self._cached(k) and not (kv and kv.lease):
                        self._fill(k, kv, started)
            finally:
                self.cache.end_read()
        return [out[k] for k in keys]

    def peek(self, key: bytes) -> tuple[bool, KeyValue | None]:
        """``key``'s cached state, if the cache may answer now: ``(known, value)``; never
        a round trip.  For hints only (what to prefetch): a read that matters reads."""
        if not self._cached(key) or not self.answering() or not self.cache.knows(key):
            return False, None
        return self.cache.lookup(key)

    def _fill(self, key: bytes, kv: KeyValue | None, started: int) -> None:
        self.cache.fill(key, kv, started)
        # A newer state than the watch's in a listing: it waits for the watch (see
        # _group_wait).
        g = self.cache.group_of(key)
        if g is not None and kv is not None and kv.mod_revision > self.revision:
            self._group_changed(g, kv.mod_revision)

    def _group_changed(self, group: bytes, revision: int) -> None:
        if not self.authoritative and revision > self._group_wait.get(group, 0):
            self._group_wait[group] = revision

    def _group_settled(self, group: bytes) -> bool:
        wait = self._group_wait.get(group)
        if wait is None:
            return True
        if wait > self.revision and not self.offline:
            return False
        del self._group_wait[group]
        return True

    def _group_of_range(self, start: bytes, end: bytes) -> bytes | None:
        if not self._cached(start):
            return None
        g = self.cache.group_of(start)
        return g if g is not None and end == prefix_end(g) else None

    async def range(self, start: bytes, end: bytes, *, limit: int = 0,
                    keys_only: bool = False) -> RangeResult:
        g = self._group_of_range(start, end)
        if g is None:
            return await self.inner.range(start, end, limit=limit, keys_only=keys_only)
        if self.answering() and self._group_settled(g):
            hit = self.cache.listing(g, start, end, limit, keys_only)
            if hit is not None:
                return RangeResult(hit[0], hit[1], self.revision)
        started = self.cache.begin_read()
        try:
            res = await self.inner.range(start, end, limit=limit, keys_only=keys_only)
        except EngineUnavailable:
            self._went_offline()
            hit = self.cache.listing(g, start, end, limit, keys_only)
            if hit is not None:
                return RangeResult(hit[0], hit[1], self.revision)
            raise
        else:
            self._online()
            if self.learning and start == g and not res.more and not keys_only \
                    and not any(kv.lease for kv in res.kvs):
                self.cache.fill_group(g, res.kvs, started)
                self._group_changed(g, res.revision)
            return res
        finally:
            self.cache.end_read()

    # -- writes ----------------------------------------------------------------------

    async def commit(self, compares: Sequence[Compare], puts: Sequence[Put],
                     deletes: Sequence[Delete] = (), *,
                     absent: Absent | None = None) -> CommitResult:
        """Commit through to the engine and learn what it wrote, and ``absent``: what the
        commit shows to be absent at its revision (see :class:`Absent`)."""
        flight: _Flight | None = None
        seq = 0
        if not self.authoritative:
            self._flight_seq += 1
            seq = self._flight_seq
            flight = self._flights[seq] = _Flight(
                {p.key: p.value for p in puts}
                | {d.key: None for d in deletes if d.range_end is None},
                [(d.key, d.range_end) for d in deletes if d.range_end is not None], [])
        try:
            res = await self._commit(compares, puts, deletes, absent)
            if res.succeeded and flight is not None:
                self._own.add(res.revision)
            return res
        finally:
            if flight is not None:
                del self._flights[seq]
                # What was not this commit's may be another's still in flight, which holds
                # it in turn; the rest is another mount's.
                late = self._others(WatchBatch(0, flight.withheld)).events
                if late:
                    self._late_send.send_nowait(WatchBatch(late[-1].mod_revision, late))

    async def _commit(self, compares: Sequence[Compare], puts: Sequence[Put],
                      deletes: Sequence[Delete], absent: Absent | None) -> CommitResult:
        started = self.cache.begin_read()
        try:
            res = await self.inner.commit(compares, puts, deletes)
        except KVError as exc:
            if isinstance(exc, EngineUnavailable):
                self._went_offline()
            # The outcome is unknown: what this mount wrote may or may not be there, so
            # reads go to the engine again -- but while it is unreachable, what was known
            # before still answers (the last-known state an outage serves).
            for p in puts:
                self._set_aside(p.key)
                self.cache.drop(p.key)
            for d in deletes:
                if d.range_end is None:
                    self._set_aside(d.key)
                self._forget_deleted(d)
            self.cache.end_read()
            raise
        try:
            return self._committed(compares, puts, deletes, res, started, absent)
        finally:
            self.cache.end_read()

    def _committed(self, compares: Sequence[Compare], puts: Sequence[Put],
                   deletes: Sequence[Delete], res: CommitResult, started: int,
                   absent: Absent | None) -> CommitResult:
        if not self.learning:
            return res
        if not res.succeeded:
            for c in compares:
                if self._cached(c.key):
                    self.cache.drop(c.key)
            return res
        touched = False
        for d in deletes:
            if d.range_end is None:
                if self._cached(d.key):
                    self.cache.apply(d.key, None, res.revision, store=True,
                                     store_since=started)
                    touched = True
            elif self._cached(d.key) or self._cached(d.range_end):
                self.cache.apply_range_delete(d.key, d.range_end, res.revision,
                                              until_watched=not self.authoritative)
                touched = True
        for p in puts:
            if self._cached(p.key):
                self.cache.apply(p.key, p.value, res.revision, store=True,
                                 store_since=started, lease=p.lease)
                touched = True
        if absent is not None:
            # Passed over by the watch while the commit was out, a change to these keys
            # marks them changed since ``started``, and they are not learned.
            for k in absent.keys:
                if self._cached(k):
                    self.cache.apply(k, None, res.revision, store=True, store_since=started)
            for empty in absent.groups:
                if self._cached(empty):
                    self.cache.fill_group(empty, [], started)
                    self._group_changed(empty, res.revision)
        for k in [d.key for d in deletes if d.range_end is None] + [p.key for p in puts]:
            g = self.cache.group_of(k) if self._cached(k) else None
            if g is not None:
                self._group_changed(g, res.revision)
        if touched and res.revision > self.revision:
            self._undelivered.append((res.revision, trio.current_time()))
        return res

    def forget(self, start: bytes, end: bytes) -> None:
        """Forget every cached key in ``[start, end)``: the next reads go to the engine."""
        self.cache.drop_range(start, end)

    def _forget_deleted(self, d: Delete) -> None:
        if d.range_end is None:
            self.cache.drop(d.key)
        else:
            self.cache.drop_range(d.key, d.range_end)


