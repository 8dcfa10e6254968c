"""The dump file: framing, checksums, and a streaming writer and reader.

A dump file is ``MAGIC`` followed by records, each framed as::

    type (1 byte) ‖ u32 length ‖ payload (length bytes) ‖ u64 xxh64(type ‖ length ‖ payload)

(integers big-endian).  The first record is the header (``h``), the last the trailer
(``t``); between them come key records (``k``) and block records (``b``) in any order.
Payloads are msgpack:

* header: ``{format, kvfs, created, volume, with_data}`` -- the dump format version
  (:data:`DUMP_VERSION`), the kvfs version that wrote it, the unix time it was made, the
  volume's format record exactly as stored under the ``setting`` key, and whether block
  records follow;
* key: ``[key, value]``, one metadata key of the volume;
* block: ``[name, data]``, one block's data (without the object store's checksum header;
  the loading store seals it again);
* trailer: ``{keys, blocks, block_bytes, xxh64}`` -- the counts of key and block records,
  the bytes of block data, and the xxh64 of every byte of the file before the trailer.

Invariants: the writer never holds more than one record plus :data:`FLUSH_BYTES` of
output; the reader never holds more than one record (at most :data:`MAX_RECORD` bytes).
The reader checks every record's checksum, the order of the records, the trailer's counts
and whole-file checksum, and that nothing follows the trailer; any failure is a
:class:`DumpFileError` naming the byte offset where the file breaks.  File I/O runs in
worker threads so a slow pipe never stalls the engine's connection on the event loop.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import msgpack
import trio
import xxhash

from kvfs.errors import VolumeError

MAGIC = b"KVFSDUMP"
DUMP_VERSION = 1

HEADER = b"h"
KEY = b"k"
BLOCK = b"b"
TRAILER = b"t"
_TYPES = (HEADER, KEY, BLOCK, TRAILER)

_FRAME = struct.Struct(">cI")
_SUM = struct.Struct(">Q")
FRAME_BYTES = _FRAME.size + _SUM.size
# A block is at most 64 MiB (the largest block size `kvfs format` allows); a record never
# needs much more, so a longer length can only be damage.
MAX_RECORD = 64 * 1024 * 1024 + 64 * 1024
FLUSH_BYTES = 1 << 20
_READ_BYTES = 1 << 20


class DumpFileError(VolumeError):
    """A dump file that cannot be read back: not a dump, damaged, truncated or too new."""


@dataclass(frozen=True, slots=True)
class Header:
    format: int
    kvfs: str
    created: float
    volume: bytes  # the raw format record (the ``setting`` key's value)
    with_data: bool

    def encode(self) -> bytes:
        return msgpack.packb({"format": self.format, "kvfs": self.kvfs,
                              "created": self.created, "volume": self.volume,
                              "with_data": self.with_data})


@dataclass(frozen=True, slots=True)
class Trailer:
    keys: int
    blocks: int
    block_bytes: int
    xxh64: int

    def encode(self) -> bytes:
        return msgpack.packb({"keys": self.keys, "blocks": self.blocks,
                              "block_bytes": self.block_bytes, "xxh64": self.xxh64})


def _frame(buf: bytearray, kind: bytes, payload: bytes) -> None:
    """Append the record to ``buf`` (piece by piece: a block's payload is copied once)."""
    head = _FRAME.pack(kind, len(payload))
    digest = xxhash.xxh64(head)
    digest.update(payload)
    buf += head
    buf += payload
    buf += _SUM.pack(digest.intdigest())


class DumpWriter:
    """Writes one dump file to ``out`` (a binary file object the caller owns)."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._buf = bytearray(MAGIC)
        self._whole = xxhash.xxh64()
        self.offset = 0  # bytes handed to the file so far, buffered ones included
        self.keys = 0
        self.blocks = 0
        self.block_bytes = 0
        self._header_written = False
        # Tasks fetching blocks side by side write records in turn: a flush takes the
        # buffer and writes it under this lock, so buffers reach the file in order.
        self._lock = trio.Lock()

    async def header(self, header: Header) -> None:
        assert not self._header_written, "a dump has one header"
        self._header_written = True
        await self._record(HEADER, header.encode())

    async def key(self, key: bytes, value: bytes) -> None:
        self.keys += 1
        await self._record(KEY, msgpack.packb([key, value]))

    async def block(self, name: str, data: bytes) -> None:
        self.blocks += 1
        self.block_bytes += len(data)
        await self._record(BLOCK, msgpack.packb([name, data]))

    async def finish(self) -> None:
        """Write the trailer and flush everything to the file (the caller closes it)."""
        await self._flush()
        trailer = Trailer(self.keys, self.blocks, self.block_bytes, self._whole.intdigest())
        _frame(self._buf, TRAILER, trailer.encode())
        await self._flush(update=False)
        await trio.to_thread.run_sync(self._out.flush)

    async def _record(self, kind: bytes, payload: bytes) -> None:
        if len(payload) > MAX_RECORD:
            raise VolumeError(f"a {len(payload)}-byte record does not fit a dump file")
        _frame(self._buf, kind, payload)
        if len(self._buf) >= FLUSH_BYTES:
            await self._flush()

    async def _flush(self, *, update: bool = True) -> None:
        async with self._lock:
            data = bytes(self._buf)
            self._buf.clear()
            if update:
                self._whole.update(data)
            self.offset += len(data)
            await trio.to_thread.run_sync(self._out.write, data)


class DumpReader:
    """Reads and verifies a dump file from ``src`` (a binary file object the caller owns).

    Use :meth:`header` first, then iterate :meth:`records` to the end: it yields
    ``(offset, type, payload)`` for key and block records and returns after a trailer that
    verifies; anything wrong raises :class:`DumpFileError` with the offset."""

    def __init__(self, src: BinaryIO) -> None:
        self._src = src
        self._buf = bytearray()
        self._eof = False
        self._whole = xxhash.xxh64()
        self.offset = 0  # of the next unread byte
        self.keys = 0
        self.blocks = 0
        self.block_bytes = 0

    async def _fill(self, n: int) -> bool:
        """Buffer at least ``n`` bytes; False when the file ends first."""
        while len(self._buf) < n and not self._eof:
            more = await trio.to_thread.run_sync(self._src.read, max(_READ_BYTES, n))
            if not more:
                self._eof = True
            self._buf += more
        return len(self._buf) >= n

    def _take(self, n: int) -> bytes:
        data = bytes(self._buf[:n])
        del self._buf[:n]
        self.offset += n
        return data

    async def _next(self) -> tuple[int, bytes, bytes] | None:
        """The next record as ``(offset, type, payload)``, checksum verified; None at a
        clean end of file."""
        start = self.offset
        if not await self._fill(1):
            return None
        if not await self._fill(_FRAME.size):
            self._truncated(start)
        kind, length = _FRAME.unpack_from(self._buf)
        if kind not in _TYPES:
            raise DumpFileError(f"record at offset {start}: unknown record type {kind!r} "
                                "(the file is damaged)")
        if length > MAX_RECORD:
            raise DumpFileError(f"record at offset {start}: impossible length {length} "
                                "(the file is damaged)")
        if not await self._fill(_FRAME.size + length + _SUM.size):
            self._truncated(start)
        frame = self._take(_FRAME.size + length)
        (stored,) = _SUM.unpack(self._take(_SUM.size))
        if xxhash.xxh64_intdigest(frame) != stored:
            raise DumpFileError(f"record at offset {start}: checksum mismatch")
        if kind != TRAILER:
            self._whole.update(frame)
            self._whole.update(_SUM.pack(stored))
        return start, kind, frame[_FRAME.size:]

    def _truncated(self, start: int) -> None:
        raise DumpFileError(f"dump file truncated at offset {self.offset + len(self._buf)} "
                            f"(the record at offset {start} is incomplete)")

    async def header(self) -> Header:
        if not await self._fill(len(MAGIC)) or self._buf[:len(MAGIC)] != MAGIC:
            raise DumpFileError("not a kvfs dump file (no KVFSDUMP magic at offset 0)")
        self._whole.update(self._take(len(MAGIC)))
        rec = await self._next()
        if rec is None:
            raise DumpFileError(f"dump file truncated at offset {self.offset} (no header)")
        offset, kind, payload = rec
        if kind != HEADER:
            raise DumpFileError(f"record at offset {offset}: expected the header")
        d = _unpack(offset, payload, dict)
        try:
            if d["format"] > DUMP_VERSION:
                raise DumpFileError(f"dump format {d['format']} is newer than this kvfs "
                                    f"reads (up to {DUMP_VERSION}); use a newer kvfs")
            return Header(int(d["format"]), str(d["kvfs"]), float(d["created"]),
                          bytes(d["volume"]), bool(d["with_data"]))
        except (KeyError, TypeError, ValueError):
            raise DumpFileError(f"record at offset {offset}: malformed header") from None

    async def records(self) -> AsyncIterator[tuple[int, bytes, bytes]]:
        while True:
            rec = await self._next()
            if rec is None:
                raise DumpFileError(f"dump file truncated at offset {self.offset} "
                                    "(no trailer)")
            offset, kind, payload = rec
            if kind == KEY:
                self.keys += 1
            elif kind == BLOCK:
                self.blocks += 1
            elif kind == TRAILER:
                await self._check_trailer(offset, payload)
                return
            else:
                raise DumpFileError(f"record at offset {offset}: a second header")
            yield rec

    async def _check_trailer(self, offset: int, payload: bytes) -> None:
        d = _unpack(offset, payload, dict)
        try:
            want = Trailer(int(d["keys"]), int(d["blocks"]), int(d["block_bytes"]),
                           int(d["xxh64"]))
        except (KeyError, TypeError, ValueError):
            raise DumpFileError(f"record at offset {offset}: malformed trailer") from None
        if (want.keys, want.blocks) != (self.keys, self.blocks):
            raise DumpFileError(
                f"record at offset {offset}: the trailer counts {want.keys} keys and "
                f"{want.blocks} blocks, the file holds {self.keys} and {self.blocks}")
        if want.xxh64 != self._whole.intdigest():
            raise DumpFileError(f"record at offset {offset}: whole-file checksum mismatch")
        if await self._fill(1):
            raise DumpFileError(f"unexpected data after the trailer at offset {self.offset}")


def _unpack(offset: int, payload: bytes, want: type) -> Any:
    try:
        value = msgpack.unpackb(payload)
    except Exception:  # msgpack raises several unrelated types on damaged input
        value = None
    if not isinstance(value, want):
        raise DumpFileError(f"record at offset {offset}: undecodable payload")
    return value


def key_record(offset: int, payload: bytes) -> tuple[bytes, bytes]:
    """``(key, value)`` of a key record's payload."""
    kv = _unpack(offset, payload, list)
    if len(kv) != 2 or not all(isinstance(x, bytes) for x in kv):
        raise DumpFileError(f"record at offset {offset}: malformed key record")
    return kv[0], kv[1]


def block_record(offset: int, payload: bytes) -> tuple[str, bytes]:
    """``(name, data)`` of a block record's payload."""
    nd = _unpack(offset, payload, list)
    if len(nd) != 2 or not isinstance(nd[0], str) or not isinstance(nd[1], bytes):
        raise DumpFileError(f"record at offset {offset}: malformed block record")
    return nd[0], nd[1]
