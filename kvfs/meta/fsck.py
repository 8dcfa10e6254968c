"""The consistency checker: every invariant of the key table, checked against the engine.

:func:`check` reads the whole volume (metadata and the block store's listing) and returns a
list of problems, empty for a consistent volume.  It never writes.  Checked:

* every directory entry names an existing inode of the entry's type;
* every live inode is in some directory, and its ``nlink`` equals its entries
  (directories: 2 + child directories);
* a directory's ``parent`` is the directory holding its entry;
* every chunk key decodes, and every block of every referenced slice exists in the store;
* inodes with ``nlink == 0`` are held open by some session (``SS``) or queued (``D``,
  where shared engines keep an unlinked file's attributes through a grace period);
* no inode queued for deletion still has links.

``kvfs fsck --leaked`` also lists blocks no slice refers to.
"""

from __future__ import annotations

import stat
from collections import Counter
from dataclasses import dataclass, field

from kvfs.chunk.layout import decode_slices
from kvfs.kv.api import KeyValue, KVEngine
from kvfs.meta import keys
from kvfs.meta.keys import ROOT_INO
from kvfs.meta.records import Attr, decode_dentry, ftype_of
from kvfs.objstore.api import ObjectStore, block_name, parse_block_name


@dataclass(slots=True)
class Report:
    problems: list[str] = field(default_factory=list)
    inodes: int = 0
    entries: int = 0
    slices: int = 0
    blocks: int = 0

    def add(self, msg: str) -> None:
        self.problems.append(msg)


async def _scan_all(kv: KVEngine, prefix: bytes) -> list[KeyValue]:
    from kvfs.kv.api import prefix_end

    out: list[KeyValue] = []
    start, end = prefix, prefix_end(prefix)
    while True:
        res = await kv.range(start, end, limit=2000)
        out.extend(res.kvs)
        if not res.more:
            return out
        start = res.kvs[-1].key + b"\0"


async def check(kv: KVEngine, store: ObjectStore | None, block_size: int,
                *, leaked_blocks: bool = False) -> Report:
    rep = Report()
    attrs: dict[int, Attr] = {}
    entries: list[tuple[int, bytes, int, int]] = []  # parent, name, ftype, child
    slices: dict[int, int] = {}  # slice id -> size
    for item in await _scan_all(kv, keys.INODE_PREFIX):
        ino = keys.key_ino(item.key)
        kind = item.key[9:10]
        if kind == b"I":
            attrs[ino] = Attr.decode(item.value)
        elif kind == b"D":
            ftype, child = decode_dentry(item.value)
            entries.append((ino, item.key[10:], ftype, child))
        elif kind == b"C":
            try:
                for s in decode_slices(item.value):
                    if s.id:
                        slices[s.id] = s.size
            except ValueError:
                rep.add(f"inode {ino}: chunk {keys.chunk_index(item.key)} does not decode")
    for item in await _scan_all(kv, keys.SLICE_GC_PREFIX):
        for s in decode_slices(item.value):
            if s.id:
                slices.setdefault(s.id, s.size)
    sustained = {keys.read_u64(i.key, 10) for i in await _scan_all(kv, keys.SUSTAINED_PREFIX)}
    queued = {keys.key_ino(i.key) for i in await _scan_all(kv, keys.DELFILE_PREFIX)}
    rep.inodes, rep.entries, rep.slices = len(attrs), len(entries), len(slices)

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

    if store is not None:
        present: set[str] = set()
        async for block in store.list("chunks/"):
            present.add(block)
        rep.blocks = len(present)
        wanted: set[str] = set()
        for sid, size in slices.items():
            for i, start in enumerate(range(0, size, block_size)):
                wanted.add(block_name(sid, i, min(block_size, size - start)))
        for block in sorted(wanted - present):
            rep.add(f"block {block} is missing from the object store")
        if leaked_blocks:
            for block in sorted(present - wanted):
                try:
                    parse_block_name(block)
                except ValueError:
                    continue
                rep.add(f"block {block} is not referenced by any slice (leaked)")
    return rep
