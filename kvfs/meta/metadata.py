"""POSIX metadata over any KV engine: every namespace operation is one optimistic transaction.

:class:`Metadata` owns the rules the kernel leaves to a filesystem: ownership and modes of new
inodes (setgid inheritance), link counts, parent/child times, SUID/SGID clearing on chown,
rename semantics (replace, NOREPLACE, EXCHANGE, moving directories), and what happens to an
inode's data when its last name goes.  Access checks (search/write permission, sticky bits,
owner-only chmod/chown/utimes) are done by the kernel, which mounts with
``default_permissions``; the checks here are the ones it cannot do.

Concurrency: every operation reads, through :class:`~kvfs.kv.txn.Txn`, the attribute keys it
depends on and rewrites the attribute key of each directory whose entries it changes.  So a
create racing an ``rmdir`` of its parent, or two renames into one name, conflict in the engine
and one of them retries -- correct across any number of mounts.

Deletion of data is deferred: the transaction that drops an inode's last link either records
the inode as *sustained* by this session (it is still open here) or queues it under ``D ino``
for :mod:`kvfs.chunk.cleanup`, which removes chunks and blocks in idempotent steps.  While the
volume keeps a trash (``trash_days`` > 0), that transaction moves a non-directory into
``/.trash`` instead (:mod:`kvfs.meta.trash`), and only removing it from there deletes it.
"""

from __future__ import annotations

import errno
import stat
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import msgpack

from kvfs.chunk.layout import (
    CHUNK_SIZE,
    Slice,
    decode_slices,
    encode_slices,
    needs_compaction,
)
from kvfs.errors import FSError
from kvfs.kv.api import Conflict, KeyValue, KVEngine, NoSpace, Put, TxnTooLarge, prefix_end
from kvfs.kv.cache import CachedEngine, fresh_reads
from kvfs.kv.txn import Retry, Txn, run_txn
from kvfs.meta import keys, trash
from kvfs.meta.ids import IdAllocator
from kvfs.meta.keys import ROOT_INO, Ino
from kvfs.meta.records import Attr, decode_dentry, encode_dentry, ftype_of, now_ns
from kvfs.meta.usage import Usage, slice_space

NAME_MAX = 255
XATTR_NAME_MAX = 255
XATTR_SIZE_MAX = 65536
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
XATTR_CREATE = 1
XATTR_REPLACE = 2
XATTR_NAMESPACES = (b"user.", b"trusted.", b"security.", b"system.")
SECURITY_CAPABILITY = b"security.capability"
# Chunk indexes are 32-bit in keys, so files end before 2**32 chunks of 64 MiB.
MAX_FILE_SIZE = (1 << 32) * CHUNK_SIZE
_FTYPE_SYMLINK = ftype_of(stat.S_IFLNK)
_FTYPE_REGULAR = ftype_of(stat.S_IFREG)
# Deleting a big file moves this many chunk keys per transaction (two ops each).
_CHUNKS_PER_STEP = 50


@dataclass(frozen=True, slots=True)
class Ctx:
    """Who is asking: the caller's effective ids (groups only matter for chown by owners)."""

    uid: int
    gid: int
    pid: int = 0


ROOT_CTX = Ctx(0, 0)


@dataclass(slots=True)
class SetAttr:
    """Which attributes to change; ``None`` leaves one alone."""

    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    size: int | None = None
    atime: int | None = None
    mtime: int | None = None
    ctime: int | None = None


@dataclass(frozen=True, slots=True)
class DirEntry:
    name: bytes
    ino: Ino
    ftype: int


def check_name(name: bytes) -> None:
    if len(name) > NAME_MAX:
        raise FSError(errno.ENAMETOOLONG, f"name of {len(name)} bytes")
    if not name or b"/" in name or b"\0" in name:
        raise FSError(errno.EINVAL, "invalid name")


def check_new_name(parent: int, name: bytes) -> None:
    """A name to be made by create or link: nothing goes into the trash but what kvfs
    moves there (EPERM), and ``/.trash`` always exists (EEXIST)."""
    check_name(name)
    if trash.is_trash_dir(parent):
        raise FSError(errno.EPERM, "only kvfs puts entries into the trash")
    if parent == ROOT_INO and name == trash.TRASH_NAME:
        raise FSError(errno.EEXIST, "/.trash is the trash")


class Metadata:
    """The POSIX namespace of one volume (see module docstring).

    ``is_open(ino)`` tells whether this mount still has ``ino`` open; such an inode keeps
    its data when its last link goes, until :meth:`release_orphan`.
    """

    def __init__(self, kv: KVEngine, *, session_id: int = 0,
                 is_open: Callable[[int], bool] = lambda ino: False) -> None:
        self.kv = kv
        self.session_id = session_id
        self.is_open = is_open
        # Other mounts may have a file open that this mount unlinks: its data must outlive
        # the unlink by a grace period (see _forget_inode and kvfs.chunk.cleanup).
        self.shared = kv.shared
        self.inodes = IdAllocator(kv, keys.NEXT_INODE, 256)
        self.slices = IdAllocator(kv, keys.NEXT_SLICE, 1024)
        self.gc_ids = IdAllocator(kv, keys.NEXT_SLICE, 64)
        self.usage = Usage(kv)
        # A symlink's target never changes, so a target read once serves every later
        # readlink of its inode -- even after another mount removed it, as a local
        # filesystem serves a path walk that already holds the inode (a symlink swapped
        # by a deploy's rename).  Not a cache of the engine's state: nothing in it goes
        # stale.  Bounded; the oldest go first.
        self.symlink_targets: OrderedDict[int, bytes] = OrderedDict()
        # Inodes this mount holds open after their last name went (its ``SS`` keys).
        self.held: set[int] = set()
        # Seconds freed slices keep their blocks (the history's retention; 0: none), so
        # every version's content stays readable as long as the version is kept.
        self.retain_seconds = 0
        # Days removed files stay in /.trash (0: no trash; kvfs.meta.trash).  A mount sets
        # it from the volume's settings; other users of this class delete at once.
        self.trash_days = 0.0

    # -- helpers -----------------------------------------------------------------------

    @staticmethod
    async def _attr(t: Txn, ino: int) -> Attr:
        raw = await t.get(keys.attr(ino))
        if raw is None:
            raise FSError(errno.ENOENT, f"inode {ino}")
        return Attr.decode(raw)

    async def _child_attr(self, t: Txn, parent: int, name: bytes, ino: int) -> Attr:
        """The attributes of ``ino``, which ``parent``'s entry ``name`` named when read.

        The entry and the attributes may be read at different revisions: when the
        attributes are gone, a rename or unlink elsewhere may have replaced the inode in
        between, and the name was never absent -- or it was removed, and the caller must
        see that.  Then the transaction runs again (:class:`Retry`); only a name that
        still names the missing inode (a damaged volume) is ENOENT."""
        raw = await t.get(keys.attr(ino))
        if raw is not None:
            return Attr.decode(raw)
        with fresh_reads():
            now = await self.kv.get(keys.dentry(parent, name))
        if now is None or decode_dentry(now.value)[1] != ino:
            raise Retry
        raise FSError(errno.ENOENT, f"inode {ino}")

    @staticmethod
    async def _dir_attr(t: Txn, ino: int) -> Attr:
        a = await Metadata._attr(t, ino)
        if not a.is_dir:
            raise FSError(errno.ENOTDIR)
        return a

    @staticmethod
    async def _entry(t: Txn, parent: int, name: bytes) -> tuple[int, int] | None:
        raw = await t.get(keys.dentry(parent, name))
        return None if raw is None else decode_dentry(raw)

    @staticmethod
    def _put_attr(t: Txn, ino: int, a: Attr) -> None:
        t.put(keys.attr(ino), a.encode())

    async def _is_empty(self, t: Txn, ino: int) -> bool:
        # The directory's attr key is guarded by the caller, so this unguarded scan is safe.
        return not await t.scan(keys.dentry_prefix(ino), limit=1)

    def _trashes(self, parent: int) -> bool:
        """Whether the last link of a file in ``parent`` goes to the trash: the trash is
        on and the file is not in it already (removing it from there deletes it)."""
        return self.trash_days > 0 and not trash.is_trash_dir(parent)

    def _trash_keys(self, parent: int, now: int) -> list[bytes]:
        """The keys a move from ``parent`` into the trash at ``now`` reads (none when it
        would not trash), for the caller to fetch with its own next round trip."""
        if not self._trashes(parent):
            return []
        hour = trash.hour_of(now / 10**9)
        return [keys.attr(trash.TRASH_INO), keys.attr(trash.hour_ino(hour))]

    async def _drop_link(self, t: Txn, ino: int, a: Attr, parent: int, name: bytes,
                         now: int) -> None:
        """Remove the link ``name`` in ``parent`` of non-directory ``ino`` (the caller
        deletes or replaces the entry); its last link takes it to the trash when the
        volume keeps one, else out of the namespace."""
        if a.nlink == 1 and self._trashes(parent):
            await self._to_trash(t, ino, a, parent, name, now)
            return
        a.nlink -= 1
        a.ctime = now
        if a.nlink > 0:
            await self._move_link_parent(t, ino, a, parent, 0)
            self._put_attr(t, ino, a)
            return
        await self._forget_inode(t, ino, a)

    async def _to_trash(self, t: Txn, ino: int, a: Attr, parent: int, name: bytes,
                        now: int) -> None:
        """Give non-directory ``ino``, whose one link ``name`` in ``parent`` goes, an entry
        in the trash's directory of the current hour instead (made, and the trash too, when
        missing): all in the caller's transaction, so it is never in neither place."""
        hour = trash.hour_of(now / 10**9)
        hino, hname = trash.hour_ino(hour), trash.hour_name(hour)
        await t.prefetch(*self._trash_keys(parent, now))
        raw = await t.get(keys.attr(hino))
        if raw is None:
            traw = await t.get(keys.attr(trash.TRASH_INO))
            if traw is None:
                ta = trash.new_dir_attr(ROOT_INO, trash.TRASH_NAME, now)
                t.on_commit(lambda: self.usage.add(inodes=1))
            else:
                ta = Attr.decode(traw)
            ta.nlink += 1
            ta.mtime = ta.ctime = now
            self._put_attr(t, trash.TRASH_INO, ta)
            t.put(keys.dentry(trash.TRASH_INO, hname), encode_dentry(ftype_of(ta.mode), hino))
            ha = trash.new_dir_attr(trash.TRASH_INO, hname, now)
            t.on_commit(lambda: self.usage.add(inodes=1))
        else:
            ha = Attr.decode(raw)
        entry = trash.entry_name(parent, ino, name)
        t.put(keys.dentry(hino, entry), encode_dentry(ftype_of(a.mode), ino))
        ha.mtime = ha.ctime = now
        self._put_attr(t, hino, ha)
        await self._move_link_parent(t, ino, a, parent, hino)
        a.name = entry
        a.ctime = now
        self._put_attr(t, ino, a)

    async def ensure_trash(self) -> None:
        """Make ``/.trash`` if the volume has none (a mount does, so the name exists)."""
        async def fn(t: Txn) -> None:
            if await t.get(keys.attr(trash.TRASH_INO)) is None:
                self._put_attr(t, trash.TRASH_INO,
                               trash.new_dir_attr(ROOT_INO, trash.TRASH_NAME, now_ns()))
                t.on_commit(lambda: self.usage.add(inodes=1))

        await run_txn(self.kv, fn)

    async def _forget_inode(self, t: Txn, ino: int, a: Attr) -> None:
        """``ino`` has no links left: keep it for open handles or queue its data for deletion.

        On a shared engine a regular file always keeps its attributes (nlink 0) and goes to
        the ``D`` queue with the time of its last unlink: mounts that have it open see the
        change through their watch and hold it (``SS``), and the cleaner deletes it only
        once a grace period has passed and no live session holds it.
        """
        if self.shared and a.is_reg:
            a.nlink = 0
            self._put_attr(t, ino, a)
            t.put(keys.delfile(ino), msgpack.packb([a.size, now_ns() // 10**9]))
            if self.is_open(ino):
                self._hold(t, ino)
            t.on_commit(lambda: self.usage.add(inodes=-1))
        elif self.is_open(ino):
            a.nlink = 0
            self._put_attr(t, ino, a)
            self._hold(t, ino)
        else:
            await self._drop_inode(t, ino, a)

    def _hold(self, t: Txn, ino: int) -> None:
        t.put(keys.sustained(self.session_id, ino), b"")
        t.on_commit(lambda: self.held.add(ino))

    async def hold(self, ino: int) -> None:
        """Record that this mount has ``ino`` open after another mount unlinked it."""
        await self.kv.commit([], [Put(keys.sustained(self.session_id, ino), b"")])
        self.held.add(ino)

    async def _drop_inode(self, t: Txn, ino: int, a: Attr) -> None:
        """Remove an inode nobody can reach any more: a file's data goes to the ``D`` queue
        (the cleaner deletes it in steps); anything else has only a few keys to delete."""
        if a.is_reg:
            t.delete(keys.attr(ino))
            t.put(keys.delfile(ino), msgpack.packb([a.size, now_ns() // 10**9]))
        else:
            await self._delete_inode_keys(t, ino)
        # Its data keeps counting as used until the cleaner moves its chunks to the GC queue.
        t.on_commit(lambda: self.usage.add(inodes=-1))

    @staticmethod
    async def _delete_inode_keys(t: Txn, ino: int) -> None:
        t.delete_prefix(keys.inode_all(ino))

    async def _move_link_parent(self, t: Txn, ino: int, a: Attr, old: int, new: int) -> None:
        """Move one link of ``ino`` from directory ``old`` to ``new`` (0: none) in the parent
        bookkeeping: ``a.parent`` while it has one link, ``P`` keys while it has several."""
        if a.is_dir:
            if new:
                a.parent = new
            return
        if a.parent and a.nlink == 1 and old in (0, a.parent) and new:
            a.parent = new  # a single link moving: no P keys exist or will
            return
        if a.parent and a.nlink == 0:
            return  # the last link went; the inode's keys go with it
        links = {}
        if a.parent:
            links[a.parent] = 1  # its only link: it has no P keys to read
        else:
            for kv in await t.scan(keys.link_parent_prefix(ino)):
                links[keys.link_parent_of(kv.key)] = keys.read_u64(kv.value)
                t.delete(kv.key)
        if old and old in links:
            links[old] -= 1
            if not links[old]:
                del links[old]
        if new:
            links[new] = links.get(new, 0) + 1
        # Which of its names remains is not known here, so the name is forgotten.
        a.name = b""
        if len(links) == 1 and next(iter(links.values())) == 1:
            a.parent = next(iter(links))
            return
        a.parent = 0
        for p, n in links.items():
            t.put(keys.link_parent(ino, p), keys.u64(n))

    # -- volume --------------------------------------------------------------------------

    async def init_root(self, uid: int = 0, gid: int = 0, mode: int = 0o755) -> None:
        """Create the root directory (owned by ``uid:gid``, permissions ``mode``) unless
        the volume has one."""
        now = now_ns()
        root = Attr(stat.S_IFDIR | (mode & 0o7777), uid, gid, now, now, now, 2, 0, 0,
                    ROOT_INO)

        async def fn(t: Txn) -> None:
            if await t.get(keys.attr(ROOT_INO)) is None:
                self._put_attr(t, ROOT_INO, root)
                t.put(keys.NEXT_INODE, keys.u64(ROOT_INO + 1))

        await run_txn(self.kv, fn)

    # -- reads ---------------------------------------------------------------------------

    async def getattr(self, ino: int, *, fresh: bool = False) -> Attr:
        """``ino``'s attributes, from the mount's record cache when it may answer (as the
        kernel's own attribute cache would).  ``fresh`` (open: close-to-open) reads them
        from the engine, together with the file's first chunk list, and makes the cache
        forget its other chunk lists: whatever another mount committed before this call
        is what the file's reads then see."""
        if fresh:
            raw = await self._reread_file(ino)
        else:
            raw = await self.kv.get(keys.attr(ino))
        if raw is None:
            raise FSError(errno.ENOENT, f"inode {ino}")
        return Attr.decode(raw.value)

    async def _reread_file(self, ino: int) -> KeyValue | None:
        if isinstance(self.kv, CachedEngine) and not self.kv.offline:
            # While the engine is unreachable the cached lists are all there is.
            prefix = keys.chunk_prefix(ino)
            self.kv.forget(prefix, prefix_end(prefix))
        with fresh_reads():
            raw, _ = await self.kv.get_many([keys.attr(ino), keys.chunk(ino, 0)])
        return raw

    async def getattrs(self, inos: list[int]) -> list[Attr | None]:
        """Attributes of several inodes in one engine round trip (None: gone)."""
        got = await self.kv.get_many([keys.attr(i) for i in inos])
        return [Attr.decode(kv.value) if kv else None for kv in got]

    async def lookup(self, parent: int, name: bytes) -> tuple[Ino, Attr]:
        """The inode ``name`` in ``parent`` names, and its attributes.  An answer from the
        record cache is final, ENOENT included: it is as fresh as the watch, like the
        kernel's own cached lookups."""
        check_name(name)

        async def fn(t: Txn) -> tuple[Ino, Attr]:
            if parent == ROOT_INO and name == trash.TRASH_NAME:  # listed nowhere
                return trash.TRASH_INO, await self._attr(t, trash.TRASH_INO)
            await t.prefetch(keys.dentry(parent, name), keys.attr(parent))
            if name in (b".", b".."):
                pa = await self._dir_attr(t, parent)
                ino = parent if name == b"." else (pa.parent or ROOT_INO)
                return Ino(ino), await self._attr(t, ino)
            ent = await self._entry(t, parent, name)
            if ent is None:
                await self._dir_attr(t, parent)  # ENOTDIR beats ENOENT
                raise FSError(errno.ENOENT)
            if ent[0] == _FTYPE_SYMLINK:  # the kernel reads the target next: fetch it now
                await t.prefetch(keys.attr(ent[1]), keys.symlink(ent[1]))
                target = await t.get(keys.symlink(ent[1]))
                if target is not None:
                    self._remember_target(ent[1], target)
            if ent[0] == _FTYPE_REGULAR:  # an open may follow: its first chunk list too
                await t.prefetch(keys.attr(ent[1]), keys.chunk(ent[1], 0))
            return Ino(ent[1]), await self._child_attr(t, parent, name, ent[1])

        return await run_txn(self.kv, fn, confirm_errors=False)

    def cached_start(self, ino: int) -> tuple[int, list[Slice]] | None:
        """The size and first chunk's slices of file ``ino`` as the record cache holds them
        (None if it holds neither or may not answer), without a round trip: a hint of
        what an open is about to read."""
        if not isinstance(self.kv, CachedEngine):
            return None
        known_attr, attr = self.kv.peek(keys.attr(ino))
        known_chunk, chunk = self.kv.peek(keys.chunk(ino, 0))
        if not (known_attr and known_chunk) or attr is None:
            return None
        return Attr.decode(attr.value).size, decode_slices(chunk.value) if chunk else []

    async def readdir(self, ino: int) -> list[DirEntry]:
        """Every entry of directory ``ino`` (not ``.``/``..``), read in pages."""
        prefix = keys.dentry_prefix(ino)
        end = prefix_end(prefix)
        out: list[DirEntry] = []
        start = prefix
        while True:
            res = await self.kv.range(start, end, limit=1000)
            for kv in res.kvs:
                ftype, child = decode_dentry(kv.value)
                out.append(DirEntry(keys.dentry_name(kv.key), Ino(child), ftype))
            if not res.more:
                return out
            start = res.kvs[-1].key + b"\0"

    def _remember_target(self, ino: int, target: bytes) -> None:
        self.symlink_targets[ino] = target
        self.symlink_targets.move_to_end(ino)
        if len(self.symlink_targets) > 16_384:  # targets are up to 4 KiB
            self.symlink_targets.popitem(last=False)

    async def readlink(self, ino: int) -> bytes:
        known = self.symlink_targets.get(ino)
        if known is not None:
            return known
        # Target and attributes at one revision: a symlink removed by another mount is
        # gone (ENOENT) rather than a symlink without a target.  Cached answers may come
        # from two revisions (one key cached, the other read), so a symlink without a
        # target is asked of the engine again.
        link, attr = await self.kv.get_many([keys.symlink(ino), keys.attr(ino)])
        if link is None and attr is not None:
            with fresh_reads():
                link, attr = await self.kv.get_many([keys.symlink(ino), keys.attr(ino)])
        if link is not None:
            self._remember_target(ino, link.value)
            return link.value
        if attr is None:
            raise FSError(errno.ENOENT, f"inode {ino}")
        raise FSError(errno.EINVAL if not Attr.decode(attr.value).is_symlink else errno.EIO)

    # -- creating names ----------------------------------------------------------------

    async def create(self, ctx: Ctx, parent: int, name: bytes, mode: int, rdev: int = 0,
                     target: bytes | None = None, *, exclusive: bool = True,
                     record: Callable[[Txn, int, Attr], Awaitable[None]] | None = None
                     ) -> tuple[Ino, Attr, bool]:
        """Create a node of any type.  Returns (ino, attr, created).  ``record`` is given
        the new inode inside the transaction, to add writes of the caller's (the history's
        version); it is not called when an existing entry is returned.

        ``exclusive=False`` (open with O_CREAT but not O_EXCL) returns an existing entry,
        of whatever type, instead of failing with EEXIST; what to make of a non-file is the
        caller's business.
        """
        check_new_name(parent, name)
        if target is not None and (not target or len(target) > 4095):
            raise FSError(errno.ENAMETOOLONG if target else errno.ENOENT)
        ino = await self.inodes.next()

        async def fn(t: Txn) -> tuple[Ino, Attr, bool]:
            await t.prefetch(keys.attr(parent), keys.dentry(parent, name))
            pa = await self._dir_attr(t, parent)
            if pa.nlink == 0:
                raise FSError(errno.ENOENT, "parent directory was removed")
            ent = await self._entry(t, parent, name)
            if ent is not None:
                if exclusive:
                    raise FSError(errno.EEXIST)
                raw = await t.get(keys.attr(ent[1]))
                if raw is None or not Attr.decode(raw).nlink:
                    # Read after the entry, at a later revision: the name was removed in
                    # between, so it may be free now.  Look again.
                    raise Retry
                return Ino(ent[1]), Attr.decode(raw), False
            now = now_ns()
            is_dir = stat.S_ISDIR(mode)
            gid = ctx.gid
            m = mode
            if pa.mode & stat.S_ISGID:
                gid = pa.gid
                if is_dir:
                    m |= stat.S_ISGID
            a = Attr(m, ctx.uid, gid, now, now, now, 2 if is_dir else 1,
                     len(target) if target is not None else 0, rdev, parent, name)
            self._put_attr(t, ino, a)
            t.put(keys.dentry(parent, name), encode_dentry(ftype_of(m), ino))
            if target is not None:
                t.put(keys.symlink(ino), target)
                t.on_commit(lambda: self._remember_target(ino, target))
            if is_dir:
                pa.nlink += 1
            pa.mtime = pa.ctime = now
            self._put_attr(t, parent, pa)
            t.on_commit(lambda: self.usage.add(inodes=1))
            # A new inode has no data, xattrs or entries yet: say so, so writes need not
            # ask (the kernel asks for security.capability before every write), and
            # neither do the lookups of names about to be created in a new directory.
            t.note_absent(keys=[keys.chunk(ino, 0)], groups=[keys.xattr_prefix(ino)] + (
                [keys.dentry_prefix(ino)] if is_dir else []))
            if record is not None:
                await record(t, ino, a)
            return Ino(ino), a, True

        return await run_txn(self.kv, fn)

    async def link(self, ino: int, parent: int, name: bytes, *,
                   record: Callable[[Txn, Attr], Awaitable[None]] | None = None) -> Attr:
        """Add the name ``name`` in ``parent`` for non-directory ``ino``.  ``record`` is
        given the linked inode's new attributes inside the transaction (the history's
        version)."""
        check_new_name(parent, name)

        async def fn(t: Txn) -> Attr:
            await t.prefetch(keys.attr(ino), keys.attr(parent), keys.dentry(parent, name))
            a = await self._attr(t, ino)
            if a.is_dir:
                raise FSError(errno.EPERM, "hard link to a directory")
            if a.nlink == 0:
                raise FSError(errno.ENOENT)
            pa = await self._dir_attr(t, parent)
            if pa.nlink == 0:
                raise FSError(errno.ENOENT, "parent directory was removed")
            if await self._entry(t, parent, name) is not None:
                raise FSError(errno.EEXIST)
            now = now_ns()
            a.nlink += 1
            a.ctime = now
            await self._move_link_parent(t, ino, a, 0, parent)
            self._put_attr(t, ino, a)
            t.put(keys.dentry(parent, name), encode_dentry(ftype_of(a.mode), ino))
            pa.mtime = pa.ctime = now
            self._put_attr(t, parent, pa)
            if record is not None:
                await record(t, a)
            return a

        return await run_txn(self.kv, fn)

    # -- removing names ----------------------------------------------------------------

    async def _named_child(self, t: Txn, parent: int, name: bytes, *also: bytes
                           ) -> tuple[Attr, int, Attr]:
        """The attributes of directory ``parent``, and the inode and attributes ``name``
        in it names (ENOENT if none), read in as few round trips as possible; keys
        ``also`` are fetched with the child's attributes."""
        if parent == ROOT_INO and name == trash.TRASH_NAME:
            raise FSError(errno.EPERM, "the trash cannot be removed")
        await t.prefetch(keys.attr(parent), keys.dentry(parent, name))
        pa = await self._dir_attr(t, parent)
        ent = await self._entry(t, parent, name)
        if ent is None:
            raise FSError(errno.ENOENT)
        await t.prefetch(keys.attr(ent[1]), *also)
        return pa, ent[1], await self._child_attr(t, parent, name, ent[1])

    async def unlink(self, parent: int, name: bytes,
                     record: Callable[[Txn], None] | None = None) -> Ino:
        """Remove the name of a non-directory.  ``record`` adds writes of the caller's to
        the same transaction (the history's tombstone)."""
        check_name(name)

        async def fn(t: Txn) -> Ino:
            now = now_ns()
            pa, ino, a = await self._named_child(t, parent, name,
                                                 *self._trash_keys(parent, now))
            if a.is_dir:
                raise FSError(errno.EISDIR)
            t.delete(keys.dentry(parent, name))
            await self._drop_link(t, ino, a, parent, name, now)
            pa.mtime = pa.ctime = now
            self._put_attr(t, parent, pa)
            if record is not None:
                record(t)
            return Ino(ino)

        return await run_txn(self.kv, fn)

    async def rmdir(self, parent: int, name: bytes) -> Ino:
        check_name(name)
        if name == b".":
            raise FSError(errno.EINVAL)
        if name == b"..":
            raise FSError(errno.ENOTEMPTY)

        async def fn(t: Txn) -> Ino:
            pa, ino, a = await self._named_child(t, parent, name)
            if not a.is_dir:
                raise FSError(errno.ENOTDIR)
            if not await self._is_empty(t, ino):
                raise FSError(errno.ENOTEMPTY)
            now = now_ns()
            t.delete(keys.dentry(parent, name))
            await self._forget_dir(t, ino, a)
            pa.nlink -= 1
            pa.mtime = pa.ctime = now
            self._put_attr(t, parent, pa)
            return Ino(ino)

        return await run_txn(self.kv, fn)

    async def _forget_dir(self, t: Txn, ino: int, a: Attr) -> None:
        if self.is_open(ino):
            a.nlink = 0
            a.ctime = now_ns()
            self._put_attr(t, ino, a)
            self._hold(t, ino)
        else:
            await self._drop_inode(t, ino, a)

    async def release_orphan(self, ino: int, session_id: int | None = None) -> None:
        """The last open handle of an unlinked inode closed (in ``session_id``, default this
        mount's session, or a session that died): let its data go."""
        sid = self.session_id if session_id is None else session_id

        async def fn(t: Txn) -> None:
            if sid == self.session_id:
                t.on_commit(lambda: self.held.discard(ino))
            elif await t.get(keys.session(sid)) is not None:
                # The session registered again (its holds restored) since it was found
                # dead; the read is guarded, so a registration racing this commit wins.
                return
            t.delete(keys.sustained(sid, ino))
            raw = await t.get(keys.attr(ino))
            if raw is None:
                return
            a = Attr.decode(raw)
            if a.nlink > 0 or (self.shared and a.is_reg):
                return  # shared: already queued; the cleaner waits for the other holders
            await self._drop_inode(t, ino, a)

        await run_txn(self.kv, fn)

    # -- rename ------------------------------------------------------------------------

    async def rename(self, p1: int, n1: bytes, p2: int, n2: bytes, flags: int = 0,
                     record: Callable[[Txn, list[tuple[int, Attr]]], Awaitable[None]]
                     | None = None) -> list[tuple[int, Attr]]:
        """Rename ``p1/n1`` to ``p2/n2``.  Returns what now sits at the new name and, for an
        exchange, at the old one -- ``(ino, attributes)`` each; nothing when the two names
        were links to one inode (POSIX: nothing happens).  ``record`` is given the same,
        inside the transaction, to add writes of the caller's (the history's versions)."""
        check_name(n1)
        check_name(n2)
        if n1 in (b".", b"..") or n2 in (b".", b".."):
            raise FSError(errno.EINVAL if n1 != b".." and n2 != b".." else errno.EBUSY)
        if flags & RENAME_NOREPLACE and flags & RENAME_EXCHANGE:
            raise FSError(errno.EINVAL)
        # Entries leave the trash (a restore) but never arrive there; the trash and its
        # hour directories stay where they are.
        if (trash.is_trash_dir(p2) or p1 == trash.TRASH_INO
                or (flags & RENAME_EXCHANGE and trash.is_trash_dir(p1))
                or (p1 == ROOT_INO and n1 == trash.TRASH_NAME)
                or (p2 == ROOT_INO and n2 == trash.TRASH_NAME)):
            raise FSError(errno.EPERM, "the trash takes no entries but kvfs's own")

        async def fn(t: Txn) -> list[tuple[int, Attr]]:
            await t.prefetch(keys.attr(p1), keys.attr(p2), keys.dentry(p1, n1),
                             keys.dentry(p2, n2))
            pa1 = await self._dir_attr(t, p1)
            pa2 = pa1 if p2 == p1 else await self._dir_attr(t, p2)
            src = await self._entry(t, p1, n1)
            if src is None:
                raise FSError(errno.ENOENT)
            sino = src[1]
            dst = await self._entry(t, p2, n2)
            now = now_ns()
            await t.prefetch(keys.attr(sino), *([keys.attr(dst[1]), *self._trash_keys(p2, now)]
                                                if dst else []))
            sa = await self._child_attr(t, p1, n1, sino)
            # Like renameat2 on Linux: the flags are checked before anything else.
            if dst is not None and flags & RENAME_NOREPLACE:
                raise FSError(errno.EEXIST)
            if dst is None and flags & RENAME_EXCHANGE:
                raise FSError(errno.ENOENT)
            if dst is not None and dst[1] == sino:
                return []  # both names are links to one inode: POSIX says do nothing
            if sa.is_dir and p1 != p2:
                await self._check_not_ancestor(t, sino, p2)
            if pa2.nlink == 0:
                raise FSError(errno.ENOENT, "target directory was removed")
            if flags & RENAME_EXCHANGE:
                assert dst is not None
                da_after = await self._exchange(t, p1, n1, pa1, sino, sa, p2, n2, pa2,
                                                dst[1], now)
                moved = [(sino, sa), (dst[1], da_after)]
                if record is not None:
                    await record(t, moved)
                return moved
            da: Attr | None = None
            if dst is not None:
                da = await self._child_attr(t, p2, n2, dst[1])
                if sa.is_dir and not da.is_dir:
                    raise FSError(errno.ENOTDIR)
                if not sa.is_dir and da.is_dir:
                    raise FSError(errno.EISDIR)
                if da.is_dir:
                    if not await self._is_empty(t, dst[1]):
                        raise FSError(errno.ENOTEMPTY)
                    pa2.nlink -= 1
                    await self._forget_dir(t, dst[1], da)
                else:
                    await self._drop_link(t, dst[1], da, p2, n2, now)
            t.delete(keys.dentry(p1, n1))
            t.put(keys.dentry(p2, n2), encode_dentry(ftype_of(sa.mode), sino))
            if sa.is_dir and p1 != p2:
                pa1.nlink -= 1
                pa2.nlink += 1
            if p1 != p2:
                await self._move_link_parent(t, sino, sa, p1, p2)
            if sa.parent:  # one name (or a directory): it is now n2
                sa.name = n2
            sa.ctime = now
            self._put_attr(t, sino, sa)
            pa1.mtime = pa1.ctime = now
            self._put_attr(t, p1, pa1)
            if p2 != p1:
                pa2.mtime = pa2.ctime = now
                self._put_attr(t, p2, pa2)
            if record is not None:
                await record(t, [(sino, sa)])
            return [(sino, sa)]

        return await run_txn(self.kv, fn)

    async def _check_not_ancestor(self, t: Txn, ino: int, start: int) -> None:
        """EINVAL if directory ``ino`` is ``start`` or one of its ancestors."""
        cur = start
        seen = 0
        while cur != ROOT_INO:
            if cur == ino:
                raise FSError(errno.EINVAL, "cannot move a directory into itself")
            cur = (await self._attr(t, cur)).parent or ROOT_INO
            seen += 1
            if seen > 10_000:
                raise FSError(errno.ELOOP)

    async def _exchange(self, t: Txn, p1: int, n1: bytes, pa1: Attr, sino: int, sa: Attr,
                        p2: int, n2: bytes, pa2: Attr, dino: int, now: int) -> Attr:
        """Swap the two names; returns the attributes of ``dino`` (now at ``p1/n1``)."""
        da = await self._child_attr(t, p2, n2, dino)
        if da.is_dir and p1 != p2:
            await self._check_not_ancestor(t, dino, p1)
        t.put(keys.dentry(p1, n1), encode_dentry(ftype_of(da.mode), dino))
        t.put(keys.dentry(p2, n2), encode_dentry(ftype_of(sa.mode), sino))
        if p1 != p2:
            if sa.is_dir != da.is_dir:
                delta = 1 if sa.is_dir else -1
                pa1.nlink -= delta
                pa2.nlink += delta
            await self._move_link_parent(t, sino, sa, p1, p2)
            await self._move_link_parent(t, dino, da, p2, p1)
        if sa.parent:
            sa.name = n2
        if da.parent:
            da.name = n1
        sa.ctime = da.ctime = now
        self._put_attr(t, sino, sa)
        self._put_attr(t, dino, da)
        pa1.mtime = pa1.ctime = now
        self._put_attr(t, p1, pa1)
        if p2 != p1:
            pa2.mtime = pa2.ctime = now
            self._put_attr(t, p2, pa2)
        return da

    # -- attributes --------------------------------------------------------------------

    async def setattr(self, ino: int, ch: SetAttr,
                      record: Callable[[Txn, Attr], Awaitable[None]] | None = None) -> Attr:
        """Apply ``ch``; a size change goes through :meth:`truncate` first.  ``record`` is
        given the new attributes inside the transaction, to add writes of the caller's
        (the history's version of the file as the change leaves it)."""
        if ch.size is not None:
            await self.truncate(ino, ch.size)

        async def fn(t: Txn) -> Attr:
            a = await self._attr(t, ino)
            self.change_in(t, ino, a, ch)
            if record is not None:
                await record(t, a)
            return a

        return await run_txn(self.kv, fn)

    def change_in(self, t: Txn, ino: int, a: Attr, ch: SetAttr) -> None:
        """Apply ``ch`` but its size to ``a``, the attributes ``ino`` has in ``t``, and
        write them in ``t`` -- :meth:`setattr`'s own transaction, or a write's of the same
        file that the change rides in."""
        if ch.mode is not None:
            a.mode = stat.S_IFMT(a.mode) | (ch.mode & 0o7777)
        owner_changed = (ch.uid is not None and ch.uid != a.uid) or (
            ch.gid is not None and ch.gid != a.gid)
        if ch.uid is not None:
            a.uid = ch.uid
        if ch.gid is not None:
            a.gid = ch.gid
        if owner_changed and ch.mode is None and not a.is_dir:
            # chown of a non-directory drops set-user-ID, and set-group-ID if the file is
            # group-executable (otherwise SGID means mandatory locking).
            a.mode &= ~stat.S_ISUID
            if a.mode & stat.S_IXGRP:
                a.mode &= ~stat.S_ISGID
        if ch.atime is not None:
            a.atime = ch.atime
        if ch.mtime is not None:
            a.mtime = ch.mtime
        a.ctime = ch.ctime if ch.ctime is not None else now_ns()
        self._put_attr(t, ino, a)

    async def truncate(self, ino: int, size: int) -> Attr:
        """Set a regular file's length.  Shrinking hides data past ``size`` at once (a zero
        slice over the rest of its chunk) and moves whole chunks beyond it to the slice GC
        queue, in steps of bounded size so no transaction exceeds the engine's limits."""
        if size < 0:
            raise FSError(errno.EINVAL)
        if size > MAX_FILE_SIZE:
            raise FSError(errno.EFBIG)
        last = size // CHUNK_SIZE  # chunks with index > last are past the end
        await self.drop_chunks(ino, last + 1, regular_file=True)

        async def fn(t: Txn) -> Attr:
            await t.prefetch(keys.attr(ino), keys.chunk(ino, last))
            a = await self._attr(t, ino)
            if a.is_dir:
                raise FSError(errno.EISDIR)
            if not a.is_reg:
                raise FSError(errno.EINVAL)
            if size < a.size:
                raw = await t.get(keys.chunk(ino, last))
                if raw:
                    off = size % CHUNK_SIZE
                    hole = Slice(pos=off, id=0, size=CHUNK_SIZE - off, off=0,
                                 len=CHUNK_SIZE - off)
                    t.put(keys.chunk(ino, last), raw + encode_slices([hole]))
            # Linux moves mtime and ctime on every truncate, even to the same length.
            a.size = size
            a.mtime = a.ctime = now_ns()
            self._put_attr(t, ino, a)
            return a

        return await run_txn(self.kv, fn)

    # -- data --------------------------------------------------------------------------

    async def drop_chunks(self, ino: int, first: int, *, regular_file: bool = False) -> None:
        """Move chunks ``first`` and beyond of ``ino`` to the slice GC queue, a bounded
        number per transaction (each step is idempotent).  ``regular_file`` makes every
        step check that ``ino`` still is one (truncate); the cleaner drops the chunks of
        inodes that are already gone."""
        end = prefix_end(keys.chunk_prefix(ino))
        while True:
            beyond = await self.kv.range(keys.chunk(ino, first), end, limit=_CHUNKS_PER_STEP,
                                         keys_only=True)
            if not beyond.kvs:
                return
            gc_id = await self.gc_ids.next()
            chunk_keys = [kv.key for kv in beyond.kvs]

            async def step(t: Txn, chunk_keys: list[bytes] = chunk_keys,
                           gc_id: int = gc_id) -> None:
                if regular_file:
                    await t.prefetch(keys.attr(ino), *chunk_keys)
                    a = await self._attr(t, ino)
                    if not a.is_reg:
                        raise FSError(errno.EISDIR if a.is_dir else errno.EINVAL)
                else:
                    await t.prefetch(*chunk_keys)
                dropped = b""
                for key in chunk_keys:
                    raw = await t.get(key)
                    if raw:
                        dropped += raw
                        t.delete(key)
                if dropped:
                    self._queue_freed(t, gc_id, dropped)
                    freed = slice_space(decode_slices(dropped))
                    t.on_commit(lambda: self.usage.add(space=-freed))

            await run_txn(self.kv, step)

    def _queue_freed(self, t: Txn, gc_id: int, slices: bytes) -> None:
        """Queue slices no chunk refers to any more for deletion of their blocks: at once
        (``G``), or once the history's retention has passed (``R``)."""
        if self.retain_seconds:
            t.put(keys.retained(now_ns() // 10**9, gc_id), slices)
        else:
            t.put(keys.slice_gc(gc_id), slices)

    async def read_chunk(self, ino: int, index: int) -> list[Slice]:
        raw = await self.kv.get(keys.chunk(ino, index))
        return decode_slices(raw.value) if raw else []

    async def write_slices(self, ino: int, slices: list[tuple[int, Slice]], end: int,
                           mtime: int, blocks: list[Put] | None = None,
                           record: Callable[[Txn, Attr], Awaitable[None]] | None = None
                           ) -> tuple[Attr, list[int]]:
        """Record written slices ``(chunk index, slice)`` and grow the file to ``end``;
        ``blocks`` are block writes committed in the same transaction (small writes).
        ``record`` is given the new attributes inside the transaction, to add writes of the
        caller's (the history's version of the file as this write leaves it).
        Returns the new attributes and the chunks now fragmented enough to compact."""
        space = slice_space(s for _, s in slices)

        async def fn(t: Txn) -> tuple[Attr, list[int]]:
            crowded: list[int] = []
            for p in blocks or ():
                t.put(p.key, p.value)
            per_chunk: dict[int, list[Slice]] = {}
            for idx, s in slices:
                per_chunk.setdefault(idx, []).append(s)
            await t.prefetch(keys.attr(ino), *(keys.chunk(ino, i) for i in per_chunk))
            a = await self._attr(t, ino)
            for idx, ss in per_chunk.items():
                raw = await t.get(keys.chunk(ino, idx)) or b""
                t.put(keys.chunk(ino, idx), raw + encode_slices(ss))
                if needs_compaction(decode_slices(raw) + ss):
                    crowded.append(idx)
            t.on_commit(lambda: self.usage.add(space=space))
            a.size = max(a.size, end)
            a.mtime = a.ctime = mtime
            self._put_attr(t, ino, a)
            if record is not None:
                await record(t, a)
            return a, crowded

        return await run_txn(self.kv, fn)

    async def replace_chunk(self, ino: int, index: int, expect: bytes, new: list[Slice]) -> bool:
        """Compaction: swap chunk ``index``'s slices for ``new`` if they are still ``expect``;
        the old slices go to the GC queue.  False if the chunk changed meanwhile or the
        swap was refused: then ``new`` is certainly not referenced.  Any other failure
        raises, since the swap may have landed (an engine that stopped answering can still
        apply it), and ``new``'s blocks must then stay; unreferenced, gc removes them."""
        gc_id = await self.gc_ids.next()
        key = keys.chunk(ino, index)
        cur = await self.kv.get(key)
        if cur is None or cur.value != expect:
            return False
        delta = slice_space(new) - slice_space(decode_slices(expect))

        async def fn(t: Txn) -> None:
            t.guard(key, cur.mod_revision)
            t.put(key, encode_slices(new))
            self._queue_freed(t, gc_id, expect)
            t.on_commit(lambda: self.usage.add(space=delta))

        try:
            await run_txn(self.kv, fn, attempts=1)
        except (Conflict, TxnTooLarge, NoSpace):  # not committed: try again later
            return False
        return True

    # -- xattrs ------------------------------------------------------------------------

    async def getxattr(self, ino: int, name: bytes) -> bytes:
        if not name.startswith(XATTR_NAMESPACES):
            raise FSError(errno.EOPNOTSUPP, "unknown xattr namespace")
        raw = await self.kv.get(keys.xattr(ino, name))
        if raw is None:
            await self.getattr(ino)
            raise FSError(errno.ENODATA)
        return raw.value

    async def listxattr(self, ino: int) -> list[bytes]:
        await self.getattr(ino)
        prefix = keys.xattr_prefix(ino)
        # Values too: a whole listing is what the record cache keeps.
        res = await self.kv.range(prefix, prefix_end(prefix))
        return [keys.xattr_name(kv.key) for kv in res.kvs]

    async def setxattr(self, ino: int, name: bytes, value: bytes, flags: int = 0) -> None:
        if not name:
            raise FSError(errno.EINVAL)
        if not name.startswith(XATTR_NAMESPACES):
            raise FSError(errno.EOPNOTSUPP, "unknown xattr namespace")
        if len(name) > XATTR_NAME_MAX:
            raise FSError(errno.ERANGE)
        if len(value) > XATTR_SIZE_MAX:
            raise FSError(errno.E2BIG)

        async def fn(t: Txn) -> None:
            a = await self._attr(t, ino)
            cur = await t.get(keys.xattr(ino, name))
            if flags & XATTR_CREATE and cur is not None:
                raise FSError(errno.EEXIST)
            if flags & XATTR_REPLACE and cur is None:
                raise FSError(errno.ENODATA)
            t.put(keys.xattr(ino, name), value)
            a.ctime = now_ns()
            self._put_attr(t, ino, a)

        await run_txn(self.kv, fn)

    async def removexattr(self, ino: int, name: bytes) -> None:
        if not name.startswith(XATTR_NAMESPACES):
            raise FSError(errno.EOPNOTSUPP, "unknown xattr namespace")

        async def fn(t: Txn) -> None:
            a = await self._attr(t, ino)
            if await t.get(keys.xattr(ino, name)) is None:
                raise FSError(errno.ENODATA)
            t.delete(keys.xattr(ino, name))
            a.ctime = now_ns()
            self._put_attr(t, ino, a)

        await run_txn(self.kv, fn)
