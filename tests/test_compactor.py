"""Revision compaction: one holder at a time, only history older than the retention."""

from __future__ import annotations

from kvfs.kv.api import Put
from kvfs.kv.local import MemoryEngine
from kvfs.meta.compactor import Compactor
from kvfs.meta.session import Session


async def test_only_the_holder_compacts_and_only_old_history() -> None:
    kv = MemoryEngine()
    lease_a, lease_b = await kv.lease_grant(60), await kv.lease_grant(60)
    a = Compactor(kv, Session(kv, 1, lease_a, b"", 60), retain=100)
    b = Compactor(kv, Session(kv, 2, lease_b, b"", 60), retain=100)
    for i in range(5):
        await kv.commit([], [Put(b"k", b"%d" % i)])
    await a.step(0.0)
    await b.step(0.0)
    rev_at_0 = await kv.current_revision()
    for i in range(5):
        await kv.commit([], [Put(b"k", b"x%d" % i)])
    await a.step(50.0)
    assert a.compacted == 0  # nothing is older than the retention yet
    await a.step(100.0)
    assert a.compacted == rev_at_0
    await b.step(100.0)
    assert b.compacted == 0  # b is not the holder
    assert await a.is_holder() and not await b.is_holder()
    await kv.lease_revoke(lease_a)  # the holder's session ends: b may take over
    assert await b.is_holder()
