"""Volume usage counters for statfs: bytes of file data stored and the number of inodes.

What the counters count:

* ``C usedspace`` -- the data files hold in the object store: the length of every slice
  record in a chunk key (``A ino C index``), each rounded up to 4 KiB, holes (id 0) not
  at all.  kvfs stores each slice object through exactly one record, so this is the bytes
  written and not yet given back, whatever the files' lengths: a 1-byte write at offset
  256 PiB counts 4 KiB.  Overwritten bytes count until compaction rewrites their chunk;
  a truncated or deleted file's bytes count until its chunks go to the slice GC queue.
* ``C usedinodes`` -- inodes not yet removed.  One stops counting when its last name goes
  (on a single-process engine, at its last close if it is still open then).

Every transaction that changes them records its delta here once it has committed
(:meth:`~kvfs.kv.txn.Txn.on_commit`): writing slices adds their space, compaction adds
the new slice's and takes the old slices', and moving chunks to the GC queue (truncate,
deletion) takes theirs.  A background task folds the accumulated deltas into the shared
counters about once a second, so the hot paths never contend on one counter key.
Figures reported are the stored counters plus this mount's unflushed deltas.  A crash
loses at most the last second of deltas: the counters are statistics for ``df``, not
invariants anything depends on.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import msgpack
import trio

from kvfs.chunk.layout import Slice
from kvfs.kv.api import KVEngine
from kvfs.kv.txn import Txn, run_txn
from kvfs.meta.keys import USED_INODES, USED_SPACE
from kvfs.outage import log_failure

log = logging.getLogger("kvfs.usage")
_UNIT = 4096


def slice_space(slices: Iterable[Slice]) -> int:
    """Space charged for slice records: each record's length in whole 4 KiB units."""
    return sum((s.len + _UNIT - 1) // _UNIT * _UNIT for s in slices if s.id)


class Usage:
    """This mount's view of the volume's usage (see module docstring)."""

    def __init__(self, kv: KVEngine) -> None:
        self.kv = kv
        self._space = 0  # unflushed deltas
        self._inodes = 0
        self._stored_space = 0
        self._stored_inodes = 0

    def add(self, *, space: int = 0, inodes: int = 0) -> None:
        self._space += space
        self._inodes += inodes

    @property
    def used_space(self) -> int:
        return max(0, self._stored_space + self._space)

    @property
    def used_inodes(self) -> int:
        return max(0, self._stored_inodes + self._inodes)

    async def flush(self) -> None:
        space, inodes = self._space, self._inodes

        async def fn(t: Txn) -> tuple[int, int]:
            raw_s, raw_i = await t.get(USED_SPACE), await t.get(USED_INODES)
            s = (msgpack.unpackb(raw_s) if raw_s else 0) + space
            i = (msgpack.unpackb(raw_i) if raw_i else 0) + inodes
            if space:
                t.put(USED_SPACE, msgpack.packb(s))
            if inodes:
                t.put(USED_INODES, msgpack.packb(i))
            return s, i

        self._stored_space, self._stored_inodes = await run_txn(self.kv, fn)
        self._space -= space
        self._inodes -= inodes

    async def run(self, *, interval: float = 1.0,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            try:
                await self.flush()
            except Exception:  # noqa: BLE001 - counters can wait for the engine
                log_failure(log, "could not update usage counters")
            await trio.sleep(interval)
