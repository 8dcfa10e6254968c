"""The KV engine contract: behaviour every :class:`~kvfs.kv.api.KVEngine` must show.

Reuse it for a new engine by subclassing :class:`KVContract` in a ``test_*.py`` module and
providing a fixture named ``kv`` that yields an open, *empty* engine and closes it
afterwards, e.g.::

    class TestMyEngine(KVContract):
        lease_ttl = 2.0  # if the engine cannot expire leases faster

        @pytest.fixture
        async def kv(self, tmp_path):
            engine = await MyEngine.open(...)
            yield engine
            await engine.aclose()

The tests only use the public API of :mod:`kvfs.kv.api` and :mod:`kvfs.kv.txn`.
"""

from __future__ import annotations

from contextlib import aclosing

import pytest
import trio

from kvfs.kv.api import (
    Compacted,
    Compare,
    Delete,
    KVEngine,
    Put,
    TxnTooLarge,
    WatchEvent,
    prefix_end,
)
from kvfs.kv.txn import Txn, run_txn


async def put(kv: KVEngine, key: bytes, value: bytes, lease: int = 0) -> int:
    res = await kv.commit([], [Put(key, value, lease)])
    assert res.succeeded
    return res.revision


async def collect_watch(kv: KVEngine, start: bytes, end: bytes, start_revision: int,
                        until_revision: int, timeout: float = 5) -> list[WatchEvent]:
    """Every event from ``start_revision`` up to and including ``until_revision``."""
    events: list[WatchEvent] = []
    with trio.fail_after(timeout):
        async with aclosing(kv.watch(start, end, start_revision)) as it:  # type: ignore[type-var]
            async for batch in it:
                assert batch.events
                assert batch.revision == batch.events[-1].mod_revision
                events.extend(batch.events)
                if batch.revision >= until_revision:
                    break
    return events


class KVContract:
    """Contract tests; subclasses provide the ``kv`` fixture (see module docstring)."""

    lease_ttl = 0.3  # seconds; long enough to do a few operations, short enough to wait out
    large_value = 1024 * 1024

    # -- point reads and writes --------------------------------------------------------

    async def test_get_absent(self, kv: KVEngine) -> None:
        assert await kv.get(b"nope") is None

    async def test_get_many(self, kv: KVEngine) -> None:
        r1 = await put(kv, b"m1", b"one")
        r2 = await put(kv, b"m3", b"three")
        got = await kv.get_many([b"m3", b"m2", b"m1"])
        assert [g.value if g else None for g in got] == [b"three", None, b"one"]
        assert [g.mod_revision if g else 0 for g in got] == [r2, 0, r1]
        keys = [b"many%03d" % i for i in range(300)]  # more than one engine request's worth
        for i in range(0, 300, 100):
            await kv.commit([], [Put(k, k) for k in keys[i:i + 100]])
        assert [g.value if g else None for g in await kv.get_many(keys)] == keys
        assert await kv.get_many([]) == []

    async def test_put_get_overwrite(self, kv: KVEngine) -> None:
        r1 = await put(kv, b"a", b"one")
        got = await kv.get(b"a")
        assert got is not None
        assert (got.key, got.value, got.mod_revision, got.create_revision) == (b"a", b"one",
                                                                              r1, r1)
        r2 = await put(kv, b"a", b"two")
        assert r2 > r1
        got = await kv.get(b"a")
        assert got is not None
        assert (got.value, got.mod_revision, got.create_revision) == (b"two", r2, r1)
        assert await kv.current_revision() == r2

    async def test_empty_value(self, kv: KVEngine) -> None:
        await put(kv, b"e", b"")
        got = await kv.get(b"e")
        assert got is not None and got.value == b""

    async def test_revisions_shared_by_one_commit(self, kv: KVEngine) -> None:
        res = await kv.commit([], [Put(b"x", b"1"), Put(b"y", b"2")])
        assert res.succeeded
        x, y = await kv.get(b"x"), await kv.get(b"y")
        assert x is not None and y is not None
        assert x.mod_revision == y.mod_revision == res.revision
        assert await kv.current_revision() == res.revision

    async def test_recreate_after_delete_gets_new_create_revision(self, kv: KVEngine) -> None:
        r1 = await put(kv, b"k", b"v")
        await kv.commit([], [], [Delete(b"k")])
        r3 = await put(kv, b"k", b"w")
        got = await kv.get(b"k")
        assert got is not None
        assert got.create_revision == r3 != r1

    async def test_values_with_any_bytes_round_trip(self, kv: KVEngine) -> None:
        # Bytes that look like serialised references or msgpack must stay plain values.
        samples = [bytes(range(256)), b"\xc7\x10\x01" + b"\x00" * 16, b"\x00", b"\xff" * 70]
        for i, v in enumerate(samples):
            await put(kv, b"bin%d" % i, v)
        for i, v in enumerate(samples):
            got = await kv.get(b"bin%d" % i)
            assert got is not None and got.value == v

    # -- compares ----------------------------------------------------------------------

    async def test_compare_absent(self, kv: KVEngine) -> None:
        res = await kv.commit([Compare(b"c", 0)], [Put(b"c", b"1")])
        assert res.succeeded
        # The key now exists: "absent" no longer holds.
        res2 = await kv.commit([Compare(b"c", 0)], [Put(b"c", b"2")])
        assert not res2.succeeded
        assert res2.revision == res.revision
        got = await kv.get(b"c")
        assert got is not None and got.value == b"1"

    async def test_compare_present(self, kv: KVEngine) -> None:
        r1 = await put(kv, b"c", b"1")
        bad = await kv.commit([Compare(b"c", r1 + 100)], [Put(b"c", b"x")])
        assert not bad.succeeded
        ok = await kv.commit([Compare(b"c", r1)], [Put(b"c", b"2")])
        assert ok.succeeded and ok.revision > r1
        stale = await kv.commit([Compare(b"c", r1)], [Put(b"c", b"3")])
        assert not stale.succeeded
        got = await kv.get(b"c")
        assert got is not None and got.value == b"2"

    async def test_failed_compare_writes_nothing(self, kv: KVEngine) -> None:
        await put(kv, b"guard", b"g")
        await put(kv, b"victim", b"v")
        rev = await kv.current_revision()
        res = await kv.commit([Compare(b"guard", 0)],
                              [Put(b"new", b"n"), Put(b"victim", b"changed")],
                              [Delete(b"guard")])
        assert not res.succeeded
        assert res.revision == rev == await kv.current_revision()
        assert await kv.get(b"new") is None
        v, g = await kv.get(b"victim"), await kv.get(b"guard")
        assert v is not None and v.value == b"v"
        assert g is not None and g.value == b"g"

    async def test_compare_on_other_key_guards_write(self, kv: KVEngine) -> None:
        r = await put(kv, b"lock", b"1")
        res = await kv.commit([Compare(b"lock", r), Compare(b"absent", 0)],
                              [Put(b"data", b"d")])
        assert res.succeeded
        await put(kv, b"lock", b"2")
        res = await kv.commit([Compare(b"lock", r)], [Put(b"data", b"e")])
        assert not res.succeeded

    # -- deletes -----------------------------------------------------------------------

    async def test_delete_single(self, kv: KVEngine) -> None:
        await put(kv, b"a", b"1")
        await put(kv, b"ab", b"2")
        res = await kv.commit([], [], [Delete(b"a")])
        assert res.succeeded and res.revision == await kv.current_revision()
        assert await kv.get(b"a") is None
        assert await kv.get(b"ab") is not None

    async def test_delete_range(self, kv: KVEngine) -> None:
        for k in (b"a", b"b", b"b1", b"c", b"d"):
            await put(kv, k, k)
        res = await kv.commit([], [], [Delete(b"b", b"d")])
        assert res.succeeded
        left = await kv.range(b"", b"\x00")
        assert [x.key for x in left.kvs] == [b"a", b"d"]

    async def test_delete_range_to_end(self, kv: KVEngine) -> None:
        for k in (b"a", b"m", b"z", b"\xff\xff"):
            await put(kv, k, k)
        await kv.commit([], [], [Delete(b"m", b"\x00")])
        left = await kv.range(b"", b"\x00")
        assert [x.key for x in left.kvs] == [b"a"]

    async def test_delete_absent_is_not_an_error(self, kv: KVEngine) -> None:
        res = await kv.commit([], [], [Delete(b"ghost")])
        assert res.succeeded

    async def test_put_and_delete_in_one_commit(self, kv: KVEngine) -> None:
        await put(kv, b"old", b"o")
        res = await kv.commit([Compare(b"old", await kv.current_revision())],
                              [Put(b"new", b"n")], [Delete(b"old")])
        assert res.succeeded
        assert await kv.get(b"old") is None
        got = await kv.get(b"new")
        assert got is not None and got.mod_revision == res.revision

    # -- ranges ------------------------------------------------------------------------

    async def test_range_order_and_bounds(self, kv: KVEngine) -> None:
        for k in (b"p/b", b"p/a", b"p/c", b"q", b"o"):
            await put(kv, k, b"v" + k)
        res = await kv.range(b"p/", prefix_end(b"p/"))
        assert [x.key for x in res.kvs] == [b"p/a", b"p/b", b"p/c"]
        assert [x.value for x in res.kvs] == [b"vp/a", b"vp/b", b"vp/c"]
        assert not res.more
        assert res.revision == await kv.current_revision()

    async def test_range_paging(self, kv: KVEngine) -> None:
        keys = [b"k%02d" % i for i in range(10)]
        for k in keys:
            await put(kv, k, k)
        seen: list[bytes] = []
        start = b"k"
        pages = 0
        while True:
            res = await kv.range(start, prefix_end(b"k"), limit=3)
            pages += 1
            assert len(res.kvs) <= 3
            seen.extend(x.key for x in res.kvs)
            if not res.more:
                break
            assert len(res.kvs) == 3
            start = res.kvs[-1].key + b"\x00"
        assert seen == keys
        assert pages == 4
        exact = await kv.range(b"k", prefix_end(b"k"), limit=10)
        assert len(exact.kvs) == 10 and not exact.more

    async def test_range_to_end_of_keyspace(self, kv: KVEngine) -> None:
        for k in (b"a", b"b", b"\xff", b"\xff\xff\x01"):
            await put(kv, k, k)
        res = await kv.range(b"b", b"\x00")
        assert [x.key for x in res.kvs] == [b"b", b"\xff", b"\xff\xff\x01"]
        res = await kv.range(b"b", b"\x00", limit=2)
        assert [x.key for x in res.kvs] == [b"b", b"\xff"] and res.more

    async def test_range_keys_only(self, kv: KVEngine) -> None:
        r = await put(kv, b"k1", b"value")
        await put(kv, b"k2", b"x" * self.large_value)
        res = await kv.range(b"k", prefix_end(b"k"), keys_only=True)
        assert [x.key for x in res.kvs] == [b"k1", b"k2"]
        assert all(x.value == b"" for x in res.kvs)
        assert res.kvs[0].mod_revision == r and res.kvs[0].create_revision == r

    async def test_range_empty(self, kv: KVEngine) -> None:
        res = await kv.range(b"x", b"y")
        assert res.kvs == [] and not res.more

    # -- limits ------------------------------------------------------------------------

    async def test_too_many_ops(self, kv: KVEngine) -> None:
        n = kv.limits.max_ops + 1
        rev = await kv.current_revision()
        with pytest.raises(TxnTooLarge):
            await kv.commit([], [Put(b"op%04d" % i, b"v") for i in range(n)])
        with pytest.raises(TxnTooLarge):
            await kv.commit([], [Put(b"op%04d" % i, b"v") for i in range(n - 2)],
                            [Delete(b"zz1"), Delete(b"zz2"), Delete(b"zz3")])
        with pytest.raises(TxnTooLarge):
            await kv.commit([Compare(b"c%04d" % i, 0) for i in range(n)], [Put(b"a", b"b")])
        assert (await kv.range(b"", b"\x00")).kvs == []
        assert await kv.current_revision() == rev
        # Exactly at the limit is fine.
        res = await kv.commit([], [Put(b"op%04d" % i, b"v") for i in range(n - 1)])
        assert res.succeeded
        assert len((await kv.range(b"op", prefix_end(b"op"))).kvs) == n - 1

    async def test_request_too_large(self, kv: KVEngine) -> None:
        rev = await kv.current_revision()
        big = b"x" * (kv.limits.max_request_bytes // 2)
        with pytest.raises(TxnTooLarge):
            await kv.commit([], [Put(b"a", big), Put(b"b", big), Put(b"c", b"1")])
        assert await kv.get(b"a") is None and await kv.get(b"c") is None
        assert await kv.current_revision() == rev

    async def test_duplicate_put_key_refused(self, kv: KVEngine) -> None:
        with pytest.raises(TxnTooLarge):
            await kv.commit([], [Put(b"d", b"1"), Put(b"d", b"2")])
        assert await kv.get(b"d") is None

    async def test_put_inside_deleted_range_refused(self, kv: KVEngine) -> None:
        """A key put and deleted in one commit is refused, as etcd refuses it ("duplicate
        key given in txn request"), the delete a range or the key itself; a put beside a
        deleted range is fine."""
        await put(kv, b"p/old", b"o")
        rev = await kv.current_revision()
        for delete in (Delete(b"p/", prefix_end(b"p/")), Delete(b"p/new"), Delete(b"p", b"\x00")):
            with pytest.raises(TxnTooLarge):
                await kv.commit([], [Put(b"p/new", b"n")], [delete])
        assert await kv.current_revision() == rev and await kv.get(b"p/old") is not None
        res = await kv.commit([], [Put(b"q", b"n")], [Delete(b"p/", b"q")])
        assert res.succeeded and await kv.get(b"p/old") is None

    # -- watches -----------------------------------------------------------------------

    async def test_watch_catch_up_and_live(self, kv: KVEngine) -> None:
        await put(kv, b"other", b"x")
        r1 = await put(kv, b"w/a", b"1")
        r2 = await put(kv, b"w/b", b"2")
        await put(kv, b"outside", b"x")
        r3 = (await kv.commit([], [], [Delete(b"w/a")])).revision
        events: list[WatchEvent] = []
        last = 0

        async def watcher(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                          ) -> None:
            async with aclosing(kv.watch(b"w/", prefix_end(b"w/"), r1)) as it:  # type: ignore[type-var]
                task_status.started()
                async for batch in it:
                    assert batch.revision == batch.events[-1].mod_revision
                    events.extend(batch.events)
                    if batch.revision >= last:
                        return

        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                last = 10**9
                await nursery.start(watcher)
                r4 = await put(kv, b"w/c", b"3")
                await put(kv, b"outside2", b"x")
                r5 = (await kv.commit([], [Put(b"w/d", b"4"), Put(b"w/e", b"5")])).revision
                last = r5
                await put(kv, b"w/f", b"6")  # wakes the watcher after ``last`` is known
        got = [(e.key, e.value, e.mod_revision) for e in events]
        expected = [(b"w/a", b"1", r1), (b"w/b", b"2", r2), (b"w/a", None, r3),
                    (b"w/c", b"3", r4), (b"w/d", b"4", r5), (b"w/e", b"5", r5)]
        assert got[:len(expected)] == expected
        revs = [e.mod_revision for e in events]
        assert revs == sorted(revs)

    async def test_watch_single_key_range_and_deletes(self, kv: KVEngine) -> None:
        start = await put(kv, b"one", b"1")
        await put(kv, b"one0", b"x")
        # (Small values: an engine may return b"" for a large value freed since.)
        big = b"L" * 1000
        r2 = await put(kv, b"one", big)
        r3 = (await kv.commit([], [], [Delete(b"one", prefix_end(b"one"))])).revision
        events = await collect_watch(kv, b"one", b"one\x00", start, r3)
        assert [(e.key, e.value, e.mod_revision) for e in events] == [
            (b"one", b"1", start), (b"one", big, r2), (b"one", None, r3)]

    async def test_watch_live_large_value(self, kv: KVEngine) -> None:
        big = bytes(range(256)) * (self.large_value // 256)
        got: list[WatchEvent] = []

        async def watcher(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                          ) -> None:
            rev = await kv.current_revision()
            async with aclosing(kv.watch(b"big", b"big\x00", rev + 1)) as it:  # type: ignore[type-var]
                task_status.started()
                async for batch in it:
                    got.extend(batch.events)
                    return

        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                await nursery.start(watcher)
                r = await put(kv, b"big", big)
        assert [(e.key, e.value, e.mod_revision) for e in got] == [(b"big", big, r)]

    async def test_watch_compacted(self, kv: KVEngine) -> None:
        r1 = await put(kv, b"k", b"1")
        for i in range(5):
            await put(kv, b"k", b"%d" % i)
        rev = await kv.current_revision()
        await kv.compact(rev)
        with pytest.raises(Compacted):
            await collect_watch(kv, b"k", b"k\x00", r1, rev, timeout=2)
        # Watching from the compaction point itself still works.
        r_next = await put(kv, b"k", b"after")
        events = await collect_watch(kv, b"k", b"k\x00", rev, r_next)
        assert events[-1].value == b"after"

    # -- leases ------------------------------------------------------------------------

    async def test_lease_attach_and_revoke(self, kv: KVEngine) -> None:
        lease = await kv.lease_grant(60)
        assert lease
        await put(kv, b"l/a", b"1", lease)
        await put(kv, b"l/b", b"2", lease)
        await put(kv, b"keep", b"3")
        got = await kv.get(b"l/a")
        assert got is not None and got.lease == lease
        rev = await kv.current_revision()
        await kv.lease_revoke(lease)
        assert await kv.get(b"l/a") is None and await kv.get(b"l/b") is None
        assert await kv.get(b"keep") is not None
        assert await kv.current_revision() > rev
        assert not await kv.lease_keepalive(lease)

    async def test_lease_expiry(self, kv: KVEngine) -> None:
        lease = await kv.lease_grant(self.lease_ttl)
        await put(kv, b"eph", b"1", lease)
        assert await kv.get(b"eph") is not None
        await trio.sleep(self.lease_ttl * 2.5)
        assert await kv.get(b"eph") is None
        assert not await kv.lease_keepalive(lease)

    async def test_lease_keepalive_extends(self, kv: KVEngine) -> None:
        lease = await kv.lease_grant(self.lease_ttl)
        await put(kv, b"eph", b"1", lease)
        for _ in range(4):
            await trio.sleep(self.lease_ttl * 0.5)
            assert await kv.lease_keepalive(lease)
        assert await kv.get(b"eph") is not None  # alive for 2 TTLs thanks to keep-alives
        await kv.lease_revoke(lease)

    async def test_put_with_unknown_lease_fails(self, kv: KVEngine) -> None:
        rev = await kv.current_revision()
        res = await kv.commit([], [Put(b"a", b"1"), Put(b"b", b"2", lease=987654321)])
        assert not res.succeeded
        assert await kv.get(b"a") is None and await kv.get(b"b") is None
        assert await kv.current_revision() == rev

    async def test_put_with_revoked_lease_fails(self, kv: KVEngine) -> None:
        lease = await kv.lease_grant(60)
        await kv.lease_revoke(lease)
        res = await kv.commit([], [Put(b"a", b"1", lease)])
        assert not res.succeeded
        assert not await kv.lease_keepalive(lease)

    async def test_overwrite_detaches_lease(self, kv: KVEngine) -> None:
        lease = await kv.lease_grant(60)
        await put(kv, b"a", b"1", lease)
        await put(kv, b"a", b"2")  # no lease now
        await kv.lease_revoke(lease)
        got = await kv.get(b"a")
        assert got is not None and got.value == b"2" and got.lease == 0

    # -- optimistic transactions -------------------------------------------------------

    async def test_run_txn_concurrent_counter(self, kv: KVEngine) -> None:
        async def incr(txn: Txn) -> None:
            cur = await txn.get(b"counter")
            await trio.sleep(0)  # let the others interleave
            txn.put(b"counter", str(int(cur or b"0") + 1).encode())

        async def worker() -> None:
            await run_txn(kv, incr)

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for _ in range(20):
                    nursery.start_soon(worker)
        got = await kv.get(b"counter")
        assert got is not None and got.value == b"20"

    async def test_run_txn_reads_own_writes(self, kv: KVEngine) -> None:
        async def fn(txn: Txn) -> bytes | None:
            txn.put(b"x", b"1")
            seen = await txn.get(b"x")
            txn.delete(b"y")
            return seen

        await put(kv, b"y", b"gone")
        assert await run_txn(kv, fn) == b"1"
        assert await kv.get(b"y") is None

    # -- large values ------------------------------------------------------------------

    async def test_large_values_round_trip(self, kv: KVEngine) -> None:
        a = bytes(range(256)) * (self.large_value // 256)
        b = b"\x01" * (self.large_value - 7)
        r = await put(kv, b"big/a", a)
        await put(kv, b"big/b", b)
        got = await kv.get(b"big/a")
        assert got is not None and got.value == a and got.mod_revision == r
        res = await kv.range(b"big/", prefix_end(b"big/"))
        assert [x.value for x in res.kvs] == [a, b]
        await put(kv, b"big/a", b"small now")
        got = await kv.get(b"big/a")
        assert got is not None and got.value == b"small now"
        await put(kv, b"big/a", b)
        await kv.commit([], [], [Delete(b"big/b")])
        got = await kv.get(b"big/a")
        assert got is not None and got.value == b
        assert await kv.get(b"big/b") is None

    async def test_concurrent_large_reads_and_overwrites(self, kv: KVEngine) -> None:
        values = [bytes([i]) * (self.large_value // 4) for i in range(8)]
        await put(kv, b"hot", values[0])

        async def writer() -> None:
            for v in values[1:]:
                await put(kv, b"hot", v)

        async def reader() -> None:
            for _ in range(10):
                got = await kv.get(b"hot")
                assert got is not None and got.value in values
                res = await kv.range(b"hot", b"hot\x00")
                assert res.kvs[0].value in values

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(writer)
                for _ in range(3):
                    nursery.start_soon(reader)
        got = await kv.get(b"hot")
        assert got is not None and got.value == values[-1]
