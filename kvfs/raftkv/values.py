"""Large values of a Raft store member, kept in files of its own instead of in memory.

A log entry carries its values inline (so any member can apply it); when a member applies
a put of a value over ``threshold`` bytes, the value goes to a file under ``values/`` of
its data directory and the state machine holds a :class:`~kvfs.kv.valuefiles.ValueRef`
(name, size, xxh64).  Memory then grows with the number of keys, not with the data --
blocks of a ``--storage kv`` volume included.

Names are deterministic: ``<index as 16 hex digits>-<slot>`` for the ``slot``-th put of the
entry at ``index``, ``<index>-s<n>`` for the ``n``-th large value of a snapshot installed
at ``index``.  Applying the same entry again (a restart replays the log after its
snapshot) rewrites the same file with the same bytes.

Durability: a file is written (to a temporary name, then renamed) but not synced when it
is applied -- the log entry holding the value is durable.  Before a snapshot that refers
to files replaces those log entries, :meth:`MemberValues.sync` makes every file written
since the last one durable, with the directory.

Freeing: :meth:`MemberValues.collect` deletes the files up to a snapshot's index that
neither that snapshot nor the previous one (the fallback a restart may use) refers to.
Files of later entries stay: they are live, or will be rewritten by a replay anyway.

Every method does file I/O and blocks; the member calls :meth:`spill` and :meth:`load`
on its loop (one small file each, from the page cache) and :meth:`sync` and
:meth:`collect` from a worker thread.
"""

from __future__ import annotations

import os
import threading

import xxhash

from kvfs.durable import fsync_dir
from kvfs.kv.valuefiles import ValueRef, ValueStore

# Values over this many bytes go to files (as in the embedded store).
LARGE_VALUE_BYTES = 64 * 1024
VALUES_DIR = "values"


def _index_of(name: str) -> int | None:
    head, sep, _ = name.partition("-")
    if not sep or len(head) != 16 or name.endswith(".tmp"):
        return None
    try:
        return int(head, 16)
    except ValueError:
        return None


class MemberValues:
    """The ``values/`` directory of one member (see the module docstring)."""

    def __init__(self, data_dir: str, threshold: int = LARGE_VALUE_BYTES) -> None:
        self.threshold = threshold
        self.store = ValueStore(os.path.join(data_dir, VALUES_DIR))
        self._lock = threading.Lock()
        self._unsynced: list[str] = []
        for name in self.store.names():
            if name.endswith(".tmp"):  # a spill cut short by a crash
                self.store.unlink(name)

    def spill(self, name: str, value: bytes) -> ValueRef:
        """Write ``value`` as file ``name`` (replacing one of that name) and return its ref."""
        path = self.store.path(name)
        tmp = path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            view = memoryview(value)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.rename(tmp, path)
        with self._lock:
            self._unsynced.append(name)
        return ValueRef(name, len(value), xxhash.xxh64_intdigest(value))

    def load(self, ref: ValueRef) -> bytes:
        """The value ``ref`` names, verified; ``StoreCorrupt`` if the file is damaged,
        ``FileNotFoundError`` if it was freed."""
        return self.store.read(ref)

    def sync(self) -> None:
        """Make every file spilled so far durable, with the directory."""
        with self._lock:
            names, self._unsynced = self._unsynced, []
        for name in names:
            try:
                fd = os.open(self.store.path(name), os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue  # freed already: no snapshot needs it
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(self.store.directory)

    def collect(self, upto_index: int, keep: set[str]) -> int:
        """Delete the files of entries and snapshots at or below ``upto_index`` that are
        not in ``keep``; returns how many were deleted."""
        deleted = 0
        for name in self.store.names():
            index = _index_of(name)
            if index is not None and index <= upto_index and name not in keep:
                self.store.unlink(name)
                deleted += 1
        return deleted
