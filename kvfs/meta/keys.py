"""The key table: every key kvfs writes into a metadata engine is built and parsed here.

No other module concatenates key bytes or reads them at fixed offsets: they call the
builders and parsers below.  :data:`KEY_KINDS` lists every kind of key with its prefix
and its layout, written exactly as the first column of the table in ``docs/keys.md``,
which describes the values; ``tests/test_keys.py`` checks the two against each other,
checks that no two kinds' keys can be confused, and pins today's encodings byte for byte
(existing volumes depend on them).

All integers are big-endian so keys sort numerically.  A volume owns its whole engine
keyspace (engines that share one server, like etcd, add a per-volume prefix below this
table), so these keys never carry the volume name.

Invariants: every ``A`` key is ``A ‖ u64 ino ‖ type letter ‖ rest``, so the type letter is
byte 9 and the rest starts at byte 10.  A directory's entries are exactly the ``A dir D *``
keys; any change to them also rewrites the directory's ``A dir I`` key, so guarding that one
key guards the listing.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import NewType

Ino = NewType("Ino", int)
ROOT_INO = Ino(1)

_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")


@dataclass(frozen=True, slots=True)
class KeyKind:
    """One kind of key: ``prefix`` is the constant bytes every key of the kind starts with;
    ``tag`` (``A`` keys only) is the type letter at byte 9 that tells the inode's kinds
    apart; ``layout`` is the key as ``docs/keys.md`` writes it (literals in backquotes,
    ``‖`` between parts)."""

    name: str
    prefix: bytes
    layout: str
    tag: bytes = b""


SETTING = b"setting"

# Counters and roles: single keys under ``C``.
COUNTER_PREFIX = b"C"
NEXT_INODE = COUNTER_PREFIX + b"nextinode"
NEXT_SLICE = COUNTER_PREFIX + b"nextslice"  # slice ids and G record ids
NEXT_SESSION = COUNTER_PREFIX + b"nextsession"
USED_SPACE = COUNTER_PREFIX + b"usedspace"  # msgpack integer (kvfs.meta.usage)
USED_INODES = COUNTER_PREFIX + b"usedinodes"  # msgpack integer (kvfs.meta.usage)
COMPACTOR = COUNTER_PREFIX + b"compactor"  # holder's session id (kvfs.meta.compactor)
TRASH_PURGER = COUNTER_PREFIX + b"trashpurger"  # holder's session id (kvfs.meta.trash)

INODE_PREFIX = b"A"
DELFILE_PREFIX = b"D"
SLICE_GC_PREFIX = b"G"
RETAINED_PREFIX = b"R"
HISTORY_PREFIX = b"H"
SESSION_PREFIX = b"SE"
SUSTAINED_PREFIX = b"SS"
BLOCK_PREFIX = b"B"
WATCHER_PREFIX = b"W"

# Type letters of ``A`` keys, at byte 9.
ATTR_TAG = b"I"
DENTRY_TAG = b"D"
CHUNK_TAG = b"C"
SYMLINK_TAG = b"S"
XATTR_TAG = b"X"
LINK_PARENT_TAG = b"P"
_KIND_AT = 1 + _U64.size  # offset of an A key's type letter
_REST_AT = _KIND_AT + 1

KEY_KINDS: tuple[KeyKind, ...] = (
    KeyKind("setting", SETTING, "`setting`"),
    KeyKind("next inode", NEXT_INODE, "`C` ‖ `nextinode`"),
    KeyKind("next slice", NEXT_SLICE, "`C` ‖ `nextslice`"),
    KeyKind("next session", NEXT_SESSION, "`C` ‖ `nextsession`"),
    KeyKind("used space", USED_SPACE, "`C` ‖ `usedspace`"),
    KeyKind("used inodes", USED_INODES, "`C` ‖ `usedinodes`"),
    KeyKind("compactor", COMPACTOR, "`C` ‖ `compactor`"),
    KeyKind("trash purger", TRASH_PURGER, "`C` ‖ `trashpurger`"),
    KeyKind("attr", INODE_PREFIX, "`A` ‖ u64 ino ‖ `I`", ATTR_TAG),
    KeyKind("dentry", INODE_PREFIX, "`A` ‖ u64 dir ‖ `D` ‖ name", DENTRY_TAG),
    KeyKind("chunk", INODE_PREFIX, "`A` ‖ u64 ino ‖ `C` ‖ u32 index", CHUNK_TAG),
    KeyKind("symlink", INODE_PREFIX, "`A` ‖ u64 ino ‖ `S`", SYMLINK_TAG),
    KeyKind("xattr", INODE_PREFIX, "`A` ‖ u64 ino ‖ `X` ‖ name", XATTR_TAG),
    KeyKind("link parent", INODE_PREFIX, "`A` ‖ u64 ino ‖ `P` ‖ u64 parent", LINK_PARENT_TAG),
    KeyKind("delfile", DELFILE_PREFIX, "`D` ‖ u64 ino"),
    KeyKind("slice gc", SLICE_GC_PREFIX, "`G` ‖ u64 id"),
    KeyKind("retained", RETAINED_PREFIX, "`R` ‖ u64 freed ‖ u64 id"),
    KeyKind("history", HISTORY_PREFIX, "`H` ‖ path ‖ NUL ‖ u64 time ‖ u64 seq"),
    KeyKind("session", SESSION_PREFIX, "`SE` ‖ u64 sid"),
    KeyKind("sustained", SUSTAINED_PREFIX, "`SS` ‖ u64 sid ‖ u64 ino"),
    KeyKind("block", BLOCK_PREFIX, "`B` ‖ block name (UTF-8)"),
    KeyKind("watcher", WATCHER_PREFIX, "`W` ‖ host (UTF-8) ‖ NUL ‖ path (UTF-8)"),
)


def u64(n: int) -> bytes:
    return _U64.pack(n)


def read_u64(b: bytes, at: int = 0) -> int:
    return int(_U64.unpack_from(b, at)[0])


# -- inode keys (A) --------------------------------------------------------------------


def inode_all(ino: int) -> bytes:
    """Prefix of every key belonging to ``ino``."""
    return INODE_PREFIX + _U64.pack(ino)


def _inode(ino: int, kind: bytes) -> bytes:
    return INODE_PREFIX + _U64.pack(ino) + kind


def attr(ino: int) -> bytes:
    return _inode(ino, ATTR_TAG)


def dentry(parent: int, name: bytes) -> bytes:
    return _inode(parent, DENTRY_TAG) + name


def dentry_prefix(parent: int) -> bytes:
    return _inode(parent, DENTRY_TAG)


def chunk(ino: int, index: int) -> bytes:
    return _inode(ino, CHUNK_TAG) + _U32.pack(index)


def chunk_prefix(ino: int) -> bytes:
    return _inode(ino, CHUNK_TAG)


def symlink(ino: int) -> bytes:
    return _inode(ino, SYMLINK_TAG)


def xattr(ino: int, name: bytes) -> bytes:
    return _inode(ino, XATTR_TAG) + name


def xattr_prefix(ino: int) -> bytes:
    return _inode(ino, XATTR_TAG)


def link_parent(ino: int, parent: int) -> bytes:
    return _inode(ino, LINK_PARENT_TAG) + _U64.pack(parent)


def link_parent_prefix(ino: int) -> bytes:
    return _inode(ino, LINK_PARENT_TAG)


def listing_group(key: bytes) -> bytes | None:
    """The listing a key belongs to, for the record cache (:mod:`kvfs.kv.cache`): the
    prefix of its directory's entries (:func:`dentry_prefix`) or of its inode's xattrs
    (:func:`xattr_prefix`) -- for the prefix itself too -- else None."""
    if len(key) >= _REST_AT and key[:1] == INODE_PREFIX and \
            key[_KIND_AT:_REST_AT] in (DENTRY_TAG, XATTR_TAG):
        return key[:_REST_AT]
    return None


def parse_inode_key(key: bytes) -> tuple[int, bytes, bytes]:
    """``(ino, type letter, rest)`` of any ``A`` key; ValueError for anything else."""
    if not key.startswith(INODE_PREFIX) or len(key) < _REST_AT:
        raise ValueError(f"not an inode key: {key!r}")
    return read_u64(key, 1), key[_KIND_AT:_REST_AT], key[_REST_AT:]


def key_ino(key: bytes) -> int:
    """The inode number of any ``A``/``D`` key."""
    return read_u64(key, 1)


def chunk_index(key: bytes) -> int:
    """The chunk index of a :func:`chunk` key."""
    return int(_U32.unpack_from(key, _REST_AT)[0])


def dentry_name(key: bytes) -> bytes:
    """The entry's name in a :func:`dentry` key."""
    return _inode_rest(key, DENTRY_TAG)


def xattr_name(key: bytes) -> bytes:
    """The attribute's name in an :func:`xattr` key."""
    return _inode_rest(key, XATTR_TAG)


def link_parent_of(key: bytes) -> int:
    """The parent directory of a :func:`link_parent` key."""
    return read_u64(_inode_rest(key, LINK_PARENT_TAG))


def _inode_rest(key: bytes, kind: bytes) -> bytes:
    _, k, rest = parse_inode_key(key)
    if k != kind:
        raise ValueError(f"not an inode key of type {kind!r}: {key!r}")
    return rest


# -- queues, sessions ------------------------------------------------------------------


def delfile(ino: int) -> bytes:
    return DELFILE_PREFIX + _U64.pack(ino)


def slice_gc(gc_id: int) -> bytes:
    return SLICE_GC_PREFIX + _U64.pack(gc_id)


def retained(freed: int, gc_id: int) -> bytes:
    """Slices freed at unix time ``freed`` whose blocks the history keeps for its
    retention (read when the cleaner runs, so a changed retention applies to them too)."""
    return RETAINED_PREFIX + _U64.pack(freed) + _U64.pack(gc_id)


def retained_freed(key: bytes) -> int:
    return read_u64(key, len(RETAINED_PREFIX))


def session(sid: int) -> bytes:
    return SESSION_PREFIX + _U64.pack(sid)


def session_id(key: bytes) -> int:
    """The session id of a :func:`session` key."""
    return read_u64(key, len(SESSION_PREFIX))


def sustained(sid: int, ino: int) -> bytes:
    return SUSTAINED_PREFIX + _U64.pack(sid) + _U64.pack(ino)


def sustained_parts(key: bytes) -> tuple[int, int]:
    """``(sid, ino)`` of a :func:`sustained` key."""
    at = len(SUSTAINED_PREFIX)
    return read_u64(key, at), read_u64(key, at + _U64.size)


# -- blocks ----------------------------------------------------------------------------


def block(name: str, prefix: bytes = BLOCK_PREFIX) -> bytes:
    """The key of block ``name`` in a block store whose keys start with ``prefix``.

    A volume's own engine keeps blocks under ``B``; a block store in another engine (or
    another etcd prefix) uses the same layout with the prefix it was given.  A leading part
    of a name gives the prefix of every block whose name starts with it."""
    return prefix + name.encode()


def block_name(key: bytes, prefix: bytes = BLOCK_PREFIX) -> str:
    """The block name of a :func:`block` key made with ``prefix``."""
    if not key.startswith(prefix):
        raise ValueError(f"not a block key under {prefix!r}: {key!r}")
    return key[len(prefix):].decode()


# -- watch records, history ------------------------------------------------------------


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
