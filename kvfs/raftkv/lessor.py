"""Lease deadlines for the Raft store, decided by the leader alone.

A lease's TTL is replicated state (granted by a command); its *deadline* is not.  Only the
leader keeps deadlines, extends them on keep-alive and, when one passes, proposes a
``lease_revoke`` command -- so a follower's clock never deletes a key, and every member
deletes the lease's keys at the same log position.  A member that becomes leader first gives
every lease a full TTL from now (etcd's lessor "promote"), because it cannot know when the
previous leader last saw a keep-alive.

Clock: ``time.monotonic`` through the ``clock`` argument, so tests can drive it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping


class Lessor:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._deadlines: dict[int, float] = {}
        self.active = False  # True while this member leads

    def promote(self, ttls: Mapping[int, float]) -> None:
        """This member became leader: every lease gets a full TTL from now."""
        now = self._clock()
        self._deadlines = {lease: now + ttl for lease, ttl in ttls.items()}
        self.active = True

    def demote(self) -> None:
        self.active = False
        self._deadlines = {}

    def granted(self, lease: int, ttl: float) -> None:
        if self.active:
            self._deadlines[lease] = self._clock() + ttl

    def revoked(self, lease: int) -> None:
        self._deadlines.pop(lease, None)

    def keepalive(self, lease: int, ttl: float) -> None:
        if self.active:
            self._deadlines[lease] = self._clock() + ttl

    def expired(self) -> list[int]:
        """Leases whose deadline has passed (still held until their revoke applies)."""
        if not self.active:
            return []
        now = self._clock()
        return sorted(lease for lease, deadline in self._deadlines.items() if deadline <= now)

    def next_deadline(self) -> float | None:
        return min(self._deadlines.values()) if self.active and self._deadlines else None
