"""The watch-coherent record cache (kvfs.kv.cache): its rules, the KV contract on a cached
engine, and a model-based check of two caches on one engine.

The model-based test runs random operations from two cached engines (as two mounts would)
on one shared engine whose watch feeds both caches, and checks after every step that each
answer is what the engine held for that key at some revision between what the cache's
watch had delivered (or this cache's own last commit) and the engine's revision when the
answer arrived -- and, once both watches have caught up, exactly the engine's state.
``KVFS_CACHE_MODEL_SEEDS`` (default 20) sets how many seeds run.
"""

from __future__ import annotations

import os
import random
from collections.abc import AsyncIterator, Sequence

import pytest
import trio
from jittery import Jittery
from kv_contract import KVContract

from kvfs.kv.api import (
    CommitResult,
    Compare,
    Delete,
    EngineUnavailable,
    KeyValue,
    KVEngine,
    Put,
    TxnTooLarge,
    WatchBatch,
    prefix_end,
)
from kvfs.kv.cache import Absent, CachedEngine, RecordCache, fresh_reads
from kvfs.kv.delegating import DelegatingEngine
from kvfs.kv.local import MemoryEngine
from kvfs.kv.txn import Txn, run_txn


def slash_group(key: bytes) -> bytes | None:
    """Test groups: everything up to and including the first ``/``."""
    at = key.find(b"/")
    return key[:at + 1] if at >= 0 else None


def kv(key: bytes, value: bytes, rev: int) -> KeyValue:
    return KeyValue(key, value, rev, rev)


def own_commit(c: RecordCache, key: bytes, value: bytes | None, rev: int,
               lease: int = 0) -> None:
    """This mount's own commit of ``key`` at ``rev``, sent and answered with no read out,
    as :class:`CachedEngine` tells the cache about it."""
    started = c.begin_read()
    c.apply(key, value, rev, store=True, store_since=started, lease=lease)
    c.end_read()


# -- RecordCache, pure --------------------------------------------------------------------


def test_fill_and_lookup() -> None:
    c = RecordCache(1 << 20, slash_group)
    assert c.lookup(b"a") == (False, None)
    c.fill(b"a", kv(b"a", b"1", 5), c.begin_read())
    c.end_read()
    assert c.lookup(b"a") == (True, kv(b"a", b"1", 5))
    c.fill(b"b", None, c.begin_read())
    c.end_read()
    assert c.lookup(b"b") == (True, None)


def test_read_overtaken_by_a_change_is_not_kept() -> None:
    c = RecordCache(1 << 20, slash_group)
    c.fill(b"a", kv(b"a", b"old", 3), c.begin_read())
    c.end_read()
    started = c.begin_read()
    c.apply(b"a", None, 7)  # the watch says it was deleted while the read was out
    c.fill(b"a", kv(b"a", b"old", 3), started)  # the read's answer is older
    c.end_read()
    assert c.lookup(b"a") == (True, None)
    started = c.begin_read()
    sent = c.begin_read()  # this mount's commit
    c.apply(b"n", b"new", 9, store=True, store_since=sent)
    c.end_read()
    c.fill(b"n", None, started)  # absence read before the create: must not win
    c.end_read()
    assert c.lookup(b"n") == (True, kv(b"n", b"new", 9))


def test_read_of_an_unknown_key_is_kept_unless_a_newer_change_came_meanwhile() -> None:
    """The watch passed a change of a key the cache held nothing about while a read of it
    was out: the read's value is kept if it is that change or newer (an open's read of a
    file's attributes and first chunk list keeps both, not one), and not if older."""
    c = RecordCache(1 << 20, slash_group)
    started = c.begin_read()
    c.apply(b"a", b"1", 12)  # not kept: the cache holds nothing about "a"
    c.fill(b"a", kv(b"a", b"1", 12), started)
    c.end_read()
    assert c.lookup(b"a") == (True, kv(b"a", b"1", 12))
    started = c.begin_read()
    c.apply(b"b", b"2", 13)
    c.fill(b"b", kv(b"b", b"1", 12), started)
    c.end_read()
    assert c.lookup(b"b") == (False, None)


def test_a_read_absence_is_newer_than_the_entry_it_replaces() -> None:
    """The engine says a key the cache held at revision 12 is gone: it was deleted since
    12, so the watch's older changes (11, still on their way) cannot bring it back, while
    the delete itself (13) applies; its group's listing is not complete any more."""
    c = RecordCache(1 << 20, slash_group)
    c.fill_group(b"d/", [kv(b"d/a", b"1", 11)], c.begin_read())
    c.end_read()
    own_commit(c, b"d/a", b"2", 12)  # this mount's own commit
    c.fill(b"d/a", None, c.begin_read())
    c.end_read()
    assert c.lookup(b"d/a") == (True, None)
    assert not c.complete(b"d/")
    c.apply(b"d/a", b"1", 11)
    assert c.lookup(b"d/a") == (True, None)
    c.apply(b"d/a", b"3", 14)
    assert c.lookup(b"d/a") == (True, kv(b"d/a", b"3", 14))


def test_a_read_absence_does_not_replace_an_entry_another_read_learned_meanwhile() -> None:
    """Two reads of one key are out at once; the later one finds it created at 25 and
    answers first, then the earlier one's absence (from before 25) arrives: either could
    be the newer, so the key is forgotten, not shown absent (the create's change, when
    the watch brings it, would restore it only then)."""
    c = RecordCache(1 << 20, slash_group)
    earlier = c.begin_read()
    later = c.begin_read()
    c.fill(b"k", kv(b"k", b"v", 25), later)
    c.end_read()
    c.fill(b"k", None, earlier)
    c.end_read()
    assert c.lookup(b"k") == (False, None)


def test_own_commit_overtaken_by_an_unkept_change_is_not_kept() -> None:
    c = RecordCache(1 << 20, slash_group)
    sent = c.begin_read()
    c.apply(b"k", b"theirs", 12)  # another mount's newer change, delivered first
    c.apply(b"k", b"mine", 11, store=True, store_since=sent)
    c.end_read()
    assert c.lookup(b"k") == (False, None)


def test_older_change_never_replaces_newer() -> None:
    c = RecordCache(1 << 20, slash_group)
    own_commit(c, b"a", b"2", 8)
    c.apply(b"a", b"1", 6)
    assert c.lookup(b"a")[1] == kv(b"a", b"2", 8)
    c.apply(b"a", None, 9)
    c.apply(b"a", b"2", 8)
    assert c.lookup(b"a") == (True, None)


def test_changes_to_unknown_keys_are_not_stored() -> None:
    c = RecordCache(1 << 20, slash_group)
    for i in range(100):
        c.apply(b"x%d" % i, b"v", i + 1)
    assert len(c) == 0


def test_complete_group_answers_listing_and_absence() -> None:
    c = RecordCache(1 << 20, slash_group)
    c.fill(b"d/stale", kv(b"d/stale", b"s", 2), c.begin_read())
    c.end_read()
    c.fill_group(b"d/", [kv(b"d/a", b"1", 3), kv(b"d/b", b"2", 4)], c.begin_read())
    c.end_read()
    assert c.lookup(b"d/stale") == (True, None)  # gone, as the listing showed
    assert c.lookup(b"d/zzz") == (True, None)
    hit = c.listing(b"d/", b"d/", prefix_end(b"d/"), 0, False)
    assert hit is not None and [x.key for x in hit[0]] == [b"d/a", b"d/b"]
    c.apply(b"d/c", b"3", 5)  # another mount's create: the complete group takes it
    c.apply(b"d/a", None, 6)
    hit = c.listing(b"d/", b"d/", prefix_end(b"d/"), 1, True)
    assert hit == ([KeyValue(b"d/b", b"", 4, 4)], True)
    hit = c.listing(b"d/", b"d/b\x00", prefix_end(b"d/"), 1, False)
    assert hit is not None and hit[0][0].value == b"3" and not hit[1]


def test_group_filled_during_a_change_is_not_complete() -> None:
    c = RecordCache(1 << 20, slash_group)
    started = c.begin_read()
    c.apply(b"d/new", b"1", 5)
    c.fill_group(b"d/", [], started)
    c.end_read()
    assert c.listing(b"d/", b"d/", prefix_end(b"d/"), 0, False) is None


def test_bounded_and_eviction_breaks_completeness() -> None:
    c = RecordCache(20 * 300, slash_group)
    c.fill_group(b"d/", [kv(b"d/%d" % i, b"x", i + 1) for i in range(5)], c.begin_read())
    c.end_read()
    assert c.listing(b"d/", b"d/", prefix_end(b"d/"), 0, False) is not None
    for i in range(40):
        c.fill(b"k%d" % i, kv(b"k%d" % i, b"y" * 10, 100 + i), c.begin_read())
        c.end_read()
        assert c.size_bytes <= c.limit_bytes
    assert c.listing(b"d/", b"d/", prefix_end(b"d/"), 0, False) is None
    assert c.lookup(b"d/zzz") == (False, None)


def test_lease_writes_are_forgotten() -> None:
    c = RecordCache(1 << 20, slash_group)
    own_commit(c, b"s", b"1", 3)
    own_commit(c, b"s", b"2", 4, lease=7)
    assert c.lookup(b"s") == (False, None)


def test_range_delete() -> None:
    c = RecordCache(1 << 20, slash_group)
    c.fill_group(b"d/", [kv(b"d/a", b"1", 3)], c.begin_read())
    c.end_read()
    own_commit(c, b"e", b"1", 4)
    c.apply_range_delete(b"d", b"e", 9)
    assert c.lookup(b"d/a") == (True, None)
    assert c.listing(b"d/", b"d/", prefix_end(b"d/"), 0, False) == ([], False)
    assert c.lookup(b"e")[0]


def test_own_range_delete_is_not_undone_by_older_changes_the_watch_brings() -> None:
    """This mount deleted a range at 13 that held a key the cache knew only as absent (a
    complete group); another mount's older put of that key, still on its way from the
    watch, must not bring it back -- until the watch has passed the delete."""
    c = RecordCache(1 << 20, slash_group)
    c.fill_group(b"e/", [], c.begin_read())
    c.end_read()
    c.apply_range_delete(b"e/", b"e0", 13, until_watched=True)
    c.apply(b"e/0", b"158", 11)  # the watch, late: another mount's put before the delete
    assert c.lookup(b"e/0") == (True, None)
    assert c.listing(b"e/", b"e/", b"e0", 0, False) == ([], False)
    c.apply(b"e/0", None, 13)
    c.watched(13)
    c.apply(b"e/1", b"7", 14)
    assert c.lookup(b"e/1") == (True, kv(b"e/1", b"7", 14))


def test_read_overtaken_by_a_range_delete_is_not_kept() -> None:
    """A read in flight while this mount's range delete answered may have found a key of
    the range the cache held nothing about: neither that key nor a listing is kept."""
    c = RecordCache(1 << 20, slash_group)
    started = c.begin_read()
    c.apply_range_delete(b"e/", b"e0", 13)
    c.fill(b"e/0", kv(b"e/0", b"158", 11), started)
    c.fill_group(b"e/", [kv(b"e/0", b"158", 11)], started)
    c.end_read()
    assert c.lookup(b"e/0") == (False, None)
    assert not c.complete(b"e/")


# -- the KV contract on a cached engine ----------------------------------------------------


class SharedMemoryEngine(MemoryEngine):
    """A memory engine that says others may write it, as etcd does: caches watch it."""

    shared = True


class TestCachedMemoryEngine(KVContract):
    """Every engine behaviour holds through the cache, every key cached, on an engine
    nobody else writes (the cache answers on its own)."""

    @pytest.fixture
    async def kv(self, nursery: trio.Nursery) -> AsyncIterator[CachedEngine]:
        engine = CachedEngine(MemoryEngine(), prefix=b"", group_of=slash_group)
        await nursery.start(engine.run)
        assert engine.authoritative
        yield engine
        await engine.aclose()


class TestCachedSharedEngine(KVContract):
    """The same on a shared engine: the cache answers while its watch keeps up."""

    @pytest.fixture
    async def kv(self, nursery: trio.Nursery) -> AsyncIterator[CachedEngine]:
        engine = CachedEngine(SharedMemoryEngine(), prefix=b"", group_of=slash_group)
        await nursery.start(engine.run)
        assert engine.watching
        yield engine
        await engine.aclose()


# -- health and outages --------------------------------------------------------------------


class Switch(DelegatingEngine):
    """An engine that can be made unreachable."""

    down = False

    async def get(self, key: bytes) -> KeyValue | None:
        if self.down:
            raise EngineUnavailable("down")
        return await self.inner.get(key)

    async def get_many(self, keys: list[bytes]) -> list[KeyValue | None]:  # type: ignore[override]
        if self.down:
            raise EngineUnavailable("down")
        return await self.inner.get_many(keys)


async def test_answers_from_cache_only_while_watching(nursery: trio.Nursery) -> None:
    shared = SharedMemoryEngine()
    a = CachedEngine(shared, prefix=b"", group_of=slash_group)
    await a.commit([], [Put(b"k", b"1")])
    assert (await a.get(b"k")) is not None  # not watching: read from the engine
    await shared.commit([], [Put(b"k", b"2")])  # behind the cache's back
    got = await a.get(b"k")
    assert got is not None and got.value == b"2"
    await nursery.start(a.run)
    await shared.commit([], [Put(b"k", b"3")])
    await wait_caught_up(a, shared)
    got = await a.get(b"k")
    assert got is not None and got.value == b"3"
    with fresh_reads():
        assert not a.answering()


async def test_unreachable_engine_serves_last_known(nursery: trio.Nursery) -> None:
    sw = Switch(SharedMemoryEngine())
    a = CachedEngine(sw, prefix=b"", group_of=slash_group)
    await nursery.start(a.run)
    await a.commit([], [Put(b"k", b"1"), Put(b"d/x", b"2")])
    await a.range(b"d/", prefix_end(b"d/"))
    sw.down = True
    with fresh_reads():  # reads that must go to the engine -- but it is down
        got = await a.get(b"k")
        assert got is not None and got.value == b"1"
        assert a.offline
        assert [x.key for x in await a.get_many([b"k", b"d/x"]) if x] == [b"k", b"d/x"]
    with pytest.raises(EngineUnavailable):
        await a.get(b"unknown")
    sw.down = False
    with trio.fail_after(5):
        while a.offline:  # the probe finds it back
            await trio.sleep(0.05)


class SwitchCommits(Switch):
    """Also fails commits while down -- after applying them, as a commit whose answer
    was lost would."""

    async def commit(self, compares: Sequence[Compare], puts: Sequence[Put],
                     deletes: Sequence[Delete] = ()) -> CommitResult:
        if self.down:
            await self.inner.commit(compares, puts, deletes)
            raise EngineUnavailable("down")
        return await self.inner.commit(compares, puts, deletes)


async def test_a_commit_of_unknown_outcome_is_read_again_but_outages_keep_the_old(
        nursery: trio.Nursery) -> None:
    """What a commit with a lost answer wrote is not served as known once the engine
    answers again (it may have been applied); while the engine stays unreachable, the
    state known before it still answers."""
    sw = SwitchCommits(SharedMemoryEngine())
    a = CachedEngine(sw, prefix=b"", group_of=slash_group)
    await nursery.start(a.run)
    await a.commit([], [Put(b"k", b"1")])
    sw.down = True
    with pytest.raises(EngineUnavailable):
        await a.commit([], [Put(b"k", b"2")])
    with fresh_reads():  # must go to the engine, which is down: the last-known answers
        got = await a.get(b"k")
    assert got is not None and got.value == b"1"
    sw.down = False
    got = await a.get(b"k")  # not answered from the cache: the commit did apply
    assert got is not None and got.value == b"2"


async def test_failed_compare_forgets_compared_keys(nursery: trio.Nursery) -> None:
    shared = SharedMemoryEngine()
    a = CachedEngine(shared, prefix=b"", group_of=slash_group)
    await nursery.start(a.run)
    await a.commit([], [Put(b"k", b"1")])
    await a.get(b"k")
    a.watching = False  # pretend the watch missed the next change
    res = await shared.commit([], [Put(b"k", b"2")])
    a.watching = True
    a.cache.apply(b"k", b"1", 1)  # nothing newer known
    old = await a.get(b"k")
    assert old is not None
    res = await a.commit([Compare(b"k", old.mod_revision)], [Put(b"k", b"3")])
    if not res.succeeded:
        assert a.cache.lookup(b"k") == (False, None)


async def test_a_transaction_refused_after_cached_reads_runs_again_from_the_engine() -> None:
    """Stale cached reads can build a transaction the engine refuses outright, before its
    compares (here: a put inside a range it deletes).  run_txn runs it again with every
    read from the engine; a transaction refused after fresh reads is refused for good."""
    shared = SharedMemoryEngine()
    a = CachedEngine(shared, prefix=b"", group_of=slash_group)
    a.watching = a.learning = True  # a watch that has delivered nothing, and never will
    await a.commit([], [Put(b"mode", b"wipe")])
    await shared.commit([], [Put(b"mode", b"keep")])  # another mount's: never delivered

    async def fn(t: Txn) -> bytes | None:
        mode = await t.get(b"mode")
        if mode == b"wipe":
            t.delete_prefix(b"p/")
        t.put(b"p/x", mode or b"")
        return mode

    assert await run_txn(a, fn) == b"keep"
    got = await shared.get(b"p/x")
    assert got is not None and got.value == b"keep"
    await shared.commit([], [Put(b"mode", b"wipe")])
    with pytest.raises(TxnTooLarge):
        await run_txn(shared, fn)


class LateAnswers(DelegatingEngine):
    """Answers each commit only after the engine's watchers could see it: the watch
    delivers the change before the committer hears back (as etcd's often does).  With
    ``first`` set, that commit is beaten by another mount's, made just before it."""

    first: list[Put] | None = None

    async def commit(self, compares: Sequence[Compare], puts: Sequence[Put],
                     deletes: Sequence[Delete] = ()) -> CommitResult:
        if self.first is not None:
            await self.inner.commit([], self.first)
            self.first = None
            for _ in range(20):
                await trio.lowlevel.checkpoint()
        res = await self.inner.commit(compares, puts, deletes)
        for _ in range(20):
            await trio.lowlevel.checkpoint()
        return res


async def _listened(nursery: trio.Nursery, engine: KVEngine
                    ) -> tuple[CachedEngine, list[int]]:
    """A running cache on ``engine``, and the revisions its listener hears."""
    a = CachedEngine(engine, prefix=b"", group_of=slash_group)
    heard: list[int] = []

    async def listener(batch: WatchBatch | None) -> None:
        assert batch is not None
        heard.extend(ev.mod_revision for ev in batch.events)

    a.listen(listener)
    await nursery.start(a.run)
    return a, heard


async def _heard(nursery: trio.Nursery) -> tuple[CachedEngine, LateAnswers, list[int]]:
    """:func:`_listened` on a :class:`LateAnswers` engine."""
    late = LateAnswers(SharedMemoryEngine())
    a, heard = await _listened(nursery, late)
    return a, late, heard


async def test_own_changes_that_beat_the_commit_answer_are_not_heard(
        nursery: trio.Nursery) -> None:
    """A watch event that overtakes this mount's commit answer is held back from listeners
    (only it: nothing else waits) until the commit answers, and then, being the commit's
    own, never handed on; what the commit wrote and showed absent is learned all the same.
    Another mount's change is heard."""
    a, late, heard = await _heard(nursery)
    for i in range(5):
        res = await a.commit([], [Put(b"d%d/x" % i, b"1")],
                             absent=Absent(keys=[b"f%d/y" % i], groups=[b"e%d/" % i]))
        await wait_caught_up(a, late.inner)
        assert a.cache.lookup(b"d%d/x" % i)[1] == kv(b"d%d/x" % i, b"1", res.revision)
        assert a.cache.lookup(b"e%d/z" % i) == (True, None)
        assert a.cache.lookup(b"f%d/y" % i) == (True, None)
    assert heard == []
    res = await late.inner.commit([], [Put(b"d0/x", b"2")])  # another mount's change
    await wait_caught_up(a, late.inner)
    assert heard == [res.revision]


async def test_own_changes_after_the_commit_answer_are_not_heard(
        nursery: trio.Nursery) -> None:
    """On an engine that answers a commit before its watchers hear of it, the change comes
    after the answer and is known by its revision."""
    shared = SharedMemoryEngine()
    a, heard = await _listened(nursery, shared)
    await a.commit([], [Put(b"d/x", b"1")])
    other = await shared.commit([], [Put(b"d/y", b"1")])
    await a.commit([], [Put(b"d/z", b"1")])
    await wait_caught_up(a, shared)
    assert heard == [other.revision]


async def test_same_writes_in_flight_at_once_are_each_known_as_own(
        nursery: trio.Nursery) -> None:
    """Two of this mount's commits in flight writing the same key and value: the first to
    hold back the watch's events holds both; when it answers, the other's event passes to
    the other, still in flight, and is dropped when it answers -- none is heard."""
    a, late, heard = await _heard(nursery)
    results: list[int] = []

    async def put() -> None:
        results.append((await a.commit([], [Put(b"d/x", b"1")])).revision)

    async with trio.open_nursery() as both:
        both.start_soon(put)
        both.start_soon(put)
    await wait_caught_up(a, late.inner)
    for _ in range(20):
        await trio.lowlevel.checkpoint()
    assert len(set(results)) == 2 and heard == []


async def test_a_change_like_a_commit_in_flight_still_reaches_listeners(
        nursery: trio.Nursery) -> None:
    """Another mount's change that looks like this mount's commit in flight (same key,
    same value) is held back only until that commit answers -- failed, here -- and then
    heard as another mount's."""
    a, late, heard = await _heard(nursery)
    late.first = [Put(b"d/x", b"1")]
    res = await a.commit([Compare(b"d/x", 0)], [Put(b"d/x", b"1")])
    assert not res.succeeded
    with trio.fail_after(5):
        while not heard:
            await trio.sleep(0.001)
    assert heard == [res.revision]
    assert a.cache.lookup(b"d/x") == (False, None)


async def wait_caught_up(*caches: CachedEngine | KVEngine) -> None:
    engines = [c for c in caches if isinstance(c, CachedEngine)]
    base = [c for c in caches if not isinstance(c, CachedEngine)][0]
    target = await base.current_revision()
    with trio.fail_after(10):
        while any(c.revision < target for c in engines):
            await trio.sleep(0.001)


# -- model-based: two caches on one engine -------------------------------------------------


class History:
    """Every committed state of every key, by revision."""

    def __init__(self) -> None:
        self.log: dict[bytes, list[tuple[int, bytes | None]]] = {}

    def record(self, rev: int, puts: list[Put], deletes: list[Delete]) -> None:
        for p in puts:
            self.log.setdefault(p.key, []).append((rev, p.value))
        for d in deletes:
            end = d.range_end or d.key + b"\x00"
            for k in list(self.log):
                if d.key <= k < end:
                    self.log[k].append((rev, None))

    def at(self, key: bytes, rev: int) -> bytes | None:
        cur: bytes | None = None
        for r, v in self.log.get(key, []):
            if r > rev:
                break
            cur = v
        return cur

    def states(self, key: bytes, lo: int, hi: int) -> list[bytes | None]:
        """The key's values at every revision in [lo, hi]."""
        out: list[bytes | None] = []
        cur: bytes | None = None
        for rev, v in self.log.get(key, []):
            if rev <= lo:
                cur = v
            elif rev <= hi:
                out.append(v)
        return [cur, *out]


class Recorded(DelegatingEngine):
    """Records every successful commit in ``hist`` as it happens."""

    def __init__(self, inner: KVEngine, hist: History) -> None:
        super().__init__(inner)
        self.hist = hist

    async def commit(self, compares: Sequence[Compare], puts: Sequence[Put],
                     deletes: Sequence[Delete] = ()) -> CommitResult:
        res = await self.inner.commit(compares, puts, deletes)
        if res.succeeded:
            self.hist.record(res.revision, list(puts), list(deletes))
        return res


KEYS = [b"d/%d" % i for i in range(4)] + [b"e/%d" % i for i in range(3)] + [b"x", b"y"]


async def mount_steps(seed: int, i: int, m: CachedEngine, shared: KVEngine, hist: History,
                      rng: random.Random, steps: int) -> None:
    """One mount's random reads and commits, each read checked against the history."""
    own: dict[bytes, int] = {}  # this mount's last commit to each key: no older answers
    for _ in range(steps):
        for _ in range(rng.choice([0, 1, 3])):
            await trio.lowlevel.checkpoint()
        op = rng.random()
        los = {k: max(m.revision, own.get(k, 0)) for k in KEYS}
        if op < 0.35:
            k = rng.choice(KEYS)
            got = await m.get(k)
            hi = await shared.current_revision()
            allowed = hist.states(k, los[k], hi)
            assert (got.value if got else None) in allowed, (seed, i, k, got, allowed)
        elif op < 0.5:
            g = rng.choice([b"d/", b"e/"])
            members = [k for k in KEYS if k.startswith(g)]
            res = await m.range(g, prefix_end(g))
            hi = await shared.current_revision()
            # A listing shows the group as it was at one revision, no older than the
            # watch or this mount's own changes to it.
            seen = {x.key: x.value for x in res.kvs}
            lo = max(los[k] for k in members)
            at = [{k: v for k in members if (v := hist.at(k, r)) is not None}
                  for r in range(lo, hi + 1)]
            assert seen in at, (seed, i, g, seen, lo, hi)
        else:
            k = rng.choice(KEYS)
            cur = await m.get(k)
            compares = [Compare(k, cur.mod_revision if cur else 0)]
            puts: list[Put] = []
            deletes: list[Delete] = []
            if rng.random() < 0.3:
                deletes = [Delete(k)]
            elif rng.random() < 0.1:
                deletes = [Delete(b"e/", prefix_end(b"e/"))]
            else:
                puts = [Put(k, b"%d" % rng.randrange(1000))]
            done = await m.commit(compares, puts, deletes)
            if done.succeeded:
                for w in KEYS:
                    if any(p.key == w for p in puts) or any(
                            d.key <= w < (d.range_end or d.key + b"\x00") for d in deletes):
                        own[w] = done.revision


async def run_model(seed: int) -> None:
    rng = random.Random(seed)
    shared = SharedMemoryEngine()
    hist = History()
    recorded = Recorded(shared, hist)
    mounts = [CachedEngine(Jittery(recorded, random.Random(seed * 2 + i)), prefix=b"",
                           group_of=slash_group, limit_bytes=rng.choice([2_000, 1 << 20]))
              for i in range(2)]
    async with trio.open_nursery() as nursery:
        for m in mounts:
            await nursery.start(m.run)
        for _round in range(4):
            async with trio.open_nursery() as steps:
                for i, m in enumerate(mounts):
                    steps.start_soon(mount_steps, seed, i, m, shared, hist,
                                     random.Random(rng.random()), 40)
            # Quiet: once both watches have caught up, every answer is the engine's.
            await wait_caught_up(*mounts, shared)
            for m in mounts:
                for k in KEYS:
                    want, got = await shared.get(k), await m.get(k)
                    assert (got.value if got else None) == (want.value if want else None), \
                        (seed, k, got, want)
                for g in (b"d/", b"e/"):
                    want_r = await shared.range(g, prefix_end(g))
                    got_r = await m.range(g, prefix_end(g))
                    assert [(x.key, x.value) for x in got_r.kvs] == \
                        [(x.key, x.value) for x in want_r.kvs], (seed, g)
        nursery.cancel_scope.cancel()


async def test_two_caches_model() -> None:
    for seed in range(int(os.environ.get("KVFS_CACHE_MODEL_SEEDS", "20"))):
        await run_model(seed)
