"""The consistency checker: every invariant of the key table, checked against the engine.

:func:`check` reads the whole volume (metadata, the block store's listing and, unless told
not to, every referenced block) and returns a list of problems, empty for a consistent
volume.  It never writes.  Checked:

* every directory entry names an existing inode of the entry's type;
* every live inode is in some directory, and its ``nlink`` equals its entries
  (directories: 2 + child directories);
* a directory's ``parent`` is the directory holding its entry;
* every chunk key decodes, and every block of every slice a chunk refers to exists in
  the store and (``verify_data``) reads back with a valid checksum;
* inodes with ``nlink == 0`` are held open by some session (``SS``) or queued (``D``,
  where shared engines keep an unlinked file's attributes through a grace period);
* no inode queued for deletion still has links.

A problem with a block names the file that refers to it: its path from the volume root
when some directory entry leads there, else its inode, and the chunk.

Slices queued in ``G`` records are garbage awaiting deletion: the cleaner deletes their
blocks before the record, so after a crash some may already be gone.  Nobody reads them,
so fsck neither requires nor reads their blocks; it only counts them as referenced.  The
same holds for ``R`` records (freed slices the history keeps until their retention ends).

``leaked_blocks`` also lists blocks no slice refers to.

Data verification reads each block once (a slice id names its blocks, and a slice listed
by several chunk records is still one set of blocks), a few at a time: at most
:data:`VERIFY_BUDGET` bytes of block data are in flight, so memory stays bounded whatever
the volume's size.
"""

from __future__ import annotations

import stat
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import trio

from kvfs.chunk.layout import decode_slices
from kvfs.kv.api import EngineUnavailable, KeyValue, KVEngine, prefix_end
from kvfs.meta import keys
from kvfs.meta.keys import ROOT_INO
from kvfs.meta.records import Attr, decode_dentry, ftype_of
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


@dataclass(slots=True)
class Report:
    problems: list[str] = field(default_factory=list)
    inodes: int = 0
    entries: int = 0
    slices: int = 0
    blocks: int = 0
    data_verified: bool = False  # whether the blocks below were read and checked
    verified_blocks: int = 0
    verified_bytes: int = 0

    def add(self, msg: str) -> None:
        self.problems.append(msg)


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


async def _scan_all(kv: KVEngine, prefix: bytes) -> list[KeyValue]:
    out: list[KeyValue] = []
    start, end = prefix, prefix_end(prefix)
    while True:
        res = await kv.range(start, end, limit=2000)
        out.extend(res.kvs)
        if not res.more:
            return out
        start = res.kvs[-1].key + b"\0"


def _blocks_of(slice_id: int, size: int, block_size: int) -> Iterator[tuple[str, int]]:
    """(name, data bytes) of every block of a slice."""
    for i, start in enumerate(range(0, size, block_size)):
        n = min(block_size, size - start)
        yield block_name(slice_id, i, n), n


class _Names:
    """Paths of inodes from the directory entries, derived only for inodes fsck reports."""

    def __init__(self, entries: list[tuple[int, bytes, int, int]]) -> None:
        self._entry: dict[int, tuple[int, bytes]] = {}  # child -> one (parent, name)
        for parent, name, _, child in entries:
            self._entry.setdefault(child, (parent, name))

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
                progress: ProgressFn | None = None) -> Report:
    """Check the volume (see module docstring).  ``verify_data=False`` checks only that
    blocks exist; ``progress`` is called as data verification advances."""
    rep = Report()
    attrs: dict[int, Attr] = {}
    entries: list[tuple[int, bytes, int, int]] = []  # parent, name, ftype, child
    refs: dict[int, _SliceRef] = {}  # slices of live chunks
    queued_slices: dict[int, int] = {}  # slice id -> size, of G records
    for item in await _scan_all(kv, keys.INODE_PREFIX):
        ino, kind, rest = keys.parse_inode_key(item.key)
        if kind == keys.ATTR_TAG:
            attrs[ino] = Attr.decode(item.value)
        elif kind == keys.DENTRY_TAG:
            ftype, child = decode_dentry(item.value)
            entries.append((ino, rest, ftype, child))
        elif kind == keys.CHUNK_TAG:
            index = keys.chunk_index(item.key)
            try:
                for s in decode_slices(item.value):
                    if s.id:
                        ref = refs.setdefault(s.id, _SliceRef(s.size, []))
                        ref.owners.append((ino, index))
            except ValueError:
                rep.add(f"inode {ino}: chunk {index} does not decode")
    for item in [*await _scan_all(kv, keys.SLICE_GC_PREFIX),
                 *await _scan_all(kv, keys.RETAINED_PREFIX)]:
        for s in decode_slices(item.value):
            if s.id:
                queued_slices.setdefault(s.id, s.size)
    sustained = {keys.sustained_parts(i.key)[1] for i in await _scan_all(kv, keys.SUSTAINED_PREFIX)}
    queued = {keys.key_ino(i.key) for i in await _scan_all(kv, keys.DELFILE_PREFIX)}
    rep.inodes, rep.entries = len(attrs), len(entries)
    rep.slices = len(refs.keys() | queued_slices.keys())

    _check_namespace(rep, attrs, entries, sustained, queued)
    if store is not None:
        await _check_blocks(rep, store, block_size, refs, queued_slices, _Names(entries),
                            leaked_blocks=leaked_blocks, verify_data=verify_data,
                            progress=progress)
    return rep


def _check_namespace(rep: Report, attrs: dict[int, Attr],
                     entries: list[tuple[int, bytes, int, int]],
                     sustained: set[int], queued: set[int]) -> None:
    links: Counter[int] = Counter()
    subdirs: Counter[int] = Counter()
    for parent, name, ftype, child in entries:
        a = attrs.get(child)
        if a is None:
            rep.add(f"entry {name!r} in directory {parent} points to missing inode {child}")
            continue
        if ftype != ftype_of(a.mode):
            rep.add(f"entry {name!r} in directory {parent} has type {ftype}, inode {child} "
                    f"has {ftype_of(a.mode)}")
        if parent not in attrs:
            rep.add(f"entry {name!r} lives in missing directory {parent}")
        links[child] += 1
        if a.is_dir:
            subdirs[parent] += 1
            if a.parent != parent:
                rep.add(f"directory {child} is in {parent} but its parent field says "
                        f"{a.parent}")
    if ROOT_INO not in attrs:
        rep.add("root directory is missing")
    for ino, a in attrs.items():
        if a.nlink == 0:
            if ino not in sustained and ino not in queued:
                rep.add(f"inode {ino} has no links, no session holds it open and it is "
                        "not queued for deletion")
            continue
        want = 2 + subdirs[ino] if a.is_dir else links[ino]
        if ino != ROOT_INO and links[ino] == 0:
            rep.add(f"inode {ino} ({stat.filemode(a.mode)}) is not in any directory")
        elif a.nlink != want:
            rep.add(f"inode {ino} has nlink {a.nlink}, expected {want}")
    for ino in queued & set(attrs):
        if attrs[ino].nlink:
            rep.add(f"inode {ino} is queued for deletion but still has links")


async def _check_blocks(rep: Report, store: ObjectStore, block_size: int,
                        refs: dict[int, _SliceRef], queued_slices: dict[int, int],
                        names: _Names, *, leaked_blocks: bool, verify_data: bool,
                        progress: ProgressFn | None) -> None:
    present: set[str] = set()
    async for block in store.list("chunks/"):
        present.add(block)
    rep.blocks = len(present)
    wanted: dict[str, tuple[int, int]] = {}  # block name -> slice id, data bytes
    for sid, ref in refs.items():
        for name, nbytes in _blocks_of(sid, ref.size, block_size):
            wanted[name] = (sid, nbytes)

    def bad(name: str, what: str) -> None:
        for ino, chunk in refs[wanted[name][0]].owners:
            rep.add(f"{names.describe(ino, chunk)}: block {name} {what}")

    for name in sorted(wanted.keys() - present):
        bad(name, "is missing from the object store")
    if verify_data:
        # Sorted names read a directory store in directory order.
        todo = sorted(wanted.keys() & present)
        await _verify(rep, store, todo, {n: wanted[n][1] for n in todo}, block_size, bad,
                      progress)
    if leaked_blocks:
        queued_blocks = {name for sid, size in queued_slices.items()
                         for name, _ in _blocks_of(sid, size, block_size)}
        for block in sorted(present - wanted.keys() - queued_blocks):
            try:
                parse_block_name(block)
            except ValueError:
                continue
            rep.add(f"block {block} is not referenced by any slice (leaked)")


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
