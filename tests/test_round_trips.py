"""One round trip per change: the engine calls each metadata operation makes on a mount of
a shared engine once its record cache holds what the operation reads.

A mount is wired as :mod:`kvfs.fuse.mount` wires one (session, trash, history, the record
cache's watch with the coherence listener) on a :class:`MemoryEngine` that says it is
shared, as etcd is, and a counting layer sits between the mount and the engine.  Each
change made in a directory this mount created -- so its listing is known to be complete --
must be exactly one commit and no read: the kernel's lookup of the new name, the
transaction's reads and the history's version all come from the cache or ride in that
commit.  Reads of what the mount has seen (lookup, getattr, readdir) cost nothing.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import AsyncIterator, Sequence

import pytest
import trio
import trio.testing

from kvfs.errors import FSError
from kvfs.history.recorder import Recorder
from kvfs.kv.api import CommitResult, Compare, Delete, KeyValue, Put, RangeResult
from kvfs.kv.delegating import DelegatingEngine
from kvfs.kv.local import MemoryEngine
from kvfs.meta.keys import ROOT_INO
from kvfs.meta.metadata import Ctx, SetAttr
from kvfs.meta.session import Session
from kvfs.vfs.coherence import Coherence
from kvfs.vfs.fs import FileSystem
from kvfs.volume import format_volume, open_volume

ROOT = Ctx(0, 0)


class SharedMemoryEngine(MemoryEngine):
    shared = True


class Counting(DelegatingEngine):
    """Counts the calls that would be round trips to a remote engine."""

    def __init__(self, inner: MemoryEngine) -> None:
        super().__init__(inner)
        self.calls: Counter[str] = Counter()

    async def get(self, key: bytes) -> KeyValue | None:
        self.calls["read"] += 1
        return await self.inner.get(key)

    async def get_many(self, keys: Sequence[bytes]) -> list[KeyValue | None]:
        self.calls["read"] += 1
        return await self.inner.get_many(keys)

    async def range(self, start: bytes, end: bytes, *, limit: int = 0,
                    keys_only: bool = False) -> RangeResult:
        self.calls["read"] += 1
        return await self.inner.range(start, end, limit=limit, keys_only=keys_only)

    async def commit(self, compares: Sequence[Compare], puts: Sequence[Put],
                     deletes: Sequence[Delete] = ()) -> CommitResult:
        self.calls["commit"] += 1
        return await self.inner.commit(compares, puts, deletes)


class NoKernel:
    async def invalidate(self, entries: Sequence[tuple[int, bytes]],
                         inodes: Sequence[int]) -> None:
        pass


@pytest.fixture
async def mount(nursery: trio.Nursery) -> AsyncIterator[tuple[FileSystem, Counting]]:
    shared = SharedMemoryEngine()
    await format_volume(shared, "rt", storage="kv", bucket="")
    yield await open_mount(shared, nursery)


async def open_mount(shared: MemoryEngine, nursery: trio.Nursery
                     ) -> tuple[FileSystem, Counting]:
    """A mount of ``shared``, wired as kvfs.fuse.mount wires one."""
    counting = Counting(shared)
    vol = await open_volume("mem://", kv=counting)
    vol.meta.trash_days = vol.fmt.trash_days
    await vol.meta.ensure_trash()
    session = await Session.register(vol.kv, "/rt", 60.0, held=vol.meta.held)
    vol.meta.session_id = session.sid
    fs = FileSystem(vol.meta, vol.slices)
    fs.keep_history(Recorder(vol.meta, vol.fmt.history_settings, "rt-host"))
    assert fs.history is not None and fs.history.enabled
    coherence = Coherence(NoKernel(), known_inodes={ROOT_INO: 1}, on_orphaned=fs.note_orphaned)
    vol.cache.listen(coherence.apply)
    await nursery.start(session.keepalive)
    await nursery.start(vol.cache.run)
    return fs, counting


async def counted(counting: Counting, op: object) -> Counter[str]:
    """The engine calls ``op`` (an awaitable) made, after the background work settled."""
    await trio.sleep(0.05)  # the previous step's watch batch and cleanup round
    before = counting.calls.copy()
    await op  # type: ignore[misc]
    return counting.calls - before


async def absent(fs: FileSystem, parent: int, name: bytes) -> None:
    """The kernel's lookup before creating ``name``."""
    with pytest.raises(FSError):
        await fs.lookup(parent, name)


async def test_each_change_is_one_commit_and_no_read(mount: tuple[FileSystem, Counting]
                                                     ) -> None:
    fs, counting = mount
    d, _ = await fs.mkdir(ROOT, ROOT_INO, b"d", 0o755)
    one_commit = Counter({"commit": 1})

    async def create(name: bytes) -> None:  # open(2) with O_CREAT, then close(2)
        await absent(fs, d, name)
        fh, _, _ = await fs.create(ROOT, d, name, 0o644, os.O_WRONLY)
        await fs.release(fh)

    await create(b"warm-up")  # the first ids of each kind are reserved by commits
    await fs.unlink(d, b"warm-up")
    assert await counted(counting, create(b"f")) == one_commit
    assert await counted(counting, fs.lookup(d, b"f")) == Counter()
    ino, _ = await fs.lookup(d, b"f")
    assert await counted(counting, fs.getattr(ino)) == Counter()

    async def mkdir(name: bytes) -> None:
        await absent(fs, d, name)
        await fs.mkdir(ROOT, d, name, 0o755)

    assert await counted(counting, mkdir(b"sub")) == one_commit

    async def rename(old: bytes, new: bytes) -> None:
        await absent(fs, d, new)
        await fs.rename(d, old, d, new)

    assert await counted(counting, rename(b"f", b"g")) == one_commit
    ino, _ = await fs.lookup(d, b"g")

    async def link(name: bytes) -> None:
        await absent(fs, d, name)
        await fs.link(ino, d, name)

    assert await counted(counting, link(b"h")) == one_commit
    assert await counted(counting, fs.setxattr(ino, b"user.k", b"v")) == one_commit
    assert await counted(counting, fs.getxattr(ino, b"user.k")) == Counter()
    # A file with several links keeps its parents in P keys, read from the engine.
    assert await counted(counting, fs.unlink(d, b"h")) == one_commit + Counter(read=1)
    assert await counted(counting, fs.unlink(d, b"g")) == one_commit
    sub, _ = await fs.lookup(d, b"sub")
    assert await counted(counting, fs.setattr(sub, SetAttr(mode=0o40700))) == one_commit
    # rmdir reads the listing from the engine: emptiness is checked, not compared.
    assert await counted(counting, fs.rmdir(d, b"sub")) == one_commit + Counter(read=1)

    async def listing() -> None:
        fh = await fs.opendir(d)
        assert [e.name for _, e in await fs.readdir(fh, 0)] == [b".", b".."]
        await fs.releasedir(fh)

    assert await counted(counting, listing()) == Counter()


async def test_a_cold_read_on_another_mount(nursery: trio.Nursery) -> None:
    """Another mount's 1 KiB file: the lookup reads the entry, then the attributes and
    first chunk list together; the open is one read, and it starts the block's fetch
    itself (before any read asks for it)."""
    shared = SharedMemoryEngine()
    await format_volume(shared, "rt", storage="kv", bucket="")
    a, _ = await open_mount(shared, nursery)
    b, counting = await open_mount(shared, nursery)
    d, _ = await a.mkdir(ROOT, ROOT_INO, b"d", 0o755)
    for i in range(3):
        fh, _, _ = await a.create(ROOT, d, b"f%d" % i, 0o644, os.O_WRONLY)
        await a.write(fh, 0, b"x" * 1024)
        await a.flush(fh)
        await a.release(fh)
    bd, _ = await b.lookup(ROOT_INO, b"d")
    # The entry, then the attributes with the first chunk list.
    assert await counted(counting, b.lookup(bd, b"f2")) == Counter(read=2)
    ino, _ = await b.lookup(bd, b"f2")

    async def open_then_read() -> None:
        prefetched = b.slices.prefetched
        fh, attr = await b.open_with_attr(ino, os.O_RDONLY)
        await trio.testing.wait_all_tasks_blocked()  # the prefetch runs in the background
        assert b.slices.prefetched == prefetched + 1
        assert await b.read(fh, 0, 4096) == b"x" * 1024
        await b.release(fh)

    # The open's own read, and the block's (started by the open).
    assert await counted(counting, open_then_read()) == Counter(read=2)


async def test_a_copied_file_is_three_commits(mount: tuple[FileSystem, Counting]) -> None:
    """``cp -a`` of a file: open(O_CREAT|O_EXCL), write, futimens, fchmod, close.  The
    create is one commit; the times ride in the commit of the buffered data; the mode is
    one more -- and the file's one version is brought up to date in each, with no commit
    of its own."""
    fs, counting = mount
    d, _ = await fs.mkdir(ROOT, ROOT_INO, b"d", 0o755)
    await absent(fs, d, b"warm-up")
    fh, _, _ = await fs.create(ROOT, d, b"warm-up", 0o600, os.O_WRONLY | os.O_EXCL)
    await fs.write(fh, 0, b"x")  # the first slice id is reserved by a commit
    await fs.release(fh)

    async def copy() -> None:
        await absent(fs, d, b"copy")
        fh, ino, _ = await fs.create(ROOT, d, b"copy", 0o600, os.O_WRONLY | os.O_EXCL)
        await fs.write(fh, 0, b"data" * 500)
        await fs.setattr(ino, SetAttr(atime=10**18, mtime=10**18))
        await fs.setattr(ino, SetAttr(mode=0o100640))
        await fs.flush(fh)
        await fs.release(fh)

    assert await counted(counting, copy()) == Counter(commit=3)
    ino, attr = await fs.lookup(d, b"copy")
    assert (attr.mtime, attr.mode, attr.size) == (10**18, 0o100640, 2000)
