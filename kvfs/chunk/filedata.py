"""The data path of one open inode: buffered writes turned into slices, and reads.

:class:`FileData` is shared by every handle of an inode in this mount.  Writes collect in
memory (contiguous writes merge) until ``flush`` -- called on fsync, on close, and when the
buffer fills -- uploads each buffered range as a new slice (immutable blocks, durable
first) and then records all of them, and the new length, in metadata transactions.  Only
then is the data acknowledged; a crash before that loses only unacknowledged writes.

Reads see the file's committed slices; a read of an inode with buffered writes flushes them
first, so reads always observe every earlier write of this mount.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from kvfs.chunk.layout import (
    CHUNK_SIZE,
    Slice,
    decode_slices,
    needs_compaction,
    read_plan,
    split_range,
)
from kvfs.chunk.slices import SliceStore
from kvfs.kv.api import Put
from kvfs.kv.txn import Txn
from kvfs.meta import keys
from kvfs.meta.metadata import Metadata
from kvfs.meta.records import Attr, now_ns
from kvfs.objstore.api import BlockNotFound
from kvfs.outage import side_by_side

log = logging.getLogger("kvfs.data")

# Chunk keys touched by one metadata transaction (each costs a compare and a put).
_CHUNKS_PER_TXN = 60
# Writes up to this size, in up to this many pieces, commit their blocks together with
# their metadata when the blocks live in the metadata engine: one round trip, not two.
INLINE_BYTES = 256 << 10
INLINE_PIECES = 16


class FileData:
    """Write buffer and reader of inode ``ino`` (see module docstring)."""

    def __init__(self, ino: int, meta: Metadata, slices: SliceStore,
                 buffer_limit: int = 16 << 20) -> None:
        self.ino = ino
        self.meta = meta
        self.slices = slices
        self.buffer_limit = buffer_limit
        self._pending: list[tuple[int, bytearray]] = []
        self._pending_bytes = 0
        self._pending_end = 0
        self._mtime = 0
        self._flush_lock = trio.Lock()
        self._flushing = False  # a flush has taken buffered writes and not yet committed
        self.compact_wanted: set[int] = set()

    @property
    def dirty(self) -> bool:
        """Writes are buffered (a flush has something to do)."""
        return bool(self._pending)

    @property
    def unsettled(self) -> bool:
        """Acknowledged writes the engine may not show yet: buffered, or being committed
        by a flush (another descriptor's close may be flushing them right now)."""
        return bool(self._pending) or self._flushing

    @property
    def pending_end(self) -> int:
        """The file length implied by unsettled writes (0 when settled)."""
        return self._pending_end if self.unsettled else 0

    @property
    def pending_mtime(self) -> int:
        return self._mtime

    async def write(self, offset: int, data: bytes) -> None:
        """Buffer ``data`` at ``offset``.  A buffer it would overfill is flushed *before*
        taking it, so a write that fails (EIO in an outage) has buffered nothing: an
        application that retries it does not write it twice, and the buffer stays bounded.
        (Only a single write of ``buffer_limit`` bytes or more -- never one from the kernel,
        whose writes are at most 1 MiB -- is flushed after it is buffered.)"""
        if self._pending and self._pending_bytes + len(data) > self.buffer_limit:
            await self.flush()
        if self._pending:
            last_off, last = self._pending[-1]
            if last_off + len(last) == offset and len(last) < 4 * CHUNK_SIZE:
                last += data
            else:
                self._pending.append((offset, bytearray(data)))
        else:
            self._pending.append((offset, bytearray(data)))
        self._pending_bytes += len(data)
        self._pending_end = max(self._pending_end, offset + len(data))
        self._mtime = now_ns()
        if self._pending_bytes >= self.buffer_limit:
            await self.flush()

    def discard_beyond(self, size: int) -> None:
        """A truncate to ``size`` follows: buffered bytes past it must not land later."""
        kept: list[tuple[int, bytearray]] = []
        for off, buf in self._pending:
            if off < size:
                kept.append((off, buf[: size - off]))
        self._pending = kept
        self._pending_bytes = sum(len(b) for _, b in kept)
        self._pending_end = max((o + len(b) for o, b in kept), default=0)

    async def flush(self, record: Callable[[Txn, Attr], Awaitable[None]] | None = None
                    ) -> Attr | None:
        """Make every buffered write durable; the new attributes, or None if clean.
        ``record`` rides in the transaction that commits the last of them
        (:meth:`Metadata.write_slices`).

        On failure the data stays buffered, so a later write, fsync or close retries it: a
        descriptor whose fsync failed during an outage works again once the engine is back.
        """
        async with self._flush_lock:
            if not self._pending:
                return None
            segs, self._pending = self._pending, []
            nbytes, self._pending_bytes = self._pending_bytes, 0
            end, mtime = self._pending_end, self._mtime
            self._flushing = True
            try:
                attr = await self._commit(segs, end, mtime, record)
            except BaseException:
                # The failed attempt's exception (its traceback) may keep views of these
                # buffers alive, and a bytearray with live views cannot grow: buffer fresh
                # copies, so the next write can extend them.
                self._pending = [(off, bytearray(buf)) for off, buf in segs] + self._pending
                self._pending_bytes += nbytes
                self._pending_end = max(self._pending_end, end)
                raise
            finally:
                self._flushing = False
            if not self._pending:
                self._pending_end = 0
            return attr

    async def _commit(self, segs: list[tuple[int, bytearray]], end: int, mtime: int,
                      record: Callable[[Txn, Attr], Awaitable[None]] | None = None) -> Attr:
        pieces: list[tuple[int, int, memoryview]] = []  # chunk index, offset in chunk, data
        for off, buf in segs:
            mv = memoryview(buf)
            pos = 0
            for idx, coff, ln in split_range(off, len(buf)):
                pieces.append((idx, coff, mv[pos:pos + ln]))
                pos += ln
        recorded: list[tuple[int, Slice]] = [(0, Slice(0, 0, 0, 0, 0))] * len(pieces)
        total = sum(len(data) for _, _, data in pieces)
        if total <= INLINE_BYTES and len(pieces) <= INLINE_PIECES:
            inline = await self._inline(pieces, recorded)
            if inline is not None:
                committed, crowded = await self.meta.write_slices(self.ino, recorded, end,
                                                                  mtime, inline, record)
                self.compact_wanted.update(crowded)
                return committed

        async def upload(i: int, idx: int, coff: int, data: memoryview) -> None:
            sid = await self.meta.slices.next()
            await self.slices.write(sid, data)
            recorded[i] = (idx, Slice(coff, sid, len(data), 0, len(data)))

        async with side_by_side() as nursery:
            for i, (idx, coff, data) in enumerate(pieces):
                nursery.start_soon(upload, i, idx, coff, data)
        batch: list[tuple[int, Slice]] = []
        chunks: set[int] = set()
        for idx, s in recorded:
            if idx not in chunks and len(chunks) >= _CHUNKS_PER_TXN:
                _, crowded = await self.meta.write_slices(self.ino, batch, end, mtime)
                self.compact_wanted.update(crowded)
                batch, chunks = [], set()
            batch.append((idx, s))
            chunks.add(idx)
        attr, crowded = await self.meta.write_slices(self.ino, batch, end, mtime,
                                                     record=record)
        self.compact_wanted.update(crowded)
        return attr

    async def _inline(self, pieces: list[tuple[int, int, memoryview]],
                      recorded: list[tuple[int, Slice]]) -> list[Put] | None:
        """Block writes for ``pieces`` to ride in the metadata transaction, or None when
        the object store keeps blocks outside the metadata engine."""
        puts: list[Put] = []
        for i, (idx, coff, data) in enumerate(pieces):
            sid = await self.meta.slices.next()
            more = self.slices.inline_puts(sid, data, self.meta.kv)
            if more is None:
                return None
            puts += more
            recorded[i] = (idx, Slice(coff, sid, len(data), 0, len(data)))
        return puts

    async def read(self, offset: int, length: int, size: int) -> bytes:
        """Bytes ``[offset, offset+length)`` of a file of length ``size`` (short at EOF)."""
        if self.unsettled:
            await self.flush()  # waits for a flush in progress too
        end = min(offset + length, size)
        if end <= offset:
            return b""
        out = bytearray()
        for idx, coff, ln in split_range(offset, end - offset):
            out += await self._read_chunk(idx, coff, ln)
        return bytes(out)

    async def _read_chunk(self, idx: int, coff: int, ln: int) -> bytes:
        # Blocks of a slice still listed in its chunk are never deleted, so a missing
        # block means compaction replaced the slice after we read the list: read it again.
        for attempt in range(3):
            slices = await self.meta.read_chunk(self.ino, idx)
            out = bytearray()
            try:
                for seg in read_plan(slices, coff, ln):
                    n = seg.end - seg.start
                    if seg.slice_id == 0:
                        out += bytes(n)
                    else:
                        out += await self.slices.read(seg.slice_id, seg.slice_size,
                                                      seg.slice_off, n)
            except BlockNotFound:
                if attempt == 2:
                    raise
                continue
            return bytes(out)
        raise AssertionError("unreachable")

    async def compact(self, size: int) -> bool:
        """Rewrite fragmented chunks found by recent flushes as one slice each; True if any
        chunk was rewritten (its old slices then await the cleaner).

        ``size`` (the length when compaction was asked for) is not trusted for clipping;
        see below.
        """
        wanted, self.compact_wanted = self.compact_wanted, set()
        rewrote = False
        for idx in sorted(wanted):
            raw = await self.meta.kv.get(keys.chunk(self.ino, idx))
            if raw is None:
                continue
            slices = decode_slices(raw.value)
            if not needs_compaction(slices):
                continue
            # ``size`` may predate a flush that wrote this chunk (one forced by a full
            # buffer does not update the compactor's record), so clipping the chunk to it
            # could lose data.  Keep the chunk up to the end of its visible slice data: bytes
            # past EOF are always hidden by a truncate's hole, so nothing stale comes back.
            extent = max((s.end for s in slices), default=0)
            chunk_len = max((seg.end for seg in read_plan(slices, 0, extent) if seg.slice_id),
                            default=0)
            data = bytearray()
            for seg in read_plan(slices, 0, chunk_len):
                n = seg.end - seg.start
                if seg.slice_id == 0:
                    data += bytes(n)
                else:
                    data += await self.slices.read(seg.slice_id, seg.slice_size,
                                                   seg.slice_off, n)
            sid = await self.meta.slices.next()
            if data:
                await self.slices.write(sid, data)
            new = [Slice(0, sid, len(data), 0, len(data))] if data else []
            if not await self.meta.replace_chunk(self.ino, idx, raw.value, new):
                if data:
                    await self.slices.delete(sid, len(data))
                log.debug("compaction of inode %d chunk %d raced a write", self.ino, idx)
            else:
                rewrote = True
        return rewrote

