"""Snapshots of the embedded store's state machine.

A snapshot file ``snap-<seq>.snap`` (``<seq>``: 16 hex digits, the sequence number of the
last logged command it includes) is a series of records framed exactly like the
write-ahead log (:mod:`kvfs.kv.wal`), each payload msgpack:

  1. ``["kvfs-snapshot", 1, {"seq", "revision", "compacted", "next_lease", "leases"}]``
     where ``leases`` maps lease id to TTL;
  2. any number of ``["items", [[key, value, mod_revision, create_revision, lease], ...]]``
     in key order, ``value`` being inline bytes or a
     :class:`~kvfs.kv.valuefiles.ValueRef` -- large value files are never copied;
  3. ``["end", item_count]``.

A snapshot is written to ``snap-<seq>.tmp``, fsync'd, renamed into place and the directory
fsync'd, so a ``.snap`` file is always complete; one that fails any checksum or lacks the
end record is invalid and ignored in favour of an older one (if the log still reaches back).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import xxhash

from kvfs.durable import fsync_dir
from kvfs.kv.state import Entry
from kvfs.kv.valuefiles import pack, unpack
from kvfs.kv.wal import HEADER, frame

SNAPSHOT_RE = re.compile(r"^snap-([0-9a-f]{16})\.snap$")
MAGIC = "kvfs-snapshot"
FORMAT = 1
_CHUNK_ITEMS = 1024
_CHUNK_BYTES = 1 << 20


class BadSnapshot(Exception):
    """A snapshot file is incomplete or damaged."""


@dataclass(slots=True)
class SnapshotMeta:
    seq: int
    revision: int
    compacted: int
    next_lease: int
    leases: dict[int, float]


def snapshot_name(seq: int) -> str:
    return f"snap-{seq:016x}.snap"


def list_snapshots(directory: str) -> list[tuple[int, str]]:
    """``(seq, path)`` of every complete snapshot file, newest first."""
    out = []
    for name in os.listdir(directory):
        m = SNAPSHOT_RE.match(name)
        if m:
            out.append((int(m.group(1), 16), os.path.join(directory, name)))
    out.sort(reverse=True)
    return out


def write_snapshot(directory: str, meta: SnapshotMeta,
                   items: list[tuple[bytes, Entry]]) -> str:
    """Write a snapshot durably and return its path (blocking: run it in a thread)."""
    final = os.path.join(directory, snapshot_name(meta.seq))
    tmp = final[:-len(".snap")] + ".tmp"
    head = {"seq": meta.seq, "revision": meta.revision, "compacted": meta.compacted,
            "next_lease": meta.next_lease, "leases": meta.leases}
    with open(tmp, "wb", buffering=1 << 20) as f:
        f.write(frame(pack([MAGIC, FORMAT, head])))
        chunk: list[list[Any]] = []
        chunk_bytes = 0
        for key, e in items:
            chunk.append([key, e.value, e.mod_revision, e.create_revision, e.lease])
            chunk_bytes += len(key) + (len(e.value) if isinstance(e.value, bytes) else 64)
            if len(chunk) >= _CHUNK_ITEMS or chunk_bytes >= _CHUNK_BYTES:
                f.write(frame(pack(["items", chunk])))
                chunk, chunk_bytes = [], 0
        if chunk:
            f.write(frame(pack(["items", chunk])))
        f.write(frame(pack(["end", len(items)])))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    fsync_dir(directory)
    return final


def _records(f: BinaryIO, path: str) -> Iterator[Any]:
    off = 0
    while True:
        head = f.read(HEADER.size)
        if not head:
            return
        if len(head) < HEADER.size:
            raise BadSnapshot(f"{path}: incomplete record header at offset {off}")
        length, digest = HEADER.unpack(head)
        payload = f.read(length)
        if len(payload) < length or xxhash.xxh64_intdigest(payload) != digest:
            raise BadSnapshot(f"{path}: damaged record at offset {off}")
        yield unpack(payload)
        off += HEADER.size + length


def read_snapshot(path: str) -> tuple[SnapshotMeta, list[tuple[bytes, Entry]]]:
    """Load a snapshot (blocking); :class:`BadSnapshot` if it is not complete and intact."""
    items: list[tuple[bytes, Entry]] = []
    meta: SnapshotMeta | None = None
    try:
        with open(path, "rb", buffering=1 << 20) as f:
            for rec in _records(f, path):
                kind = rec[0]
                if meta is None:
                    if kind != MAGIC or rec[1] != FORMAT:
                        raise BadSnapshot(f"{path}: not a kvfs snapshot (format {rec[:2]!r})")
                    h = rec[2]
                    meta = SnapshotMeta(h["seq"], h["revision"], h["compacted"],
                                        h["next_lease"],
                                        {int(k): float(v) for k, v in h["leases"].items()})
                elif kind == "items":
                    for key, value, mod, create, lease in rec[1]:
                        items.append((key, Entry(value, mod, create, lease)))
                elif kind == "end":
                    if rec[1] != len(items):
                        raise BadSnapshot(f"{path}: holds {len(items)} items, expected {rec[1]}")
                    return meta, items
                else:
                    raise BadSnapshot(f"{path}: unknown record {kind!r}")
    except BadSnapshot:
        raise
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise BadSnapshot(f"{path}: undecodable record ({exc})") from exc
    raise BadSnapshot(f"{path}: no end record (incomplete snapshot)")
