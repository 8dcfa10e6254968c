"""A node's Raft log: the persisted entries in storage plus the unstable tail not yet persisted.

Dissertation 3.5 (log replication) and 3.6 (safety), 5.1 (snapshots replace a prefix).

Layout, by index::

    [ compacted | storage: first_index .. | unstable: offset .. last_index ]
                  applied <= committed <= last_index

Invariants:
  * ``applied <= committed <= last_index()``; ``committed`` never decreases (a leader's
    append never rewrites a committed entry -- log matching, 3.5).
  * The unstable part starts right after the persisted part it still extends: entries in
    ``unstable`` at indexes the storage also holds supersede them (a conflicting append
    truncated the log) until the host persists them.
  * A pending snapshot in ``unstable`` replaces everything at or below its index.
"""

from __future__ import annotations

from kvfs.raft.storage import LogCompacted, LogUnavailable, Storage, limit_size
from kvfs.raft.types import Entry, Snapshot


class Unstable:
    """Entries (and possibly a snapshot) the host has not yet persisted."""

    def __init__(self, offset: int) -> None:
        self.snapshot: Snapshot | None = None
        self.entries: list[Entry] = []
        self.offset = offset  # index of entries[0]

    def first_index(self) -> int | None:
        return self.snapshot.meta.index + 1 if self.snapshot else None

    def last_index(self) -> int | None:
        if self.entries:
            return self.offset + len(self.entries) - 1
        return self.snapshot.meta.index if self.snapshot else None

    def term(self, index: int) -> int | None:
        if index < self.offset:
            if self.snapshot and self.snapshot.meta.index == index:
                return self.snapshot.meta.term
            return None
        last = self.last_index()
        if last is None or index > last:
            return None
        return self.entries[index - self.offset].term

    def stable_to(self, index: int, term: int) -> None:
        """Entries up to ``index`` were persisted -- unless a newer append replaced the entry
        at ``index`` meanwhile (its term differs), in which case nothing is stable yet."""
        if self.term(index) != term or index < self.offset:
            return
        del self.entries[:index + 1 - self.offset]
        self.offset = index + 1

    def stable_snapshot_to(self, index: int) -> None:
        if self.snapshot and self.snapshot.meta.index == index:
            self.snapshot = None

    def restore(self, snapshot: Snapshot) -> None:
        self.offset = snapshot.meta.index + 1
        self.entries = []
        self.snapshot = snapshot

    def truncate_and_append(self, entries: list[Entry]) -> None:
        first = entries[0].index
        if first == self.offset + len(self.entries):
            self.entries.extend(entries)
        elif first <= self.offset:
            # Replaces the whole unstable tail (and shadows persisted entries from `first`).
            self.offset = first
            self.entries = list(entries)
        else:
            del self.entries[first - self.offset:]
            self.entries.extend(entries)


class RaftLog:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        first = storage.first_index()
        last = storage.last_index()
        self.unstable = Unstable(last + 1)
        # A restarted node knows nothing is applied beyond its snapshot: the host rebuilds
        # its state machine from the snapshot and the committed entries handed out again.
        # The snapshot may lie above first - 1 (a host that compacts less than it snapshots
        # keeps entries for slow followers): those entries are in the snapshot already.
        self.committed = max(first - 1, storage.snapshot().meta.index)
        self.applied = self.committed

    # -- indexes and terms -------------------------------------------------------------------

    def first_index(self) -> int:
        first = self.unstable.first_index()
        return first if first is not None else self.storage.first_index()

    def last_index(self) -> int:
        last = self.unstable.last_index()
        return last if last is not None else self.storage.last_index()

    def term(self, index: int) -> int:
        """The term of the entry at ``index``; raises LogCompacted / LogUnavailable."""
        dummy = self.first_index() - 1
        if index < dummy:
            raise LogCompacted(index)
        if index > self.last_index():
            raise LogUnavailable(index)
        term = self.unstable.term(index)
        if term is not None:
            return term
        return self.storage.term(index)

    def term_or_zero(self, index: int) -> int:
        try:
            return self.term(index)
        except (LogCompacted, LogUnavailable):
            return 0

    def last_term(self) -> int:
        return self.term(self.last_index())

    def match_term(self, index: int, term: int) -> bool:
        try:
            return self.term(index) == term
        except (LogCompacted, LogUnavailable):
            return False

    def is_up_to_date(self, last_index: int, term: int) -> bool:
        """Whether a log ending at (``term``, ``last_index``) is at least as up to date as
        ours: the election restriction of dissertation 3.6.1."""
        our_term = self.last_term()
        return term > our_term or (term == our_term and last_index >= self.last_index())

    # -- appending ---------------------------------------------------------------------------

    def append(self, entries: list[Entry]) -> int:
        if entries:
            if entries[0].index - 1 < self.committed:
                raise AssertionError(
                    f"append at {entries[0].index} would rewrite committed {self.committed}")
            self.unstable.truncate_and_append(entries)
        return self.last_index()

    def maybe_append(self, index: int, log_term: int, committed: int,
                     entries: tuple[Entry, ...]) -> int | None:
        """A follower's AppendEntries step (3.5): when our entry at ``index`` has
        ``log_term``, keep what matches, replace from the first conflict, advance commit.
        Returns the last index now known to match the leader, or None to reject."""
        if not self.match_term(index, log_term):
            return None
        last_new = index + len(entries)
        conflict = self.find_conflict(entries)
        if conflict:
            if conflict <= self.committed:
                raise AssertionError(
                    f"entry {conflict} conflicts with committed entry (commit {self.committed})")
            self.append(list(entries[conflict - entries[0].index:]))
        self.commit_to(min(committed, last_new))
        return last_new

    def find_conflict(self, entries: tuple[Entry, ...] | list[Entry]) -> int:
        """Index of the first entry that is new or differs in term from ours; 0 if none."""
        for entry in entries:
            if not self.match_term(entry.index, entry.term):
                return entry.index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> int:
        """The largest index <= ``index`` whose entry's term is <= ``term``: where a leader
        should probe next after a rejection (a faster backtrack than one index at a time)."""
        while index > 0:
            try:
                if self.term(index) <= term:
                    break
            except LogCompacted:
                break
            except LogUnavailable:
                index = self.last_index()
                continue
            index -= 1
        return index

    # -- commit and apply --------------------------------------------------------------------

    def commit_to(self, index: int) -> None:
        if index > self.committed:
            if index > self.last_index():
                raise AssertionError(
                    f"commit {index} beyond the last index {self.last_index()}")
            self.committed = index

    def maybe_commit(self, index: int, term: int) -> bool:
        """Advance commit to a quorum-matched ``index`` only if its entry is from ``term``
        (the leader's current term): dissertation 3.6.2."""
        if index > self.committed and self.term_or_zero(index) == term:
            self.commit_to(index)
            return True
        return False

    def applied_to(self, index: int) -> None:
        if index == 0:
            return
        if index > self.committed or index < self.applied:
            raise AssertionError(
                f"applied {index} outside [{self.applied}, {self.committed}]")
        self.applied = index

    def next_committed_entries(self, max_bytes: int = 0) -> list[Entry]:
        lo = max(self.applied + 1, self.first_index())
        hi = self.committed + 1
        if lo >= hi:
            return []
        return self.slice(lo, hi, max_bytes)

    def has_next_committed_entries(self) -> bool:
        return self.committed > max(self.applied, self.first_index() - 1)

    # -- reading entries ---------------------------------------------------------------------

    def slice(self, lo: int, hi: int, max_bytes: int = 0) -> list[Entry]:
        """Entries ``[lo, hi)`` from storage and the unstable tail; raises LogCompacted."""
        if lo < self.first_index():
            raise LogCompacted(lo)
        if hi > self.last_index() + 1:
            raise LogUnavailable(hi)
        result: list[Entry] = []
        if lo < self.unstable.offset:
            stored_hi = min(hi, self.unstable.offset)
            result = self.storage.entries(lo, stored_hi, max_bytes)
            if len(result) < stored_hi - lo:
                return result  # the size limit was reached inside storage
        if hi > self.unstable.offset:
            start = max(lo, self.unstable.offset) - self.unstable.offset
            result = result + self.unstable.entries[start:hi - self.unstable.offset]
        return limit_size(result, max_bytes)

    def entries_from(self, index: int, max_bytes: int = 0) -> list[Entry]:
        if index > self.last_index():
            return []
        return self.slice(index, self.last_index() + 1, max_bytes)

    def snapshot(self) -> Snapshot:
        if self.unstable.snapshot is not None:
            return self.unstable.snapshot
        return self.storage.snapshot()

    def restore(self, snapshot: Snapshot) -> None:
        """Install a leader's snapshot: the whole log is replaced (5.1)."""
        self.committed = snapshot.meta.index
        self.unstable.restore(snapshot)

    def stable_to(self, index: int, term: int) -> None:
        self.unstable.stable_to(index, term)

    def stable_snapshot_to(self, index: int) -> None:
        self.unstable.stable_snapshot_to(index)
