"""Pending linearizable reads on a leader: ReadIndex (dissertation 6.4).

A read request records the leader's commit index when it arrives; the leader then confirms
it is still leader by a round of heartbeats carrying the request's context.  Once a majority
of voters has answered that round, every request queued up to and including it may be served
at its recorded index -- no later leader can have committed anything the read would miss.

Invariant: requests are answered in arrival order, each exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kvfs.raft.types import NodeId


@dataclass(slots=True)
class ReadRequest:
    index: int
    requester: NodeId  # the node whose host asked (this node, or a follower that forwarded)
    context: bytes
    acks: set[NodeId] = field(default_factory=set)


class ReadOnly:
    """Requests keyed by requester and context, so two nodes' contexts never collide; the
    key is what travels in the heartbeat round.

    A ReadOnly lives for one leadership, and remembers the key of every request it has
    answered: the same key again is a copy the network duplicated after the first was
    answered, and is dropped (its first answer stands; a requester that lost it retries
    with a new context).  Answering it again would be unsafe: a late response to the first
    copy's heartbeat round -- which confirmed leadership before the copy arrived -- would
    count for it, and release it and every read queued before it at a stale index.  The
    cost is one key per read answered in the leadership."""

    def __init__(self) -> None:
        self._pending: dict[bytes, ReadRequest] = {}
        self._queue: list[bytes] = []
        self._answered: set[bytes] = set()

    def add(self, index: int, requester: NodeId, context: bytes) -> bytes | None:
        """Queue a request and return its key; None if the same one is already pending or
        was answered in this leadership."""
        key = requester.to_bytes(8, "big") + context
        if key in self._pending or key in self._answered:
            return None
        self._pending[key] = ReadRequest(index, requester, context)
        self._queue.append(key)
        return key

    def ack(self, node: NodeId, key: bytes) -> set[NodeId] | None:
        """Record that ``node`` answered the heartbeat round for ``key``."""
        request = self._pending.get(key)
        if request is None:
            return None
        request.acks.add(node)
        return request.acks

    def release_through(self, key: bytes) -> list[ReadRequest]:
        """Every request queued up to and including ``key``, removed from the queue."""
        if key not in self._pending:
            return []
        position = self._queue.index(key) + 1
        released = [self._pending.pop(k) for k in self._queue[:position]]
        self._answered.update(self._queue[:position])
        del self._queue[:position]
        return released

    def last_pending_key(self) -> bytes | None:
        return self._queue[-1] if self._queue else None

    def __len__(self) -> int:
        return len(self._queue)
