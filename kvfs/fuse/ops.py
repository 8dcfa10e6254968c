"""The only pyfuse3 importer besides :mod:`kvfs.fuse.mount`: requests in, replies out.

Handlers call into :class:`~kvfs.vfs.fs.FileSystem` and convert types (``EntryAttributes``,
``FileInfo``, request contexts) and errors: an :class:`~kvfs.errors.FSError` becomes
``FUSEError(errno)``, an unreachable or full engine becomes EIO or ENOSPC, and anything else
is logged and returned as EIO -- nothing else may escape a handler.

What depends on the kernel's side of the protocol lives here too: its lookup counts and
what it was last told of each inode (coherence, keep_cache), readdir replies sized to its
buffer, ESTALE that restarts a path walk at most once per walk (:meth:`KvfsOperations._stale`),
and where it holds each directory (:meth:`KvfsOperations._place_dir`).
"""

from __future__ import annotations

import errno
import functools
import logging
import math
import os
import stat
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import pyfuse3
import trio

from kvfs.errors import FSError
from kvfs.fuse.dirplaces import DirPlaces
from kvfs.fuse.metrics import FuseStats
from kvfs.kv.api import EngineUnavailable, NoSpace, TxnTooLarge
from kvfs.kv.cache import CachedEngine, fresh_reads, reading_fresh
from kvfs.meta.metadata import RENAME_EXCHANGE, Ctx, DirEntry, SetAttr
from kvfs.meta.records import Attr
from kvfs.meta.trash import shown_nlink
from kvfs.objstore.api import BlockCorrupt, ObjectStoreFull
from kvfs.outage import log_failure
from kvfs.vfs.fs import FileSystem

log = logging.getLogger("kvfs.fuse")
# Seconds the kernel may cache attributes and names (see KvfsOperations.attr_timeout): long
# while every change reaches it as an invalidation, short when the watch cannot promise
# that (then as JuiceFS's default).
COHERENT_TIMEOUT = 60.0
FALLBACK_TIMEOUT = 1.0
# How long a lookup waits for the kernel to drop a moved directory's old name.
_DROP_OLD_NAME_WAIT = 0.05
# The kernel restarts a path walk that met ESTALE at once (well within this many seconds),
# and only once.
_RESTARTED_WALK = 1.0
F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
T = TypeVar("T")


def _errors(fn: F) -> F:
    """Answer every request of handler ``fn`` with a result or a FUSE error (see the
    module docstring), and record it in the mount's metrics: its time, and its errno if it
    failed.  The one place every request passes, so it is measured here."""
    op = fn.__name__

    @functools.wraps(fn)
    async def wrapper(self: KvfsOperations, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        failed = 0
        try:
            return await fn(self, *args, **kwargs)
        except pyfuse3.FUSEError as e:
            failed = e.errno
            raise
        except Exception as e:  # noqa: BLE001 - every error becomes an errno
            failed = _errno_for(op, e)
            raise pyfuse3.FUSEError(failed) from None
        finally:
            self.stats.ended(op, time.perf_counter() - start, failed)

    return wrapper  # type: ignore[return-value]


def _errno_for(op: str, e: Exception) -> int:
    """The errno answering a request of ``op`` that raised ``e``, logged as it deserves
    (called while ``e`` is being handled)."""
    if isinstance(e, FSError):
        return e.errno
    if isinstance(e, (NoSpace, ObjectStoreFull)):
        log.warning("%s: %s", op, e)
        return errno.ENOSPC
    if isinstance(e, TxnTooLarge):
        log.error("%s: %s", op, e)
        return errno.EFBIG
    if isinstance(e, (EngineUnavailable, BlockCorrupt)):
        log.error("%s: %s", op, e)
        return errno.EIO
    log_failure(log, "%s failed", op, level=logging.ERROR)
    return errno.EIO


# FUSE ABI: a readdirplus record is a fuse_entry_out and a fuse_dirent header (152 bytes),
# then the name, padded to a multiple of 8 bytes.
_DIRENTPLUS_HEADER = 152
_MIN_DIRENTPLUS = 160


def _direntplus_size(name: bytes) -> int:
    return (_DIRENTPLUS_HEADER + len(name) + 7) & ~7


def _invalidate_entry(parent: int, name: bytes) -> None:
    """Make the kernel forget ``name`` in ``parent`` (blocking); gone already is fine."""
    try:
        pyfuse3.invalidate_entry(parent, name)
    except OSError:
        pass


def _invalidate_inode(ino: int) -> None:
    """Make the kernel forget the attributes and pages of ``ino`` (blocking); gone is fine."""
    try:
        pyfuse3.invalidate_inode(ino, False)
    except OSError:
        pass


def _invalidate_all(entries: Sequence[tuple[int, bytes]], inodes: Sequence[int]) -> None:
    """Make the kernel forget ``entries``, then ``inodes`` (blocking); gone is fine."""
    for parent, name in entries:
        _invalidate_entry(parent, name)
    for ino in inodes:
        _invalidate_inode(ino)


def _ctx(ctx: pyfuse3.RequestContext) -> Ctx:
    return Ctx(ctx.uid, ctx.gid, ctx.pid)


class KvfsOperations(pyfuse3.Operations):
    """pyfuse3 handlers over a :class:`FileSystem`."""

    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, fs: FileSystem, *, attr_timeout: float | None = None,
                 entry_timeout: float | None = None, stats: FuseStats | None = None) -> None:
        super().__init__()
        self.fs = fs
        self.stats = stats or FuseStats()  # every request is recorded here (see _errors)
        # The kernel's cache timeouts: as given, or (None) COHERENT_TIMEOUT while the
        # record cache answers -- every change reaches the kernel as an invalidation, from
        # this mount's replies or the watch -- and FALLBACK_TIMEOUT while it does not.
        self._attr_timeout = attr_timeout
        self._entry_timeout = entry_timeout
        kv = fs.meta.kv
        self._coherent = kv.answering if isinstance(kv, CachedEngine) else lambda: False
        # Kernel lookup counts: inodes the kernel may hold in its caches.
        self.lookups: dict[int, int] = {}
        # What the kernel was last told about each inode (ctime, mtime, size).
        self._told: dict[int, tuple[int, int, int]] = {}
        # pid -> when its path walk may last have been restarted by ESTALE -- ours, or the
        # kernel's own when it could not move a directory's dentry; inode -> when the
        # kernel last looked it up (see _stale and create)
        self._stale_at: dict[int, float] = {}
        self._looked_up_at: dict[int, float] = {}
        # Where the kernel may hold each directory (see kvfs.fuse.dirplaces), and the old
        # names to drop when one turns up elsewhere.
        self.dirs = DirPlaces()
        self._moved_send, self._moved_dirs = trio.open_memory_channel[tuple[int, bytes]](
            math.inf)
        # Bytes a readdir reply is expected to hold, per open directory handle, and for a
        # new handle (the last size learned): see readdir.
        self._dir_room: dict[int, int] = {}
        self._room_guess = 4096

    async def _stale(self, ctx: pyfuse3.RequestContext, ino: int, op: Awaitable[T]) -> T:
        """Run ``op`` on inode ``ino`` the kernel holds; if the volume no longer has it --
        another mount replaced or removed it -- fail with ESTALE, so the kernel looks the
        path up again instead of reporting ENOENT for a name that may exist.

        The kernel restarts a walk only once, looking every name up afresh.  If the
        restarted walk meets a vanished inode too -- one the kernel looked up after this
        process's ESTALE -- ESTALE would reach the process, so it gets ENOENT instead:
        the name it used is gone, as a local filesystem would say.
        """
        try:
            return await op
        except FSError as e:
            if e.errno != errno.ENOENT:
                raise
            last = self._restarted_at(ctx.pid)
            if last is not None and self._looked_up_at.get(ino, -math.inf) > last:
                raise
            self._note_restart(ctx.pid)
            raise FSError(errno.ESTALE) from None

    def _restarted_at(self, pid: int) -> float | None:
        """When process ``pid``'s current path walk was restarted by ESTALE, if it was
        (one within the last ``_RESTARTED_WALK`` seconds); the record is used up."""
        last = self._stale_at.pop(pid, None)
        if last is None or trio.current_time() - last >= _RESTARTED_WALK:
            return None
        return last

    def _note_restart(self, pid: int) -> None:
        """Process ``pid``'s path walk is (or may be) restarted by ESTALE now."""
        now = trio.current_time()
        if len(self._stale_at) > 1000:
            self._stale_at = {p: t for p, t in self._stale_at.items()
                              if now - t < _RESTARTED_WALK}
        self._stale_at[pid] = now

    def _moved_from(self, parent: int, name: bytes, e: pyfuse3.EntryAttributes
                    ) -> list[tuple[int, bytes]]:
        """The names under other parents the kernel may still hold for directory ``e``,
        which another mount moved to ``name`` in ``parent`` (see kvfs.fuse.dirplaces)."""
        if not stat.S_ISDIR(e.st_mode) or name in (b".", b".."):
            return []
        if not self.fs.meta.shared:
            return []  # only another mount moves directories behind the kernel's back
        return self.dirs.elsewhere(e.st_ino, (parent, name))

    def _place_dir(self, parent: int, name: bytes, e: pyfuse3.EntryAttributes) -> None:
        """Note that the kernel was shown directory ``e`` as ``name`` in ``parent``."""
        if stat.S_ISDIR(e.st_mode) and name not in (b".", b".."):
            self.dirs.place(e.st_ino, (parent, name))

    async def _drop_old_name(self, old: tuple[int, bytes]) -> bool:
        """Drop the kernel's ``old`` name of a moved directory; False if that did not
        happen in time.  The kernel locks ``old``'s parent for it, and a rename holding
        that lock may be waiting for the very lookup that asks: so the wait is bounded,
        and an invalidation still blocked finishes on its own once the rename is done."""
        if old[0] not in self.lookups and old[0] != pyfuse3.ROOT_INODE:
            return True  # the kernel holds nothing under that parent
        with trio.move_on_after(_DROP_OLD_NAME_WAIT):
            await trio.to_thread.run_sync(_invalidate_entry, *old, abandon_on_cancel=True)
            return True
        return False

    async def drop_moved_directories(self, *, task_status: trio.TaskStatus[None]
                                     = trio.TASK_STATUS_IGNORED) -> None:
        """Background task: drop the kernel's old names of directories found moved."""
        task_status.started()
        async for parent, name in self._moved_dirs:
            await self.invalidate_entry(parent, name)

    @property
    def attr_timeout(self) -> float:
        if self._attr_timeout is not None:
            return self._attr_timeout
        return COHERENT_TIMEOUT if self._coherent() else FALLBACK_TIMEOUT

    @property
    def entry_timeout(self) -> float:
        if self._entry_timeout is not None:
            return self._entry_timeout
        return COHERENT_TIMEOUT if self._coherent() else FALLBACK_TIMEOUT

    @staticmethod
    def _negative(timeout: float) -> pyfuse3.EntryAttributes:
        """A lookup reply saying the name does not exist, cached for ``timeout`` s."""
        neg = pyfuse3.EntryAttributes()
        neg.st_ino = 0
        neg.entry_timeout = timeout
        return neg

    def _new_ref(self, e: pyfuse3.EntryAttributes) -> pyfuse3.EntryAttributes:
        """Count a reply that gives the kernel a reference to an inode."""
        if e.st_ino:
            self.lookups[e.st_ino] = self.lookups.get(e.st_ino, 0) + 1
        return e

    def _entry(self, ino: int, a: Attr) -> pyfuse3.EntryAttributes:
        self._told[ino] = (a.ctime, a.mtime, a.size)
        e = pyfuse3.EntryAttributes()
        e.st_ino = ino
        e.generation = 0
        e.st_mode = a.mode
        e.st_nlink = shown_nlink(a)  # a trashed file was unlinked, whoever holds it open
        e.st_uid = a.uid
        e.st_gid = a.gid
        e.st_rdev = a.rdev
        e.st_size = a.size
        e.st_blksize = 4096
        e.st_blocks = (a.size + 511) // 512
        e.st_atime_ns = a.atime
        e.st_mtime_ns = a.mtime
        e.st_ctime_ns = a.ctime
        e.attr_timeout = self.attr_timeout
        e.entry_timeout = self.entry_timeout
        return e

    @_errors
    async def lookup(self, parent_inode: int, name: bytes,
                     ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        try:
            ino, a = await self.fs.lookup(parent_inode, name)
            entry = self._entry(ino, a)
            moved_from = self._moved_from(parent_inode, name, entry)
            if moved_from and not reading_fresh():
                # A directory the kernel holds elsewhere: moved by another mount -- or this
                # answer came from the record cache and lags the one that placed it there.
                # Moving the kernel's dentry back and forth costs ESTALE when it is busy.
                with fresh_reads():
                    ino, a = await self.fs.lookup(parent_inode, name)
                entry = self._entry(ino, a)
                moved_from = self._moved_from(parent_inode, name, entry)
        except FSError as e:
            if e.errno == errno.ENOENT:
                # A negative entry the kernel may cache like a positive one: a name created
                # elsewhere reaches it through the coherence watch's invalidation.
                return self._negative(self.entry_timeout)
            raise
        for old in moved_from:
            mark = self.dirs.mark()
            if not await self._drop_old_name(old):
                # The kernel could not place the directory here (ESTALE): report the name
                # absent for now, uncached -- a name another mount is moving about.
                return self._negative(0.0)
            self.dirs.dropped(old, mark)
        if moved_from:
            # The old dentry may outlive the drop while a walk still holds it; then the
            # kernel fails this lookup with ESTALE itself and restarts the walk.
            self._note_restart(ctx.pid)
        self._place_dir(parent_inode, name, entry)
        self._looked_up_at[ino] = trio.current_time()
        return self._new_ref(entry)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for ino, n in inode_list:
            left = self.lookups.get(ino, 0) - n
            if left > 0:
                self.lookups[ino] = left
            else:
                self.lookups.pop(ino, None)
                self._told.pop(ino, None)
                self._looked_up_at.pop(ino, None)
                self.dirs.forget(ino)

    @_errors
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._entry(inode, await self._stale(ctx, inode, self.fs.getattr(inode)))

    @_errors
    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes,
                      fields: pyfuse3.SetattrFields, fh: int | None,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        ch = SetAttr(
            mode=attr.st_mode if fields.update_mode else None,
            uid=attr.st_uid if fields.update_uid else None,
            gid=attr.st_gid if fields.update_gid else None,
            size=attr.st_size if fields.update_size else None,
            atime=attr.st_atime_ns if fields.update_atime else None,
            mtime=attr.st_mtime_ns if fields.update_mtime else None,
            ctime=attr.st_ctime_ns if fields.update_ctime else None,
        )
        return self._entry(inode, await self._stale(
            ctx, inode, self.fs.setattr(inode, ch, ctx.uid, through_handle=fh is not None)))

    @_errors
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        return await self._stale(ctx, inode, self.fs.readlink(inode))

    @_errors
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        ino, a = await self.fs.mknod(_ctx(ctx), parent_inode, name, mode, rdev)
        return self._new_ref(self._entry(ino, a))

    @_errors
    async def mkdir(self, parent_inode: int, name: bytes, mode: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        e = self._entry(*await self.fs.mkdir(_ctx(ctx), parent_inode, name, mode))
        self._place_dir(parent_inode, name, e)
        return self._new_ref(e)

    @_errors
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self.fs.unlink(parent_inode, name, ctx.uid)

    @_errors
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self.fs.rmdir(parent_inode, name)

    @_errors
    async def symlink(self, parent_inode: int, name: bytes, target: bytes,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        ino, a = await self.fs.symlink(_ctx(ctx), parent_inode, name, target)
        return self._new_ref(self._entry(ino, a))

    @_errors
    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
                     name_new: bytes, flags: int, ctx: pyfuse3.RequestContext) -> None:
        await self.fs.rename(parent_inode_old, name_old, parent_inode_new, name_new, flags,
                             ctx.uid)
        self.dirs.renamed((parent_inode_old, name_old), (parent_inode_new, name_new),
                          exchange=bool(flags & RENAME_EXCHANGE))

    @_errors
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._new_ref(self._entry(inode, await self.fs.link(inode, new_parent_inode,
                                                                   new_name, ctx.uid)))

    @_errors
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        fh, a = await self._stale(ctx, inode, self.fs.open_with_attr(inode, flags, ctx.uid))
        sig = (a.ctime, a.mtime, a.size)
        unchanged = self._told.get(inode) == sig
        if not unchanged:
            # Close-to-open: the file changed since the kernel cached it (the watch may not
            # have told us yet); drop the kernel's attributes and pages before any read.
            # Nothing recorded is no proof: a watch invalidation forgets the record, and
            # the kernel may have taken attributes again since from a lagging cache.
            await self.invalidate_inode(inode)
        self._told[inode] = sig
        # An unchanged file keeps its cached pages: reading it again costs no engine trip.
        return pyfuse3.FileInfo(fh=fh, keep_cache=unchanged and not flags & os.O_TRUNC)

    # -- invalidation (the coherence watcher's way into the kernel) --------------------

    async def invalidate_inode(self, ino: int) -> None:
        if ino not in self.lookups and ino != pyfuse3.ROOT_INODE:
            return
        self._told.pop(ino, None)
        await trio.to_thread.run_sync(_invalidate_inode, ino)

    async def invalidate(self, entries: Sequence[tuple[int, bytes]],
                         inodes: Sequence[int]) -> None:
        """Coherence's way into the kernel: one worker-thread hand-off for a whole watch
        batch (the kernel call may block, so it never runs on the trio thread)."""
        mark = self.dirs.mark()
        known = [(p, n) for p, n in entries if p in self.lookups or p == pyfuse3.ROOT_INODE]
        held = [i for i in inodes if i in self.lookups or i == pyfuse3.ROOT_INODE]
        for ino in held:
            self._told.pop(ino, None)
        if known or held:
            await trio.to_thread.run_sync(_invalidate_all, known, held)
        for place in entries:
            self.dirs.dropped(place, mark)

    async def invalidate_entry(self, parent: int, name: bytes) -> None:
        mark = self.dirs.mark()
        if parent in self.lookups or parent == pyfuse3.ROOT_INODE:
            try:
                await trio.to_thread.run_sync(pyfuse3.invalidate_entry, parent, name)
            except OSError:
                pass
        self.dirs.dropped((parent, name), mark)

    @_errors
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext
                     ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        restarted = self._restarted_at(ctx.pid) is not None
        try:
            fh, ino, a = await self.fs.create(_ctx(ctx), parent_inode, name, mode, flags,
                                              restarted_walk=restarted)
        except FSError as e:
            if e.errno == errno.ESTALE:
                self._note_restart(ctx.pid)
            raise
        return pyfuse3.FileInfo(fh=fh), self._new_ref(self._entry(ino, a))

    @_errors
    async def read(self, fh: int, off: int, size: int) -> bytes:
        data = await self.fs.read(fh, off, size)
        self.stats.read_bytes += len(data)
        return data

    @_errors
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        written = await self.fs.write(fh, off, buf)
        self.stats.written_bytes += written
        return written

    @_errors
    async def flush(self, fh: int) -> None:
        await self.fs.flush(fh)

    @_errors
    async def release(self, fh: int) -> None:
        await self.fs.release(fh)

    @_errors
    async def fsync(self, fh: int, datasync: bool) -> None:
        await self.fs.fsync(fh, datasync)

    @_errors
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        return await self._stale(ctx, inode, self.fs.opendir(inode))

    @_errors
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        """Fill one kernel readdir buffer from position ``start_id``.

        Attributes are fetched (one engine round trip per batch) only for the entries the
        buffer is expected to take: those within this handle's estimate of its size, plus
        one more to learn whether it is bigger.  A refused entry teaches the estimate; a
        batch that all fits doubles it.  So a call costs about the entries it returns.
        """
        room = self._dir_room.get(fh, self._room_guess)
        parent = self.fs.dir_ino(fh)
        used = 0  # bytes of the buffer filled so far
        pos = start_id
        while True:
            # Every record takes at least _MIN_DIRENTPLUS bytes: no more entries than this
            # can fit in what is left, plus the one that tells whether the estimate is low.
            ahead = max(0, room - used) // _MIN_DIRENTPLUS + 1
            batch: list[tuple[int, DirEntry]] = []
            end = used
            for item in await self.fs.readdir(fh, pos, ahead):
                batch.append(item)
                end += _direntplus_size(item[1].name)
                if end > room:
                    break
            if not batch:
                return  # end of the directory
            attrs = await self.fs.getattrs([ent.ino for _, ent in batch])
            for (next_id, ent), a in zip(batch, attrs, strict=True):
                if a is None:
                    continue  # removed since the listing was taken
                e = self._entry(ent.ino, a)
                size = _direntplus_size(ent.name)
                if not pyfuse3.readdir_reply(token, ent.name, e, next_id):
                    # The buffer holds less than used + size bytes.
                    self._dir_room[fh] = self._room_guess = max(_MIN_DIRENTPLUS,
                                                                used + size - 1)
                    return
                used += size
                if ent.name not in (b".", b".."):
                    for old in self._moved_from(parent, ent.name, e):
                        self._moved_send.send_nowait(old)
                    self._place_dir(parent, ent.name, e)
                    self._new_ref(e)  # a readdirplus entry is a lookup
            if end <= room:
                return  # the directory ended before the estimate was reached
            pos = batch[-1][0]
            room = max(room, used) * 2  # everything fit: the buffer is bigger than thought

    @_errors
    async def releasedir(self, fh: int) -> None:
        self._dir_room.pop(fh, None)
        await self.fs.releasedir(fh)

    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        # Every metadata change is durable when its request returns.
        return None

    @_errors
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        s = await self.fs.statfs()
        out = pyfuse3.StatvfsData()
        out.f_bsize = out.f_frsize = s.block_size
        out.f_blocks = s.total_blocks
        out.f_bfree = out.f_bavail = s.free_blocks
        out.f_files = s.total_inodes
        out.f_ffree = out.f_favail = s.free_inodes
        out.f_namemax = s.name_max
        return out

    @_errors
    async def setxattr(self, inode: int, name: bytes, value: bytes,
                       ctx: pyfuse3.RequestContext) -> None:
        if name.startswith(b"system."):
            # POSIX ACLs are not supported: saying so makes cp -a and friends fall back
            # to chmod instead of storing an ACL that would never take effect.
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP)
        await self.fs.setxattr(inode, name, value)

    @_errors
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        return await self._stale(ctx, inode, self.fs.getxattr(inode, name))

    @_errors
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> Sequence[bytes]:
        return await self._stale(ctx, inode, self.fs.listxattr(_ctx(ctx), inode))

    @_errors
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self.fs.removexattr(inode, name)

    @_errors
    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        await self.fs.access(_ctx(ctx), inode, mode)
        return True
