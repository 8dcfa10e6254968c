"""An engine as one of several mounts sees it: every answer late by a random number of
scheduler turns, so model-based tests see reads overlap watch deliveries and other mounts'
commits (tests/test_record_cache.py, tests/test_fs_cache_model.py)."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Sequence

import trio

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
from kvfs.kv.delegating import DelegatingEngine

CALL_TURNS = (0, 0, 1, 2, 5)


class Jittery(DelegatingEngine):
    """Delegates to ``inner``; each call waits a random number of turns (from ``CALL_TURNS``)
    before and after, and each watch batch one drawn from ``watch_turns``."""

    def __init__(self, inner: KVEngine, rng: random.Random,
                 watch_turns: Sequence[int] = CALL_TURNS) -> None:
        super().__init__(inner)
        self.rng = rng
        self.watch_turns = watch_turns

    async def _turns(self, choices: Sequence[int] = CALL_TURNS) -> None:
        for _ in range(self.rng.choice(choices)):
            await trio.lowlevel.checkpoint()

    async def get(self, key: bytes) -> KeyValue | None:
        await self._turns()
        got = await self.inner.get(key)
        await self._turns()
        return got

    async def get_many(self, keys: Sequence[bytes]) -> list[KeyValue | None]:
        await self._turns()
        got = await self.inner.get_many(keys)
        await self._turns()
        return got

    async def range(self, start: bytes, end: bytes, *, limit: int = 0,
                    keys_only: bool = False) -> RangeResult:
        await self._turns()
        got = await self.inner.range(start, end, limit=limit, keys_only=keys_only)
        await self._turns()
        return got

    async def commit(self, compares: Sequence[Compare], puts: Sequence[Put],
                     deletes: Sequence[Delete] = ()) -> CommitResult:
        await self._turns()
        res = await self.inner.commit(compares, puts, deletes)
        await self._turns()
        return res

    async def watch(self, start: bytes, end: bytes,  # type: ignore[override]
                    start_revision: int) -> AsyncIterator[WatchBatch]:
        async for batch in self.inner.watch(start, end, start_revision):
            await self._turns(self.watch_turns)
            yield batch
