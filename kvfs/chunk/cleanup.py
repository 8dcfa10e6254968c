"""Background deletion of data no longer referenced: the ``D`` and ``G`` queues.

An inode whose last link and last open handle are gone is queued as ``D ino``; slices
replaced by compaction or cut off by truncate are queued as ``G id``.  :class:`Cleaner`
drains both in idempotent steps, each its own transaction, so it can stop at any point
(crash, unmount) and resume, and several mounts can run it at once:

0. This mount's holds (``SS``) on inodes it no longer has open are released: a release
   at the last close that failed (an outage) is retried every round.
1. ``D ino``: move up to 50 chunk keys at a time into one ``G`` record, then delete
   every remaining key of the inode and the ``D`` key in one transaction.
2. ``G id``: delete every block of every slice listed, then the ``G`` key.  Deleting a
   block twice is harmless, so a crash between the two steps only repeats work.
3. ``R freed id``: freed slices the history keeps (kvfs.history): once the volume's
   current retention has passed since ``freed`` (at once when history is off), the same
   as ``G``.  Versions past their retention are removed by
   :func:`kvfs.history.store.expire`, called here every ``history_interval``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

import msgpack
import trio

from kvfs.chunk.layout import decode_slices
from kvfs.chunk.slices import SliceStore
from kvfs.kv.api import Delete, prefix_end
from kvfs.meta import keys
from kvfs.meta.metadata import Metadata
from kvfs.outage import log_failure

log = logging.getLogger("kvfs.cleanup")
# Seconds between cleanup rounds at least, however often the cleaner is poked.
MIN_ROUND_GAP = 0.5


class Cleaner:
    """Drains the deletion queues (see module docstring)."""

    def __init__(self, meta: Metadata, slices: SliceStore, interval: float = 2.0,
                 orphan_grace: float = 60.0) -> None:
        self.meta = meta
        # Shared engines: seconds an unlinked file's data outlives its last unlink, so other
        # mounts that have it open can learn of it (watch) and hold it.
        self.orphan_grace = orphan_grace
        self.kv = meta.kv
        self.slices = slices
        self.interval = interval
        self._wake = trio.Event()
        # Set by the mount when the volume keeps a history (kvfs.history.retention).
        self.expire_history: Callable[[], Awaitable[None]] | None = None
        self.history_interval = 600.0
        self._next_expiry = 0.0

    def poke(self) -> None:
        self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        task_status.started()
        while True:
            try:
                await self.run_once()
            except Exception:  # noqa: BLE001 - keep the mount alive; retry next round
                log_failure(log, "cleanup round failed (retrying later)")
            # Pokes come with every unlink; a burst of them is served by one round (each
            # round scans four queues) at most every MIN_ROUND_GAP seconds.
            await trio.sleep(min(MIN_ROUND_GAP, self.interval))
            with trio.move_on_after(self.interval):
                await self._wake.wait()
            self._wake = trio.Event()

    async def run_once(self) -> None:
        await self.release_closed_holds()
        await self.release_dead_sessions()
        held = {keys.sustained_parts(kv.key)[1] for kv in await self._scan(keys.SUSTAINED_PREFIX)}
        now = time.time()
        for kv in await self._scan(keys.DELFILE_PREFIX):
            ino = keys.key_ino(kv.key)
            if self.meta.shared:
                _, unlinked_at = msgpack.unpackb(kv.value)
                if ino in held or now - unlinked_at < self.orphan_grace:
                    continue
            await self.delete_inode_data(ino)
        for kv in await self._scan(keys.SLICE_GC_PREFIX):
            await self._free_slices(kv.key, kv.value)
        # Retained slices are due once the volume's current retention has passed since
        # they were freed: all of them when history is off.
        due = await self.kv.range(
            keys.RETAINED_PREFIX,
            keys.retained(int(now) - self.meta.retain_seconds + 1, 0), limit=1000)
        for kv in due.kvs:
            await self._free_slices(kv.key, kv.value)
        if self.expire_history is not None and now >= self._next_expiry:
            self._next_expiry = now + self.history_interval
            await self.expire_history()

    async def _scan(self, prefix: bytes) -> list:  # type: ignore[type-arg]
        res = await self.kv.range(prefix, prefix_end(prefix), limit=1000)
        return res.kvs

    async def release_closed_holds(self) -> None:
        """Release this mount's holds on inodes it no longer has open: the last close
        releases its hold, but a release that met an outage is retried here."""
        for ino in [i for i in self.meta.held if not self.meta.is_open(i)]:
            await self.meta.release_orphan(ino)

    async def release_dead_sessions(self) -> None:
        """Inodes kept open by a session whose lease expired are released here."""
        alive: dict[int, bool] = {}
        for kv in await self._scan(keys.SUSTAINED_PREFIX):
            sid, ino = keys.sustained_parts(kv.key)
            if sid == self.meta.session_id:
                continue
            if sid not in alive:
                alive[sid] = await self.kv.get(keys.session(sid)) is not None
            if not alive[sid]:
                log.info("releasing inode %d held open by dead session %d", ino, sid)
                await self.meta.release_orphan(ino, sid)

    async def delete_inode_data(self, ino: int) -> None:
        await self.meta.drop_chunks(ino, 0)
        prefix = keys.inode_all(ino)
        await self.kv.commit([], [], [Delete(prefix, prefix_end(prefix)),
                                      Delete(keys.delfile(ino))])
        self.poke()

    async def _free_slices(self, key: bytes, raw: bytes) -> None:
        seen: set[int] = set()
        for s in decode_slices(raw):
            if s.id and s.id not in seen:
                seen.add(s.id)
                await self.slices.delete(s.id, s.size)
        await self.kv.commit([], [], [Delete(key)])
