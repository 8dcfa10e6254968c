"""Batched id allocation from counter keys: one engine transaction per batch, not per id."""

from __future__ import annotations

import trio

from kvfs.kv.api import KVEngine
from kvfs.kv.txn import Txn, run_txn
from kvfs.meta.keys import read_u64, u64


class IdAllocator:
    """Hands out unique, increasing ids from the counter at ``key``, ``batch`` at a time.

    Invariant: every id returned was reserved by a committed transaction that moved the
    counter past it, so ids are never reused even across crashes (a crash only skips ids).
    """

    def __init__(self, kv: KVEngine, key: bytes, batch: int) -> None:
        self.kv = kv
        self.key = key
        self.batch = batch
        self._next = 0
        self._end = 0
        self._lock = trio.Lock()

    async def next(self) -> int:
        async with self._lock:
            if self._next >= self._end:
                async def reserve(t: Txn) -> int:
                    raw = await t.get(self.key)
                    start = read_u64(raw) if raw else 1
                    t.put(self.key, u64(start + self.batch))
                    return start

                start = await run_txn(self.kv, reserve)
                self._next, self._end = start, start + self.batch
            n = self._next
            self._next += 1
            return n
