"""The key table: every key kvfs writes into a metadata engine is built here and only here.

All integers are big-endian so keys sort numerically.  A volume owns its whole engine
keyspace (engines that share one server, like etcd, add a per-volume prefix below this
table), so these keys never carry the volume name.

====================  ==============================  =====================================
key                   value (msgpack unless noted)    meaning
====================  ==============================  =====================================
``setting``           dict                            volume format (name, uuid, block size,
                                                      storage, version)
``C`` name            u64 BE                          counter: ``nextinode``,
                                                      ``nextslice`` (slice and ``G`` ids),
                                                      ``nextsession``
``C`` name            msgpack int                     usage: ``usedspace``, ``usedinodes``
                                                      (kvfs.meta.usage)
``Ccompactor``        u64 BE session id, on its lease which mount compacts history
                                                      (kvfs.meta.compactor)
``A`` ino ``I``       :class:`~kvfs.meta.records.Attr`  inode attributes
``A`` ino ``D`` name  [type, child ino]               directory entry
``A`` ino ``C`` u32   packed 24-byte slice records    slices of chunk ``u32`` (write order)
``A`` ino ``S``       raw bytes                       symlink target
``A`` ino ``X`` name  raw bytes                       extended attribute
``A`` ino ``P`` pino  u64 BE count                    hard-link parents (non-directories
                                                      with several links)
``D`` ino             [size, unix time]               inode awaiting data deletion (on
                                                      shared engines its attributes stay,
                                                      nlink 0, until the cleaner runs)
``G`` u64 id          packed slice records            slices whose blocks await deletion
``R`` u64 due u64 id  packed slice records            freed slices kept for the history
                                                      until unix time ``due`` (then ``G``)
``H`` path NUL u64    history version                 one version of the file at ``path``
 time u64 seq                                         (kvfs.history.records)
``SE`` sid            [host, pid, mountpoint,         live session, attached to its lease
                      version, started]
``SS`` sid ino        b""                             session holds unlinked inode open
``B`` block name      checksummed block               a data block (storage ``kv`` or
                                                      ``etcd``)
``W`` host NUL path   watch record, on its lease      what ``kvfs watch`` on ``host`` last
                                                      applied for ``path`` (kvfs.watch)
====================  ==============================  =====================================

Invariants: a directory's entries are exactly the ``A dir D *`` keys; any change to them
also rewrites the directory's ``A dir I`` key, so guarding that one key guards the listing.
"""

from __future__ import annotations

import struct
from typing import NewType

Ino = NewType("Ino", int)
ROOT_INO = Ino(1)

_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")

SETTING = b"setting"
NEXT_INODE = b"Cnextinode"
NEXT_SLICE = b"Cnextslice"

INODE_PREFIX = b"A"
DELFILE_PREFIX = b"D"
SLICE_GC_PREFIX = b"G"
SESSION_PREFIX = b"SE"
SUSTAINED_PREFIX = b"SS"
WATCHER_PREFIX = b"W"
RETAINED_PREFIX = b"R"
HISTORY_PREFIX = b"H"


def u64(n: int) -> bytes:
    return _U64.pack(n)


def read_u64(b: bytes, at: int = 0) -> int:
    return int(_U64.unpack_from(b, at)[0])


def inode_all(ino: int) -> bytes:
    """Prefix of every key belonging to ``ino``."""
    return INODE_PREFIX + _U64.pack(ino)


def attr(ino: int) -> bytes:
    return INODE_PREFIX + _U64.pack(ino) + b"I"


def dentry(parent: int, name: bytes) -> bytes:
    return INODE_PREFIX + _U64.pack(parent) + b"D" + name


def dentry_prefix(parent: int) -> bytes:
    return INODE_PREFIX + _U64.pack(parent) + b"D"


def chunk(ino: int, index: int) -> bytes:
    return INODE_PREFIX + _U64.pack(ino) + b"C" + _U32.pack(index)


def chunk_prefix(ino: int) -> bytes:
    return INODE_PREFIX + _U64.pack(ino) + b"C"


def chunk_index(key: bytes) -> int:
    return int(_U32.unpack_from(key, 10)[0])


def symlink(ino: int) -> bytes:
    return INODE_PREFIX + _U64.pack(ino) + b"S"


def xattr(ino: int, name: bytes) -> bytes:
    return INODE_PREFIX + _U64.pack(ino) + b"X" + name


def xattr_prefix(ino: int) -> bytes:
    return INODE_PREFIX + _U64.pack(ino) + b"X"


def link_parent(ino: int, parent: int) -> bytes:
    return INODE_PREFIX + _U64.pack(ino) + b"P" + _U64.pack(parent)


def link_parent_prefix(ino: int) -> bytes:
    return INODE_PREFIX + _U64.pack(ino) + b"P"


def delfile(ino: int) -> bytes:
    return DELFILE_PREFIX + _U64.pack(ino)


def slice_gc(gc_id: int) -> bytes:
    return SLICE_GC_PREFIX + _U64.pack(gc_id)


def session(sid: int) -> bytes:
    return SESSION_PREFIX + _U64.pack(sid)


def sustained(sid: int, ino: int) -> bytes:
    return SUSTAINED_PREFIX + _U64.pack(sid) + _U64.pack(ino)


def watcher(host: str, path: str) -> bytes:
    """The record of ``kvfs watch`` on ``host`` for ``path`` (absolute, within the volume).

    A host name never holds NUL, so the first NUL ends it and the path may hold anything."""
    return WATCHER_PREFIX + host.encode() + b"\0" + path.encode()


def parse_watcher(key: bytes) -> tuple[str, str]:
    """``(host, path)`` of a :func:`watcher` key."""
    host, sep, path = key[len(WATCHER_PREFIX):].partition(b"\0")
    if not key.startswith(WATCHER_PREFIX) or not sep:
        raise ValueError(f"not a watch record key: {key!r}")
    return host.decode(errors="replace"), path.decode(errors="replace")


def key_ino(key: bytes) -> int:
    """The inode number of any ``A``/``D`` key."""
    return int(_U64.unpack_from(key, 1)[0])


def retained(due: int, gc_id: int) -> bytes:
    """Freed slices whose blocks the history keeps until unix time ``due``."""
    return RETAINED_PREFIX + _U64.pack(due) + _U64.pack(gc_id)


def retained_due(key: bytes) -> int:
    return read_u64(key, len(RETAINED_PREFIX))


def history(path: bytes, time_ns: int, seq: int) -> bytes:
    """One version of the file at ``path`` (absolute within the volume: ``/a/b``).

    A path never holds NUL, so the first NUL ends it; the versions of one path sort by
    time, and every path under a directory ``/d`` sorts under :func:`history_tree`."""
    return HISTORY_PREFIX + path + b"\0" + _U64.pack(time_ns) + _U64.pack(seq)


def history_versions(path: bytes) -> bytes:
    """Prefix of every version of the file at ``path``."""
    return HISTORY_PREFIX + path + b"\0"


def history_tree(dir_path: bytes) -> bytes:
    """Prefix of the versions of every path below directory ``dir_path``."""
    return HISTORY_PREFIX + dir_path.rstrip(b"/") + b"/"


def parse_history(key: bytes) -> tuple[bytes, int, int]:
    """``(path, time_ns, seq)`` of a :func:`history` key."""
    path, sep, rest = key[len(HISTORY_PREFIX):].partition(b"\0")
    if not key.startswith(HISTORY_PREFIX) or not sep or len(rest) != 16:
        raise ValueError(f"not a history key: {key!r}")
    return path, read_u64(rest), read_u64(rest, 8)
