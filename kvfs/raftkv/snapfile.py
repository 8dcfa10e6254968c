"""Snapshot files of the Raft store (``kvfs raft snapshot save`` / ``restore``), like
``etcdctl snapshot save`` and ``etcdutl snapshot restore``.

File format (all integers big-endian)::

    MAGIC                    b"kvfs-raft-snapshot\\n" (19 bytes)
    [u32 format][u64 index][u64 size]
    payload                  ``size`` bytes: the state machine snapshot
                             (:meth:`~kvfs.raftkv.statemachine.ReplicatedKV.snapshot`, member
                             table included) taken at applied index ``index``
    [u64 xxh64]              of every byte before it

:func:`write_snapshot_file` writes ``FILE.tmp``, fsyncs it, renames it over ``FILE`` and
fsyncs the directory, so ``FILE`` is either absent, the old file, or the whole new one.
:func:`read_snapshot_file` refuses -- one line, :class:`SnapshotFileError` -- a file that
is not one, of another format, truncated or extended, or whose hash does not match.

:func:`restore_member` (offline) makes a new member's data directory from a snapshot file:
the directory's Raft state is one snapshot at the file's index (term 1, committed), whose
data is the file's state with its member table replaced by the new ``--initial-cluster``,
and whose configuration makes every member of it a voter.  Each member of the new cluster
is restored from the same file with the same flags, so they all start from the same
snapshot and elect a leader as a new cluster does.  Everything is checked before anything
is written; a directory that is not empty is refused.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass

import xxhash

from kvfs.durable import replacing
from kvfs.kv.api import KVError
from kvfs.raft import HardState, Snapshot, SnapshotMeta
from kvfs.raftkv.disk import RaftDisk
from kvfs.raftkv.members import MemberConfigError, PeerURL, initial_table, member_id
from kvfs.raftkv.statemachine import ReplicatedKV

MAGIC = b"kvfs-raft-snapshot\n"
FORMAT = 1
_HEADER = struct.Struct(">IQQ")
_TRAILER = struct.Struct(">Q")


class SnapshotFileError(KVError):
    """A snapshot file that cannot be used; nothing was written."""


@dataclass(frozen=True, slots=True)
class SnapshotFile:
    index: int
    payload: bytes
    hash: str  # the file's xxh64, 16 hex digits


def encode_snapshot_file(index: int, payload: bytes) -> tuple[bytes, str]:
    """The file's bytes and its hash (hex)."""
    body = MAGIC + _HEADER.pack(FORMAT, index, len(payload)) + payload
    digest = xxhash.xxh64_intdigest(body)
    return body + _TRAILER.pack(digest), f"{digest:016x}"


def write_snapshot_file(path: str, index: int, payload: bytes) -> SnapshotFile:
    """Write atomically (see module docstring); returns what was written."""
    data, digest = encode_snapshot_file(index, payload)
    with replacing(path) as out:
        out.write(data)
    return SnapshotFile(index, payload, digest)


def decode_snapshot_file(data: bytes, name: str) -> SnapshotFile:
    fixed = len(MAGIC) + _HEADER.size
    if not data.startswith(MAGIC):
        raise SnapshotFileError(f"{name} is not a kvfs Raft snapshot file")
    if len(data) < fixed + _TRAILER.size:
        raise SnapshotFileError(f"{name} is truncated ({len(data)} bytes)")
    version, index, size = _HEADER.unpack_from(data, len(MAGIC))
    if version != FORMAT:
        raise SnapshotFileError(f"{name} is a snapshot of format {version}; this kvfs reads "
                                f"format {FORMAT}")
    expected = fixed + size + _TRAILER.size
    if len(data) != expected:
        raise SnapshotFileError(f"{name} is {'truncated' if len(data) < expected else 'too long'}"
                                f" ({len(data)} bytes, its header says {expected})")
    (digest,) = _TRAILER.unpack_from(data, fixed + size)
    actual = xxhash.xxh64_intdigest(memoryview(data)[:fixed + size])
    if actual != digest:
        raise SnapshotFileError(f"{name} is damaged: its xxh64 is {actual:016x}, the file "
                                f"says {digest:016x}")
    return SnapshotFile(index, data[fixed:fixed + size], f"{digest:016x}")


def read_snapshot_file(path: str) -> SnapshotFile:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise SnapshotFileError(f"cannot read {path}: {exc.strerror}") from None
    return decode_snapshot_file(data, path)


def _refuse_used(data_dir: str) -> None:
    if not os.path.exists(data_dir):
        return
    if not os.path.isdir(data_dir):
        raise SnapshotFileError(f"{data_dir} exists and is not a directory")
    entries = os.listdir(data_dir)
    if "IDENTITY" in entries:
        raise SnapshotFileError(f"{data_dir} already holds a Raft member; restore into a new "
                                "directory")
    if entries:
        raise SnapshotFileError(f"{data_dir} is not empty; restore into a new directory")


@dataclass(frozen=True, slots=True)
class Restored:
    index: int
    keys: int
    members: int


def restore_member(path: str, *, name: str, data_dir: str,
                   initial_cluster: Mapping[str, PeerURL], cluster_token: str,
                   client_endpoints: Mapping[str, str]) -> Restored:
    """Make ``data_dir`` member ``name`` of a new cluster holding the state of the snapshot
    file at ``path`` (see module docstring)."""
    if not cluster_token:
        raise MemberConfigError("--initial-cluster-token must not be empty")
    if name not in initial_cluster:
        raise MemberConfigError(f"--initial-cluster does not name this member ({name!r})")
    unknown = set(client_endpoints) - set(initial_cluster)
    if unknown:
        raise MemberConfigError(f"--initial-cluster-clients names members not in "
                                f"--initial-cluster: {', '.join(sorted(unknown))}")
    table = initial_table(cluster_token, initial_cluster, client_endpoints)
    if len(table) != len(initial_cluster):
        raise MemberConfigError("two member names hash to one id; rename one")
    _refuse_used(data_dir)
    snap = read_snapshot_file(path)
    kv = ReplicatedKV()
    try:
        kv.restore(snap.index, snap.payload)
    except Exception as exc:  # noqa: BLE001 - any decoding failure means the same thing
        raise SnapshotFileError(f"{path} does not hold a kvfs Raft state machine snapshot: "
                                f"{exc}") from None
    kv.members = table
    meta = SnapshotMeta(snap.index, 1, table.conf_state())
    disk = RaftDisk.create(data_dir, cluster_token, member_id(name, cluster_token))
    try:
        disk.save(HardState(term=1, commit=snap.index), [], Snapshot(meta, kv.snapshot()),
                  True)
    finally:
        disk.close()
    return Restored(snap.index, sum(1 for _ in kv.state.snapshot_items()), len(table))
