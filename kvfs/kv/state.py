"""The deterministic key-value state machine shared by the memory, embedded and Raft stores.

:class:`KVState` applies :data:`Command` tuples one at a time and is the only place the
transaction semantics of :mod:`kvfs.kv.api` are implemented.  It does no I/O and reads no
clock, so the embedded store can replay it from its write-ahead log and the Raft store can
replicate it: the same commands applied in the same order give the same state everywhere.

Values are opaque objects: plain ``bytes`` for the memory store, or a reference to a value
file for large values in the embedded store.  ``KVState`` never looks inside them; callers
pass a ``value_size`` function so limits can be checked against the logical size.

Commands (msgpack-friendly tuples):
  ``("txn", compares, puts, deletes)`` with ``compares = [(key, mod_rev)]``,
  ``puts = [(key, value, lease)]``, ``deletes = [(key, range_end_or_None)]``;
  ``("lease_grant", ttl)``; ``("lease_revoke", lease_id)``; ``("compact", revision)``.

Invariants:
  * ``revision`` increases by exactly one for every command that changes a key.
  * Every key attached to a lease is in ``leases[id].keys`` and vice versa.
  * ``history`` holds the events of revisions ``(compacted, revision]`` that are still
    within the retention window, in order.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sortedcontainers import SortedDict

from kvfs.kv.api import Compacted

Command = tuple[Any, ...]


@dataclass(slots=True)
class Entry:
    value: Any
    mod_revision: int
    create_revision: int
    lease: int


@dataclass(slots=True)
class Lease:
    ttl: float
    keys: set[bytes] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class Event:
    key: bytes
    value: Any  # None for a delete
    mod_revision: int


@dataclass(slots=True)
class ApplyResult:
    succeeded: bool
    revision: int
    lease_id: int = 0
    # Values no longer referenced by the current state (overwritten or deleted); the
    # embedded store frees their files once the command is durable.
    dropped: list[Any] = field(default_factory=list)


def in_range(key: bytes, start: bytes, end: bytes | None) -> bool:
    """Whether ``key`` is in ``[start, end)``: ``end`` None is ``start`` alone, and
    ``b"\\x00"`` every key from ``start`` on (etcd's conventions)."""
    if end is None:
        return key == start
    if end == b"\x00":
        return key >= start
    return start <= key < end


class KVState:
    """An ordered map with per-key revisions, leases and a bounded event history."""

    def __init__(self, history_limit: int = 200_000) -> None:
        self.data: SortedDict = SortedDict()
        self.revision = 0
        self.compacted = 0
        self.next_lease = 1
        self.leases: dict[int, Lease] = {}
        self.history: deque[Event] = deque()
        self.history_limit = history_limit
        # The oldest revision whose events are all still in ``history``.
        self.history_start = 1

    # -- reads -------------------------------------------------------------------------

    def get(self, key: bytes) -> Entry | None:
        entry: Entry | None = self.data.get(key)
        return entry

    def scan(self, start: bytes, end: bytes) -> Iterator[tuple[bytes, Entry]]:
        """Entries with ``start <= key < end`` in key order (``end == b"\\x00"``: no bound)."""
        if end == b"\x00":
            keys = self.data.irange(start)
        else:
            keys = self.data.irange(start, end, inclusive=(True, False))
        for k in keys:
            yield k, self.data[k]

    def events_since(self, revision: int, start: bytes, end: bytes) -> list[Event]:
        """History events at revisions >= ``revision`` for keys in ``[start, end)``."""
        if revision < self.history_start:
            raise Compacted(revision, self.history_start)
        out = []
        # history is ordered; skip quickly from the left when possible.
        for ev in self.history:
            if ev.mod_revision >= revision and in_range(ev.key, start, end):
                out.append(ev)
        return out

    # -- writes ------------------------------------------------------------------------

    def apply(self, cmd: Command) -> ApplyResult:
        kind = cmd[0]
        if kind == "txn":
            return self._txn(cmd[1], cmd[2], cmd[3])
        if kind == "lease_grant":
            lease_id = self.next_lease
            self.next_lease += 1
            self.leases[lease_id] = Lease(float(cmd[1]))
            return ApplyResult(True, self.revision, lease_id=lease_id)
        if kind == "lease_revoke":
            return self._lease_revoke(cmd[1])
        if kind == "compact":
            self.compacted = max(self.compacted, int(cmd[1]))
            self._trim_history(force_before=self.compacted)
            return ApplyResult(True, self.revision)
        raise ValueError(f"unknown command {kind!r}")

    def _txn(self, compares: list[tuple[bytes, int]], puts: list[tuple[bytes, Any, int]],
             deletes: list[tuple[bytes, bytes | None]]) -> ApplyResult:
        for key, want in compares:
            entry = self.data.get(key)
            have = entry.mod_revision if entry is not None else 0
            if have != want:
                return ApplyResult(False, self.revision)
        for _key, _value, lease in puts:
            if lease and lease not in self.leases:
                # etcd fails the whole request when a lease is unknown; so do we, as a failed
                # compare so callers can tell (their session expired).
                return ApplyResult(False, self.revision)
        if not puts and not any(self._has_any(k, e) for k, e in deletes):
            return ApplyResult(True, self.revision)
        rev = self.revision + 1
        result = ApplyResult(True, rev)
        for key, end in deletes:
            victims = [key] if end is None else [k for k, _ in self.scan(key, end)]
            for k in victims:
                old = self.data.pop(k, None)
                if old is None:
                    continue
                self._detach(k, old.lease)
                result.dropped.append(old.value)
                self._record(Event(k, None, rev))
        for key, value, lease in puts:
            old = self.data.get(key)
            created = rev
            if old is not None:
                created = old.create_revision
                self._detach(key, old.lease)
                result.dropped.append(old.value)
            self.data[key] = Entry(value, rev, created, lease)
            if lease:
                self.leases[lease].keys.add(key)
            self._record(Event(key, value, rev))
        self.revision = rev
        return result

    def _has_any(self, key: bytes, end: bytes | None) -> bool:
        if end is None:
            return key in self.data
        return next(iter(self.scan(key, end)), None) is not None

    def _lease_revoke(self, lease_id: int) -> ApplyResult:
        lease = self.leases.pop(lease_id, None)
        if lease is None or not lease.keys:
            return ApplyResult(True, self.revision)
        rev = self.revision + 1
        result = ApplyResult(True, rev)
        for key in sorted(lease.keys):
            old = self.data.pop(key)
            result.dropped.append(old.value)
            self._record(Event(key, None, rev))
        self.revision = rev
        return result

    def _detach(self, key: bytes, lease_id: int) -> None:
        if lease_id and lease_id in self.leases:
            self.leases[lease_id].keys.discard(key)

    def _record(self, ev: Event) -> None:
        self.history.append(ev)
        if len(self.history) > self.history_limit:
            self._trim_history(force_before=0)

    def _trim_history(self, force_before: int) -> None:
        """Drop events older than ``force_before`` and any beyond the retention limit.

        Events of one revision are dropped together, so ``history_start`` always names a
        revision whose events are complete.
        """
        h = self.history
        while h and (h[0].mod_revision < force_before or len(h) > self.history_limit):
            rev = h[0].mod_revision
            while h and h[0].mod_revision == rev:
                h.popleft()
            self.history_start = rev + 1
        if not h:
            self.history_start = max(self.history_start, min(force_before, self.revision + 1))

    # -- snapshots ---------------------------------------------------------------------

    def snapshot_items(self) -> Iterator[tuple[bytes, Entry]]:
        return iter(self.data.items())

    def restore(self, revision: int, compacted: int, next_lease: int,
                leases: dict[int, float], items: Iterator[tuple[bytes, Entry]], *,
                history: list[Event] | None = None, history_start: int = 0) -> None:
        """Replace the state with a snapshot's contents.  History starts empty unless the
        snapshot carries it (the Raft store's do: watches must work alike on every member,
        including one that just installed a snapshot)."""
        self.data = SortedDict()
        self.leases = {lid: Lease(ttl) for lid, ttl in leases.items()}
        for key, entry in items:
            self.data[key] = entry
            if entry.lease and entry.lease in self.leases:
                self.leases[entry.lease].keys.add(key)
        self.revision = revision
        self.compacted = compacted
        self.next_lease = next_lease
        self.history.clear()
        self.history_start = revision + 1
        if history is not None:
            self.history.extend(history)
            self.history_start = history_start
