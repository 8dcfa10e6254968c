"""The values the Raft core exchanges with its host: entries, states, snapshots, messages.

Everything here is an immutable record or a plain enum; nothing does I/O.  The host (the
Raft server, or a simulator) serializes these however it likes -- the core never encodes
anything except a :class:`ConfChange`, which travels inside a log entry's bytes.

Vocabulary follows the Raft dissertation (Ongaro 2014, section 3.3, Figure 3.1): a *term*
numbers leaderships, an *index* numbers log positions (the first entry is index 1; index 0
with term 0 is the empty log's sentinel), *commit* is the highest index known committed.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field
from typing import NewType

NodeId = NewType("NodeId", int)
NO_NODE = NodeId(0)  # "nobody": no vote cast, no leader known.  Real ids are > 0.


class EntryKind(enum.IntEnum):
    NORMAL = 0
    CONF_CHANGE = 1  # data is ConfChange.encode()


@dataclass(frozen=True, slots=True)
class Entry:
    term: int
    index: int
    kind: EntryKind = EntryKind.NORMAL
    data: bytes = b""


class ConfChangeKind(enum.IntEnum):
    ADD_VOTER = 0    # add a voter, or promote an existing learner
    ADD_LEARNER = 1  # add a non-voting member (dissertation 4.2.1: catching up new servers)
    REMOVE = 2


_CONF_CHANGE = struct.Struct(">BQ")


@dataclass(frozen=True, slots=True)
class ConfChange:
    """One membership change: the cluster moves one server at a time (dissertation 4.1).

    ``context`` is opaque to the core: the host's own data about the change (the Raft
    store puts the member's name and addresses there, as etcd does).  It travels in the
    entry after the fixed part, so a change without one encodes exactly as before.
    """

    kind: ConfChangeKind
    node: NodeId
    context: bytes = b""

    def encode(self) -> bytes:
        return _CONF_CHANGE.pack(self.kind, self.node) + self.context

    @classmethod
    def decode(cls, data: bytes) -> ConfChange:
        if len(data) < _CONF_CHANGE.size:
            raise ValueError(f"a membership change of {len(data)} bytes is too short")
        kind, node = _CONF_CHANGE.unpack_from(data)
        return cls(ConfChangeKind(kind), NodeId(node), bytes(data[_CONF_CHANGE.size:]))


@dataclass(frozen=True, slots=True)
class ConfState:
    """A configuration: who votes and who only follows.  Invariant: the sets are disjoint."""

    voters: frozenset[NodeId] = frozenset()
    learners: frozenset[NodeId] = frozenset()

    def members(self) -> frozenset[NodeId]:
        return self.voters | self.learners


@dataclass(frozen=True, slots=True)
class HardState:
    """What must be on disk before any message that depends on it leaves (dissertation 3.8).

    ``term`` and ``vote`` make a node keep its promise of one vote per term across restarts;
    ``commit`` is persisted so a restarted node can apply without waiting for a leader.
    """

    term: int = 0
    vote: NodeId = NO_NODE
    commit: int = 0


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    index: int
    term: int
    conf_state: ConfState


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The state machine's state after applying every entry up to ``meta.index``."""

    meta: SnapshotMeta
    data: bytes = b""


EMPTY_SNAPSHOT = Snapshot(SnapshotMeta(0, 0, ConfState()))


class MessageType(enum.Enum):
    APPEND = "app"                       # leader -> follower: entries after (log_term, index)
    APPEND_RESPONSE = "app-resp"
    VOTE = "vote"                        # candidate -> voter (dissertation 3.4)
    VOTE_RESPONSE = "vote-resp"
    PRE_VOTE = "prevote"                 # would you vote for me?  (dissertation 9.6)
    PRE_VOTE_RESPONSE = "prevote-resp"
    HEARTBEAT = "heartbeat"              # leader -> follower: commit and read contexts
    HEARTBEAT_RESPONSE = "heartbeat-resp"
    SNAPSHOT = "snap"                    # leader -> follower behind the compacted log
    PROPOSE = "prop"                     # follower -> leader: forwarded proposal
    READ_INDEX = "read-index"            # follower -> leader: forwarded ReadIndex request
    READ_INDEX_RESPONSE = "read-index-resp"
    TRANSFER_LEADER = "transfer"         # follower -> leader: forwarded transfer request
    TIMEOUT_NOW = "timeout-now"          # leader -> transferee: campaign now (3.10)


@dataclass(frozen=True, slots=True)
class Message:
    """One message between nodes.  Fields a type does not use keep their defaults.

    ``term`` is the sender's term (0 for forwarded local requests, which carry no term).
    For APPEND, (``log_term``, ``index``) identify the entry preceding ``entries``; for an
    APPEND_RESPONSE, ``index`` is the last index the follower now matches (or, with
    ``reject``, the rejected index with ``reject_hint`` the follower's last index).  For
    votes, (``log_term``, ``index``) describe the candidate's last entry.  For
    TRANSFER_LEADER, ``index`` is the node that should take over.  READ_INDEX and
    HEARTBEAT carry a read request's ``context``, which must be unique per requesting node.
    """

    type: MessageType
    to: NodeId
    sender: NodeId
    term: int = 0
    log_term: int = 0
    index: int = 0
    entries: tuple[Entry, ...] = ()
    commit: int = 0
    reject: bool = False
    reject_hint: int = 0
    snapshot: Snapshot | None = None
    context: bytes = b""


class Role(enum.Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile state a host may want to know about; never persisted."""

    leader: NodeId
    role: Role


@dataclass(frozen=True, slots=True)
class ReadState:
    """A ReadIndex answer: once the host has applied ``index``, a read for ``context`` is
    linearizable (dissertation 6.4)."""

    index: int
    context: bytes


@dataclass(slots=True)
class Ready:
    """One batch of work for the host, produced by :meth:`RawNode.ready`.

    The host must handle it in this order, then call :meth:`RawNode.advance`:

    1. persist ``snapshot`` (if any), then ``entries``, then ``hard_state`` (if any) --
       durably, with one sync for the batch when ``must_sync``;
    2. send ``messages`` (they may depend on step 1: a vote, an append acknowledgement);
    3. apply ``snapshot`` then ``committed_entries`` to the state machine, and answer
       ``read_states`` once their index is applied.
    """

    soft_state: SoftState | None = None
    hard_state: HardState | None = None
    entries: list[Entry] = field(default_factory=list)
    snapshot: Snapshot | None = None
    committed_entries: list[Entry] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    read_states: list[ReadState] = field(default_factory=list)
    must_sync: bool = False

    def empty(self) -> bool:
        return not (self.soft_state or self.hard_state or self.entries or self.snapshot
                    or self.committed_entries or self.messages or self.read_states)
