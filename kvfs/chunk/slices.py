"""Slice objects as immutable blocks in an object store, behind a bounded LRU block cache.

A slice of ``size`` bytes is stored as ``ceil(size / block_size)`` blocks named by
:func:`~kvfs.objstore.api.block_name`; block ``i`` holds bytes ``[i*bs, min((i+1)*bs, size))``.
Blocks are written once and never modified, so cached blocks never go stale; a slice is
only deleted once no chunk refers to it.

Reads fetch every block they need concurrently (at most ``parallel`` store calls in flight
for the whole store), and a block is fetched once however many readers want it at the same
time: a reader that finds a fetch of its block under way waits for that fetch instead of
starting another (the kernel splits one large read into several requests that arrive
together and often share a block).  :meth:`SliceStore.prefetch` is the same fetch with
nobody waiting: readahead (:mod:`kvfs.chunk.filedata`) uses it, and what it fetches lands
in the LRU, so readahead buffers count toward the cache's byte budget.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence

import trio

from kvfs.chunk.layout import Segment, block_ranges
from kvfs.kv.api import KVEngine, Put
from kvfs.objstore.api import BlockNotFound, ObjectStore, block_name, parse_block_name
from kvfs.outage import side_by_side


class _Fetch:
    """One block fetch under way; ``data`` is set before ``done`` when it succeeded."""

    __slots__ = ("data", "done")

    def __init__(self) -> None:
        self.data: bytes | None = None
        self.done = trio.Event()


class SliceStore:
    """Reads, writes and deletes slices (see module docstring)."""

    def __init__(self, store: ObjectStore, block_size: int, cache_bytes: int = 64 << 20,
                 parallel: int = 8) -> None:
        self.store = store
        self.block_size = block_size
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[str, bytes] = OrderedDict()
        self._cached = 0
        self._inflight: dict[str, _Fetch] = {}
        self._limit = trio.CapacityLimiter(parallel)
        # Counted for the mount's metrics: block reads answered by the cache (or by a
        # fetch already under way) or not, blocks fetched ahead by readahead, and block
        # store calls that failed (a missing block on delete is not a failure).
        self.cache_hits = 0
        self.cache_misses = 0
        self.prefetched = 0
        self.store_errors = 0

    @property
    def max_cached_block(self) -> int:
        """Blocks larger than this are not kept in the cache."""
        return self.cache_bytes // 4

    def _blocks(self, slice_id: int, size: int) -> list[tuple[str, int, int]]:
        """(name, start, end) of every block of the slice."""
        bs = self.block_size
        out = []
        for i, start in enumerate(range(0, size, bs)):
            end = min(start + bs, size)
            out.append((block_name(slice_id, i, end - start), start, end))
        return out

    def _remember(self, name: str, data: bytes) -> None:
        if len(data) > self.max_cached_block or name in self._cache:
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
        """Block ``name``: from the cache, from a fetch already under way, or fetched."""
        while True:
            data = self._cache.get(name)
            if data is not None:
                self.cache_hits += 1
                self._cache.move_to_end(name)
                return data
            fetch = self._inflight.get(name)
            if fetch is None:
                break
            self.cache_hits += 1
            await fetch.done.wait()
            if fetch.data is not None:
                return fetch.data
            # That fetch failed or its reader went away: try again, ourselves.
        self.cache_misses += 1
        fetch = self._inflight[name] = _Fetch()
        try:
            async with self._limit:
                try:
                    data = await self.store.get(name)
                except Exception:
                    self.store_errors += 1
                    raise
            fetch.data = data
            self._remember(name, data)
            return data
        finally:
            del self._inflight[name]
            fetch.done.set()

    async def _fetch_all(self, names: Iterable[str]) -> dict[str, bytes]:
        """The blocks ``names``, fetched concurrently."""
        todo = list(dict.fromkeys(names))
        if len(todo) == 1:
            return {todo[0]: await self._block(todo[0])}
        out: dict[str, bytes] = {}

        async def one(name: str) -> None:
            out[name] = await self._block(name)

        async with side_by_side() as nursery:
            for name in todo:
                nursery.start_soon(one, name)
        return out

    def _pieces(self, slice_id: int, size: int, off: int,
                length: int) -> list[tuple[str, int, int]]:
        """(block name, offset in block, length) of slice bytes ``[off, off+length)``."""
        bs = self.block_size
        return [(block_name(slice_id, index, min(bs, size - index * bs)), boff, blen)
                for index, boff, blen in block_ranges(size, bs, off, length)]

    def plan_blocks(self, segments: Sequence[Segment]) -> list[str]:
        """Names of the blocks that hold the data of ``segments`` (holes need none)."""
        names: list[str] = []
        for seg in segments:
            if seg.slice_id:
                names += [name for name, _, _ in self._pieces(
                    seg.slice_id, seg.slice_size, seg.slice_off, seg.length)]
        return names

    async def read(self, slice_id: int, size: int, off: int, length: int) -> bytes:
        """Bytes ``[off, off+length)`` of slice ``slice_id`` of total ``size``."""
        pieces = self._pieces(slice_id, size, off, length)
        blocks = await self._fetch_all(name for name, _, _ in pieces)
        return b"".join(memoryview(blocks[name])[boff:boff + blen]
                        for name, boff, blen in pieces)

    async def read_segments(self, segments: Sequence[Segment]) -> bytes:
        """The bytes of ``segments`` (a :func:`~kvfs.chunk.layout.read_plan`) in order,
        every block they need fetched concurrently; a hole reads as zeros."""
        blocks = await self._fetch_all(self.plan_blocks(segments))
        # Views, joined once: a read of a whole block returns the block itself, and any
        # other read copies its bytes once (a 1 MiB read copied three times was a visible
        # share of a cold sequential read's CPU).
        parts: list[bytes | memoryview] = []
        for seg in segments:
            if not seg.slice_id:
                parts.append(bytes(seg.length))
                continue
            for name, boff, blen in self._pieces(seg.slice_id, seg.slice_size,
                                                 seg.slice_off, seg.length):
                block = blocks[name]
                parts.append(block if boff == 0 and blen == len(block)
                             else memoryview(block)[boff:boff + blen])
        if len(parts) == 1 and isinstance(parts[0], bytes):
            return parts[0]
        return b"".join(parts)

    def cached(self, name: str) -> bool:
        """Whether block ``name`` is in the cache or being fetched."""
        return name in self._cache or name in self._inflight

    async def prefetch(self, names: Iterable[str]) -> None:
        """Fetch the blocks ``names`` not cached or under way into the cache, concurrently.
        Blocks too large for the cache are not fetched (nobody would find them there)."""
        todo = [n for n in dict.fromkeys(names) if not self.cached(n)]
        todo = [n for n in todo if parse_block_name(n)[2] <= self.max_cached_block]
        self.prefetched += len(todo)
        if todo:
            await self._fetch_all(todo)

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

