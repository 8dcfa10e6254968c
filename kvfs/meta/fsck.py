"""The consistency checker and its repairs: every invariant of the key table, checked
against the engine.

:func:`check` reads the whole volume (metadata, the block store's listing and, unless told
not to, every referenced block) and returns a :class:`Report` whose :class:`Problem` list is
empty for a consistent volume.  Checking never writes.  Checked:

* every directory entry decodes and names an existing inode of the entry's type, in an
  existing directory;
* every attribute record decodes; every live inode is in some directory (but the root
  and the trash, :mod:`kvfs.meta.trash`, which no entry names), and its ``nlink`` equals
  its entries (directories: 2 + child directories) -- a file in the trash has its entry
  there, so the trash needs no other rule;
* a directory's ``parent`` is the directory holding its entry; a non-directory's parent
  bookkeeping (its ``parent`` field while it has one link, its ``P`` keys while it has
  several) names the directories holding its entries;
* every chunk key decodes, and every block of every slice a chunk refers to exists in
  the store and (``verify_data``) reads back with a valid checksum;
* inodes with ``nlink == 0`` are held open by some session (``SS``) or queued (``D``,
  where shared engines keep an unlinked file's attributes through a grace period);
* no inode queued for deletion still has links;
* with ``operational``: ``SS`` holds of sessions that are gone (no ``SE`` key: their
  lease expired) -- the cleaner of any live mount releases them, so on an unmounted
  volume they are left-overs of a crash -- and the usage counters (``C usedspace``,
  ``C usedinodes``) against the sum of the chunk records.  The counters are statistics
  that every mount updates about once a second from deltas it keeps in memory, so they
  are compared with a tolerance: a difference up to :data:`SPACE_SLACK` bytes or
  :data:`INODE_SLACK` inodes, or 1 % of the computed figure if that is more, is not a
  problem.  Session id 0 is a process using the volume in-process without registering a
  session (tests): its holds are not judged.

A problem with a block names the file that refers to it: its path from the volume root
when some directory entry leads there, else its inode, and the chunk.

Slices queued in ``G`` records are garbage awaiting deletion: the cleaner deletes their
blocks before the record, so after a crash some may already be gone.  Nobody reads them,
so fsck neither requires nor reads their blocks; it only counts them as referenced.  The
same holds for ``R`` records (freed slices the history keeps until their retention ends)
and for the slices of history versions (``H``).  ``leaked_blocks`` also lists blocks no
slice refers to.

**Live volumes.**  The engine interface has no read at a fixed revision, so a check of a
volume that mounts may be changing (a shared engine: etcd, a Raft cluster) can see a
change half-made across its pages.  With ``live`` (the default on shared engines) a check
that found problems runs again -- reading the metadata again, and of the data only the
blocks it blamed -- and reports only the problems found both times, with the second
reading's revisions.

**Repairs.**  Each problem that can be repaired safely carries a :class:`Repair`:
one small transaction guarded by compares on every key its premise rests on (for a
directory's listing or an inode's links, that is the inode's attribute key, which every
change to them rewrites), so a race with a live mount makes the repair fail, never do
harm.  :func:`repair` applies them.  Repairs never delete data blocks (``kvfs gc`` does)
and never free an inode's data: an inode no entry leads to is moved into ``/lost+found``
(created if missing).  Missing and corrupt blocks cannot be repaired here.

Data verification reads each block once (a slice id names its blocks, and a slice listed
by several chunk records is still one set of blocks), a few at a time: at most
:data:`VERIFY_BUDGET` bytes of block data are in flight, so memory stays bounded whatever
the volume's size.
"""

from __future__ import annotations

import stat
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field

import msgpack
import trio

from kvfs.chunk.layout import Slice, decode_slices
from kvfs.kv.api import (
    Compare,
    Delete,
    EngineUnavailable,
    KeyValue,
    KVEngine,
    Put,
    prefix_end,
)
from kvfs.meta import keys
from kvfs.meta.keys import ROOT_INO
from kvfs.meta.metadata import ROOT_CTX, Metadata
from kvfs.meta.records import Attr, decode_dentry, encode_dentry, ftype_of, now_ns
from kvfs.meta.trash import TRASH_INO, TRASH_NAME
from kvfs.meta.usage import slice_space
from kvfs.objstore.api import (
    BlockCorrupt,
    BlockNotFound,
    ObjectStore,
    ObjectStoreError,
    block_name,
    parse_block_name,
)

# Block data in flight while verifying (each reader holds one block), and the most readers.
VERIFY_BUDGET = 64 << 20
VERIFY_READERS = 8
# Usage counters within this much (or 1 % of the computed figure) are consistent.
SPACE_SLACK = 16 << 20
INODE_SLACK = 100
LOST_FOUND = b"lost+found"


@dataclass(frozen=True, slots=True)
class Repair:
    """What --repair does about one problem: ``action`` says it, ``apply`` does it in one
    guarded transaction and returns False when a compare failed (the volume changed)."""

    action: str
    apply: Callable[[RepairContext], Awaitable[bool]]


@dataclass(frozen=True, slots=True)
class Problem:
    """One broken invariant.  ``kind`` is a stable name for scripts; ``block`` names the
    block a data problem is about; ``repair`` is None when fsck cannot repair it."""

    kind: str
    text: str
    repair: Repair | None = None
    block: str | None = None


@dataclass(slots=True)
class Report:
    found: list[Problem] = field(default_factory=list)
    inodes: int = 0
    entries: int = 0
    slices: int = 0
    blocks: int = 0
    data_verified: bool = False  # whether the blocks below were read and checked
    verified_blocks: int = 0
    verified_bytes: int = 0
    rechecked: bool = False  # a live check ran twice and kept what both runs found

    @property
    def problems(self) -> list[str]:
        return [p.text for p in self.found]

    def add(self, kind: str, text: str, repair: Repair | None = None,
            block: str | None = None) -> None:
        self.found.append(Problem(kind, text, repair, block))


@dataclass(frozen=True, slots=True)
class DataProgress:
    """How far data verification is: blocks and data bytes read so far, of the totals."""

    blocks: int
    total_blocks: int
    nbytes: int
    total_bytes: int


ProgressFn = Callable[[DataProgress], None]


@dataclass(slots=True)
class _SliceRef:
    size: int
    owners: list[tuple[int, int]]  # (inode, chunk index) of every chunk record naming it


@dataclass(frozen=True, slots=True)
class _Entry:
    parent: int
    name: bytes
    ftype: int
    child: int
    rev: int


async def scan_all(kv: KVEngine, prefix: bytes) -> list[KeyValue]:
    """Every key under ``prefix``, read page by page (not at one revision)."""
    out: list[KeyValue] = []
    start, end = prefix, prefix_end(prefix)
    while True:
        res = await kv.range(start, end, limit=2000)
        out.extend(res.kvs)
        if not res.more:
            return out
        start = res.kvs[-1].key + b"\0"


async def reference_records(kv: KVEngine
                            ) -> AsyncIterator[tuple[bytes, KeyValue, list[Slice] | None]]:
    """``(prefix, record, slices)`` of every record that keeps slices alive outside the
    chunks: the ``G`` and ``R`` queues and the history's versions (``H``).  ``slices`` is
    None for a record that does not decode: the blocks it refers to are unknown."""
    for prefix in (keys.SLICE_GC_PREFIX, keys.RETAINED_PREFIX, keys.HISTORY_PREFIX):
        for item in await scan_all(kv, prefix):
            try:
                yield prefix, item, (history_slices(item.value) if prefix == keys.HISTORY_PREFIX
                                     else decode_slices(item.value))
            except ValueError:
                yield prefix, item, None


def blocks_of(slice_id: int, size: int, block_size: int) -> Iterator[tuple[str, int]]:
    """(name, data bytes) of every block of a slice."""
    for i, start in enumerate(range(0, size, block_size)):
        n = min(block_size, size - start)
        yield block_name(slice_id, i, n), n


def history_slices(raw: bytes) -> list[Slice]:
    """The slices a history version (an ``H`` value) keeps readable.

    The version record belongs to kvfs.history, above this layer; only its ``chunks``
    field, a list of ``[index, slice records]`` as docs/keys.md gives it, is read here.
    ValueError when the value is not such a record."""
    try:
        d = msgpack.unpackb(raw)
        chunks = d.get("chunks") if isinstance(d, dict) else None
        if not isinstance(d, dict) or (chunks is not None and not isinstance(chunks, list)):
            raise ValueError("not a version record")
        out: list[Slice] = []
        for _, records in chunks or ():
            out.extend(decode_slices(bytes(records)))
        return out
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise ValueError(f"history version does not decode: {exc}") from None


class _Names:
    """Paths of inodes from the directory entries, derived only for inodes fsck reports."""

    def __init__(self, entries: list[_Entry]) -> None:
        # child -> one (parent, name); the trash has no entry but a name all the same
        self._entry: dict[int, tuple[int, bytes]] = {TRASH_INO: (ROOT_INO, TRASH_NAME)}
        for e in entries:
            self._entry.setdefault(e.child, (e.parent, e.name))

    def path(self, ino: int) -> str | None:
        parts: list[str] = []
        seen: set[int] = set()
        while ino != ROOT_INO:
            hop = self._entry.get(ino)
            if hop is None or ino in seen:  # unlinked, or a broken (cyclic) tree
                return None
            seen.add(ino)
            parts.append(hop[1].decode("utf-8", "backslashreplace"))
            ino = hop[0]
        return "/" + "/".join(reversed(parts))

    def describe(self, ino: int, chunk: int) -> str:
        path = self.path(ino)
        where = f"file {path} (inode {ino})" if path else f"inode {ino} (no path)"
        return f"{where}, chunk {chunk}"


async def check(kv: KVEngine, store: ObjectStore | None, block_size: int,
                *, leaked_blocks: bool = False, verify_data: bool = True,
                operational: bool = False, live: bool | None = None,
                progress: ProgressFn | None = None) -> Report:
    """Check the volume (see module docstring).  ``verify_data=False`` checks only that
    blocks exist; ``operational`` adds dead sessions' holds and the usage counters;
    ``live`` (default: the engine is shared) re-checks what the first run found;
    ``progress`` is called as data verification advances."""
    live = kv.shared if live is None else live
    first = await _check_once(kv, store, block_size, leaked_blocks=leaked_blocks,
                              verify_data=verify_data, operational=operational,
                              verify_only=None, progress=progress)
    if not live or not first.found:
        return first
    blamed = {p.block for p in first.found if p.block is not None}
    again = await _check_once(kv, store, block_size, leaked_blocks=leaked_blocks,
                              verify_data=verify_data, operational=operational,
                              verify_only=blamed, progress=None)
    before = set(first.problems)
    first.found = [p for p in again.found if p.text in before]
    first.rechecked = True
    return first


async def _check_once(kv: KVEngine, store: ObjectStore | None, block_size: int, *,
                      leaked_blocks: bool, verify_data: bool, operational: bool,
                      verify_only: set[str] | None, progress: ProgressFn | None) -> Report:
    rep = Report()
    attrs: dict[int, tuple[Attr, int]] = {}  # ino -> attributes, mod revision
    entries: list[_Entry] = []
    link_parents: dict[int, dict[int, int]] = defaultdict(dict)  # ino -> P parent -> count
    refs: dict[int, _SliceRef] = {}  # slices of live chunks
    queued_slices: dict[int, int] = {}  # slice id -> size, of G and R records and versions
    unreadable: set[int] = set()  # inodes whose attributes do not decode
    space = 0
    for item in await scan_all(kv, keys.INODE_PREFIX):
        ino, kind, rest = keys.parse_inode_key(item.key)
        if kind == keys.ATTR_TAG:
            try:
                attrs[ino] = (Attr.decode(item.value), item.mod_revision)
            except (ValueError, TypeError, IndexError, msgpack.UnpackException):
                unreadable.add(ino)
                rep.add("bad-attr", f"inode {ino}: attributes do not decode")
        elif kind == keys.DENTRY_TAG:
            try:
                ftype, child = decode_dentry(item.value)
            except (ValueError, TypeError, msgpack.UnpackException):
                rep.add("bad-entry", f"entry {rest!r} in directory {ino} does not decode",
                        _drop_entry(ino, rest, item.mod_revision, "an entry that does not "
                                    "decode"))
                continue
            entries.append(_Entry(ino, rest, ftype, child, item.mod_revision))
        elif kind == keys.CHUNK_TAG:
            index = keys.chunk_index(item.key)
            try:
                slices = decode_slices(item.value)
            except ValueError:
                rep.add("bad-chunk", f"inode {ino}: chunk {index} does not decode",
                        _drop_chunk(ino, index, item.mod_revision))
                continue
            space += slice_space(slices)
            for s in slices:
                if s.id:
                    ref = refs.setdefault(s.id, _SliceRef(s.size, []))
                    ref.owners.append((ino, index))
        elif kind == keys.LINK_PARENT_TAG:
            link_parents[ino][keys.link_parent_of(item.key)] = keys.read_u64(item.value)
    async for _, record, kept in reference_records(kv):
        if kept is None:
            rep.add("bad-reference", f"record {record.key!r} does not decode: the blocks "
                    "it refers to are unknown")
            continue
        for s in kept:
            if s.id:
                queued_slices.setdefault(s.id, s.size)
    holds = [keys.sustained_parts(i.key) for i in await scan_all(kv, keys.SUSTAINED_PREFIX)]
    sustained = {ino for _, ino in holds}
    queued = {keys.key_ino(i.key): i.mod_revision
              for i in await scan_all(kv, keys.DELFILE_PREFIX)}
    rep.inodes, rep.entries = len(attrs), len(entries)
    rep.slices = len(refs.keys() | queued_slices.keys())

    _check_namespace(rep, attrs, entries, link_parents, sustained, queued, unreadable)
    if operational:
        await _check_sessions(rep, kv, holds)
        await _check_usage(rep, kv, attrs, space, sustained)
    if store is not None:
        await _check_blocks(rep, store, block_size, refs, queued_slices, _Names(entries),
                            leaked_blocks=leaked_blocks, verify_data=verify_data,
                            verify_only=verify_only, progress=progress)
    return rep


def _check_namespace(rep: Report, attrs: dict[int, tuple[Attr, int]],
                     entries: list[_Entry], link_parents: dict[int, dict[int, int]],
                     sustained: set[int], queued: dict[int, int], unreadable: set[int]
                     ) -> None:
    links: Counter[int] = Counter()
    subdirs: Counter[int] = Counter()
    where: dict[int, Counter[int]] = defaultdict(Counter)  # child -> parent -> entries
    for e in entries:
        got = attrs.get(e.child)
        if e.parent in unreadable or e.child in unreadable:
            continue  # reported as such; what the record would say is unknown
        if e.parent not in attrs:
            rep.add("entry-in-missing-directory",
                    f"entry {e.name!r} lives in missing directory {e.parent}",
                    _drop_orphan_entry(e))
            continue
        if got is None:
            rep.add("dangling-entry",
                    f"entry {e.name!r} in directory {e.parent} points to missing inode "
                    f"{e.child}", _drop_entry(e.parent, e.name, e.rev,
                                              f"a dangling entry (inode {e.child})",
                                              child=e.child))
            continue
        a, rev = got
        if e.ftype != ftype_of(a.mode):
            rep.add("entry-type",
                    f"entry {e.name!r} in directory {e.parent} has type {e.ftype}, inode "
                    f"{e.child} has {ftype_of(a.mode)}", _retype_entry(e, a, rev))
        links[e.child] += 1
        where[e.child][e.parent] += 1
        if a.is_dir:
            subdirs[e.parent] += 1
            if a.parent != e.parent:
                rep.add("dir-parent", f"directory {e.child} is in {e.parent} but its parent "
                        f"field says {a.parent}", _set_dir_parent(e, rev))
    if ROOT_INO not in attrs:
        rep.add("root-missing", "root directory is missing")
    for ino, (a, rev) in attrs.items():
        if a.nlink == 0:
            if ino not in sustained and ino not in queued:
                rep.add("unreachable", f"inode {ino} has no links, no session holds it open "
                        "and it is not queued for deletion", _to_lost_found(ino, a, rev, 0))
            continue
        want = 2 + subdirs[ino] if a.is_dir else links[ino]
        if ino not in (ROOT_INO, TRASH_INO) and links[ino] == 0:
            rep.add("no-entry", f"inode {ino} ({stat.filemode(a.mode)}) is not in any "
                    "directory", _to_lost_found(ino, a, rev, subdirs[ino]))
            continue
        if a.nlink != want:
            rep.add("nlink", f"inode {ino} has nlink {a.nlink}, expected {want}",
                    _set_links(ino, a, rev, want, where[ino]))
        elif not a.is_dir and ino != ROOT_INO:
            have = dict(link_parents.get(ino, {}))
            if a.parent:
                have[a.parent] = have.get(a.parent, 0) + 1
            if have != dict(where[ino]):
                rep.add("link-parents", f"inode {ino}'s parent records name directories "
                        f"{_counts(have)}, its entries are in {_counts(where[ino])}",
                        _set_links(ino, a, rev, want, where[ino]))
    for ino, drev in queued.items():
        got = attrs.get(ino)
        if got is not None and got[0].nlink:
            rep.add("queued-linked", f"inode {ino} is queued for deletion but still has links",
                    _unqueue(ino, drev, got[1]))


def _counts(c: dict[int, int]) -> str:
    return "{" + ", ".join(f"{p}: {n}" for p, n in sorted(c.items())) + "}"


async def _check_sessions(rep: Report, kv: KVEngine, holds: list[tuple[int, int]]) -> None:
    alive: dict[int, bool] = {}
    for sid, ino in holds:
        if sid == 0:
            continue
        if sid not in alive:
            alive[sid] = await kv.get(keys.session(sid)) is not None
        if not alive[sid]:
            rep.add("dead-hold", f"inode {ino} is held open by session {sid}, which is gone",
                    _release_hold(sid, ino))


async def _check_usage(rep: Report, kv: KVEngine, attrs: dict[int, tuple[Attr, int]],
                       space: int, sustained: set[int]) -> None:
    # An inode counts until its last name goes; on a single-process engine one still open
    # then counts until its last close (kvfs.meta.usage).
    inodes = sum(1 for ino, (a, _) in attrs.items()
                 if a.nlink or (not kv.shared and ino in sustained))
    raw_space, raw_inodes = await kv.get_many([keys.USED_SPACE, keys.USED_INODES])
    stored_space = msgpack.unpackb(raw_space.value) if raw_space else 0
    stored_inodes = msgpack.unpackb(raw_inodes.value) if raw_inodes else 0
    off_space = abs(stored_space - space) > max(SPACE_SLACK, space // 100)
    off_inodes = abs(stored_inodes - inodes) > max(INODE_SLACK, inodes // 100)
    if off_space or off_inodes:
        revs = (raw_space.mod_revision if raw_space else 0,
                raw_inodes.mod_revision if raw_inodes else 0)
        rep.add("usage", f"usage counters say {stored_space} bytes and {stored_inodes} "
                f"inodes, the records {space} bytes and {inodes} inodes",
                _set_usage(space, inodes, revs))


async def _check_blocks(rep: Report, store: ObjectStore, block_size: int,
                        refs: dict[int, _SliceRef], queued_slices: dict[int, int],
                        names: _Names, *, leaked_blocks: bool, verify_data: bool,
                        verify_only: set[str] | None, progress: ProgressFn | None) -> None:
    present: set[str] = set()
    async for block in store.list("chunks/"):
        present.add(block)
    rep.blocks = len(present)
    wanted: dict[str, tuple[int, int]] = {}  # block name -> slice id, data bytes
    for sid, ref in refs.items():
        for name, nbytes in blocks_of(sid, ref.size, block_size):
            wanted[name] = (sid, nbytes)

    def bad(name: str, what: str) -> None:
        for ino, chunk in refs[wanted[name][0]].owners:
            rep.add("block", f"{names.describe(ino, chunk)}: block {name} {what}",
                    block=name)

    for name in sorted(wanted.keys() - present):
        bad(name, "is missing from the object store")
    if verify_data:
        # Sorted names read a directory store in directory order.
        todo = sorted(wanted.keys() & present)
        if verify_only is not None:
            todo = [n for n in todo if n in verify_only]
        await _verify(rep, store, todo, {n: wanted[n][1] for n in todo}, block_size, bad,
                      progress)
    if leaked_blocks:
        queued_blocks = {name for sid, size in queued_slices.items()
                         for name, _ in blocks_of(sid, size, block_size)}
        for block in sorted(present - wanted.keys() - queued_blocks):
            try:
                parse_block_name(block)
            except ValueError:
                continue
            rep.add("leaked-block", f"block {block} is not referenced by any slice (leaked)",
                    block=block)


async def _verify(rep: Report, store: ObjectStore, names: list[str], sizes: dict[str, int],
                  block_size: int, bad: Callable[[str, str], None],
                  progress: ProgressFn | None) -> None:
    """Read every block in ``names`` once through ``store`` (which checks its checksum)."""
    rep.data_verified = True
    total_bytes = sum(sizes.values())

    def tick() -> None:
        if progress is not None:
            progress(DataProgress(rep.verified_blocks, len(names), rep.verified_bytes,
                                  total_bytes))

    todo = iter(names)
    outage: list[ObjectStoreError] = []

    async def reader(scope: trio.CancelScope) -> None:
        # One trio thread runs every reader, so sharing the iterator is safe.
        for name in todo:
            try:
                await store.get(name)
            except BlockCorrupt as exc:
                bad(name, f"is corrupt: {exc.detail}")
            except BlockNotFound:
                bad(name, "is missing from the object store")
            except ObjectStoreError as exc:
                if isinstance(exc.__cause__, EngineUnavailable):
                    # The engine, not this block: no point in reading the rest.
                    outage.append(exc)
                    scope.cancel()
                    return
                bad(name, f"cannot be read: {exc}")
            rep.verified_blocks += 1
            rep.verified_bytes += sizes[name]
            tick()

    tick()
    readers = max(1, min(VERIFY_READERS, VERIFY_BUDGET // max(block_size, 1)))
    async with trio.open_nursery() as nursery:
        for _ in range(min(readers, len(names))):
            nursery.start_soon(reader, nursery.cancel_scope)
    if outage:
        raise outage[0]


# -- repairs ---------------------------------------------------------------------------


class RepairContext:
    """What repairs share: the engine, and ``/lost+found`` once one repair needed it."""

    def __init__(self, kv: KVEngine) -> None:
        self.kv = kv
        self._lost_found: int | None = None

    async def commit(self, compares: list[Compare], puts: list[Put],
                     deletes: list[Delete] | None = None) -> bool:
        return (await self.kv.commit(compares, puts, deletes or [])).succeeded

    async def lost_found(self) -> int:
        """The inode of ``/lost+found``, made (mode 0700, root's) if the root has none;
        VolumeRepairError if that name is taken by something else than a directory."""
        if self._lost_found is None:
            meta = Metadata(self.kv)
            ino, a, _ = await meta.create(ROOT_CTX, ROOT_INO, LOST_FOUND,
                                          stat.S_IFDIR | 0o700, exclusive=False)
            if not a.is_dir:
                raise VolumeRepairError("/lost+found exists and is not a directory")
            await meta.usage.flush()
            self._lost_found = ino
        return self._lost_found


class VolumeRepairError(Exception):
    """A repair cannot be made at all (not a race: the volume's state rules it out)."""


@dataclass(frozen=True, slots=True)
class RepairOutcome:
    problem: Problem
    done: bool
    detail: str  # "" when done; else why not


async def repair(kv: KVEngine, problems: list[Problem],
                 ctx: RepairContext | None = None) -> list[RepairOutcome]:
    """Apply the repair of every repairable problem, each in its own transaction."""
    ctx = ctx or RepairContext(kv)
    out: list[RepairOutcome] = []
    for p in problems:
        if p.repair is None:
            continue
        try:
            done = await p.repair.apply(ctx)
        except VolumeRepairError as exc:
            out.append(RepairOutcome(p, False, str(exc)))
            continue
        out.append(RepairOutcome(p, done, "" if done else "the volume changed meanwhile"))
    return out


async def _touch_dir(ctx: RepairContext, ino: int, *, dlinks: int = 0
                     ) -> tuple[Compare, Put] | None:
    """The guarded rewrite of directory ``ino``'s attributes that any change to its
    entries makes (mtime and ctime now, ``nlink`` moved by ``dlinks``)."""
    got = await ctx.kv.get(keys.attr(ino))
    if got is None:
        return None
    a = Attr.decode(got.value)
    a.mtime = a.ctime = now_ns()
    a.nlink += dlinks
    return Compare(got.key, got.mod_revision), Put(got.key, a.encode())


def _drop_entry(parent: int, name: bytes, rev: int, what: str, *, child: int = 0) -> Repair:
    async def apply(ctx: RepairContext) -> bool:
        touch = await _touch_dir(ctx, parent)
        if touch is None:
            return False
        compares = [Compare(keys.dentry(parent, name), rev), touch[0]]
        if child:
            compares.append(Compare(keys.attr(child), 0))  # still missing
        return await ctx.commit(compares, [touch[1]], [Delete(keys.dentry(parent, name))])

    return Repair(f"removed {what}: {name!r} in directory {parent}", apply)


def _drop_orphan_entry(e: _Entry) -> Repair:
    async def apply(ctx: RepairContext) -> bool:
        return await ctx.commit([Compare(keys.dentry(e.parent, e.name), e.rev),
                                 Compare(keys.attr(e.parent), 0)], [],
                                [Delete(keys.dentry(e.parent, e.name))])

    return Repair(f"removed entry {e.name!r} of missing directory {e.parent} (inode "
                  f"{e.child} goes to /lost+found if nothing else leads to it)", apply)


def _retype_entry(e: _Entry, a: Attr, rev: int) -> Repair:
    async def apply(ctx: RepairContext) -> bool:
        touch = await _touch_dir(ctx, e.parent)
        if touch is None:
            return False
        key = keys.dentry(e.parent, e.name)
        return await ctx.commit(
            [Compare(key, e.rev), Compare(keys.attr(e.child), rev), touch[0]],
            [Put(key, encode_dentry(ftype_of(a.mode), e.child)), touch[1]])

    return Repair(f"set the type of entry {e.name!r} in directory {e.parent} to its inode's "
                  f"({ftype_of(a.mode)})", apply)


def _set_dir_parent(e: _Entry, rev: int) -> Repair:
    async def apply(ctx: RepairContext) -> bool:
        got = await ctx.kv.get(keys.attr(e.child))
        if got is None or got.mod_revision != rev:
            return False
        a = Attr.decode(got.value)
        a.parent, a.name = e.parent, e.name
        return await ctx.commit([Compare(got.key, rev), Compare(keys.dentry(e.parent, e.name),
                                                                e.rev)],
                                [Put(got.key, a.encode())])

    return Repair(f"set the parent of directory {e.child} to {e.parent}", apply)


def _set_links(ino: int, a: Attr, rev: int, want: int, where: Counter[int]) -> Repair:
    """nlink and the parent bookkeeping from the entries: ``parent`` (and the name, unknown
    here unless it is a directory) while one link, ``P`` keys while several.

    The ``P`` keys it writes are put, and only the other ones present are deleted: a
    transaction may not delete a range it also puts keys into (etcd refuses it, and so does
    every engine's :meth:`~kvfs.kv.api.Limits.check`).  A link made or removed meanwhile
    changes the attributes too, so the compare on them covers the ``P`` keys read here."""
    parents = dict(where)

    async def apply(ctx: RepairContext) -> bool:
        fixed = Attr.decode(a.encode())
        fixed.nlink = want
        fixed.ctime = now_ns()
        puts: list[Put] = []
        if not a.is_dir:
            if sum(parents.values()) == 1:
                (only,) = parents
                if fixed.parent != only:
                    fixed.parent, fixed.name = only, b""
            else:
                fixed.parent, fixed.name = 0, b""
                puts.extend(Put(keys.link_parent(ino, p), keys.u64(n))
                            for p, n in sorted(parents.items()))
        written = {p.key for p in puts}
        deletes = [] if a.is_dir else [
            Delete(kv.key) for kv in await scan_all(ctx.kv, keys.link_parent_prefix(ino))
            if kv.key not in written]
        puts.append(Put(keys.attr(ino), fixed.encode()))
        return await ctx.commit([Compare(keys.attr(ino), rev)], puts, deletes)

    what = (f"set nlink of inode {ino} to {want}" if a.nlink != want
            else f"rewrote the parent records of inode {ino}")
    if not a.is_dir and a.nlink != want:
        what += ", and its parent records from its entries"
    return Repair(what, apply)


def _to_lost_found(ino: int, a: Attr, rev: int, subdirs: int) -> Repair:
    name = f"#{ino}".encode()

    async def apply(ctx: RepairContext) -> bool:
        lf = await ctx.lost_found()
        touch = await _touch_dir(ctx, lf, dlinks=1 if a.is_dir else 0)
        if touch is None:
            return False
        moved = Attr.decode(a.encode())
        moved.nlink = 2 + subdirs if a.is_dir else 1
        moved.parent, moved.name, moved.ctime = lf, name, now_ns()
        prefix = keys.link_parent_prefix(ino)
        return await ctx.commit(
            [Compare(keys.attr(ino), rev), Compare(keys.dentry(lf, name), 0), touch[0]],
            [Put(keys.attr(ino), moved.encode()),
             Put(keys.dentry(lf, name), encode_dentry(ftype_of(a.mode), ino)), touch[1]],
            [Delete(prefix, prefix_end(prefix))])

    return Repair(f"moved inode {ino} to /lost+found/{name.decode()}", apply)


def _drop_chunk(ino: int, index: int, rev: int) -> Repair:
    async def apply(ctx: RepairContext) -> bool:
        return await ctx.commit([Compare(keys.chunk(ino, index), rev)], [],
                                [Delete(keys.chunk(ino, index))])

    return Repair(f"dropped chunk {index} of inode {ino}, which did not decode: the file "
                  f"reads as zeros (a hole) there", apply)


def _unqueue(ino: int, drev: int, rev: int) -> Repair:
    async def apply(ctx: RepairContext) -> bool:
        return await ctx.commit([Compare(keys.delfile(ino), drev),
                                 Compare(keys.attr(ino), rev)], [],
                                [Delete(keys.delfile(ino))])

    return Repair(f"took inode {ino}, which has links, off the deletion queue", apply)


def _release_hold(sid: int, ino: int) -> Repair:
    async def apply(ctx: RepairContext) -> bool:
        # release_orphan reads (and so guards) the session key: a session that registers
        # again meanwhile keeps its hold.
        await Metadata(ctx.kv).release_orphan(ino, sid)
        return await ctx.kv.get(keys.sustained(sid, ino)) is None

    return Repair(f"released the hold of gone session {sid} on inode {ino}", apply)


def _set_usage(space: int, inodes: int, revs: tuple[int, int]) -> Repair:
    async def apply(ctx: RepairContext) -> bool:
        return await ctx.commit(
            [Compare(keys.USED_SPACE, revs[0]), Compare(keys.USED_INODES, revs[1])],
            [Put(keys.USED_SPACE, msgpack.packb(space)),
             Put(keys.USED_INODES, msgpack.packb(inodes))])

    return Repair(f"set the usage counters to {space} bytes and {inodes} inodes", apply)
