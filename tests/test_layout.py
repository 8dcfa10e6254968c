"""Chunk/slice arithmetic: unit tests and a model-based check of the overlay logic."""

from __future__ import annotations

import random
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvfs.chunk.layout import (
    CHUNK_SIZE,
    DEAD_BYTES_FLOOR,
    MAX_SLICES,
    SLICE_RECORD_SIZE,
    Segment,
    Slice,
    block_count,
    block_len,
    block_ranges,
    build_view,
    decode_slices,
    encode_slices,
    needs_compaction,
    read_plan,
    split_range,
)

MiB = 1024 * 1024


def check_cover(segs: list[Segment], lo: int, hi: int) -> None:
    pos = lo
    for seg in segs:
        assert seg.start == pos and seg.end > seg.start
        pos = seg.end
    assert pos == hi


# -- encoding --------------------------------------------------------------------------


def test_encode_decode_round_trip() -> None:
    slices = [Slice(0, 1, 100, 0, 100), Slice(50, 2**64 - 1, CHUNK_SIZE, 7, 30),
              Slice(CHUNK_SIZE - 1, 0, 0, 0, 1)]
    data = encode_slices(slices)
    assert len(data) == 3 * SLICE_RECORD_SIZE == 72
    assert decode_slices(data) == slices
    # Appending a slice is appending its record.
    assert encode_slices(slices[:2]) + encode_slices(slices[2:]) == data
    assert decode_slices(b"") == [] and encode_slices([]) == b""


def test_encoding_is_big_endian_fixed_layout() -> None:
    assert encode_slices([Slice(1, 2, 3, 4, 5)]) == (
        b"\0\0\0\1" + b"\0" * 7 + b"\2" + b"\0\0\0\3" + b"\0\0\0\4" + b"\0\0\0\5")


@pytest.mark.parametrize("n", [1, 23, 25, 47])
def test_decode_rejects_ragged_length(n: int) -> None:
    with pytest.raises(ValueError):
        decode_slices(bytes(n))


@pytest.mark.parametrize("bad", [Slice(-1, 1, 1, 0, 1), Slice(0, 2**64, 1, 0, 1),
                                 Slice(2**32, 1, 1, 0, 1)])
def test_encode_rejects_out_of_range_fields(bad: Slice) -> None:
    with pytest.raises(ValueError):
        encode_slices([bad])


# -- split_range -----------------------------------------------------------------------


def test_split_range() -> None:
    assert split_range(0, 0) == []
    assert split_range(10, 5) == [(0, 10, 5)]
    assert split_range(0, CHUNK_SIZE) == [(0, 0, CHUNK_SIZE)]
    assert split_range(CHUNK_SIZE - 3, 10) == [(0, CHUNK_SIZE - 3, 3), (1, 0, 7)]
    assert split_range(CHUNK_SIZE * 5 + 1, 2 * CHUNK_SIZE) == [
        (5, 1, CHUNK_SIZE - 1), (6, 0, CHUNK_SIZE), (7, 0, 1)]
    with pytest.raises(ValueError):
        split_range(-1, 3)
    with pytest.raises(ValueError):
        split_range(0, -3)


@given(st.integers(0, 10 * CHUNK_SIZE), st.integers(0, 3 * CHUNK_SIZE))
def test_split_range_covers(offset: int, length: int) -> None:
    pos = offset
    for idx, off, n in split_range(offset, length):
        assert idx * CHUNK_SIZE + off == pos
        assert 0 < n and off + n <= CHUNK_SIZE
        pos += n
    assert pos == offset + length


# -- build_view / read_plan ------------------------------------------------------------


def test_empty_chunk_is_zeros() -> None:
    assert build_view([], 100) == [Segment(0, 100, 0, 0)]
    assert build_view([], 0) == []
    assert read_plan([], 10, 0) == []


def test_single_slice_and_gaps() -> None:
    s = Slice(pos=10, id=7, size=50, off=5, len=20)
    assert build_view([s], 100) == [Segment(0, 10, 0, 0), Segment(10, 30, 7, 5),
                                    Segment(30, 100, 0, 0)]
    assert build_view([s], 100)[1].slice_size == 50
    # Clipped to the chunk length (e.g. after a shrinking truncate).
    assert build_view([s], 20) == [Segment(0, 10, 0, 0), Segment(10, 20, 7, 5)]


def test_later_slices_override_earlier() -> None:
    a = Slice(0, 1, 100, 0, 100)
    b = Slice(20, 2, 10, 0, 10)
    assert build_view([a, b], 100) == [Segment(0, 20, 1, 0), Segment(20, 30, 2, 0),
                                       Segment(30, 100, 1, 30)]
    # In the other order the big slice hides the small one completely.
    assert build_view([b, a], 100) == [Segment(0, 100, 1, 0)]


def test_hole_slice_and_zero_merging() -> None:
    a = Slice(0, 1, 100, 0, 100)
    hole = Slice(50, 0, 0, 0, 50)
    assert build_view([a, hole], 120) == [Segment(0, 50, 1, 0), Segment(50, 120, 0, 0)]


def test_adjacent_pieces_of_one_slice_merge() -> None:
    # The same object referenced by two consecutive records, contiguously.
    a = Slice(0, 3, 100, 0, 40)
    b = Slice(40, 3, 100, 40, 60)
    assert build_view([a, b], 100) == [Segment(0, 100, 3, 0)]


def test_read_plan_clips() -> None:
    a = Slice(0, 1, 100, 0, 100)
    b = Slice(20, 2, 10, 0, 10)
    assert read_plan([a, b], 25, 10) == [Segment(25, 30, 2, 5), Segment(30, 35, 1, 30)]
    assert read_plan([a, b], 150, 10) == [Segment(150, 160, 0, 0)]
    assert read_plan([a, b], 0, 0) == []


def _model(writes: list[tuple[Slice, bytes]], chunk_len: int) -> bytes:
    buf = bytearray(chunk_len)
    for sl, data in writes:
        piece = data[sl.off:sl.off + sl.len] if sl.id else bytes(sl.len)
        end = min(sl.pos + sl.len, chunk_len)
        if sl.pos < end:
            buf[sl.pos:end] = piece[:end - sl.pos]
    return bytes(buf)


def _render(segs: list[Segment], objects: dict[int, bytes]) -> bytes:
    out = bytearray()
    for seg in segs:
        if seg.slice_id == 0:
            out += bytes(seg.length)
        else:
            obj = objects[seg.slice_id]
            assert seg.slice_size == len(obj)
            assert seg.slice_off + seg.length <= len(obj)
            out += obj[seg.slice_off:seg.slice_off + seg.length]
    return bytes(out)


_write = st.tuples(
    st.integers(0, 300),  # pos
    st.integers(1, 120),  # len
    st.integers(0, 30),  # unused bytes before the used part of the object
    st.integers(0, 30),  # unused bytes after it
    st.booleans(),  # a hole?
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_write, max_size=40), st.integers(0, 400), st.data())
def test_view_matches_bytearray_model(writes: list[tuple[int, int, int, int, bool]],
                                      chunk_len: int, data: st.DataObject) -> None:
    rng = random.Random(len(writes) * 1000 + chunk_len)
    objects: dict[int, bytes] = {}
    slices: list[Slice] = []
    applied: list[tuple[Slice, bytes]] = []
    for i, (pos, n, before, after, hole) in enumerate(writes):
        if hole:
            sl = Slice(pos, 0, 0, 0, n)
            applied.append((sl, b""))
        else:
            sid = 1000 + i  # a fresh slice id per write
            obj = rng.randbytes(before + n + after)
            objects[sid] = obj
            sl = Slice(pos, sid, len(obj), before, n)
            applied.append((sl, obj))
        slices.append(sl)
    expected = _model(applied, chunk_len)

    view = build_view(slices, chunk_len)
    check_cover(view, 0, chunk_len)
    assert _render(view, objects) == expected
    # Maximal merging: no two neighbours continue one another.
    for x, y in zip(view, view[1:], strict=False):
        assert not (x.slice_id == y.slice_id and
                    (x.slice_id == 0 or y.slice_off == x.slice_off + x.length))

    off = data.draw(st.integers(0, chunk_len), label="offset")
    length = data.draw(st.integers(0, chunk_len - off + 50), label="length")
    plan = read_plan(slices, off, length)
    check_cover(plan, off, off + length)
    # read_plan knows no chunk length: slice data past chunk_len still shows.
    unclipped = _model(applied, off + length)
    assert _render(plan, objects) == unclipped[off:off + length]


def test_build_view_scales() -> None:
    rng = random.Random(1)
    slices = [Slice(rng.randrange(CHUNK_SIZE - 65536), i + 1, 65536, 0,
                    rng.randrange(1, 65536)) for i in range(20000)]
    t0 = time.perf_counter()
    view = build_view(slices, CHUNK_SIZE)
    assert time.perf_counter() - t0 < 5
    check_cover(view, 0, CHUNK_SIZE)
    # Many small appends in order (the sequential-write pattern).
    seq = [Slice(i * 4096, i + 1, 4096, 0, 4096) for i in range(CHUNK_SIZE // 4096)]
    t0 = time.perf_counter()
    view = build_view(seq, CHUNK_SIZE)
    assert time.perf_counter() - t0 < 5
    assert len(view) == len(seq)


# -- blocks ----------------------------------------------------------------------------


def test_block_ranges() -> None:
    assert block_ranges(10, 4, 0, 10) == [(0, 0, 4), (1, 0, 4), (2, 0, 2)]
    assert block_ranges(10, 4, 3, 2) == [(0, 3, 1), (1, 0, 1)]
    assert block_ranges(10, 4, 8, 2) == [(2, 0, 2)]
    assert block_ranges(10, 4, 5, 0) == []
    assert block_ranges(4 * MiB, 4 * MiB, 0, 4 * MiB) == [(0, 0, 4 * MiB)]
    with pytest.raises(ValueError):
        block_ranges(10, 4, 8, 3)
    with pytest.raises(ValueError):
        block_ranges(10, 0, 0, 1)
    with pytest.raises(ValueError):
        block_ranges(10, 4, -1, 1)


@given(st.integers(0, 5000), st.integers(1, 700), st.data())
def test_block_ranges_model(size: int, bs: int, data: st.DataObject) -> None:
    off = data.draw(st.integers(0, size))
    length = data.draw(st.integers(0, size - off))
    blob = bytes(i % 251 for i in range(size))
    blocks = [blob[i * bs:(i + 1) * bs] for i in range(block_count(size, bs))]
    assert [len(b) for b in blocks] == [block_len(size, bs, i) for i in range(len(blocks))]
    got = b"".join(blocks[i][o:o + n] for i, o, n in block_ranges(size, bs, off, length))
    assert got == blob[off:off + length]


def test_block_count_and_len() -> None:
    assert block_count(0, 4) == 0
    assert block_count(1, 4) == 1
    assert block_count(8, 4) == 2
    assert block_count(9, 4) == 3
    assert block_len(9, 4, 2) == 1
    with pytest.raises(ValueError):
        block_len(9, 4, 3)


# -- compaction predicate --------------------------------------------------------------


def test_needs_compaction() -> None:
    assert not needs_compaction([])
    assert not needs_compaction([Slice(0, 1, 64 * MiB, 0, 64 * MiB)])
    many = [Slice(i * 10, i + 1, 10, 0, 10) for i in range(MAX_SLICES + 1)]
    assert needs_compaction(many)
    assert not needs_compaction(many[:MAX_SLICES])
    # A large write fully overwritten: everything it stored is dead.
    big = 4 * DEAD_BYTES_FLOOR
    assert needs_compaction([Slice(0, 1, big, 0, big), Slice(0, 2, big, 0, big)])
    # Small overlaps are not worth a rewrite.
    assert not needs_compaction([Slice(0, 1, 1000, 0, 1000), Slice(0, 2, 1000, 0, 1000)])
    # A large object mostly unused by its record counts as dead bytes too.
    assert needs_compaction([Slice(0, 1, big, 0, 10), Slice(10, 2, 10, 0, 10)])
