"""The embedded durable store: :class:`~kvfs.kv.local.LocalEngine` over a local directory.

Directory layout::

    LOCK                  flock'd by the owning process, holds "<pid> <host>" (dirlock.py)
    wal-<seq>.log         write-ahead log segments (format: kvfs.kv.wal)
    snap-<seq>.snap       the newest snapshot of the state machine (kvfs.kv.snapshot)
    values/<random>       one file per value larger than ``large_value_bytes`` (valuefiles.py)

Write-ahead log records are ``[u32 BE length][u64 BE xxh64(payload)][payload]`` where the
payload is the msgpack of one command tuple of :mod:`kvfs.kv.state`; large values appear
in it as :class:`~kvfs.kv.valuefiles.ValueRef` msgpack extension objects.

Responsibilities and invariants:
  * Durability: a command is acknowledged only after its log record is fdatasync'd
    (group commit from LocalEngine batches concurrent commands into one write and one sync).
    Value files a command names are fsync'd, and the ``values/`` directory synced, before
    the command's record is written.
  * Memory: large values live only in their files; the state machine holds refs.
  * Value files are unlinked only once the command dropping them is durable, and never
    while a read of them is in flight.  Recovery (snapshot + log replay) therefore never
    needs an unlinked file: a snapshot may name a freed file only if the log after it
    re-drops it, and log segments are only deleted once a snapshot covers them.
  * Snapshots are taken from ``_after_flush`` every ``snapshot_every`` commands or
    ``snapshot_wal_bytes`` of log: a cheap consistent copy of the key map is taken on the
    event loop, serialised and written in a worker thread, then covered segments are
    deleted.  The snapshot may include commands applied but not yet durable; that is safe
    because they were never acknowledged, their value files are already fsync'd, and their
    log records (at sequence numbers the snapshot covers) are skipped on replay.
  * Recovery: the newest valid snapshot is loaded, later log records are replayed, a torn
    tail is truncated with a warning, damage elsewhere raises StoreCorrupt, a referenced
    value file that is missing raises StoreCorrupt, and unreferenced value files (e.g. of
    commits that never reached the log) are deleted.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import trio

from kvfs.durable import fsync_dir, make_dirs
from kvfs.kv.api import KVError, Limits, RangeResult, StoreCorrupt
from kvfs.kv.dirlock import DirLock
from kvfs.kv.local import LocalEngine
from kvfs.kv.snapshot import (
    BadSnapshot,
    SnapshotMeta,
    list_snapshots,
    read_snapshot,
    write_snapshot,
)
from kvfs.kv.state import Command, KVState
from kvfs.kv.valuefiles import ValueRef, ValueStore, pack, unpack
from kvfs.kv.wal import WalWriter, list_segments, scan

log = logging.getLogger(__name__)

LARGE_VALUE_BYTES = 64 * 1024


class EmbeddedEngine(LocalEngine):
    """A durable single-process KV engine in a directory (see module docstring).

    Create it with ``await EmbeddedEngine.open(path)``; ``aclose()`` flushes and unlocks.
    """

    def __init__(self, path: str, limits: Limits | None = None, *,
                 snapshot_every: int = 20_000, snapshot_wal_bytes: int = 64 << 20,
                 segment_bytes: int = 16 << 20,
                 large_value_bytes: int = LARGE_VALUE_BYTES) -> None:
        super().__init__(limits)
        self.path = os.path.abspath(path)
        self.snapshot_every = snapshot_every
        self.snapshot_wal_bytes = snapshot_wal_bytes
        self.segment_bytes = segment_bytes
        self.large_value_bytes = large_value_bytes
        self._lock: DirLock | None = None
        self._values = ValueStore(os.path.join(self.path, "values"))
        self._wal: WalWriter | None = None
        self._base_seq = 0  # sequence number of the last command recovered at open
        # values/ directory sync: files created (counted on the loop) vs. covered by a sync
        self._values_created = 0
        self._values_synced = 0
        # deferred unlinking of dropped value files
        self._reading: dict[str, int] = {}
        self._range_depth = 0
        self._doomed: set[str] = set()
        # snapshot scheduling (counters are only touched while no log write is running)
        self._cmds_since_snap = 0
        self._wal_bytes_since_snap = 0
        self._snap_running = False
        self._snap_done = trio.Event()
        self._snap_done.set()
        self.snapshots_written = 0

    @classmethod
    async def open(cls, path: str, limits: Limits | None = None, *,
                   snapshot_every: int = 20_000, snapshot_wal_bytes: int = 64 << 20,
                   segment_bytes: int = 16 << 20,
                   large_value_bytes: int = LARGE_VALUE_BYTES) -> EmbeddedEngine:
        """Lock ``path`` (created if missing), recover its contents and return the engine.

        Raises :class:`StoreLocked` if another opener holds the directory and
        :class:`StoreCorrupt` if its files are damaged beyond a torn tail.  The keyword
        arguments tune snapshots (every ``snapshot_every`` commands or ``snapshot_wal_bytes``
        of log), log segment size, and the size above which values go to their own file.
        """
        path = os.path.abspath(path)
        await trio.to_thread.run_sync(make_dirs, path)
        lock = await trio.to_thread.run_sync(DirLock.acquire, path)
        try:
            engine = cls(path, limits, snapshot_every=snapshot_every,
                         snapshot_wal_bytes=snapshot_wal_bytes, segment_bytes=segment_bytes,
                         large_value_bytes=large_value_bytes)
            engine._lock = lock
            await trio.to_thread.run_sync(engine._recover)
        except BaseException:
            lock.release()
            raise
        engine.restore_lease_deadlines()
        return engine

    def describe(self) -> str:
        return f"embedded:{self.path}"

    # -- recovery (blocking; runs in a worker thread before the engine is shared) ------

    def _recover(self) -> None:
        for name in os.listdir(self.path):
            if name.startswith("snap-") and name.endswith(".tmp"):
                os.unlink(os.path.join(self.path, name))
        segments = list_segments(self.path)
        snap_seq = 0
        for seq, spath in list_snapshots(self.path):
            try:
                meta, items = read_snapshot(spath)
            except BadSnapshot as exc:
                log.warning("ignoring damaged snapshot: %s", exc)
                continue
            if meta.seq != seq:
                log.warning("ignoring snapshot %s: it says it covers seq %d", spath, meta.seq)
                continue
            self.state = KVState()
            self.state.restore(meta.revision, meta.compacted, meta.next_lease, meta.leases,
                               iter(items))
            snap_seq = seq
            break
        else:
            if list_snapshots(self.path) and (not segments or segments[0][0] != 1):
                # No usable snapshot: only a log reaching back to the start could help.
                raise StoreCorrupt(
                    f"{self.path}: every snapshot is damaged and the log does not reach "
                    f"back to the first command")

        # Records after the snapshot must be contiguous; gaps before it do not matter (a
        # snapshot may include commands whose log records were never written).
        last_seq = snap_seq
        replayed_bytes = 0
        for i, (first, spath) in enumerate(segments):
            with open(spath, "rb") as f:
                data = f.read()
            is_last = i == len(segments) - 1
            payloads, end = scan(data, spath, allow_torn=is_last)
            if end < len(data):
                with open(spath, "r+b") as f:
                    f.truncate(end)
                    os.fsync(f.fileno())
            if first + len(payloads) - 1 <= last_seq:
                continue  # fully covered already
            if first > last_seq + 1:
                raise StoreCorrupt(
                    f"{spath}: log segment starts at sequence {first} but the store only "
                    f"reaches {last_seq}: records are missing")
            for seq, payload in enumerate(payloads, start=first):
                if seq <= last_seq:
                    continue
                try:
                    cmd = unpack(payload)
                    self.state.apply(cmd)
                except (ValueError, TypeError, KeyError, IndexError) as exc:
                    raise StoreCorrupt(
                        f"{spath}: record {seq - first} (sequence {seq}) cannot be applied: "
                        f"{exc}") from exc
                last_seq = seq
            replayed_bytes += end
        self._base_seq = last_seq
        self._cmds_since_snap = last_seq - snap_seq
        self._wal_bytes_since_snap = replayed_bytes
        self._check_value_files()
        self._wal = WalWriter(self.path, last_seq + 1, segments, self.segment_bytes)

    def _check_value_files(self) -> None:
        """Every referenced value file must exist; unreferenced ones are deleted."""
        on_disk = self._values.names()
        referenced = set()
        for key, entry in self.state.snapshot_items():
            ref = entry.value
            if isinstance(ref, ValueRef):
                if ref.name not in on_disk:
                    raise StoreCorrupt(
                        f"value file {self._values.path(ref.name)} of key {key!r} is missing")
                referenced.add(ref.name)
        orphans = on_disk - referenced
        for name in orphans:
            self._values.unlink(name)
        if orphans:
            log.info("%s: removed %d unreferenced value files", self.path, len(orphans))
            self._values.sync_dir()

    # -- LocalEngine hooks -------------------------------------------------------------

    @property
    def _needs_log(self) -> bool:
        return True

    def _write_log(self, commands: list[Command]) -> None:
        wal = self._wal
        if wal is None:
            raise KVError("engine is closed")
        created = self._values_created
        if created != self._values_synced:
            self._values.sync_dir()
            self._values_synced = created
        written = wal.append([pack(c) for c in commands])
        self._cmds_since_snap += len(commands)
        self._wal_bytes_since_snap += written

    async def _store_value(self, value: bytes) -> Any:
        if len(value) <= self.large_value_bytes:
            return value if type(value) is bytes else bytes(value)
        ref = await trio.to_thread.run_sync(self._values.write, value)
        self._values_created += 1
        return ref

    async def _load_value(self, stored: Any) -> bytes:
        if not isinstance(stored, ValueRef):
            return stored  # type: ignore[no-any-return]
        name = stored.name
        # Registered before the first await: the file cannot be unlinked under us.
        self._reading[name] = self._reading.get(name, 0) + 1
        try:
            return await trio.to_thread.run_sync(self._values.read, stored)
        finally:
            left = self._reading[name] - 1
            if left:
                self._reading[name] = left
            else:
                del self._reading[name]
                if name in self._doomed and not self._range_depth:
                    self._doomed.discard(name)
                    self._unlink(name)

    def _release_values(self, dropped: list[Any]) -> None:
        for ref in dropped:
            if not isinstance(ref, ValueRef):
                continue
            if ref.name in self._reading or self._range_depth:
                self._doomed.add(ref.name)
            else:
                self._unlink(ref.name)

    def _unlink(self, name: str) -> None:
        try:
            self._values.unlink(name)
        except OSError as exc:  # a leftover file is removed as an orphan at the next open
            log.warning("could not remove value file %s: %s", self._values.path(name), exc)

    def _release_doomed(self) -> None:
        for name in [n for n in self._doomed if n not in self._reading]:
            self._doomed.discard(name)
            self._unlink(name)

    async def range(self, start: bytes, end: bytes, *, limit: int = 0,
                    keys_only: bool = False) -> RangeResult:
        if keys_only:
            return await super().range(start, end, limit=limit, keys_only=True)
        # LocalEngine.range picks a page of entries, then loads their values one by one;
        # hold back every unlink meanwhile so no picked value file disappears.
        self._range_depth += 1
        try:
            return await super().range(start, end, limit=limit, keys_only=keys_only)
        finally:
            self._range_depth -= 1
            if not self._range_depth and self._doomed:
                self._release_doomed()

    def _after_flush(self) -> None:
        if self._snap_running or self._closed or self._poisoned is not None:
            return
        if (self._cmds_since_snap >= self.snapshot_every
                or self._wal_bytes_since_snap >= self.snapshot_wal_bytes):
            self._start_snapshot()

    # -- snapshots ---------------------------------------------------------------------

    def _start_snapshot(self) -> None:
        """Copy the state (on the loop: entries are replaced, never mutated) and write it."""
        assert self._wal is not None
        st = self.state
        meta = SnapshotMeta(self._base_seq + self._seq_applied, st.revision, st.compacted,
                            st.next_lease, {lid: lease.ttl for lid, lease in st.leases.items()})
        items = list(st.data.items())
        self._wal.request_rotation()
        self._cmds_since_snap = 0
        self._wal_bytes_since_snap = 0
        self._snap_running = True
        self._snap_done = trio.Event()
        trio.lowlevel.spawn_system_task(self._snapshot_task, meta, items)

    async def _snapshot_task(self, meta: SnapshotMeta, items: list[Any]) -> None:
        try:
            await trio.to_thread.run_sync(self._write_snapshot, meta, items)
        except Exception:  # the log still holds everything; retry after another interval
            log.exception("%s: writing a snapshot failed", self.path)
        finally:
            self._snap_running = False
            self._snap_done.set()

    def _write_snapshot(self, meta: SnapshotMeta, items: list[Any]) -> None:
        wal = self._wal
        assert wal is not None
        # Files named by not-yet-logged commands in the copy must be durable first.
        self._values.sync_dir()
        path = write_snapshot(self.path, meta, items)
        self.snapshots_written += 1
        for seq, old in list_snapshots(self.path):
            if seq < meta.seq:
                os.unlink(old)
        wal.drop_covered(meta.seq)
        fsync_dir(self.path)
        log.debug("%s: wrote %s (%d keys)", self.path, path, len(items))

    async def checkpoint(self) -> None:
        """Write a snapshot now and wait for it (tests, ``kvfs`` maintenance commands)."""
        self._check_open()
        while self._snap_running:
            await self._snap_done.wait()
        self._start_snapshot()
        await self._snap_done.wait()

    # -- shutdown ----------------------------------------------------------------------

    async def aclose(self) -> None:
        """Make every applied command durable, finish a running snapshot, unlock."""
        if self._lock is None:
            return
        self._closed = True  # refuse new calls; drain the ones already applied
        with trio.CancelScope(shield=True):
            await self._shutdown()
        await super().aclose()

    async def _shutdown(self) -> None:
        try:
            if self._poisoned is None and self._seq_durable < self._seq_applied:
                await self._wait_durable(self._seq_applied)
        except KVError as exc:
            log.warning("%s: final log flush failed: %s", self.path, exc)
        await self._snap_done.wait()
        while self._flushing:
            await trio.sleep(0.001)
        self._release_doomed()
        if self._wal is not None:
            self._wal.close()
            self._wal = None
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.release()
