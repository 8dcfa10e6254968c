"""Coherence: other mounts' changes reach the kernel, after the record cache has them; our
own do not; a watch compacted past resets everything."""

from __future__ import annotations

from collections.abc import Sequence

import trio

from kvfs.kv.api import Put
from kvfs.kv.cache import CachedEngine
from kvfs.kv.local import MemoryEngine
from kvfs.meta import keys
from kvfs.meta.records import Attr
from kvfs.vfs.coherence import Coherence


class SharedMemoryEngine(MemoryEngine):
    shared = True


class RecordingInvalidator:
    def __init__(self, cache: CachedEngine | None = None) -> None:
        self.inodes: list[int] = []
        self.entries: list[tuple[int, bytes]] = []
        self.cache = cache
        self.seen_by_cache: list[bytes | None] = []  # what the cache held when told

    async def invalidate(self, entries: Sequence[tuple[int, bytes]],
                         inodes: Sequence[int]) -> None:
        self.entries.extend(entries)
        for ino in inodes:
            self.inodes.append(ino)
            if self.cache is not None:
                got = await self.cache.get(keys.attr(ino))
                self.seen_by_cache.append(got.value if got else None)


def attr(nlink: int, mode: int = 0o100644) -> bytes:
    return Attr(mode, 0, 0, 1, 1, 1, nlink).encode()


async def settle() -> None:
    for _ in range(20):
        await trio.sleep(0)


def cached(kv: MemoryEngine) -> CachedEngine:
    return CachedEngine(kv, prefix=keys.INODE_PREFIX, group_of=keys.listing_group)


async def test_other_mounts_changes_invalidate_and_own_do_not() -> None:
    kv = SharedMemoryEngine()
    cache = cached(kv)
    inv = RecordingInvalidator(cache)
    orphaned: list[int] = []

    async def on_orphaned(ino: int) -> None:
        orphaned.append(ino)

    coh = Coherence(inv, on_orphaned=on_orphaned)
    cache.listen(coh.apply)
    async with trio.open_nursery() as nursery:
        await nursery.start(cache.run)
        await cache.commit([], [Put(keys.attr(7), attr(1))])
        await cache.get(keys.attr(7))
        await settle()
        inv.inodes.clear()
        inv.seen_by_cache.clear()
        # Another mount changes 7's mode, and creates a name.
        await kv.commit([], [Put(keys.attr(7), attr(1, 0o100600)),
                             Put(keys.dentry(1, b"f"), b"x")])
        await cache.commit([], [Put(keys.attr(8), attr(1))])  # this mount's own
        await kv.commit([], [Put(keys.attr(9), attr(0))])  # another mount unlinked 9
        await settle()
        nursery.cancel_scope.cancel()
    assert inv.entries == [(1, b"f")]
    assert sorted(inv.inodes) == [7, 9]  # 8 was our own change
    assert orphaned == [9]
    # The kernel, told of 7, asks again and gets the new mode from the cache.
    assert Attr.decode(inv.seen_by_cache[inv.inodes.index(7)] or b"").mode == 0o100600


async def test_watch_behind_compaction_invalidates_everything_known() -> None:
    kv = SharedMemoryEngine()
    inv = RecordingInvalidator()
    for i in range(5):
        await kv.commit([], [Put(keys.attr(100 + i), attr(1))])
    await kv.compact(await kv.current_revision())
    known = {1: 1, 42: 3}
    cache = cached(kv)
    cache.listen(Coherence(inv, known_inodes=known).apply)
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: cache.run(since=1, task_status=task_status))
        await settle()
        await kv.commit([], [Put(keys.attr(5), attr(1))])  # and it keeps watching after
        await settle()
        nursery.cancel_scope.cancel()
    assert sorted(set(inv.inodes)) == [1, 5, 42]
    assert len(cache.cache) == 0
