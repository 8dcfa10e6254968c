"""Compaction of an engine's revision history, by one mount at a time.

etcd keeps every revision until told to compact, and JuiceFS leaves that to its users;
the Raft store (embedded included) keeps the values of its history in files until then.
Each kvfs mount runs :class:`Compactor`, but only the mount holding the
``Ccompactor`` key -- attached to its session lease, so it moves to another mount when the
holder dies -- compacts.  It samples the engine's revision every ``interval`` seconds and
compacts up to the newest sample older than ``retain`` seconds, so watches that fall
behind by less than ``retain`` can always resume; one that falls further behind gets
``Compacted`` and its mount invalidates everything it cached (see kvfs.vfs.coherence).
Compaction only drops history: etcd's disk space comes back after ``etcdctl defrag``
(docs/operations.md).

The lease is read from the :class:`~kvfs.meta.session.Session` at every claim, never
copied: a session whose lease expired (a pause or outage past its TTL) registers again on a
new lease, and a claim made with the dead one would fail for good -- etcd refuses a put on
an unknown lease, which the engines report as a failed compare.  A failed claim logs why.
"""

from __future__ import annotations

import logging
import time
from collections import deque

import trio

from kvfs.kv.api import Compare, KVEngine, KVError, Put
from kvfs.meta.keys import COMPACTOR, u64
from kvfs.meta.session import Session

log = logging.getLogger("kvfs.compactor")


class Compactor:
    """See module docstring."""

    def __init__(self, kv: KVEngine, session: Session, *,
                 retain: float = 600.0, interval: float = 60.0) -> None:
        self.kv = kv
        self.session = session
        self.retain = retain
        self.interval = interval
        self._samples: deque[tuple[float, int]] = deque()
        self.compacted = 0

    async def is_holder(self) -> bool:
        """Take the compactor role if nobody holds it; True if this mount holds it."""
        me = u64(self.session.sid)
        cur = await self.kv.get(COMPACTOR)
        if cur is not None:
            return cur.value == me
        lease = self.session.lease
        res = await self.kv.commit([Compare(COMPACTOR, 0)], [Put(COMPACTOR, me, lease)])
        if res.succeeded:
            log.info("session %d took the compactor role", self.session.sid)
            return True
        # Either another mount claimed the role first, or our lease is gone.
        cur = await self.kv.get(COMPACTOR)
        if cur is not None:
            log.debug("compactor role taken by another mount first")
        else:
            log.warning("could not take the compactor role: lease %x of session %d is not "
                        "alive (expired?); retrying once the session registers again",
                        lease, self.session.sid)
        return cur is not None and cur.value == me

    async def step(self, now: float) -> None:
        """Take one sample and compact if this mount is the holder."""
        self._samples.append((now, await self.kv.current_revision()))
        target = 0
        while self._samples and now - self._samples[0][0] >= self.retain:
            target = self._samples.popleft()[1]
        if target > self.compacted and await self.is_holder():
            await self.kv.compact(target)
            self.compacted = target
            log.info("compacted engine history up to revision %d", target)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        task_status.started()
        while True:
            try:
                await self.step(time.monotonic())
            except KVError as exc:
                log.warning("revision compaction skipped: %s", exc)
            await trio.sleep(self.interval)
