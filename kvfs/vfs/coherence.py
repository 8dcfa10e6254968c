"""Cache coherence across mounts: watch the volume's inode keys and invalidate what changed.

Every mount of a shared engine runs one :class:`Coherence` task.  It watches the ``A``
(inode) keyspace from the revision the mount started at and, for each change made by some
*other* mount, tells the kernel to drop what it cached: an attribute or chunk change
invalidates the inode (attributes and page cache), a directory-entry change invalidates that
name.  Changes this mount committed itself are skipped -- the kernel already saw them in our
replies.

A broken watch resumes from the last revision it delivered; if that revision has been
compacted away, everything the kernel may hold is invalidated, since individual changes
can no longer be known.  Freshness therefore depends on watch delay (milliseconds) only for
cached entries and attributes; :meth:`FileSystem.open` re-reads attributes from the engine
(close-to-open), whatever the watch's state.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol

import trio

from kvfs.kv.api import Compacted, KVEngine, KVError, prefix_end
from kvfs.kv.txn import ReadHints
from kvfs.meta import keys
from kvfs.meta.records import Attr

log = logging.getLogger("kvfs.coherence")


class Invalidator(Protocol):
    """How coherence reaches the kernel (the FUSE layer implements it)."""

    async def invalidate_inode(self, ino: int) -> None:
        """Drop the kernel's cached attributes and data of ``ino``."""

    async def invalidate_entry(self, parent: int, name: bytes) -> None:
        """Drop the kernel's cached lookup of ``name`` in ``parent``."""


class OwnRevisions:
    """The revisions of this mount's recent commits (bounded; oldest forgotten first)."""

    def __init__(self, limit: int = 100_000) -> None:
        self._order: deque[int] = deque()
        self._set: set[int] = set()
        self._limit = limit

    def add(self, revision: int) -> None:
        if revision in self._set:
            return
        self._order.append(revision)
        self._set.add(revision)
        if len(self._order) > self._limit:
            self._set.discard(self._order.popleft())

    def __contains__(self, revision: object) -> bool:
        return revision in self._set


class Coherence:
    """Watches the engine and invalidates kernel caches (see module docstring)."""

    def __init__(self, kv: KVEngine, own: OwnRevisions, invalidator: Invalidator,
                 known_inodes: Iterable[int] | None = None,
                 on_orphaned: Callable[[int], Awaitable[None]] | None = None,
                 hints: ReadHints | None = None) -> None:
        self.kv = kv
        self.hints = hints  # transaction read hints: other mounts' changes make them stale
        # Called for every inode another mount left without links (it may be open here).
        self.on_orphaned = on_orphaned
        self.own = own
        self.invalidator = invalidator
        self.known_inodes = known_inodes
        self.revision = 0  # every change up to here has been applied

    async def run(self, *, since: int | None = None,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Watch from revision ``since`` + 1 (default: the engine's current revision)."""
        self.revision = await self.kv.current_revision() if since is None else since
        task_status.started()
        start, end = keys.INODE_PREFIX, prefix_end(keys.INODE_PREFIX)
        while True:
            try:
                async for batch in self.kv.watch(start, end, self.revision + 1):
                    await self._apply(batch.events)
                    self.revision = max(self.revision, batch.revision)
            except Compacted:
                log.warning("watch fell behind compaction; invalidating every cached inode")
                if self.hints is not None:
                    self.hints.clear()
                self.revision = await self._current_or(self.revision)
                await self._invalidate_all()
            except KVError as exc:
                log.warning("watch interrupted (%s); resuming from revision %d", exc,
                            self.revision + 1)
                await trio.sleep(1.0)

    async def _current_or(self, fallback: int) -> int:
        try:
            return await self.kv.current_revision()
        except KVError:
            return fallback

    async def _apply(self, events: list) -> None:  # type: ignore[type-arg]
        inodes: set[int] = set()
        entries: set[tuple[int, bytes]] = set()
        for ev in events:
            if ev.mod_revision in self.own:
                continue
            key = ev.key
            if self.hints is not None:
                self.hints.drop(key)
            try:
                ino, kind, rest = keys.parse_inode_key(key)
            except ValueError:
                continue
            if kind == keys.DENTRY_TAG:
                entries.add((ino, rest))
            elif kind in (keys.ATTR_TAG, keys.CHUNK_TAG, keys.SYMLINK_TAG):
                inodes.add(ino)
                if kind == keys.ATTR_TAG and ev.value and self.on_orphaned is not None \
                        and Attr.decode(ev.value).nlink == 0:
                    await self.on_orphaned(ino)
        for parent, name in entries:
            await self.invalidator.invalidate_entry(parent, name)
        for ino in inodes:
            await self.invalidator.invalidate_inode(ino)

    async def _invalidate_all(self) -> None:
        for ino in list(self.known_inodes or ()):
            await self.invalidator.invalidate_inode(ino)
