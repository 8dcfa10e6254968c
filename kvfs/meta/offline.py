"""Last-known metadata, served while the engine is unreachable.

Every successful attribute, lookup and chunk read is remembered here (bounded, least
recently used first out).  Normally nothing is served from it: reads go to the engine, so
they are fresh.  Once a call fails with :class:`~kvfs.kv.api.EngineUnavailable` the cache
turns *offline*: cached answers are returned at once (files already seen stay readable,
with the blocks in the block cache), uncached ones still try the engine and fail after its
bounded timeout, and a background probe turns the cache online again when the engine
answers.

Chunk lists are only served together with the attributes they were read under, so an
offline read never mixes a newer length with older data.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import trio

from kvfs.chunk.layout import Slice
from kvfs.kv.api import EngineUnavailable, KVEngine, KVError
from kvfs.meta.records import Attr

log = logging.getLogger("kvfs.offline")
K = TypeVar("K")
V = TypeVar("V")
T = TypeVar("T")


class LRU(Generic[K, V]):
    """A mapping bounded to ``limit`` items; the least recently used goes first."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        v = self.items.get(key)
        if v is not None:
            self.items.move_to_end(key)
        return v

    def put(self, key: K, value: V) -> None:
        self.items[key] = value
        self.items.move_to_end(key)
        if len(self.items) > self.limit:
            self.items.popitem(last=False)


def _sig(a: Attr) -> tuple[int, int, int]:
    return a.ctime, a.mtime, a.size


class OfflineCache:
    """See module docstring."""

    def __init__(self, limit: int = 100_000) -> None:
        self.attrs: LRU[int, Attr] = LRU(limit)
        self.entries: LRU[tuple[int, bytes], int] = LRU(limit)
        self.chunks: LRU[tuple[int, int], tuple[tuple[int, int, int], list[Slice]]] = \
            LRU(limit // 10)
        self.offline = False

    async def through(self, fresh: Callable[[], Awaitable[T]],
                      cached: Callable[[], T | None]) -> T:
        """``fresh()`` from the engine, or ``cached()`` when the engine is unreachable."""
        if self.offline:
            hit = cached()
            if hit is not None:
                return hit
        try:
            value = await fresh()
        except EngineUnavailable:
            if not self.offline:
                log.warning("metadata engine unreachable: serving cached metadata")
            self.offline = True
            hit = cached()
            if hit is not None:
                return hit
            raise
        self.offline = False
        return value

    def remember_attr(self, ino: int, a: Attr) -> None:
        self.attrs.put(ino, a.copy())

    def cached_attr(self, ino: int) -> Attr | None:
        a = self.attrs.get(ino)
        return a.copy() if a is not None else None

    def remember_chunk(self, ino: int, index: int, slices: list[Slice]) -> None:
        a = self.attrs.get(ino)
        if a is not None:
            self.chunks.put((ino, index), (_sig(a), slices))

    def cached_chunk(self, ino: int, index: int) -> list[Slice] | None:
        hit, a = self.chunks.get((ino, index)), self.attrs.get(ino)
        if hit is None or a is None or hit[0] != _sig(a):
            return None
        return hit[1]

    async def probe(self, kv: KVEngine, *, interval: float = 1.0,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """While offline, ask the engine for its revision until it answers."""
        task_status.started()
        while True:
            await trio.sleep(interval)
            if not self.offline:
                continue
            try:
                await kv.current_revision()
            except KVError:
                continue
            log.warning("metadata engine reachable again")
            self.offline = False
