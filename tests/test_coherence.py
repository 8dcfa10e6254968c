"""Coherence: other mounts' changes reach the kernel; our own do not; compaction resets."""

from __future__ import annotations

import trio

from kvfs.kv.api import Put
from kvfs.kv.local import MemoryEngine
from kvfs.kv.txn import ReadHints
from kvfs.meta import keys
from kvfs.meta.records import Attr
from kvfs.vfs.coherence import Coherence, OwnRevisions


class RecordingInvalidator:
    def __init__(self) -> None:
        self.inodes: list[int] = []
        self.entries: list[tuple[int, bytes]] = []

    async def invalidate_inode(self, ino: int) -> None:
        self.inodes.append(ino)

    async def invalidate_entry(self, parent: int, name: bytes) -> None:
        self.entries.append((parent, name))


def attr(nlink: int) -> bytes:
    return Attr(0o100644, 0, 0, 1, 1, 1, nlink).encode()


async def settle() -> None:
    for _ in range(20):
        await trio.sleep(0)


async def test_other_mounts_changes_invalidate_and_own_do_not() -> None:
    kv, own, inv, hints = MemoryEngine(), OwnRevisions(), RecordingInvalidator(), ReadHints()
    orphaned: list[int] = []

    async def on_orphaned(ino: int) -> None:
        orphaned.append(ino)

    coh = Coherence(kv, own, inv, on_orphaned=on_orphaned, hints=hints)
    async with trio.open_nursery() as nursery:
        await nursery.start(coh.run)
        hints.put(keys.attr(7), attr(1), 1)
        await kv.commit([], [Put(keys.attr(7), attr(1)), Put(keys.dentry(1, b"f"), b"x")])
        mine = await kv.commit([], [Put(keys.attr(8), attr(1))])
        own.add(mine.revision)
        await kv.commit([], [Put(keys.attr(9), attr(0))])  # another mount unlinked 9
        await settle()
        nursery.cancel_scope.cancel()
    assert inv.entries == [(1, b"f")]
    assert sorted(inv.inodes) == [7, 9]  # 8 was our own change
    assert orphaned == [9]
    assert hints.get(keys.attr(7)) is None  # a stale guess is dropped


async def test_watch_behind_compaction_invalidates_everything_known() -> None:
    kv, inv = MemoryEngine(), RecordingInvalidator()
    for i in range(5):
        await kv.commit([], [Put(keys.attr(100 + i), attr(1))])
    await kv.compact(await kv.current_revision())
    known = {1: 1, 42: 3}
    coh = Coherence(kv, OwnRevisions(), inv, known_inodes=known)
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: coh.run(since=1, task_status=task_status))
        await settle()
        await kv.commit([], [Put(keys.attr(5), attr(1))])  # and it keeps watching after
        await settle()
        nursery.cancel_scope.cancel()
    assert sorted(set(inv.inodes)) == [1, 5, 42]
