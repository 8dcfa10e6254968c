"""Garbage collection: what a volume stores that nothing needs any more, and its removal.

:func:`collect` finds, without writing anything:

* **unreferenced blocks**: blocks of the object store whose slice no record refers to --
  not a chunk record (``A ino C``), not a ``G`` or ``R`` record, not a history version
  (``H``), so every version the history keeps stays readable.  Blocks are matched by slice
  id, so a block of a referenced slice is never garbage whatever its name's length.
* **leaked slices**: chunk records of an inode that has no attributes and is not queued
  for deletion (``D``) -- nothing reads or frees them, so their blocks would stay forever.
* **dead sessions' holds**: ``SS`` keys of sessions whose ``SE`` key is gone (the cleaner
  of a live mount releases them too; an unmounted volume keeps them until the next mount).

:func:`delete` removes them: blocks are deleted; a leaked inode's remaining keys are
deleted and its slices go into an ``R`` record (freed now), which the cleaner of the next
mount frees as it frees any (at once when the history is off, after its retention when it
is on); holds are released as the cleaner releases them.

**In-flight writes.**  A write stores its blocks before it commits the chunk record that
refers to them, so on a live volume a young block may be unreferenced only for now.  Only
blocks older than ``min_age`` count as garbage.  Ages: a ``--storage file`` bucket's file
modification times; blocks in the volume's own engine have no time, only the revision of
the commit that created them, which is mapped to a time through commits that wrote their
own time: history versions (``H``: the time in the key), ``D`` values (the unlink time)
and ``R`` keys (the time freed).  A block is at least as old as the earliest such commit
at its revision or later; a block with none after it (a quiet volume without history), or
in a separate block engine (``--storage etcd``), has no known age and is kept unless
``min_age`` is 0, which :func:`delete` accepts only while no session is live (the volume
unmounted).  Host clocks are trusted to within ``min_age``.

Blocks are listed before the references are read, so a block written after the listing
is never a candidate.  Nothing is deleted while some reference record does not decode
(its blocks are unknown): ``kvfs fsck --repair`` drops undecodable chunk records first.
"""

from __future__ import annotations

import bisect
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import msgpack
import trio

from kvfs.chunk.layout import Slice, decode_slices, encode_slices
from kvfs.errors import VolumeError
from kvfs.kv.api import Compare, Delete, KVEngine, Put, prefix_end
from kvfs.meta import keys
from kvfs.meta.fsck import reference_records, scan_all
from kvfs.meta.ids import IdAllocator
from kvfs.meta.metadata import Metadata
from kvfs.objstore.api import ObjectStore, parse_block_name
from kvfs.objstore.checksum import ChecksummedStore
from kvfs.objstore.kvblob import KVBlobStore
from kvfs.objstore.localdir import LocalDirStore

DEFAULT_MIN_AGE = 3600.0

# Told how far a walk is: (phase, items done, items in all or None while unknown).
ProgressFn = Callable[[str, int, int | None], None]
_CHUNKS_PER_TXN = 50


@dataclass(frozen=True, slots=True)
class Block:
    name: str
    nbytes: int  # data bytes, from the name
    age: float | None  # seconds, None: unknown


@dataclass(frozen=True, slots=True)
class LeakedInode:
    ino: int
    chunks: tuple[tuple[bytes, bytes, int], ...]  # key, value, mod revision
    slices: int
    nbytes: int


@dataclass(slots=True)
class GcReport:
    min_age: float
    blocks: int = 0  # blocks listed
    block_bytes: int = 0
    referenced_slices: int = 0
    garbage: list[Block] = field(default_factory=list)  # unreferenced, old enough
    young: list[Block] = field(default_factory=list)  # unreferenced, too young or unknown
    leaked: list[LeakedInode] = field(default_factory=list)
    dead_holds: list[tuple[int, int]] = field(default_factory=list)  # (sid, ino)
    undecodable: list[str] = field(default_factory=list)
    live_sessions: int = 0
    # Filled by delete():
    deleted_blocks: int = 0
    deleted_bytes: int = 0
    freed_inodes: int = 0
    released_holds: int = 0

    @property
    def garbage_bytes(self) -> int:
        return sum(b.nbytes for b in self.garbage)

    @property
    def young_bytes(self) -> int:
        return sum(b.nbytes for b in self.young)

    @property
    def leaked_bytes(self) -> int:
        return sum(i.nbytes for i in self.leaked)

    @property
    def found_anything(self) -> bool:
        return bool(self.garbage or self.leaked or self.dead_holds)


async def collect(kv: KVEngine, store: ObjectStore, *, min_age: float = DEFAULT_MIN_AGE,
                  now: float | None = None, progress: ProgressFn | None = None) -> GcReport:
    """Find the garbage (see module docstring); writes nothing.  ``progress`` is told of
    the blocks listed, then of the blocks checked."""
    now = time.time() if now is None else now
    rep = GcReport(min_age)
    listed: dict[str, tuple[int, int]] = {}  # name -> slice id, data bytes
    async for name in store.list("chunks/"):
        try:
            sid, _, nbytes = parse_block_name(name)
        except ValueError:
            continue  # not a kvfs block: not ours to judge
        listed[name] = (sid, nbytes)
        if progress is not None:
            progress("listing blocks", len(listed), None)
    rep.blocks, rep.block_bytes = len(listed), sum(n for _, n in listed.values())
    born = await _block_revisions(kv, store)

    referenced: set[int] = set()
    attrs: set[int] = set()
    chunks: dict[int, list[tuple[bytes, bytes, int]]] = {}
    for item in await scan_all(kv, keys.INODE_PREFIX):
        ino, kind, _ = keys.parse_inode_key(item.key)
        if kind == keys.ATTR_TAG:
            attrs.add(ino)
        elif kind == keys.CHUNK_TAG:
            chunks.setdefault(ino, []).append((item.key, item.value, item.mod_revision))
            try:
                referenced.update(s.id for s in decode_slices(item.value) if s.id)
            except ValueError:
                rep.undecodable.append(f"inode {ino}: chunk {keys.chunk_index(item.key)}")
    points: list[tuple[int, float]] = []  # (revision, unix time) of commits that say when
    async for prefix, item, slices in reference_records(kv):
        if slices is None:
            rep.undecodable.append(f"record {item.key!r}")
            continue
        referenced.update(s.id for s in slices if s.id)
        if prefix == keys.HISTORY_PREFIX:
            points.append((item.mod_revision, keys.parse_history(item.key)[1] / 1e9))
        elif prefix == keys.RETAINED_PREFIX:
            points.append((item.create_revision, float(keys.retained_freed(item.key))))
    queued: set[int] = set()
    for item in await scan_all(kv, keys.DELFILE_PREFIX):
        queued.add(keys.key_ino(item.key))
        try:
            points.append((item.mod_revision, float(msgpack.unpackb(item.value)[1])))
        except (ValueError, TypeError, IndexError, msgpack.UnpackException):
            pass  # fsck's business; this value only lends gc a time
    rep.referenced_slices = len(referenced)

    sessions = {keys.session_id(i.key) for i in await scan_all(kv, keys.SESSION_PREFIX)}
    rep.live_sessions = len(sessions)
    for item in await scan_all(kv, keys.SUSTAINED_PREFIX):
        sid, ino = keys.sustained_parts(item.key)
        if sid and sid not in sessions:
            rep.dead_holds.append((sid, ino))

    for ino, records in sorted(chunks.items()):
        if ino in attrs or ino in queued:
            continue
        nslices, nbytes = 0, 0
        for _, value, _ in records:
            try:
                for s in decode_slices(value):
                    if s.id:
                        nslices += 1
                        nbytes += s.len
            except ValueError:
                continue
        rep.leaked.append(LeakedInode(ino, tuple(records), nslices, nbytes))

    when = _RevisionClock(points)
    for checked, (name, (sid, nbytes)) in enumerate(sorted(listed.items()), 1):
        if progress is not None:
            progress("checking blocks", checked, len(listed))
        if sid in referenced:
            continue
        age = await _age(store, name, born, when, now)
        block = Block(name, nbytes, age)
        if min_age <= 0 or (age is not None and age >= min_age):
            rep.garbage.append(block)
        else:
            rep.young.append(block)
    return rep


async def delete(kv: KVEngine, store: ObjectStore, rep: GcReport,
                 progress: ProgressFn | None = None) -> None:
    """Remove what :func:`collect` found (module docstring); VolumeError when it must not.
    ``progress`` is told of each block, leaked inode and hold dealt with."""
    if rep.undecodable:
        raise VolumeError(f"{len(rep.undecodable)} reference records do not decode "
                          f"({rep.undecodable[0]}, ...): run `kvfs fsck --repair` first")
    if rep.min_age <= 0:
        live = len(await scan_all(kv, keys.SESSION_PREFIX))
        if live:
            raise VolumeError(f"{live} sessions are live: deleting blocks of any age "
                              "(--min-age 0) needs the volume unmounted")
    total, done = len(rep.garbage) + len(rep.leaked) + len(rep.dead_holds), 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress("deleting", done, total)

    for block in rep.garbage:
        await store.delete(block.name)
        rep.deleted_blocks += 1
        rep.deleted_bytes += block.nbytes
        tick()
    ids = IdAllocator(kv, keys.NEXT_SLICE, 1)
    for leak in rep.leaked:
        if await _free_inode(kv, ids, leak):
            rep.freed_inodes += 1
        tick()
    meta = Metadata(kv)
    for sid, ino in rep.dead_holds:
        await meta.release_orphan(ino, sid)
        if await kv.get(keys.sustained(sid, ino)) is None:
            rep.released_holds += 1
        tick()


async def _free_inode(kv: KVEngine, ids: IdAllocator, leak: LeakedInode) -> bool:
    """Move a leaked inode's chunks into ``R`` records and delete its keys, each step its
    own transaction, guarded so that the inode still has no attributes and no ``D`` key."""
    absent = [Compare(keys.attr(leak.ino), 0), Compare(keys.delfile(leak.ino), 0)]
    freed = int(time.time())
    for at in range(0, len(leak.chunks), _CHUNKS_PER_TXN):
        part = leak.chunks[at:at + _CHUNKS_PER_TXN]
        slices: list[Slice] = []
        for _, value, _ in part:
            try:
                slices.extend(s for s in decode_slices(value) if s.id)
            except ValueError:
                return False  # collect() said so; delete() refuses before getting here
        puts = [Put(keys.retained(freed, await ids.next()), encode_slices(slices))] \
            if slices else []
        res = await kv.commit(absent + [Compare(k, rev) for k, _, rev in part], puts,
                              [Delete(k) for k, _, _ in part])
        if not res.succeeded:
            return False
    prefix = keys.inode_all(leak.ino)
    return (await kv.commit(absent, [], [Delete(prefix, prefix_end(prefix))])).succeeded


class _RevisionClock:
    """Upper bounds on when a revision was committed, from commits that carry a time."""

    def __init__(self, points: list[tuple[int, float]]) -> None:
        points.sort()
        self._revs = [r for r, _ in points]
        # _latest[i]: the earliest time among points i.. (a revision's commit is no later
        # than any later commit's time).
        self._latest: list[float] = []
        low = float("inf")
        for _, t in reversed(points):
            low = min(low, t)
            self._latest.append(low)
        self._latest.reverse()

    def no_later_than(self, revision: int) -> float | None:
        i = bisect.bisect_left(self._revs, revision)
        return self._latest[i] if i < len(self._revs) else None


async def _block_revisions(kv: KVEngine, store: ObjectStore) -> dict[str, int]:
    """The create revision of every block kept in the volume's own engine (else empty)."""
    inner = store.inner if isinstance(store, ChecksummedStore) else store
    if not isinstance(inner, KVBlobStore) or inner.kv.base() is not kv.base():
        return {}
    out: dict[str, int] = {}
    start = keys.block("chunks/", inner.prefix)
    end = prefix_end(start)
    while True:
        res = await kv.range(start, end, limit=2000, keys_only=True)
        for item in res.kvs:
            out[keys.block_name(item.key, inner.prefix)] = item.create_revision
        if not res.more or not res.kvs:
            return out
        start = res.kvs[-1].key + b"\0"


async def _age(store: ObjectStore, name: str, born: dict[str, int], when: _RevisionClock,
               now: float) -> float | None:
    inner = store.inner if isinstance(store, ChecksummedStore) else store
    if isinstance(inner, LocalDirStore):
        path = os.path.join(inner.root, *name.split("/"))
        try:
            mtime = await trio.to_thread.run_sync(os.path.getmtime, path)
        except OSError:
            return None
        return now - mtime
    rev = born.get(name)
    at = when.no_later_than(rev) if rev else None
    return None if at is None else now - at
