"""A leader's view of one follower's log, and the flow control of appends sent to it.

Dissertation 3.5 (nextIndex / matchIndex) and 10.2.2 (batching and pipelining).  Each
follower is in one of three states:

* PROBE -- we do not know where its log matches ours.  Send one append, then wait for its
  answer (or a heartbeat response) before sending another, backing ``next`` off on rejects.
* REPLICATE -- the log matches up to ``match``; stream appends optimistically (``next`` runs
  ahead of ``match``) with at most ``max_inflight`` unacknowledged messages in flight.
* SNAPSHOT -- the entries it needs are compacted; a snapshot is on its way and nothing else
  is sent until it is acknowledged or reported failed.

Invariants: ``match < next``; in REPLICATE every in-flight message's last index is in
``(match, next)``; ``pending_snapshot`` is nonzero only in SNAPSHOT.
"""

from __future__ import annotations

import enum
from collections import deque


class ProgressState(enum.Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


class Inflights:
    """The last indexes of appends sent and not yet acknowledged, oldest first."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._last_indexes: deque[int] = deque()

    def add(self, last_index: int) -> None:
        if self.full():
            raise AssertionError("an append was sent with the in-flight window full")
        self._last_indexes.append(last_index)

    def free_to(self, index: int) -> None:
        """An acknowledgement of ``index`` acknowledges every message ending at or below it."""
        while self._last_indexes and self._last_indexes[0] <= index:
            self._last_indexes.popleft()

    def free_first(self) -> None:
        if self._last_indexes:
            self._last_indexes.popleft()

    def full(self) -> bool:
        return len(self._last_indexes) >= self.capacity

    def count(self) -> int:
        return len(self._last_indexes)

    def reset(self) -> None:
        self._last_indexes.clear()


class Progress:
    def __init__(self, next_index: int, max_inflight: int, *, learner: bool = False) -> None:
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        self.pending_snapshot = 0
        # Heard from since the last check-quorum round (dissertation 6.2).
        self.recent_active = False
        # PROBE: an append was sent and no answer has come back yet.
        self.probe_sent = False
        self.inflights = Inflights(max_inflight)
        self.learner = learner

    def __repr__(self) -> str:
        return (f"Progress({self.state.value} match={self.match} next={self.next}"
                + (" learner" if self.learner else "")
                + (f" snapshot={self.pending_snapshot}" if self.pending_snapshot else "")
                + (" paused" if self.is_paused() else "") + ")")

    def _reset_state(self, state: ProgressState) -> None:
        self.probe_sent = False
        self.pending_snapshot = 0
        self.state = state
        self.inflights.reset()

    def become_probe(self) -> None:
        if self.state is ProgressState.SNAPSHOT:
            # The snapshot (if it arrived) covers pending_snapshot: resume from after it.
            pending = self.pending_snapshot
            self._reset_state(ProgressState.PROBE)
            self.next = max(self.match + 1, pending + 1)
        else:
            self._reset_state(ProgressState.PROBE)
            self.next = self.match + 1

    def become_replicate(self) -> None:
        self._reset_state(ProgressState.REPLICATE)
        self.next = self.match + 1

    def become_snapshot(self, snapshot_index: int) -> None:
        self._reset_state(ProgressState.SNAPSHOT)
        self.pending_snapshot = snapshot_index

    def sent_entries(self, last_index: int, count: int) -> None:
        """Account for an append carrying ``count`` entries ending at ``last_index``."""
        if self.state is ProgressState.REPLICATE:
            if count:
                self.next = last_index + 1
                self.inflights.add(last_index)
        elif self.state is ProgressState.PROBE:
            self.probe_sent = True

    def maybe_update(self, index: int) -> bool:
        """The follower matches up to ``index``; False if that is old news."""
        updated = False
        if index > self.match:
            self.match = index
            updated = True
            self.probe_sent = False
        self.next = max(self.next, index + 1)
        return updated

    def maybe_decrease_to(self, rejected: int, match_hint: int) -> bool:
        """The follower rejected an append after ``rejected``; its log may match up to
        ``match_hint``.  Returns False for a stale rejection (nothing changes)."""
        if self.state is ProgressState.REPLICATE:
            if rejected <= self.match:
                return False  # an old, duplicated or reordered rejection
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False  # not the probe we are waiting for
        self.next = max(min(rejected, match_hint + 1), self.match + 1)
        self.probe_sent = False
        return True

    def is_paused(self) -> bool:
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        if self.state is ProgressState.REPLICATE:
            return self.inflights.full()
        return True
