"""The data path of one open inode: buffered writes turned into slices, and reads.

:class:`FileData` is shared by every handle of an inode in this mount.  Writes collect in
memory (contiguous writes merge) until ``flush`` -- called on fsync, on close, and when the
buffer fills -- uploads each buffered range as a new slice (immutable blocks, durable
first) and then records all of them, and the new length, in metadata transactions.  Only
then is the data acknowledged; a crash before that loses only unacknowledged writes.

Reads see the file's committed slices; a read of an inode with buffered writes flushes them
first, so reads always observe every earlier write of this mount.  A read fetches the blocks
it needs concurrently, and a sequential stream of reads (each starting near where the last
one ended) is read ahead: the blocks of the next ``window`` bytes are fetched in the
background into the mount's block cache, the window doubling while the pattern holds up to a
quarter of the cache, and dropping to nothing as soon as a read lands elsewhere (random reads
never pay for blocks they do not need).  Readahead only warms the cache: every read still
resolves the chunk's current slice list itself, so a file changed by another mount reads as
the engine holds it, and an out-of-date readahead costs only the fetch of blocks nobody
reads.
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
# A read starting within this distance of the end of the inode's previous read continues a
# sequential stream: the kernel sends the requests of one large read together, and they may
# be served slightly out of order.
_SEQ_SLACK = 1 << 20
# Sequential reads in a row before readahead starts: a lone read (of a small file, or at a
# random place) never fetches more than it asked for.
_SEQ_MIN = 2
# The largest readahead window, before the cache's own bound (a quarter of it).
_MAX_WINDOW = 32 << 20
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
        self._ra = _Readahead()
        # The slice list the latest read resolved: where readahead looks first.
        self._recent: tuple[int, list[Slice]] | None = None

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
        window = min(_MAX_WINDOW, self.slices.max_cached_block)
        ahead = self._ra.advance(offset, end, size, self.slices.block_size, window)
        if ahead is not None:
            trio.lowlevel.spawn_system_task(self._read_ahead, *ahead, self._recent,
                                            name=f"kvfs readahead of inode {self.ino}")
        parts = [await self._read_chunk(idx, coff, ln)
                 for idx, coff, ln in split_range(offset, end - offset)]
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def _read_chunk(self, idx: int, coff: int, ln: int) -> bytes:
        # Blocks of a slice still listed in its chunk are never deleted, so a missing
        # block means compaction replaced the slice after we read the list: read it again.
        for attempt in range(3):
            slices = await self.meta.read_chunk(self.ino, idx)
            self._recent = (idx, slices)
            try:
                return await self.slices.read_segments(read_plan(slices, coff, ln))
            except BlockNotFound:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def _read_ahead(self, start: int, stop: int,
                          recent: tuple[int, list[Slice]] | None) -> None:
        """Fetch the blocks of file bytes ``[start, stop)`` into the block cache.  Runs as
        a trio system task, outliving the read that started it; a failure only means the
        reader fetches those blocks itself later, so it is logged and dropped."""
        try:
            names: list[str] = []
            for idx, coff, ln in split_range(start, stop - start):
                if recent is not None and recent[0] == idx:
                    slices = recent[1]
                else:
                    slices = await self.meta.read_chunk(self.ino, idx)
                names += self.slices.plan_blocks(read_plan(slices, coff, ln))
            await self.slices.prefetch(names)
        except Exception as exc:  # noqa: BLE001 - readahead is only a hint
            log.debug("readahead of inode %d bytes [%d, %d) failed: %s", self.ino, start,
                      stop, exc)

    async def compact(self, size: int) -> bool:
        """Rewrite fragmented chunks found by recent flushes as one slice each; True if any
        chunk was rewritten (its old slices then await the cleaner).

        ``size`` (the length when compaction was asked for) is not trusted for clipping;
        see below.  A swap whose outcome is unknown raises and leaves the new slice's
        blocks in place: it may have landed (unreferenced, gc removes them).
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
            data = await self.slices.read_segments(read_plan(slices, 0, chunk_len))
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


class _Readahead:
    """Sequential-access detection and the readahead window of one inode (see the module
    docstring).  Pure bookkeeping: :meth:`advance` says what to fetch, the caller fetches.

    Invariant: ``issued`` is the file offset up to which readahead has been started in the
    current stream (0 when there is none); a new stream starts over from nothing."""

    __slots__ = ("issued", "last_end", "streak", "window")

    def __init__(self) -> None:
        self.last_end = 0  # where the previous read ended
        self.streak = 0  # sequential reads in a row, that one included
        self.window = 0  # bytes to keep fetched ahead of the reader
        self.issued = 0

    def advance(self, offset: int, end: int, size: int, block_size: int,
                max_window: int) -> tuple[int, int] | None:
        """Note a read of ``[offset, end)`` in a file of ``size`` bytes; the file range to
        fetch ahead now, or None."""
        if self.last_end - _SEQ_SLACK <= offset <= self.last_end + _SEQ_SLACK:
            self.streak += 1
            self.last_end = max(self.last_end, end)
        else:
            self.streak, self.window, self.issued = 1, 0, 0
            self.last_end = end
        if self.streak < _SEQ_MIN or max_window < block_size:
            return None
        self.window = min(max(2 * self.window, 2 * block_size), max_window)
        start = max(self.issued, end)
        stop = min(end + self.window, size)
        # Top the window up once half of it has been read, not on every small read.
        if stop <= start or (stop < size and stop - start < self.window // 2):
            return None
        self.issued = stop
        return start, stop
