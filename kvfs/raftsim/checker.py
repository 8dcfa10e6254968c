"""The simulator's safety checker: Raft's guarantees, checked against everything observed.

The checker never looks at a node directly: the world reports what it observes (a node is
leader of a term, a node's log holds these entries, a node's commit index reached N, it
applied this entry and its state machine's digest is now D, ...) and the checker keeps the
global history those observations imply, raising :class:`SafetyViolation` the moment an
observation contradicts it.  Tests feed it hand-made histories the same way.

Invariants (numbers as in the simulator's brief, dissertation sections in brackets):

1. Election safety [3.6.1]: at most one node is ever leader of a given term.
2. Log matching [3.5]: every (index, term) ever written to any disk names one entry: the
   same kind, data and previous entry's term.  By induction on the index, two logs holding
   an entry with the same index and term hold identical prefixes up to it.  (The world
   reports entries as they are persisted: an entry that dies unpersisted never left its
   node.)  Also checked: no entry in a node's log has a term above its current term.
3. Leader completeness [3.6.3]: an entry first observed committed while the observer was in
   term ``c`` is in the log of every leader of a term above ``c`` (below that leader's
   snapshot counts as present).  ``c`` is at least the term the entry was committed in, so
   the check never blames a legitimately older leader elected in parallel.
4. State-machine safety [3.6.3]: all nodes apply the same entry at each index, the committed
   entry at each index is unique, and equal applied prefixes give equal state digests
   (including states restored from snapshots).
5. Monotonicity: commit and applied never decrease within a node's life, and the commit a
   node persisted never decreases, across restarts too.
6. Durability: when a leader's commit index advances, a majority of the voters of the
   configuration that committed the entry hold it on disk (the world re-checks the newest
   commit against the disks after every crash).
7. Acknowledged writes: a write acknowledged to its client is committed at the index it was
   acknowledged at, and (like 3) is in the log of every leader of a later term.
8. ReadIndex [6.4]: the index a ReadState releases is at least the highest commit index
   known anywhere when the read was requested.  Every write acknowledged before the read
   began was committed at or below that bound, and the host serves the read only after
   applying the released index, from committed entries (checked by 4), so the value read is
   the committed state at a point between request and response.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from kvfs.raft.types import Entry, EntryKind, NodeId

COMPACTED = -1  # LogView.term_at: the index lies below the log's snapshot


class SafetyViolation(AssertionError):
    """An observation contradicts Raft's guarantees (or a core raised where it must not)."""

    def __init__(self, invariant: str, message: str, seed: int | None, step: int) -> None:
        self.invariant = invariant
        self.seed = seed
        self.step = step
        self.detail = message
        super().__init__(f"[{invariant}] seed {seed} step {step}: {message}")


class LogView(Protocol):
    """What the checker needs of a node's log (persisted plus unstable)."""

    def first_index(self) -> int: ...

    def term_at(self, index: int) -> int | None:
        """The term of the entry at ``index``; COMPACTED below the snapshot; None past the
        end."""
        ...


@dataclass(frozen=True, slots=True)
class DictLog:
    """A LogView over an explicit list of terms (entry ``i`` at position ``i - 1``), for tests
    and for hand-built histories."""

    terms: tuple[int, ...]
    first: int = 1

    def first_index(self) -> int:
        return self.first

    def term_at(self, index: int) -> int | None:
        if index < self.first - 1:
            return COMPACTED
        if index == 0:
            return 0
        if index > len(self.terms):
            return None
        return self.terms[index - 1]


def majority(n: int) -> int:
    return n // 2 + 1


class Checker:
    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed
        self.step = 0
        self.leaders: dict[int, NodeId] = {}
        # (index, term) -> (kind, data, previous entry's term or None if unknown)
        self.entries: dict[tuple[int, int], tuple[EntryKind, bytes, int | None]] = {}
        # index -> [term, lowest term of a node that observed it committed]
        self.committed: dict[int, list[int]] = {}
        self.max_commit = 0
        # index -> (term, kind, data) of the entry every node applied there
        self.applied: dict[int, tuple[int, EntryKind, bytes]] = {}
        self.digests: dict[int, int] = {}
        # (client, seq) -> (index, term, observer's term)
        self.acked: dict[tuple[int, int], tuple[int, int, int]] = {}
        self.read_bounds: dict[tuple[NodeId, bytes], int] = {}
        self.lives: dict[NodeId, tuple[int, int, int]] = {}  # node -> (life, commit, applied)
        self.persisted: dict[NodeId, int] = {}
        self.reads_checked = 0

    def fail(self, invariant: str, message: str) -> None:
        raise SafetyViolation(invariant, message, self.seed, self.step)

    # -- 1, 3, 7 -----------------------------------------------------------------------------

    def leader(self, node: NodeId, term: int, log: LogView) -> None:
        """``node`` is leader of ``term`` with ``log`` (reported once per node and term)."""
        other = self.leaders.setdefault(term, node)
        if other != node:
            self.fail("1 election safety", f"nodes {other} and {node} both leader of term {term}")
        first = log.first_index()
        for index in range(max(first, 1), self.max_commit + 1):
            record = self.committed.get(index)
            if record is None or record[1] >= term:
                continue
            have = log.term_at(index)
            if have != COMPACTED and have != record[0]:
                self.fail("3 leader completeness",
                          f"entry {index} (term {record[0]}) committed by term {record[1]} is "
                          f"missing from leader {node} of term {term} (its log has "
                          f"{'nothing' if have is None else f'term {have}'} there)")
        for (client, seq), (index, entry_term, seen) in self.acked.items():
            if seen >= term or index < first:
                continue
            have = log.term_at(index)
            if have != COMPACTED and have != entry_term:
                self.fail("7 acknowledged write",
                          f"client {client}'s write {seq}, acknowledged at index {index} term "
                          f"{entry_term}, is missing from leader {node} of term {term}")

    def still_leader(self, node: NodeId, term: int, log: LogView, index: int) -> None:
        """``node`` is (still) leader of ``term`` after the entry at ``index`` was first
        observed committed: the part of 3 that :meth:`leader` could not check when the
        commit was observed only after the election."""
        record = self.committed.get(index)
        if record is None or record[1] >= term:
            return
        have = log.term_at(index)
        if have != COMPACTED and have != record[0]:
            self.fail("3 leader completeness",
                      f"entry {index} (term {record[0]}) committed by term {record[1]} is "
                      f"missing from leader {node} of term {term}")

    # -- 2 -----------------------------------------------------------------------------------

    def log_entries(self, node: NodeId, entries: list[Entry], previous_term: int | None) -> None:
        """``node``'s log holds ``entries`` (contiguous), after an entry of ``previous_term``
        (None when that is not known)."""
        entries_seen = self.entries
        for entry in entries:
            key = (entry.index, entry.term)
            known = entries_seen.get(key)
            if known is None:
                entries_seen[key] = (entry.kind, entry.data, previous_term)
            else:
                if known[0] != entry.kind or known[1] != entry.data:
                    self.fail("2 log matching",
                              f"node {node} holds a different entry at index {entry.index} "
                              f"term {entry.term}: {entry.data!r} where another log holds "
                              f"{known[1]!r}")
                if previous_term is not None:
                    if known[2] is None:
                        entries_seen[key] = (known[0], known[1], previous_term)
                    elif known[2] != previous_term:
                        self.fail("2 log matching",
                                  f"node {node} holds entry {entry.index} term {entry.term} "
                                  f"after an entry of term {previous_term}, another log after "
                                  f"one of term {known[2]}: the logs differ before it")
            previous_term = entry.term

    def term_bound(self, node: NodeId, node_term: int, last_log_term: int) -> None:
        if last_log_term > node_term:
            self.fail("2 log matching",
                      f"node {node} in term {node_term} holds an entry of term {last_log_term}")

    # -- 3, 4, 5, 6 --------------------------------------------------------------------------

    def commit(self, node: NodeId, node_term: int, index: int, term: int) -> None:
        """``node`` (in ``node_term``) knows the entry (``index``, ``term``) committed."""
        record = self.committed.get(index)
        if record is None:
            self.committed[index] = [term, node_term]
        elif record[0] != term:
            self.fail("4 state-machine safety",
                      f"node {node} knows term {term} committed at index {index}, another node "
                      f"knew term {record[0]} committed there")
        elif node_term < record[1]:
            record[1] = node_term
        if index > self.max_commit:
            self.max_commit = index

    def durable(self, index: int, term: int, voters: frozenset[NodeId],
                holders: frozenset[NodeId], when: str) -> None:
        """``holders`` are the nodes whose disks hold entry (``index``, ``term``)."""
        have = len(voters & holders)
        if have < majority(len(voters)):
            self.fail("6 durability",
                      f"committed entry {index} (term {term}) is on the disks of only "
                      f"{sorted(voters & holders)} of voters {sorted(voters)} ({when})")

    def life(self, node: NodeId, life: int, commit: int, applied: int) -> None:
        """``node``'s commit and applied indexes in its ``life``-th incarnation."""
        previous = self.lives.get(node)
        if previous is not None and previous[0] == life:
            if commit < previous[1]:
                self.fail("5 monotonic", f"node {node}'s commit fell from {previous[1]} to "
                                         f"{commit}")
            if applied < previous[2]:
                self.fail("5 monotonic", f"node {node}'s applied fell from {previous[2]} to "
                                         f"{applied}")
        self.lives[node] = (life, commit, applied)

    def persisted_commit(self, node: NodeId, commit: int) -> None:
        before = self.persisted.get(node, 0)
        if commit < before:
            self.fail("5 monotonic", f"node {node}'s persisted commit fell from {before} to "
                                     f"{commit}")
        self.persisted[node] = commit

    def apply(self, node: NodeId, index: int, term: int, kind: EntryKind, data: bytes,
              digest: int) -> None:
        """``node`` applied the entry at ``index``; its state machine's digest is now
        ``digest``."""
        mine = (term, kind, data)
        other = self.applied.setdefault(index, mine)
        if other != mine:
            self.fail("4 state-machine safety",
                      f"node {node} applied {data!r} (term {term}) at index {index}, another "
                      f"node applied {other[2]!r} (term {other[0]})")
        record = self.committed.get(index)
        if record is not None and record[0] != term:
            self.fail("4 state-machine safety",
                      f"node {node} applied term {term} at index {index}, where term "
                      f"{record[0]} was committed")
        self.restore(node, index, digest)

    def restore(self, node: NodeId, index: int, digest: int) -> None:
        """``node``'s state machine holds the state after ``index`` (applied, or restored
        from a snapshot), with ``digest``."""
        other = self.digests.setdefault(index, digest)
        if other != digest:
            self.fail("4 state-machine safety",
                      f"node {node}'s state after index {index} differs from another node's")

    # -- 7, 8 --------------------------------------------------------------------------------

    def ack(self, client: int, seq: int, index: int, term: int, observer_term: int) -> None:
        """A write was acknowledged to its client: applied at (``index``, ``term``) by a node
        in ``observer_term``."""
        record = self.committed.get(index)
        if record is not None and record[0] != term:
            self.fail("7 acknowledged write",
                      f"client {client}'s write {seq} acknowledged at index {index} term "
                      f"{term}, where term {record[0]} is committed")
        self.acked.setdefault((client, seq), (index, term, observer_term))

    def read_request(self, node: NodeId, context: bytes) -> None:
        self.read_bounds[(node, context)] = self.max_commit

    def read_state(self, node: NodeId, context: bytes, index: int) -> None:
        bound = self.read_bounds.get((node, context))
        if bound is None:
            self.fail("8 read index", f"node {node} got a ReadState for an unknown context "
                                      f"{context!r}")
            return
        self.reads_checked += 1
        if index < bound:
            self.fail("8 read index",
                      f"node {node}'s read {context!r} was released at index {index}, but "
                      f"index {bound} was already known committed when it was requested")
