"""Recording versions: called by the filesystem layer after each change it committed.

:class:`Recorder` turns "inode 42 was closed after a write" or "``/a`` was renamed to
``/b``" into version records under the paths involved.  Each record is its own transaction,
committed after the change it describes; a version is recorded by the mount that made the
change, with that mount's host name and the caller's uid.

Paths: an inode's path is found by walking up its parents -- every directory, and every
file with one link, records its parent and its name in its attributes
(:class:`kvfs.meta.records.Attr`).  Where a name is not recorded (a file with several hard
links, or a record older than names) the parent directory is searched for the inode.

Content costs no copy: a version holds the slice records of the file's chunks.  Blocks
are immutable, and while history is on the slices a chunk lets go of keep their blocks
for the retention period (``R`` keys, :meth:`kvfs.meta.metadata.Metadata._queue_freed`),
so the blocks of every version are readable for as long as the version is kept.

A failure to record is logged and never fails the change itself, which has committed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import trio

from kvfs.chunk.layout import CHUNK_SIZE
from kvfs.history.records import (
    AWAY,
    MAX_CHUNK_BYTES,
    MOVE,
    RENAME,
    STAGING_DIR,
    HistorySettings,
    Version,
    _under,
)
from kvfs.kv.api import Put, prefix_end
from kvfs.kv.txn import Txn, run_txn
from kvfs.meta import keys
from kvfs.meta.keys import ROOT_INO
from kvfs.meta.metadata import Metadata
from kvfs.meta.records import Attr, decode_dentry, now_ns
from kvfs.outage import log_failure

log = logging.getLogger("kvfs.history")
# A directory searched for an inode's name is read this many entries at a time, up to
# MAX_SEARCH entries; a moved tree is versioned up to MAX_TREE_FILES files.
_PAGE = 1000
MAX_SEARCH = 100_000
MAX_TREE_FILES = 100_000
SETTINGS_REFRESH = 60.0


def join(dir_path: bytes, name: bytes) -> bytes:
    return (dir_path.rstrip(b"/") + b"/" + name) if name else dir_path


class Recorder:
    """Writes version records for one mount (module docstring)."""

    def __init__(self, meta: Metadata, settings: HistorySettings, host: str) -> None:
        self.meta = meta
        self.kv = meta.kv
        self.host = host
        self.settings = settings
        meta.retain_seconds = settings.retain_seconds

    def apply(self, settings: HistorySettings) -> None:
        self.settings = settings
        self.meta.retain_seconds = settings.retain_seconds

    @property
    def enabled(self) -> bool:
        return self.settings.enabled

    def touches(self, dir_path: bytes) -> bool:
        """Whether some file below ``dir_path`` may be covered by the history."""
        s = self.settings
        if not s.enabled or _under(dir_path, STAGING_DIR):
            return False
        return any(_under(dir_path, p) or _under(p, dir_path) for p in s.paths)

    async def refresh_settings(self, *, task_status: trio.TaskStatus[None]
                               = trio.TASK_STATUS_IGNORED) -> None:
        """Follow changes of the volume's settings (``kvfs format --force``)."""
        task_status.started()
        while True:
            await trio.sleep(SETTINGS_REFRESH)
            try:
                raw = await self.kv.get(keys.SETTING)
                if raw is not None:
                    self.apply(HistorySettings.from_format(raw.value))
            except Exception:  # noqa: BLE001 - keep the last settings; retry later
                log_failure(log, "reading the volume's history settings failed")

    # -- paths -------------------------------------------------------------------------

    async def _name_in(self, parent: int, ino: int) -> list[bytes]:
        """The names of ``ino`` in directory ``parent`` (searched, bounded)."""
        prefix = keys.dentry_prefix(parent)
        end = prefix_end(prefix)
        start, seen, names = prefix, 0, []
        while seen < MAX_SEARCH:
            res = await self.kv.range(start, end, limit=_PAGE)
            for kv in res.kvs:
                if decode_dentry(kv.value)[1] == ino:
                    names.append(keys.dentry_name(kv.key))
            seen += len(res.kvs)
            if not res.more:
                break
            start = res.kvs[-1].key + b"\0"
        return names

    async def dir_path(self, ino: int) -> bytes | None:
        """The path of directory ``ino`` from the volume root; None if it is gone."""
        parts: list[bytes] = []
        cur = ino
        for _ in range(4096):
            if cur == ROOT_INO:
                return b"/" + b"/".join(reversed(parts))
            try:
                a = await self.meta.getattr(cur)
            except Exception:  # noqa: BLE001 - gone meanwhile: no path
                return None
            if not a.nlink:
                return None
            parent = a.parent or ROOT_INO
            name = a.name or next(iter(await self._name_in(parent, cur)), b"")
            if not name:
                return None
            parts.append(name)
            cur = parent
        return None

    async def paths_of(self, ino: int, a: Attr) -> list[bytes]:
        """Every path of non-directory ``ino`` (several with hard links)."""
        if not a.nlink:
            return []
        if a.parent:
            names = [a.name] if a.name else await self._name_in(a.parent, ino)
            parents: Iterable[tuple[int, list[bytes]]] = [(a.parent, names)]
        else:
            found = []
            res = await self.kv.range(keys.link_parent_prefix(ino),
                                      prefix_end(keys.link_parent_prefix(ino)), keys_only=True)
            for kv in res.kvs:
                p = keys.link_parent_of(kv.key)
                found.append((p, await self._name_in(p, ino)))
            parents = found
        out = []
        for parent, names in parents:
            d = await self.dir_path(parent)
            if d is not None:
                out += [join(d, n) for n in names]
        return out

    # -- recording ---------------------------------------------------------------------

    async def put_version(self, t: Txn, ino: int, a: Attr, kind: str, uid: int,
                          where: list[bytes], at: int, seq: int,
                          note: dict[str, Any] | None = None) -> None:
        """Add the version of ``ino`` (attributes ``a``) under ``where`` to ``t``."""
        v = Version(kind, at or now_ns(), self.host, uid, a.mode, a.uid, a.gid, a.mtime,
                    a.size, note=dict(note or {}))
        if a.is_reg:
            if a.size == 0:  # nothing to read (and a new file's chunks are not even asked for)
                chunks: list[tuple[int, bytes]] = []
            elif a.size <= CHUNK_SIZE:  # chunks past the end are never read
                first = await t.get(keys.chunk(ino, 0))
                chunks = [] if first is None else [(0, first)]
            else:
                chunks = [(keys.chunk_index(c.key), c.value)
                          for c in await t.scan(keys.chunk_prefix(ino))]
            if sum(len(raw) for _, raw in chunks) <= MAX_CHUNK_BYTES:
                v.chunks = chunks
            else:
                v.note["content"] = "not kept"
        elif a.is_symlink:
            v.target = await t.get(keys.symlink(ino))
        for p in where:
            t.put(keys.history(p, v.time, seq), v.encode())

    def put_tombstone(self, t: Txn, path: bytes, kind: str, uid: int,
                      note: dict[str, Any] | None, seq: int, at: int = 0) -> None:
        """Add a tombstone of ``path`` to ``t`` (within the change's own transaction)."""
        if self.settings.covers(path):
            v = Version(kind, at or now_ns(), self.host, uid, note=dict(note or {}))
            t.put(keys.history(path, v.time, seq), v.encode())

    async def in_rename(self, t: Txn, moved: list[tuple[int, Attr]],
                        new: bytes, old: bytes, uid: int, seq: int) -> bool:
        """Inside a rename's own transaction: record a plain rename of a file (its version
        at ``new``, a tombstone at ``old``) and return True; anything else (a directory,
        an exchange) returns False and is recorded by :meth:`record_moves` afterwards."""
        if len(moved) != 1 or moved[0][1].is_dir:
            return False
        ino, a = moved[0]
        at = now_ns()
        self.put_tombstone(t, old, AWAY, uid, {"to": new.decode(errors="replace")}, seq, at)
        if self.settings.covers(new):
            await self.put_version(t, ino, a, RENAME, uid, [new], at, seq,
                                   {"from": old.decode(errors="replace")})
        return True

    async def version_in(self, t: Txn, ino: int, a: Attr, kind: str, uid: int) -> None:
        """Inside a change's own transaction: the version of non-directory ``ino`` as the
        change leaves it (attributes ``a``), under each of its paths the history covers --
        no commit of its own."""
        if not self.enabled or a.is_dir or not a.nlink:
            return
        where = [p for p in await self.paths_of(ino, a) if self.settings.covers(p)]
        if where:
            await self.put_version(t, ino, a, kind, uid, where, 0,
                                   await self.meta.gc_ids.next())

    async def record_file(self, ino: int, kind: str, uid: int, note: dict[str, Any] | None = None,
                          paths: list[bytes] | None = None, at: int = 0,
                          seq: int = 0) -> list[bytes]:
        """A version of non-directory ``ino`` as it is now, under each of ``paths`` (default:
        all its paths) that the history covers; returns the paths recorded.  ``at`` (ns)
        is the version's time, shared by every version one change records (default now);
        ``at`` and ``seq`` together name an existing version to bring up to date."""
        if not self.enabled:
            return []
        seq = seq or await self.meta.gc_ids.next()

        async def fn(t: Txn) -> list[bytes]:
            # One round trip for most files: their attributes, their first chunk (all of a
            # file of up to 64 MiB) and a symlink's target.
            await t.prefetch(keys.attr(ino), keys.chunk(ino, 0), keys.symlink(ino))
            raw = await t.get(keys.attr(ino))
            if raw is None:
                return []
            a = Attr.decode(raw)
            if a.is_dir or not a.nlink:
                return []
            where = paths if paths is not None else await self.paths_of(ino, a)
            where = [p for p in where if self.settings.covers(p)]
            if where:
                await self.put_version(t, ino, a, kind, uid, where, at, seq, note)
            return where

        try:
            return await run_txn(self.kv, fn)
        except Exception:  # noqa: BLE001 - the change itself committed
            log_failure(log, "recording a version of inode %d failed", ino)
            return []

    async def record_gone(self, path: bytes, kind: str, uid: int,
                          note: dict[str, Any] | None = None, at: int = 0) -> None:
        """A tombstone: ``path`` no longer names a file."""
        if not self.settings.covers(path):
            return
        try:
            seq = await self.meta.gc_ids.next()
            v = Version(kind, at or now_ns(), self.host, uid, note=dict(note or {}))
            await self.kv.commit([], [Put(keys.history(path, v.time, seq), v.encode())])
        except Exception:  # noqa: BLE001 - the change itself committed
            log_failure(log, "recording the removal of %r failed", path)

    async def _tree_files(self, ino: int) -> list[tuple[bytes, int]]:
        """``(relative path, inode)`` of every non-directory below directory ``ino``."""
        out: list[tuple[bytes, int]] = []
        todo = [(b"", ino)]
        while todo and len(out) < MAX_TREE_FILES:
            rel, d = todo.pop()
            for e in await self.meta.readdir(d):
                child = rel + b"/" + e.name
                if e.ftype == 4:  # a directory (S_IFDIR >> 12)
                    todo.append((child, e.ino))
                else:
                    out.append((child, e.ino))
        return out

    async def record_moves(self, moves: list[tuple[bytes, bytes, int, Attr]], uid: int) -> None:
        """After a rename: each ``(now_at, was_at, ino, attr)`` is what now sits at path
        ``now_at`` and sat at ``was_at`` before (two entries for an exchange).  Versions go
        to the new paths, tombstones to old paths nothing new arrived at.  All of them
        carry one time, so a restore to that point takes the whole change, however many
        transactions recorded it."""
        if not self.enabled:
            return
        at = now_ns()
        arrived: set[bytes] = set()
        departed: list[tuple[bytes, bytes]] = []  # (old path, new path)
        for now_at, was_at, ino, a in moves:
            if a.is_dir:
                if not (self.touches(now_at) or self.touches(was_at)):
                    continue
                for rel, child in await self._tree_files(ino):
                    arrived.update(await self.record_file(
                        child, MOVE, uid, {"from": (was_at + rel).decode(errors="replace")},
                        [now_at + rel], at))
                    departed.append((was_at + rel, now_at + rel))
            else:
                arrived.update(await self.record_file(
                    ino, RENAME, uid, {"from": was_at.decode(errors="replace")}, [now_at], at))
                departed.append((was_at, now_at))
        for old, new in departed:
            if old not in arrived:
                await self.record_gone(old, AWAY, uid, {"to": new.decode(errors="replace")}, at)
