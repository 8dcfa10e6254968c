"""The filesystem as FUSE sees it, without FUSE: handles, lookup counts, open-unlinked files.

:class:`FileSystem` turns kernel-shaped requests (inode numbers, file handles, flags) into
:class:`~kvfs.meta.metadata.Metadata` transactions and :class:`~kvfs.chunk.filedata.FileData`
I/O.  It never imports pyfuse3, so tests drive it directly; :mod:`kvfs.fuse.ops` is a thin
adapter on top.

Invariants:
  * ``_open[ino]`` counts this mount's open handles (files and directories) of ``ino``;
    Metadata keeps an unlinked inode's data while that count is positive, and
    :meth:`release` hands it to the cleaner when the count drops to zero.
  * ``_data[ino]`` exists exactly while a file handle of ``ino`` is open; all handles of
    one inode share it, so they see each other's buffered writes.
  * Attributes returned for an inode with unsettled writes (buffered, or being committed by
    a flush) include their length and mtime.
  * With a history (:mod:`kvfs.history`), every change is recorded as a version, in the
    change's own transaction where it can be (create, unlink, a rename of a file, the
    close that commits written data) -- see :mod:`kvfs.history.pending` for changes made
    through open handles.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from itertools import count

import trio

from kvfs.chunk.cleanup import Cleaner
from kvfs.chunk.filedata import FileData
from kvfs.chunk.layout import read_plan
from kvfs.chunk.slices import SliceStore
from kvfs.errors import FSError
from kvfs.history.pending import PendingVersions
from kvfs.history.recorder import Recorder, join
from kvfs.history.records import ATTR, DELETE, LINK, WRITE
from kvfs.kv.api import NoSpace
from kvfs.kv.cache import CachedEngine
from kvfs.kv.txn import Txn
from kvfs.meta.keys import Ino
from kvfs.meta.metadata import MAX_FILE_SIZE, Ctx, DirEntry, Metadata, SetAttr
from kvfs.meta.records import Attr, now_ns
from kvfs.objstore.api import ObjectStoreFull
from kvfs.outage import log_failure

log = logging.getLogger("kvfs.vfs")
# statfs capacity of a volume whose storage gives no local free-space figure (etcd, memory):
# 1 PiB, far above what such an engine holds (usage counts data written, not file lengths).
NOMINAL_CAPACITY = 1 << 50
# Bytes at the start of a file whose blocks an open for reading fetches ahead (the size of
# the kernel's first read).
OPEN_PREFETCH = 128 << 10


@dataclass(slots=True)
class FileHandle:
    ino: int
    flags: int
    data: FileData
    uid: int = 0  # who opened it: the author of the versions its writes make


@dataclass(slots=True)
class DirHandle:
    ino: int
    entries: list[DirEntry] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class StatFs:
    block_size: int
    total_blocks: int
    free_blocks: int
    total_inodes: int
    free_inodes: int
    name_max: int = 255


def _access_wanted(flags: int) -> int:
    """The access(2) mode an open with ``flags`` needs."""
    acc = flags & os.O_ACCMODE
    want = os.R_OK if acc in (os.O_RDONLY, os.O_RDWR) else 0
    if acc in (os.O_WRONLY, os.O_RDWR) or flags & os.O_TRUNC:
        want |= os.W_OK
    return want


class FileSystem:
    """POSIX operations of one mount (see module docstring)."""

    def __init__(self, meta: Metadata, slices: SliceStore, *,
                 free_space: Callable[[], int | None] = lambda: None,
                 orphan_grace: float = 60.0) -> None:
        self.meta = meta
        self.free_space = free_space  # bytes the storage can still take (blocking call)
        self.slices = slices
        self.cleaner = Cleaner(meta, slices, orphan_grace=orphan_grace)
        meta.is_open = self.is_open
        self._fh = count(1)
        self._files: dict[int, FileHandle] = {}
        self._dirs: dict[int, DirHandle] = {}
        self._open: dict[int, int] = {}
        self._data: dict[int, FileData] = {}
        # inode -> (its data, file length) awaiting background compaction
        self._compact_pending: dict[int, tuple[FileData, int]] = {}
        self._compact_wake = trio.Event()
        self.history: Recorder | None = None  # set by keep_history
        self._pending: PendingVersions | None = None
        self._free_cache: tuple[int, float, int | None] | None = None  # (used, when, free)

    # -- history -----------------------------------------------------------------------

    def keep_history(self, recorder: Recorder) -> None:
        """Record a version of every change (the volume keeps a history)."""
        self.history = recorder
        self._pending = PendingVersions(recorder)

    async def _create_record(self, ctx: Ctx, parent: int, name: bytes, *, handle: bool = False
                             ) -> Callable[[Txn, int, Attr], Awaitable[None]] | None:
        """What records a new node's version inside its create (None without history)."""
        if self._pending is None or not self._pending.recorder.enabled:
            return None
        return await self._pending.on_create(await self._path(parent, name), ctx.uid,
                                             handle=handle)

    def _mark(self, ino: int, kind: str, uid: int, *, wrote: bool = False) -> None:
        """``ino`` changed through an open handle: a version is due (see module docstring)."""
        if self._pending is not None:
            self._pending.changed(ino, kind, uid, wrote=wrote)

    async def _path(self, parent: int, name: bytes) -> bytes | None:
        assert self.history is not None
        d = await self.history.dir_path(parent)
        return None if d is None else join(d, name)

    # -- bookkeeping -------------------------------------------------------------------

    def is_open(self, ino: int) -> bool:
        return self._open.get(ino, 0) > 0

    def _inc_open(self, ino: int) -> None:
        self._open[ino] = self._open.get(ino, 0) + 1

    async def _dec_open(self, ino: int) -> None:
        n = self._open[ino] - 1
        if n:
            self._open[ino] = n
            return
        del self._open[ino]
        self._data.pop(ino, None)
        if ino in self.meta.held:
            await self.meta.release_orphan(ino)
            self.cleaner.poke()

    async def note_orphaned(self, ino: int) -> None:
        """Another mount removed the last name of ``ino``: hold it while it is open here."""
        if self.is_open(ino):
            await self.meta.hold(ino)
            if not self.is_open(ino):  # its last handle closed while the hold was written
                await self.meta.release_orphan(ino)
                self.cleaner.poke()

    def _overlay(self, ino: int, attr: Attr) -> Attr:
        data = self._data.get(ino)
        if data is not None and data.unsettled:
            attr.size = max(attr.size, data.pending_end)
            attr.mtime = attr.ctime = max(attr.mtime, data.pending_mtime)
        return attr

    # -- attributes and names ----------------------------------------------------------

    async def lookup(self, parent: int, name: bytes) -> tuple[Ino, Attr]:
        ino, attr = await self.meta.lookup(parent, name)
        return ino, self._overlay(ino, attr)

    async def getattrs(self, inos: list[int]) -> list[Attr | None]:
        return [None if a is None else self._overlay(i, a)
                for i, a in zip(inos, await self.meta.getattrs(inos), strict=True)]

    async def getattr(self, ino: int) -> Attr:
        return self._overlay(ino, await self.meta.getattr(ino))

    async def setattr(self, ino: int, ch: SetAttr, uid: int = 0, *,
                      through_handle: bool = False) -> Attr:
        """Change attributes, recording the file's version in the change's own commit.
        ``through_handle``: by an open descriptor (ftruncate, an open with O_TRUNC).  A
        change by descriptor -- or to a file whose open handle here has a version due (the
        kernel sends fchmod and futimens without the descriptor: ``cp -a``'s are these)
        -- brings the handle's version up to date instead of adding one."""
        data = self._data.get(ino)
        if ch.size is not None and data is not None:
            data.discard_beyond(ch.size)
            await data.flush()
        versioned = self.history is not None and any(
            v is not None for v in (ch.mode, ch.uid, ch.gid, ch.size, ch.mtime))
        by_handle = data is not None and (through_handle or (
            self._pending is not None and self._pending.has_due(ino)))
        record: Callable[[Txn, Attr], Awaitable[None]] | None = None
        handle_version = None
        if versioned and by_handle and self._pending is not None:
            # The handle's version, brought up to date in this change's own commit.
            handle_version = await self._pending.change_record(ino, WRITE, uid)
            if handle_version is not None:
                record = handle_version[0]
        elif versioned and not by_handle:
            recorder = self.history
            assert recorder is not None

            async def record(t: Txn, a: Attr) -> None:
                await recorder.version_in(t, ino, a, ATTR, uid)

        attr = None
        if data is not None and data.dirty:
            # Buffered writes commit first (an explicit mtime must not be overtaken by a
            # later flush, and a version must show them): the change rides in their
            # commit -- cp -a's futimens costs no commit of its own.
            attr = await data.flush(self._riding(ino, ch, record))
        if attr is None:
            attr = await self.meta.setattr(ino, ch, record=record)
        if ch.size is not None:
            self.cleaner.poke()
        if handle_version is not None:
            assert self._pending is not None
            self._pending.settled(ino, handle_version[1], handle_version[2])
        return self._overlay(ino, attr)

    def _riding(self, ino: int, ch: SetAttr,
                record: Callable[[Txn, Attr], Awaitable[None]] | None
                ) -> Callable[[Txn, Attr], Awaitable[None]]:
        """What applies attribute change ``ch`` (no size) of ``ino`` inside a write's
        transaction, and then ``record``s it."""
        async def ride(t: Txn, a: Attr) -> None:
            self.meta.change_in(t, ino, a, ch)
            if record is not None:
                await record(t, a)

        return ride

    async def mknod(self, ctx: Ctx, parent: int, name: bytes, mode: int,
                    rdev: int = 0) -> tuple[Ino, Attr]:
        ino, attr, _ = await self.meta.create(ctx, parent, name, mode, rdev,
                                              record=await self._create_record(ctx, parent, name))
        return ino, attr

    async def mkdir(self, ctx: Ctx, parent: int, name: bytes, mode: int) -> tuple[Ino, Attr]:
        ino, attr, _ = await self.meta.create(ctx, parent, name, stat.S_IFDIR | (mode & 0o7777))
        return ino, attr

    async def symlink(self, ctx: Ctx, parent: int, name: bytes,
                      target: bytes) -> tuple[Ino, Attr]:
        ino, attr, _ = await self.meta.create(ctx, parent, name, stat.S_IFLNK | 0o777,
                                              target=target,
                                              record=await self._create_record(ctx, parent, name))
        return ino, attr

    async def readlink(self, ino: int) -> bytes:
        return await self.meta.readlink(ino)

    async def link(self, ino: int, parent: int, name: bytes, uid: int = 0) -> Attr:
        record = None
        history = self.history
        if history is not None and history.enabled:
            path = await self._path(parent, name)
            if path is not None and history.settings.covers(path):
                seq, at = await history.meta.gc_ids.next(), now_ns()

                async def record(t: Txn, a: Attr) -> None:
                    await history.put_version(t, ino, a, LINK, uid, [path], at, seq)

        attr = await self.meta.link(ino, parent, name, record=record)
        return self._overlay(ino, attr)

    async def unlink(self, parent: int, name: bytes, uid: int = 0) -> None:
        record: Callable[[Txn], None] | None = None
        if self.history is not None and self.history.enabled:
            history, path = self.history, await self._path(parent, name)
            seq = await self.meta.gc_ids.next()
            if path is not None:
                def record(t: Txn) -> None:  # the tombstone commits with the unlink
                    history.put_tombstone(t, path, DELETE, uid, None, seq)
        await self.meta.unlink(parent, name, record)
        self.cleaner.poke()

    async def rmdir(self, parent: int, name: bytes) -> None:
        await self.meta.rmdir(parent, name)

    async def rename(self, p1: int, n1: bytes, p2: int, n2: bytes, flags: int = 0,
                     uid: int = 0) -> None:
        history = self.history
        if history is None or not history.enabled:
            await self.meta.rename(p1, n1, p2, n2, flags)
            self.cleaner.poke()
            return
        # The parents keep their paths whatever the rename does.
        old, new = await self._path(p1, n1), await self._path(p2, n2)
        if old is None or new is None:  # a parent went meanwhile: nothing to name
            await self.meta.rename(p1, n1, p2, n2, flags)
            self.cleaner.poke()
            return
        seq = await self.meta.gc_ids.next()
        recorded = False

        async def record(t: Txn, moved: list[tuple[int, Attr]]) -> None:
            nonlocal recorded  # a plain rename of a file commits its versions with it
            recorded = await history.in_rename(t, moved, new, old, uid, seq)

        moved = await self.meta.rename(p1, n1, p2, n2, flags, record)
        self.cleaner.poke()
        if moved and not recorded:
            # A directory's tree, or an exchange: recorded after the commit.
            places = [(new, old), (old, new)]
            await history.record_moves(
                [(now_at, was_at, ino, attr)
                 for (now_at, was_at), (ino, attr) in zip(places, moved, strict=False)], uid)

    # -- files -------------------------------------------------------------------------

    def _new_handle(self, ino: int, flags: int, uid: int = 0) -> int:
        data = self._data.get(ino)
        if data is None:
            data = self._data[ino] = FileData(ino, self.meta, self.slices)
        fh = next(self._fh)
        self._files[fh] = FileHandle(ino, flags, data, uid)
        self._inc_open(ino)
        return fh

    async def open(self, ino: int, flags: int) -> int:
        fh, _ = await self.open_with_attr(ino, flags)
        return fh

    async def open_with_attr(self, ino: int, flags: int, uid: int = 0) -> tuple[int, Attr]:
        """Open ``ino``; also return its attributes as read from the engine just now
        (close-to-open: whatever caches hold, an open sees the latest committed state)."""
        if flags & os.O_ACCMODE != os.O_WRONLY and not flags & os.O_TRUNC:
            self._prefetch_start(ino)
        attr = await self.meta.getattr(ino, fresh=True)
        if attr.is_dir and flags & os.O_ACCMODE != os.O_RDONLY:
            raise FSError(errno.EISDIR)
        fh = self._new_handle(ino, flags, uid)
        if flags & os.O_TRUNC and flags & os.O_ACCMODE != os.O_RDONLY and attr.size:
            try:
                attr = await self.setattr(ino, SetAttr(size=0), uid, through_handle=True)
            except BaseException:
                await self.release(fh)
                raise
        return fh, self._overlay(ino, attr)

    def _prefetch_start(self, ino: int) -> None:
        """Start fetching the blocks of the first OPEN_PREFETCH bytes of file ``ino`` as the
        record cache knows them, while the open re-reads its records from the engine.
        Blocks never change, so a stale chunk list costs only a needless fetch; a current
        one -- most opens -- has the data of a small file on its way alongside the open's
        own round trip instead of after it."""
        start = self.meta.cached_start(ino)
        if start is None:
            return
        size, slices = start
        names = [n for n in self.slices.plan_blocks(read_plan(slices, 0, min(size,
                                                                            OPEN_PREFETCH)))
                 if not self.slices.cached(n)]
        if names:
            trio.lowlevel.spawn_system_task(self._prefetch_quietly, ino, names,
                                            name=f"kvfs open prefetch of inode {ino}")

    async def _prefetch_quietly(self, ino: int, names: list[str]) -> None:
        try:
            await self.slices.prefetch(names)
        except Exception as exc:  # noqa: BLE001 - only a hint: the read fetches them again
            log.debug("prefetch at the open of inode %d failed: %s", ino, exc)

    async def create(self, ctx: Ctx, parent: int, name: bytes, mode: int, flags: int, *,
                     restarted_walk: bool = False) -> tuple[int, Ino, Attr]:
        """open(2) with O_CREAT of ``name``, which the kernel believed absent.

        ``restarted_walk``: this create comes from a path walk the kernel already restarted
        after ESTALE.  The kernel restarts a walk only once, so ESTALE now would reach the
        application: a name found existing is opened here instead.
        """
        ino, attr, created = await self.meta.create(
            ctx, parent, name, stat.S_IFREG | (mode & 0o7777), exclusive=bool(flags & os.O_EXCL),
            record=await self._create_record(ctx, parent, name, handle=True))
        if not created:
            # Another mount made the name meanwhile.  Answer as open(2) of that name would.
            if attr.is_dir:
                raise FSError(errno.EISDIR)
            if not restarted_walk:
                # The kernel's own walk, restarted by ESTALE, looks the name up afresh
                # and opens what it finds with its own checks: permissions (supplementary
                # groups included), O_TRUNC, following a symlink, opening a device.
                raise FSError(errno.ESTALE)
            if not attr.is_reg:
                raise FSError(errno.EEXIST)
            # The restarted walk raced too: open the file here, checking what the kernel
            # checked only on the directory.
            await self.access(ctx, ino, _access_wanted(flags))
        fh = self._new_handle(ino, flags, ctx.uid)
        if not created and flags & os.O_TRUNC and attr.size:
            attr = await self.setattr(ino, SetAttr(size=0), ctx.uid, through_handle=True)
        return fh, ino, attr

    def _handle(self, fh: int) -> FileHandle:
        h = self._files.get(fh)
        if h is None:
            raise FSError(errno.EBADF)
        return h

    async def read(self, fh: int, offset: int, size: int) -> bytes:
        h = self._handle(fh)
        attr = await self.getattr(h.ino)
        return await h.data.read(offset, size, attr.size)

    async def write(self, fh: int, offset: int, buf: bytes) -> int:
        h = self._handle(fh)
        if h.flags & os.O_APPEND:
            offset = (await self.getattr(h.ino)).size
        if offset + len(buf) > MAX_FILE_SIZE:
            raise FSError(errno.EFBIG)
        await h.data.write(offset, buf)
        self._mark(h.ino, WRITE, h.uid, wrote=True)
        return len(buf)

    async def flush(self, fh: int) -> None:
        """close(2) of one descriptor: make its writes durable and report earlier failures."""
        h = self._handle(fh)
        due = None
        if self._pending is not None and h.data.dirty:
            due = await self._pending.flush_record(h.ino)
        await self._flush_data(h.data, due[0] if due else None)
        if due is not None:
            assert self._pending is not None
            self._pending.settled(h.ino, due[1], due[2])

    async def _flush_data(self, data: FileData,
                          record: Callable[[Txn, Attr], Awaitable[None]] | None = None) -> None:
        try:
            attr = await data.flush(record)
        except FSError:
            raise
        except (NoSpace, ObjectStoreFull) as exc:
            log.warning("writing inode %d: %s", data.ino, exc)
            raise FSError(errno.ENOSPC, f"writing inode {data.ino}: {exc}") from exc
        except Exception as exc:
            # The data stays buffered for the next flush; say why this one failed.
            log_failure(log, "writing inode %d failed", data.ino)
            raise FSError(errno.EIO, f"writing inode {data.ino}: {exc}") from exc
        if attr is not None and data.compact_wanted:
            self._compact_pending[data.ino] = (data, attr.size)
            self._compact_wake.set()

    async def fsync(self, fh: int, datasync: bool = False) -> None:
        await self._flush_data(self._handle(fh).data)

    async def release(self, fh: int) -> None:
        h = self._files.pop(fh, None)
        if h is None:
            return
        try:
            if h.data.dirty:
                await self._flush_data(h.data)
            if self._pending is not None:
                await self._pending.release(h.ino)
        finally:
            await self._dec_open(h.ino)

    # -- directories -------------------------------------------------------------------

    async def opendir(self, ino: int) -> int:
        attr = await self.meta.getattr(ino)
        if not attr.is_dir:
            raise FSError(errno.ENOTDIR)
        fh = next(self._fh)
        self._dirs[fh] = DirHandle(ino)
        self._inc_open(ino)
        return fh

    async def readdir(self, fh: int, start: int,
                      limit: int | None = None) -> list[tuple[int, DirEntry]]:
        """Up to ``limit`` entries (all that are left if None) from position ``start``, as
        (next position, entry).

        Position 0 (a fresh or rewound stream) takes a new snapshot of the directory, so
        one pass neither repeats nor skips an entry however the directory changes.  Any
        other position indexes that snapshot: a call costs only the entries it returns, so
        a listing fetched piece by piece is linear in the directory's size.
        """
        h = self._dirs.get(fh)
        if h is None:
            raise FSError(errno.EBADF)
        if start == 0:
            attr = await self.meta.getattr(h.ino)
            dots = [DirEntry(b".", Ino(h.ino), stat.S_IFDIR >> 12),
                    DirEntry(b"..", Ino(attr.parent or h.ino), stat.S_IFDIR >> 12)]
            h.entries = dots + await self.meta.readdir(h.ino)
        stop = len(h.entries) if limit is None else min(len(h.entries), start + limit)
        return [(i + 1, h.entries[i]) for i in range(start, stop)]

    def dir_ino(self, fh: int) -> int:
        """The directory open as handle ``fh``."""
        h = self._dirs.get(fh)
        if h is None:
            raise FSError(errno.EBADF)
        return h.ino

    async def releasedir(self, fh: int) -> None:
        h = self._dirs.pop(fh, None)
        if h is not None:
            await self._dec_open(h.ino)

    # -- misc --------------------------------------------------------------------------

    async def statfs(self) -> StatFs:
        """Used figures are the volume's usage counters (data written, not file lengths:
        see :mod:`kvfs.meta.usage`); free space is what the storage under it has left, so
        ``df`` shows the volume's own size and the room to grow."""
        usage = self.meta.usage
        used = usage.used_space
        # The storage's free space moves with anything written under it (the engine's own
        # log, other programs); a figure at most a second old, re-read at once when the
        # volume's usage moved, keeps statfs calls that follow each other consistent.
        now = trio.current_time()
        cached = self._free_cache
        if cached is not None and cached[0] == used and now - cached[1] < 1.0:
            free = cached[2]
        else:
            free = await trio.to_thread.run_sync(self.free_space)
            self._free_cache = (used, now, free)
        if free is None:  # no local figure: a nominal capacity that fills as files grow
            free = max(0, NOMINAL_CAPACITY - used)
        free_inodes = (1 << 40) - usage.used_inodes
        return StatFs(4096, (used + free) // 4096, free // 4096,
                      usage.used_inodes + free_inodes, free_inodes)

    async def access(self, ctx: Ctx, ino: int, mode: int) -> None:
        attr = await self.meta.getattr(ino)
        if ctx.uid == 0:
            if mode & os.X_OK and not attr.is_dir and not attr.mode & 0o111:
                raise FSError(errno.EACCES)
            return
        if ctx.uid == attr.uid:
            bits = (attr.mode >> 6) & 7
        elif ctx.gid == attr.gid:
            bits = (attr.mode >> 3) & 7
        else:
            bits = attr.mode & 7
        if mode & bits != mode:
            raise FSError(errno.EACCES)

    async def getxattr(self, ino: int, name: bytes) -> bytes:
        return await self.meta.getxattr(ino, name)

    async def setxattr(self, ino: int, name: bytes, value: bytes, flags: int = 0) -> None:
        await self.meta.setxattr(ino, name, value, flags)

    async def listxattr(self, ctx: Ctx, ino: int) -> list[bytes]:
        names = await self.meta.listxattr(ino)
        if ctx.uid != 0:
            # trusted.* is for privileged processes only; the kernel does not filter lists.
            names = [n for n in names if not n.startswith(b"trusted.")]
        return names

    async def removexattr(self, ino: int, name: bytes) -> None:
        await self.meta.removexattr(ino, name)

    async def flush_all(self) -> None:
        """Make every buffered write of this mount durable (unmount, SIGTERM)."""
        for data in list(self._data.values()):
            if data.dirty:
                await self._flush_data(data)
        if self._pending is not None:
            await self._pending.release_all()

    async def _compactor(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                         ) -> None:
        task_status.started()
        while True:
            await self._compact_wake.wait()
            self._compact_wake = trio.Event()
            while self._compact_pending:
                ino = next(iter(self._compact_pending))
                data, size = self._compact_pending.pop(ino)
                try:
                    if await data.compact(size):
                        self.cleaner.poke()
                except Exception:  # noqa: BLE001 - compaction is an optimisation; retry later
                    log_failure(log, "compaction of inode %d failed", ino)
                    self.cleaner.poke()  # the swap may have landed, freeing old slices

    async def run_background(self, nursery: trio.Nursery) -> None:
        """Start the record cache's watch, the cleaner and the compactor as children of
        ``nursery``."""
        if isinstance(self.meta.kv, CachedEngine):
            await nursery.start(self.meta.kv.run)
        if self.history is not None:
            await nursery.start(self.history.refresh_settings)
        await nursery.start(self.cleaner.run)
        await nursery.start(self.meta.usage.run)
        await nursery.start(self._compactor)
