"""The base of engine wrappers: delegates every call to an inner engine.

A wrapper (the record cache, the request counters) overrides only what it changes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from kvfs.kv.api import (
    CommitResult,
    Compare,
    Delete,
    KeyValue,
    KVEngine,
    Put,
    RangeResult,
    WatchBatch,
)


class DelegatingEngine(KVEngine):
    """Hands every call to ``inner``: the base of wrappers that watch some calls."""

    def __init__(self, inner: KVEngine) -> None:
        self.inner = inner
        self.limits = inner.limits
        self.shared = inner.shared

    async def get(self, key: bytes) -> KeyValue | None:
        return await self.inner.get(key)

    async def get_many(self, keys: Sequence[bytes]) -> list[KeyValue | None]:
        return await self.inner.get_many(keys)

    async def range(self, start: bytes, end: bytes, *, limit: int = 0,
                    keys_only: bool = False) -> RangeResult:
        return await self.inner.range(start, end, limit=limit, keys_only=keys_only)

    async def commit(self, compares: Sequence[Compare], puts: Sequence[Put],
                     deletes: Sequence[Delete] = ()) -> CommitResult:
        return await self.inner.commit(compares, puts, deletes)

    def watch(self, start: bytes, end: bytes, start_revision: int) -> AsyncIterator[WatchBatch]:
        return self.inner.watch(start, end, start_revision)

    async def current_revision(self) -> int:
        return await self.inner.current_revision()

    async def lease_grant(self, ttl: float) -> int:
        return await self.inner.lease_grant(ttl)

    async def lease_keepalive(self, lease: int) -> bool:
        return await self.inner.lease_keepalive(lease)

    async def lease_revoke(self, lease: int) -> None:
        await self.inner.lease_revoke(lease)

    async def compact(self, revision: int) -> None:
        await self.inner.compact(revision)

    async def aclose(self) -> None:
        await self.inner.aclose()

    def describe(self) -> str:
        return self.inner.describe()

    def base(self) -> KVEngine:
        return self.inner.base()
