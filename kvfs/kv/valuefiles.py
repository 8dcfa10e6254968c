"""Large values of the embedded store: one file per value, referenced from the state machine.

A value larger than the engine's threshold never sits in memory: it is written to its own
file under ``values/`` and the state machine holds a small :class:`ValueRef` instead.  In the
write-ahead log and in snapshots a ref is encoded as a msgpack *extension type*
(:data:`EXT_VALUE_REF`), while real values are msgpack ``bin`` -- the two can never be
confused, whatever bytes a value contains.

Invariants:
  * A value file is complete and fsync'd before any log record naming it is written, and the
    ``values/`` directory is fsync'd before that record is (see :meth:`ValueStore.sync_dir`).
  * A file is only unlinked once the command dropping its ref is durable, so recovery from
    a snapshot plus the log never needs a file that is gone: if a snapshot still names an
    unlinked file, the log after the snapshot contains the command that dropped it.
  * Files are never modified after creation; names are random and never reused.
"""

from __future__ import annotations

import errno
import os
import secrets
from dataclasses import dataclass
from typing import Any

import msgpack
import xxhash

from kvfs.durable import fsync_dir
from kvfs.kv.api import StoreCorrupt

EXT_VALUE_REF = 1


@dataclass(frozen=True, slots=True)
class ValueRef:
    """What the state machine holds for a value stored in ``values/<name>``."""

    name: str
    size: int
    digest: int  # xxh64 of the contents


def _default(obj: Any) -> Any:
    if isinstance(obj, ValueRef):
        return msgpack.ExtType(
            EXT_VALUE_REF, msgpack.packb([obj.name, obj.size, obj.digest], use_bin_type=True))
    raise TypeError(f"cannot serialise {type(obj).__name__} into the store")


def _ext_hook(code: int, data: bytes) -> Any:
    if code == EXT_VALUE_REF:
        name, size, digest = msgpack.unpackb(data, raw=False)
        return ValueRef(name, size, digest)
    return msgpack.ExtType(code, data)


def pack(obj: Any) -> bytes:
    """msgpack ``obj`` (commands, snapshot records), encoding :class:`ValueRef` as an ext."""
    out: bytes = msgpack.packb(obj, default=_default, use_bin_type=True)
    return out


def unpack(data: bytes) -> Any:
    """The inverse of :func:`pack` (arrays come back as lists)."""
    return msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False)


class ValueStore:
    """The ``values/`` directory.  Every method blocks: call them from a worker thread."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        os.makedirs(directory, exist_ok=True)

    def path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def write(self, value: bytes) -> ValueRef:
        """Write ``value`` to a new file and fsync it (the directory is synced later)."""
        name = secrets.token_hex(16)
        path = self.path(name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            view = memoryview(value)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            _unlink_quietly(path)
            raise
        os.close(fd)
        return ValueRef(name, len(value), xxhash.xxh64_intdigest(value))

    def read(self, ref: ValueRef) -> bytes:
        """The contents of ``ref``'s file; :class:`StoreCorrupt` if they fail verification.

        ``FileNotFoundError`` propagates: the ref was dropped and its file freed meanwhile.
        """
        path = self.path(ref.name)
        with open(path, "rb") as f:
            data = f.read()
        if len(data) != ref.size or xxhash.xxh64_intdigest(data) != ref.digest:
            raise StoreCorrupt(
                f"value file {path} is corrupt: expected {ref.size} bytes with xxh64 "
                f"{ref.digest:016x}, found {len(data)} bytes with xxh64 "
                f"{xxhash.xxh64_intdigest(data):016x}")
        return data

    def unlink(self, name: str) -> None:
        _unlink_quietly(self.path(name))

    def names(self) -> set[str]:
        return set(os.listdir(self.directory))

    def sync_dir(self) -> None:
        fsync_dir(self.directory)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise
