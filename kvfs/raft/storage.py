"""The core's read-only view of what the host has persisted, and an in-memory implementation.

The core never writes to storage: the host appends entries, sets the hard state and installs
snapshots while handling a :class:`~kvfs.raft.types.Ready`, and compacts the log after taking
a snapshot of its state machine (dissertation 5.1).  The core reads entries and terms back to
replicate them and to compare logs.

:class:`MemoryStorage` keeps everything in lists; the Raft server mirrors its disk into one,
and the simulator uses one as each node's disk.

Invariants of a storage: ``first_index() == snapshot index + 1``; entries are contiguous
from ``first_index()`` to ``last_index()``; ``term(snapshot index)`` is the snapshot's term.
"""

from __future__ import annotations

from typing import Protocol

from kvfs.raft.types import EMPTY_SNAPSHOT, ConfState, Entry, HardState, Snapshot, SnapshotMeta


class LogCompacted(Exception):
    """The requested index lies in the compacted prefix of the log."""


class LogUnavailable(Exception):
    """The requested index is beyond the last persisted entry."""


class Storage(Protocol):
    def initial_state(self) -> tuple[HardState, ConfState]: ...
    def entries(self, lo: int, hi: int, max_bytes: int = 0) -> list[Entry]: ...
    def term(self, index: int) -> int: ...
    def first_index(self) -> int: ...
    def last_index(self) -> int: ...
    def snapshot(self) -> Snapshot: ...


def entry_size(entry: Entry) -> int:
    """The size an entry counts for in message and batch limits."""
    return len(entry.data) + 16


def limit_size(entries: list[Entry], max_bytes: int) -> list[Entry]:
    """The longest prefix of ``entries`` within ``max_bytes`` (always at least one entry);
    ``max_bytes`` 0 means no limit."""
    if max_bytes <= 0 or not entries:
        return entries
    total = entry_size(entries[0])
    for n in range(1, len(entries)):
        total += entry_size(entries[n])
        if total > max_bytes:
            return entries[:n]
    return entries


class MemoryStorage:
    """Persisted Raft state held in memory.

    ``_entries[0]`` is a sentinel carrying the snapshot's index and term, so the term of the
    last compacted entry stays known (the core needs it to check an append's predecessor).

    Every write changes what a reader in another thread can see in one step: appending
    after the last entry extends the list in place (one ``list.extend``, atomic under the
    interpreter lock, and cheap however long the log is), while replacing a suffix,
    compacting or installing a snapshot builds a new list and publishes it with one
    reference assignment -- so a read sees the log before or after a write, never a
    shortened one half-way through.  (A *sequence* of reads is consistent only between
    writes; :mod:`kvfs.raftkv.disk` explains why its readers need no more.)
    """

    def __init__(self) -> None:
        self.hard_state = HardState()
        self._snapshot = EMPTY_SNAPSHOT
        self._entries: list[Entry] = [Entry(term=0, index=0)]

    # -- the read side used by the core ------------------------------------------------------

    def initial_state(self) -> tuple[HardState, ConfState]:
        return self.hard_state, self._snapshot.meta.conf_state

    def first_index(self) -> int:
        return self._entries[0].index + 1

    def last_index(self) -> int:
        return self._entries[0].index + len(self._entries) - 1

    def term(self, index: int) -> int:
        offset = self._entries[0].index
        if index < offset:
            raise LogCompacted(index)
        if index - offset >= len(self._entries):
            raise LogUnavailable(index)
        return self._entries[index - offset].term

    def entries(self, lo: int, hi: int, max_bytes: int = 0) -> list[Entry]:
        """Entries ``[lo, hi)``."""
        offset = self._entries[0].index
        if lo <= offset:
            raise LogCompacted(lo)
        if hi > self.last_index() + 1:
            raise LogUnavailable(hi)
        return limit_size(self._entries[lo - offset:hi - offset], max_bytes)

    def snapshot(self) -> Snapshot:
        return self._snapshot

    # -- the write side used by the host -----------------------------------------------------

    def set_hard_state(self, hard_state: HardState) -> None:
        self.hard_state = hard_state

    def append(self, entries: list[Entry]) -> None:
        """Persist ``entries``; any persisted entries from the first one's index on are
        replaced (the core only sends a suffix that conflicts with uncommitted entries)."""
        if not entries:
            return
        first = self.first_index()
        if entries[-1].index < first:
            return  # entirely compacted already
        if entries[0].index < first:
            entries = entries[first - entries[0].index:]
        offset = entries[0].index - self._entries[0].index
        if offset > len(self._entries):
            raise ValueError(
                f"append at {entries[0].index} leaves a gap after {self.last_index()}")
        if offset == len(self._entries):
            self._entries.extend(entries)
        else:
            # A conflicting suffix is replaced (rare: a follower's uncommitted entries).
            self._entries = self._entries[:offset] + list(entries)

    def apply_snapshot(self, snapshot: Snapshot) -> None:
        """Replace the whole log with ``snapshot`` (a follower installing one from its
        leader).  An older snapshot than the one held is ignored."""
        if snapshot.meta.index <= self._snapshot.meta.index:
            return
        self._snapshot = snapshot
        self._entries = [Entry(term=snapshot.meta.term, index=snapshot.meta.index)]

    def create_snapshot(self, index: int, conf_state: ConfState, data: bytes) -> Snapshot:
        """Record a snapshot of the state machine taken after applying ``index``."""
        if index <= self._snapshot.meta.index:
            return self._snapshot
        if index > self.last_index():
            raise LogUnavailable(index)
        self._snapshot = Snapshot(SnapshotMeta(index, self.term(index), conf_state), data)
        return self._snapshot

    def compact(self, index: int) -> None:
        """Drop entries up to ``index`` (which a snapshot must already cover)."""
        offset = self._entries[0].index
        if index <= offset:
            return
        if index > self._snapshot.meta.index:
            raise ValueError(f"compacting to {index} beyond the snapshot at "
                             f"{self._snapshot.meta.index}")
        keep = self._entries[index - offset:]
        self._entries = [Entry(term=keep[0].term, index=keep[0].index)] + keep[1:]
