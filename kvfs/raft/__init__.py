"""kvfs's Raft core: a pure, deterministic consensus library (see docs/raft.md).

No sockets, files, clocks, threads or randomness of its own: the host drives it with ticks,
messages and requests through :class:`RawNode`, and carries out the :class:`Ready` batches
it returns.  Imports only the standard library; ``tests/test_raft_purity.py`` enforces it.
"""

from kvfs.raft.core import ConfChangeRefused, Config, ProposalDropped
from kvfs.raft.rawnode import RawNode, Status, bootstrap, bootstrap_state
from kvfs.raft.storage import LogCompacted, LogUnavailable, MemoryStorage, Storage
from kvfs.raft.types import (
    NO_NODE,
    ConfChange,
    ConfChangeKind,
    ConfState,
    Entry,
    EntryKind,
    HardState,
    Message,
    MessageType,
    NodeId,
    ReadState,
    Ready,
    Role,
    Snapshot,
    SnapshotMeta,
    SoftState,
)

__all__ = [
    "NO_NODE", "ConfChange", "ConfChangeKind", "ConfChangeRefused", "ConfState", "Config",
    "Entry", "EntryKind", "HardState", "LogCompacted", "LogUnavailable", "MemoryStorage",
    "Message", "MessageType", "NodeId", "ProposalDropped", "RawNode", "ReadState", "Ready",
    "Role", "Snapshot", "SnapshotMeta", "SoftState", "Status", "Storage", "bootstrap",
    "bootstrap_state",
]
