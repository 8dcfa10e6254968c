"""``kvfs dump``: a whole volume into one dump file (:mod:`kvfs.dump.format`), streamed.

What goes in is decided per key kind of the key table (:data:`POLICY`, one entry for every
kind in :data:`kvfs.meta.keys.KEY_KINDS`): the format record goes into the header; every
other metadata key is copied as it is (counters, inodes, entries, chunks, symlinks, xattrs,
link parents, the ``D``/``G``/``R`` queues, history versions), except live-only state
(sessions, the inodes they hold open, watcher records, the compactor and trash purger
roles), which belongs to processes running against this engine and means nothing
elsewhere.  Keys no kind describes (written by a newer kvfs) are copied too.

With ``with_data``, every block of every slice that a chunk, a ``G`` or ``R`` record or a
history version names follows the page of keys that first names it, read through the
volume's object store (which verifies its checksum) -- wherever the store keeps them.  A
block of a chunk that is missing fails the dump; blocks of queued (``G``), retained
(``R``) or history slices may already be gone (the cleaner works in steps) and are
counted, not required.

Memory: the engine is read in pages of :data:`PAGE` keys and the block store one block at
a time, so the dump holds one page, one block and the set of slice ids already written.
The engine is not read at one revision: dump a volume no mount is changing (a warning says
so when sessions are live).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from kvfs import __version__
from kvfs.chunk.layout import decode_slices
from kvfs.errors import VolumeError
from kvfs.history.records import Version
from kvfs.kv.api import KeyValue, KVEngine, prefix_end
from kvfs.meta import keys
from kvfs.objstore.api import BlockNotFound, ObjectStore, block_name
from kvfs.outage import side_by_side
from kvfs.volume import make_store, open_engine, read_format

from .format import DUMP_VERSION, DumpWriter, Header

PAGE = 1000
FETCH_READERS = 8
FETCH_BYTES = 4 << 20

COPY = "copy"  # the key goes into the dump as it is
HEADER = "header"  # carried by the dump's header
LIVE = "live"  # state of running processes: left out
DATA = "data"  # a block: travels as a block record (with --with-data)

POLICY: dict[str, str] = {
    "setting": HEADER,
    "next inode": COPY,
    "next slice": COPY,
    "next session": COPY,
    "used space": COPY,
    "used inodes": COPY,
    "compactor": LIVE,
    "trash purger": LIVE,
    "attr": COPY,
    "dentry": COPY,
    "chunk": COPY,
    "symlink": COPY,
    "xattr": COPY,
    "link parent": COPY,
    "delfile": COPY,
    "slice gc": COPY,
    "retained": COPY,
    "history": COPY,
    "session": LIVE,
    "sustained": LIVE,
    "block": DATA,
    "watcher": LIVE,
}


def segments() -> list[tuple[bytes, bytes]]:
    """The key ranges a dump reads: the whole keyspace minus the prefixes of every kind
    :data:`POLICY` does not copy (no prefix nests in another, see docs/keys.md)."""
    unknown = {k.name for k in keys.KEY_KINDS} - POLICY.keys()
    if unknown:
        raise AssertionError(f"key kinds without a dump policy: {sorted(unknown)}")
    skipped = sorted({k.prefix for k in keys.KEY_KINDS if POLICY[k.name] != COPY})
    out = []
    start = b""
    for prefix in skipped:
        if start < prefix:
            out.append((start, prefix))
        start = prefix_end(prefix)
    out.append((start, b"\x00"))
    return out


@dataclass(slots=True)
class DumpSummary:
    keys: int = 0
    blocks: int = 0
    block_bytes: int = 0
    bytes_written: int = 0
    missing_queued_blocks: int = 0  # blocks of G/R/history slices already gone
    live_sessions: int = 0


def _slices_of(item: KeyValue) -> Iterator[tuple[int, int, bool]]:
    """``(slice id, size, required)`` of every slice ``item`` names; ``required`` for a
    chunk's slices, whose blocks must exist."""
    key = item.key
    try:
        if key.startswith(keys.INODE_PREFIX):
            _, tag, _ = keys.parse_inode_key(key)
            if tag != keys.CHUNK_TAG:
                return
            lists, required = [item.value], True
        elif key.startswith((keys.SLICE_GC_PREFIX, keys.RETAINED_PREFIX)):
            lists, required = [item.value], False
        elif key.startswith(keys.HISTORY_PREFIX):
            chunks = Version.decode(item.value).chunks or []
            lists, required = [raw for _, raw in chunks], False
        else:
            return
        for raw in lists:
            for s in decode_slices(raw):
                if s.id:
                    yield s.id, s.size, required
    except (ValueError, KeyError, TypeError) as exc:
        raise VolumeError(f"key {key!r} does not decode ({exc}); run kvfs fsck") from None


async def dump_engine(kv: KVEngine, out: BinaryIO, *, store: ObjectStore | None,
                      progress: Callable[[DumpSummary], None] | None = None) -> DumpSummary:
    """Write the volume in ``kv`` to ``out``; with ``store``, its blocks too."""
    fmt = await read_format(kv)
    raw = await kv.get(keys.SETTING)
    if fmt is None or raw is None:
        raise VolumeError("not a formatted kvfs volume (run `kvfs format` first)")
    summary = DumpSummary()
    sessions = await kv.range(keys.SESSION_PREFIX, prefix_end(keys.SESSION_PREFIX),
                              limit=PAGE, keys_only=True)
    summary.live_sessions = len(sessions.kvs)
    w = DumpWriter(out)
    await w.header(Header(DUMP_VERSION, __version__, time.time(), raw.value,
                          store is not None))
    seen: set[int] = set()  # slice ids whose blocks are written
    for start, end in segments():
        while True:
            res = await kv.range(start, end, limit=PAGE)
            todo: list[tuple[int, int, bool, bytes]] = []
            for item in res.kvs:
                await w.key(item.key, item.value)
                if store is None:
                    continue
                for sid, size, required in _slices_of(item):
                    if sid not in seen:
                        seen.add(sid)
                        todo.append((sid, size, required, item.key))
            if todo:
                assert store is not None
                await _write_blocks(w, store, fmt.block_size, todo, summary)
            summary.keys, summary.blocks = w.keys, w.blocks
            summary.block_bytes, summary.bytes_written = w.block_bytes, w.offset
            if progress is not None:
                progress(summary)
            if not res.more or not res.kvs:
                break
            start = res.kvs[-1].key + b"\x00"
    await w.finish()
    summary.bytes_written = w.offset
    return summary


async def _write_blocks(w: DumpWriter, store: ObjectStore, block_size: int,
                        slices: list[tuple[int, int, bool, bytes]],
                        summary: DumpSummary) -> None:
    """Fetch and write every block of ``slices`` (id, size, required, naming key), a few
    at a time: at most :data:`FETCH_BYTES` of block data in flight, since a remote store
    answers one round trip per block."""
    todo = [(block_name(sid, index, min(block_size, size - start)), required, key)
            for sid, size, required, key in slices
            for index, start in enumerate(range(0, size, block_size))]
    readers = max(1, min(FETCH_READERS, FETCH_BYTES // block_size))

    async def reader() -> None:
        while todo:
            name, required, key = todo.pop()
            try:
                data = await store.get(name)
            except BlockNotFound:
                if required:
                    raise VolumeError(f"block {name} of chunk key {key!r} is missing from "
                                      f"{store.describe()} (run kvfs fsck)") from None
                summary.missing_queued_blocks += 1
                continue
            await w.block(name, data)

    async with side_by_side() as nursery:
        for _ in range(readers):
            nursery.start_soon(reader)


async def dump(url: str, out: BinaryIO, *, with_data: bool,
               progress: Callable[[DumpSummary], None] | None = None) -> DumpSummary:
    """Dump the volume at ``url`` to ``out`` (see module docstring)."""
    kv = await open_engine(url)
    try:
        fmt = await read_format(kv)
        if fmt is None:
            raise VolumeError(f"{url}: not a formatted kvfs volume (run `kvfs format` first)")
        if not with_data:
            return await dump_engine(kv, out, store=None, progress=progress)
        store, block_engine = await make_store(fmt, kv)
        try:
            return await dump_engine(kv, out, store=store, progress=progress)
        finally:
            await store.aclose()
            if block_engine is not None:
                await block_engine.aclose()
    finally:
        await kv.aclose()
