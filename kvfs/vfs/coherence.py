"""Cache coherence across mounts: what other mounts changed reaches the kernel's caches.

Every mount of a shared engine watches its inode keyspace once: the record cache
(:class:`~kvfs.kv.cache.CachedEngine`) runs the watch, applies each batch of changes to
itself, and then hands other mounts' changes in it to :class:`Coherence`, which tells the
kernel to drop what it cached: an attribute or chunk change invalidates the inode
(attributes and page cache), a directory-entry change invalidates that name.  Changes
this mount committed itself never get here (the record cache keeps them back) -- the
kernel already saw them in our replies.  Because the record cache is updated first, a
kernel that drops a name and asks again gets the new answer.

When the watch could not resume (its revision was compacted away) the record cache
forgot everything and every inode the kernel may hold is invalidated.  Freshness
therefore depends on watch delay (milliseconds) for cached entries and attributes;
:meth:`FileSystem.open` re-reads attributes from the engine (close-to-open), whatever the
watch's state.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Protocol

from kvfs.kv.api import WatchBatch
from kvfs.meta import keys
from kvfs.meta.records import Attr


class Invalidator(Protocol):
    """How coherence reaches the kernel (the FUSE layer implements it)."""

    async def invalidate(self, entries: Sequence[tuple[int, bytes]],
                         inodes: Sequence[int]) -> None:
        """Drop the kernel's cached lookups of ``entries`` (parent, name), then its cached
        attributes and data of ``inodes`` -- all of one watch batch at once, so the
        kernel is reached in one hand-off rather than one per change."""


class Coherence:
    """Hands other mounts' changes to the kernel (see module docstring).  Register
    :meth:`apply` with :meth:`CachedEngine.listen <kvfs.kv.cache.CachedEngine.listen>`."""

    def __init__(self, invalidator: Invalidator,
                 known_inodes: Iterable[int] | None = None,
                 on_orphaned: Callable[[int], Awaitable[None]] | None = None) -> None:
        # Called for every inode another mount left without links (it may be open here).
        self.on_orphaned = on_orphaned
        self.invalidator = invalidator
        self.known_inodes = known_inodes

    async def apply(self, batch: WatchBatch | None) -> None:
        """One batch of the watch; None: everything may have changed."""
        if batch is None:
            await self.invalidator.invalidate([], list(self.known_inodes or ()))
            return
        inodes: set[int] = set()
        entries: set[tuple[int, bytes]] = set()
        for ev in batch.events:
            try:
                ino, kind, rest = keys.parse_inode_key(ev.key)
            except ValueError:
                continue
            if kind == keys.DENTRY_TAG:
                entries.add((ino, rest))
            elif kind in (keys.ATTR_TAG, keys.CHUNK_TAG, keys.SYMLINK_TAG):
                inodes.add(ino)
                if kind == keys.ATTR_TAG and ev.value and self.on_orphaned is not None \
                        and Attr.decode(ev.value).nlink == 0:
                    await self.on_orphaned(ino)
        if entries or inodes:
            await self.invalidator.invalidate(sorted(entries), sorted(inodes))
