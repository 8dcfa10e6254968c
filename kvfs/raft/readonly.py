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
    key is what travels in the heartbeat round."""

    def __init__(self) -> None:
        self._pending: dict[bytes, ReadRequest] = {}
        self._queue: list[bytes] = []

    def add(self, index: int, requester: NodeId, context: bytes) -> bytes | None:
        """Queue a request and return its key; None if the same one is already pending."""
        key = requester.to_bytes(8, "big") + context
        if key in self._pending:
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
        del self._queue[:position]
        return released

    def last_pending_key(self) -> bytes | None:
        return self._queue[-1] if self._queue else None

    def __len__(self) -> int:
        return len(self._queue)
