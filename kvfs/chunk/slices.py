"""Slice objects as immutable blocks in an object store, behind a bounded LRU block cache.

A slice of ``size`` bytes is stored as ``ceil(size / block_size)`` blocks named by
:func:`~kvfs.objstore.api.block_name`; block ``i`` holds bytes ``[i*bs, min((i+1)*bs, size))``.
Blocks are written once and never modified, so cached blocks never go stale; a slice is
only deleted once no chunk refers to it.
"""

from __future__ import annotations

from collections import OrderedDict

import trio

from kvfs.chunk.layout import block_ranges
from kvfs.kv.api import KVEngine, Put
from kvfs.objstore.api import BlockNotFound, ObjectStore, block_name
from kvfs.outage import side_by_side


class SliceStore:
    """Reads, writes and deletes slices (see module docstring)."""

    def __init__(self, store: ObjectStore, block_size: int, cache_bytes: int = 64 << 20,
                 parallel: int = 8) -> None:
        self.store = store
        self.block_size = block_size
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[str, bytes] = OrderedDict()
        self._cached = 0
        self._limit = trio.CapacityLimiter(parallel)
        # Counted for the mount's metrics: block reads answered by the cache or not, and
        # block store calls that failed (a missing block on delete is not a failure).
        self.cache_hits = 0
        self.cache_misses = 0
        self.store_errors = 0

    def _blocks(self, slice_id: int, size: int) -> list[tuple[str, int, int]]:
        """(name, start, end) of every block of the slice."""
        bs = self.block_size
        out = []
        for i, start in enumerate(range(0, size, bs)):
            end = min(start + bs, size)
            out.append((block_name(slice_id, i, end - start), start, end))
        return out

    def _remember(self, name: str, data: bytes) -> None:
        if len(data) > self.cache_bytes // 4 or name in self._cache:
            return
        self._cache[name] = data
        self._cached += len(data)
        while self._cached > self.cache_bytes:
            _, old = self._cache.popitem(last=False)
            self._cached -= len(old)

    async def write(self, slice_id: int, data: bytes | bytearray | memoryview) -> None:
        """Store ``data`` as slice ``slice_id``; returns once every block is durable."""
        mv = memoryview(data)

        async def put(name: str, start: int, end: int) -> None:
            async with self._limit:
                block = bytes(mv[start:end])
                try:
                    await self.store.put(name, block)
                except Exception:
                    self.store_errors += 1
                    raise
                self._remember(name, block)

        blocks = self._blocks(slice_id, len(mv))
        if len(blocks) == 1:
            await put(*blocks[0])
            return
        async with side_by_side() as nursery:
            for name, start, end in blocks:
                nursery.start_soon(put, name, start, end)

    def inline_puts(self, slice_id: int, data: bytes | memoryview,
                    engine: KVEngine) -> list[Put] | None:
        """The KV writes storing slice ``slice_id`` inside a transaction of ``engine``, or
        None if the store keeps blocks elsewhere (see ObjectStore.inline_puts)."""
        mv = memoryview(data)
        puts: list[Put] = []
        for name, start, end in self._blocks(slice_id, len(mv)):
            block = bytes(mv[start:end])
            more = self.store.inline_puts(name, block, engine)
            if more is None:
                return None
            puts += more
            self._remember(name, block)
        return puts

    async def _block(self, name: str) -> bytes:
        data = self._cache.get(name)
        if data is not None:
            self.cache_hits += 1
            self._cache.move_to_end(name)
            return data
        self.cache_misses += 1
        async with self._limit:
            try:
                data = await self.store.get(name)
            except Exception:
                self.store_errors += 1
                raise
        self._remember(name, data)
        return data

    async def read(self, slice_id: int, size: int, off: int, length: int) -> bytes:
        """Bytes ``[off, off+length)`` of slice ``slice_id`` of total ``size``."""
        parts = []
        bs = self.block_size
        for index, boff, blen in block_ranges(size, bs, off, length):
            bsize = min(bs, size - index * bs)
            block = await self._block(block_name(slice_id, index, bsize))
            parts.append(block[boff:boff + blen])
        return b"".join(parts)

    async def delete(self, slice_id: int, size: int) -> None:
        """Delete every block of the slice (idempotent)."""
        for name, _, _ in self._blocks(slice_id, size):
            old = self._cache.pop(name, None)
            if old is not None:
                self._cached -= len(old)
            try:
                await self.store.delete(name)
            except BlockNotFound:
                pass
            except Exception:
                self.store_errors += 1
                raise
