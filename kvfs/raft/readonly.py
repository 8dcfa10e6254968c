"""Pending linearizable reads on a leader: ReadIndex (dissertation 6.4).

A read request records the leader's commit index when it arrives; the leader then confirms
it is still leader by a round of heartbeats carrying the request's round key.  Once a majority
of voters has answered that round, every request queued up to and including it may be served
at its recorded index -- no later leader can have committed anything the read would miss.

Invariant: requests are answered in arrival order, each once per copy received, and only
by answers to heartbeats sent after the request arrived.
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
    """Requests of one leadership, each given its own heartbeat round.

    Every request gets a fresh *round key* (a counter of this leadership) and the heartbeat
    that confirms it carries that key, so only answers to heartbeats sent after the request
    arrived can release it.  Keying rounds by the requester's context instead is unsafe: a
    copy of a request that the network duplicated after the first copy was answered would
    be released by a late answer to the first copy's round -- which confirmed leadership
    before the copy arrived -- at a stale index (found by the simulator, seed 3212).  A
    duplicated request is simply answered twice; its requester ignores the second answer.
    """

    def __init__(self) -> None:
        self._pending: dict[bytes, ReadRequest] = {}
        self._queue: list[bytes] = []
        self._rounds = 0

    def add(self, index: int, requester: NodeId, context: bytes) -> bytes:
        """Queue a request and return the key of the heartbeat round that confirms it."""
        self._rounds += 1
        key = self._rounds.to_bytes(8, "big")
        self._pending[key] = ReadRequest(index, requester, context)
        self._queue.append(key)
        return key

    def ack(self, node: NodeId, key: bytes) -> set[NodeId] | None:
        """Record that ``node`` answered the heartbeat round ``key``."""
        request = self._pending.get(key)
        if request is None:
            return None
        request.acks.add(node)
        return request.acks

    def release_through(self, key: bytes) -> list[ReadRequest]:
        """Every request queued up to and including round ``key``, removed from the queue:
        confirming leadership after the newest of them confirms it for all."""
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
