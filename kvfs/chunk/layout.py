"""Pure chunk and slice arithmetic: where a file's bytes live.  No I/O here.

A file is cut into chunks of :data:`CHUNK_SIZE` bytes.  Each chunk's content is described
by a list of :class:`Slice` records *in write order*: a write stores its data as a new
slice object (split into blocks in the object store) and appends one record saying "bytes
``[off, off+len)`` of slice object ``id`` land at ``[pos, pos+len)`` of this chunk".  Later
records override earlier ones where they overlap; bytes covered by no record are zeros,
and a record with ``id == 0`` is an explicit hole (zeros, e.g. written by truncate).

Records are encoded as fixed 24-byte big-endian records, so appending a slice to a chunk
is appending bytes to its value.

Invariants of the functions here:
  * :func:`build_view` and :func:`read_plan` return segments sorted by ``start``,
    non-overlapping, with no gaps, covering exactly the requested range; adjacent pieces
    of the same source (or of zeros) are merged.
  * A slice object of ``size`` bytes stored with block size ``bs`` consists of blocks
    ``0..ceil(size/bs)-1``; block ``i`` holds bytes ``[i*bs, min((i+1)*bs, size))``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from sortedcontainers import SortedDict

CHUNK_SIZE = 64 * 1024 * 1024
SLICE_RECORD_SIZE = 24
# needs_compaction: more records than this always warrant a compaction.
MAX_SLICES = 20
# ... as do dead (stored but invisible) bytes of at least the visible bytes and this floor.
DEAD_BYTES_FLOOR = 1024 * 1024

_RECORD = struct.Struct(">IQIII")  # pos, id, size, off, len
assert _RECORD.size == SLICE_RECORD_SIZE


@dataclass(frozen=True, slots=True)
class Slice:
    """Bytes ``[off, off+len)`` of slice object ``id`` appear at ``[pos, pos+len)`` of a chunk.

    ``size`` is the size of the whole stored slice object (needed to name its blocks);
    ``id == 0`` is a hole: ``len`` zero bytes at ``pos``, with no object behind it.
    """

    pos: int
    id: int
    size: int
    off: int
    len: int

    @property
    def end(self) -> int:
        """The chunk offset just past this slice's data."""
        return self.pos + self.len


@dataclass(frozen=True, slots=True)
class Segment:
    """Chunk bytes ``[start, end)`` come from slice ``slice_id`` starting at ``slice_off``.

    ``slice_id == 0`` means zeros (``slice_off`` and ``slice_size`` are then 0).
    ``slice_size`` is the total size of the slice object, for naming its blocks; it does
    not take part in comparisons (a slice id always has one size).
    """

    start: int
    end: int
    slice_id: int
    slice_off: int
    slice_size: int = field(default=0, compare=False)

    @property
    def length(self) -> int:
        return self.end - self.start


def encode_slices(slices: Iterable[Slice]) -> bytes:
    """The 24-byte-per-record encoding of ``slices`` (concatenation-friendly)."""
    out = bytearray()
    for s in slices:
        try:
            out += _RECORD.pack(s.pos, s.id, s.size, s.off, s.len)
        except struct.error as exc:
            raise ValueError(f"slice {s} does not fit the record format: {exc}") from None
    return bytes(out)


def decode_slices(data: bytes) -> list[Slice]:
    """Decode what :func:`encode_slices` produced; ValueError on a ragged length."""
    if len(data) % SLICE_RECORD_SIZE:
        raise ValueError(f"slice list of {len(data)} bytes is not a multiple of "
                         f"{SLICE_RECORD_SIZE}")
    return [Slice(*rec) for rec in _RECORD.iter_unpack(data)]


def split_range(offset: int, length: int) -> list[tuple[int, int, int]]:
    """``(chunk_index, offset_in_chunk, length)`` pieces of the file range at ``offset``."""
    if offset < 0 or length < 0:
        raise ValueError(f"bad range: offset {offset} length {length}")
    out: list[tuple[int, int, int]] = []
    end = offset + length
    while offset < end:
        idx, off = divmod(offset, CHUNK_SIZE)
        n = min(CHUNK_SIZE - off, end - offset)
        out.append((idx, off, n))
        offset += n
    return out


def _view(slices: Sequence[Slice], lo: int, hi: int) -> list[Segment]:
    """Segments covering chunk bytes ``[lo, hi)`` given ``slices`` in write order.

    Walks the slices newest first, keeping the still-uncovered gaps of the window in a
    sorted map; each slice claims only what no newer slice claimed.  Every slice adds at
    most one gap, so the whole pass is O(n log n), and it stops once nothing is uncovered.
    """
    if lo < 0 or hi < lo:
        raise ValueError(f"bad range [{lo}, {hi})")
    if hi == lo:
        return []
    gaps = SortedDict({lo: hi})  # start -> end of uncovered ranges
    found: list[Segment] = []
    for sl in reversed(slices):
        if not gaps:
            break
        s, e = max(sl.pos, lo), min(sl.pos + sl.len, hi)
        if s >= e:
            continue
        i = max(gaps.bisect_right(s) - 1, 0)
        while i < len(gaps):
            a, b = gaps.peekitem(i)
            if a >= e:
                break
            if b <= s:
                i += 1
                continue
            x, y = max(a, s), min(b, e)
            if sl.id:
                found.append(Segment(x, y, sl.id, sl.off + (x - sl.pos), sl.size))
            else:
                found.append(Segment(x, y, 0, 0))
            del gaps[a]
            if a < x:
                gaps[a] = x
                i += 1
            if y < b:
                gaps[y] = b
                break  # y == e: this slice is done
    found.extend(Segment(a, b, 0, 0) for a, b in gaps.items())
    found.sort(key=lambda seg: seg.start)
    merged: list[Segment] = [found[0]]
    for seg in found[1:]:
        last = merged[-1]
        if seg.slice_id == last.slice_id and (
                seg.slice_id == 0 or seg.slice_off == last.slice_off + last.length):
            merged[-1] = Segment(last.start, seg.end, last.slice_id, last.slice_off,
                                 last.slice_size)
        else:
            merged.append(seg)
    return merged


def build_view(slices: Sequence[Slice], chunk_len: int) -> list[Segment]:
    """Where each byte of ``[0, chunk_len)`` of a chunk comes from (see :class:`Segment`).

    ``slices`` are in write order: later ones override earlier ones.  Slice data beyond
    ``chunk_len`` is ignored; bytes covered by no slice are zeros.
    """
    return _view(slices, 0, chunk_len)


def read_plan(slices: Sequence[Slice], offset: int, length: int) -> list[Segment]:
    """Like :func:`build_view` but only for chunk bytes ``[offset, offset+length)``.

    Segment offsets stay chunk offsets.  The caller clips the range to the file size.
    """
    return _view(slices, offset, offset + length)


def block_count(slice_size: int, block_size: int) -> int:
    """How many blocks a slice object of ``slice_size`` bytes has."""
    if block_size <= 0 or slice_size < 0:
        raise ValueError(f"bad slice size {slice_size} / block size {block_size}")
    return -(-slice_size // block_size)


def block_len(slice_size: int, block_size: int, index: int) -> int:
    """The size of block ``index`` of a slice object of ``slice_size`` bytes."""
    if not 0 <= index < block_count(slice_size, block_size):
        raise ValueError(f"block {index} out of range for a {slice_size}-byte slice "
                         f"with {block_size}-byte blocks")
    return min(block_size, slice_size - index * block_size)


def block_ranges(slice_size: int, block_size: int, slice_off: int,
                 length: int) -> list[tuple[int, int, int]]:
    """``(block_index, off_in_block, length)`` pieces of slice bytes ``[slice_off, +length)``."""
    if block_size <= 0 or slice_off < 0 or length < 0 or slice_off + length > slice_size:
        raise ValueError(f"range [{slice_off}, {slice_off + length}) is not inside a "
                         f"{slice_size}-byte slice (block size {block_size})")
    out: list[tuple[int, int, int]] = []
    pos, end = slice_off, slice_off + length
    while pos < end:
        idx, off = divmod(pos, block_size)
        n = min(block_size - off, end - pos)
        out.append((idx, off, n))
        pos += n
    return out


def needs_compaction(slices: Sequence[Slice]) -> bool:
    """Whether a chunk's slice list is worth rewriting as one slice.

    True with more than :data:`MAX_SLICES` records, or when the bytes stored in its slice
    objects but not visible (hidden by newer writes, or never referenced) are at least the
    visible bytes -- twice the space the chunk needs -- and at least
    :data:`DEAD_BYTES_FLOOR`.
    """
    if len(slices) > MAX_SLICES:
        return True
    if len(slices) < 2:
        return False
    sizes = {s.id: s.size for s in slices if s.id}
    stored = sum(sizes.values())
    end = max(s.pos + s.len for s in slices)
    visible = sum(seg.length for seg in _view(slices, 0, end) if seg.slice_id)
    dead = stored - visible
    return dead >= visible and dead >= DEAD_BYTES_FLOOR
