"""The embedded store's write-ahead log: checksummed records in numbered segment files.

Record format (integers big-endian)::

    [u32 length][u64 xxhash.xxh64(payload)][payload: `length` bytes]

The payload of a log record is the msgpack encoding of one state-machine command tuple
(:mod:`kvfs.kv.state`), large values appearing as :class:`~kvfs.kv.valuefiles.ValueRef`
extension objects.  Snapshots reuse the same framing.

Segments are files ``wal-<seq>.log`` where ``<seq>`` (16 hex digits) is the sequence number
of the segment's first record; record ``i`` of a segment has sequence number ``seq + i``.
Sequence numbers count logged commands from 1 and never restart, so consecutive segments
must join up exactly (the first sequence of one is the end of the previous plus one).

Invariants:
  * A batch of records is appended with one ``write`` and fdatasync'd before
    :meth:`WalWriter.append` returns; a new segment's directory entry is fsync'd too.
    A caller may append with ``sync=False`` (the Raft disk does, for a hard state whose
    commit alone changed): the batch is then written but made durable only by the next
    synced append or :meth:`WalWriter.sync` -- and before the writer moves on to a new
    segment, so an older segment never ends in records that may still be lost.
  * Only the newest segment is ever written to; older ones are immutable and are deleted
    (oldest first, so the rest stay contiguous) once a snapshot covers all their records.
  * Damage is told apart as follows: an incomplete record, or a bad checksum in a record that
    reaches the end of the file (or is followed only by zero bytes), is a *torn tail* left
    by a crash mid-write and is cut off; a bad record followed by more data is corruption
    and raises :class:`~kvfs.kv.api.StoreCorrupt`.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import threading

import xxhash

from kvfs.durable import fsync_dir
from kvfs.kv.api import StoreCorrupt

log = logging.getLogger(__name__)

HEADER = struct.Struct(">IQ")
_datasync = getattr(os, "fdatasync", os.fsync)
SEGMENT_RE = re.compile(r"^wal-([0-9a-f]{16})\.log$")


def frame(payload: bytes) -> bytes:
    """One record: header plus ``payload``."""
    return HEADER.pack(len(payload), xxhash.xxh64_intdigest(payload)) + payload


def segment_name(first_seq: int) -> str:
    return f"wal-{first_seq:016x}.log"


def list_segments(directory: str) -> list[tuple[int, str]]:
    """``(first_seq, path)`` of every segment in ``directory``, oldest first."""
    out = []
    for name in os.listdir(directory):
        m = SEGMENT_RE.match(name)
        if m:
            out.append((int(m.group(1), 16), os.path.join(directory, name)))
    out.sort()
    return out


def scan(data: bytes, path: str, *, allow_torn: bool) -> tuple[list[bytes], int]:
    """The payloads of the valid records in ``data`` and the offset where they end.

    If the records end before ``len(data)`` the rest is a torn tail (only allowed when
    ``allow_torn``); a damaged record followed by more data raises :class:`StoreCorrupt`.
    """
    payloads: list[bytes] = []
    off = 0
    size = len(data)
    while off < size:
        problem = ""
        if size - off < HEADER.size:
            problem = "incomplete record header"
        else:
            length, digest = HEADER.unpack_from(data, off)
            end = off + HEADER.size + length
            if end > size:
                problem = f"record of {length} bytes runs past the end of the file"
            else:
                payload = data[off + HEADER.size:end]
                if xxhash.xxh64_intdigest(payload) == digest:
                    payloads.append(payload)
                    off = end
                    continue
                problem = "checksum mismatch"
                if end < size and any(data[end:]):
                    raise StoreCorrupt(
                        f"{path} is corrupt at offset {off}: {problem} in a record followed "
                        f"by {size - end} more bytes")
        if not allow_torn:
            raise StoreCorrupt(f"{path} is corrupt at offset {off}: {problem}")
        log.warning("%s: torn tail at offset %d (%s); discarding %d bytes",
                    path, off, problem, size - off)
        break
    return payloads, off


class WalWriter:
    """Appends batches to the newest segment, rotating to a new one when asked or when full.

    :meth:`append` runs in one worker thread at a time; :meth:`drop_covered` may run
    concurrently in the snapshot thread (the segment list is guarded by a lock).
    """

    def __init__(self, directory: str, next_seq: int, segments: list[tuple[int, str]],
                 segment_bytes: int) -> None:
        self.directory = directory
        self.next_seq = next_seq
        self.segment_bytes = segment_bytes
        self._segments = list(segments)
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._size = 0
        self._unsynced = False      # records written to _fd since its last fdatasync
        self._dir_unsynced = False  # a segment created since the directory's last fsync
        self.rotate_requested = False
        self.closed = False

    def request_rotation(self) -> None:
        """Start a new segment with the next batch (so a snapshot can cover the current one)."""
        self.rotate_requested = True

    def _open_segment(self) -> None:
        # Records appended without a sync must not stay behind in an older segment: a
        # power cut would leave a torn tail in a segment that is no longer the last.
        self.sync()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        first = self.next_seq
        path = os.path.join(self.directory, segment_name(first))
        # A segment of that name can only exist empty (created, then a crash before writing).
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        self._fd = fd
        self._size = os.fstat(fd).st_size
        with self._lock:
            if not self._segments or self._segments[-1][0] != first:
                self._segments.append((first, path))
        self.rotate_requested = False

    def append(self, payloads: list[bytes], *, sync: bool = True) -> int:
        """Durably append one record per payload; returns the number of bytes written.

        With ``sync=False`` the records are only written, in order after everything before
        them; the next synced append, :meth:`sync`, or a rotation makes them durable.
        """
        if self.closed:
            raise OSError("the write-ahead log is closed")
        new_segment = (self._fd is None or self.rotate_requested
                       or self._size >= self.segment_bytes)
        if new_segment:
            self._open_segment()
            self._dir_unsynced = True
        assert self._fd is not None
        buf = b"".join(frame(p) for p in payloads)
        view = memoryview(buf)
        self._unsynced = True
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        if sync:
            self.sync()
        self._size += len(buf)
        self.next_seq += len(payloads)
        return len(buf)

    def sync(self) -> None:
        """Make every record appended so far durable (a no-op if they all are)."""
        if self._unsynced and self._fd is not None:
            _datasync(self._fd)
            self._unsynced = False
        if self._dir_unsynced:
            fsync_dir(self.directory)
            self._dir_unsynced = False

    def drop_covered(self, seq: int) -> list[str]:
        """Delete segments whose records all have sequence numbers <= ``seq``."""
        dropped = []
        with self._lock:
            while len(self._segments) >= 2 and self._segments[1][0] <= seq + 1:
                _, path = self._segments.pop(0)
                dropped.append(path)
        for path in dropped:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        if dropped:
            fsync_dir(self.directory)
        return dropped

    def segments(self) -> list[tuple[int, str]]:
        with self._lock:
            return list(self._segments)

    def close(self) -> None:
        self.closed = True
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
