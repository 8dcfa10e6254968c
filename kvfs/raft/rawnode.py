"""The host's handle on one Raft node: requests in, Ready batches out, advance() to acknowledge.

The contract (see ``docs/raft.md``):

* Inputs: :meth:`tick`, :meth:`step` (a message from a peer), :meth:`propose`,
  :meth:`propose_conf_change`, :meth:`read_index`, :meth:`transfer_leadership`,
  :meth:`campaign`, and the transport's reports (:meth:`report_unreachable`,
  :meth:`report_snapshot`).
* Output: :meth:`ready` returns everything the host must do, in the order documented on
  :class:`~kvfs.raft.types.Ready`; the host then calls :meth:`advance` with that Ready.
  Exactly one Ready is outstanding at a time, and no input reaches the node while it is:
  ``ready()`` again, or any input, before ``advance()`` is a programming error.  A host
  that wants group commit steps everything that arrived, takes one Ready, syncs once.
* Persistence: when ``advance`` is called, the host promises that the Ready's snapshot,
  entries and hard state are durable and its committed entries applied.  Only then does the
  leader count its own new entries toward a quorum, and only then are the next Ready's
  messages (which may depend on them) produced.
* Membership changes take effect when their entry is applied, i.e. at ``advance``.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass

from kvfs.raft.core import Config, ProposalDropped, Raft
from kvfs.raft.progress import ProgressState
from kvfs.raft.storage import MemoryStorage, Storage
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
    Ready,
    Role,
    SoftState,
)


def bootstrap_state(voters: Iterable[NodeId]) -> tuple[list[Entry], HardState]:
    """A new cluster's first log entries and hard state, the same on every initial member.

    The configuration goes into the log as committed membership changes at term 1 (as
    etcd's raft does), not only into a snapshot: a server added later replays the log from
    index 1 and must meet the same configurations the others applied.
    """
    ids = sorted(set(voters))
    if not ids or ids[0] <= 0:
        raise ValueError("bootstrap needs at least one positive node id")
    entries = [Entry(1, i + 1, EntryKind.CONF_CHANGE,
                     ConfChange(ConfChangeKind.ADD_VOTER, node).encode())
               for i, node in enumerate(ids)]
    return entries, HardState(term=1, vote=NO_NODE, commit=len(ids))


def bootstrap(storage: MemoryStorage, voters: Iterable[NodeId]) -> None:
    """Write :func:`bootstrap_state` into an empty ``storage``."""
    if storage.last_index() != 0 or storage.hard_state != HardState():
        raise ValueError("bootstrap needs empty storage")
    entries, hard_state = bootstrap_state(voters)
    storage.append(entries)
    storage.set_hard_state(hard_state)


@dataclass(frozen=True, slots=True)
class FollowerStatus:
    match: int
    next: int
    state: ProgressState
    learner: bool


@dataclass(frozen=True, slots=True)
class Status:
    id: NodeId
    hard_state: HardState
    soft_state: SoftState
    applied: int
    last_index: int
    conf_state: ConfState
    lead_transferee: NodeId
    progress: dict[NodeId, FollowerStatus]


class RawNode:
    def __init__(self, config: Config, storage: Storage, rng: random.Random) -> None:
        self.raft = Raft(config, storage, rng)
        self._previous_soft = self.raft.soft_state()
        self._previous_hard = storage.initial_state()[0]
        self._outstanding: Ready | None = None

    # -- inputs ------------------------------------------------------------------------------

    def _check_idle(self) -> None:
        # Nothing may change the node while the host works through a Ready: what the Ready
        # says to persist and send must still be true when advance() acknowledges it.
        if self._outstanding is not None:
            raise AssertionError("input to a RawNode between ready() and advance()")

    def tick(self) -> None:
        self._check_idle()
        self.raft.tick()

    def campaign(self) -> None:
        """Start an election now (with pre-vote, if configured)."""
        self._check_idle()
        self.raft.hup()

    def step(self, message: Message) -> None:
        """Deliver a message from a peer.  Messages addressed elsewhere are ignored."""
        self._check_idle()
        if message.to != self.raft.id:
            return
        try:
            self.raft.step(message)
        except ProposalDropped:
            # A proposal forwarded while leadership moved can come back to the node that
            # made it; the core takes it for a local request and raises.  From a peer it is
            # a forwarded proposal like any other: dropped silently, its client retries.
            if message.type is not MessageType.PROPOSE:
                raise

    def propose(self, data: bytes) -> None:
        """Propose ``data`` for the log.  Raises ProposalDropped when this node knows it
        cannot be appended (no leader, or a transfer in progress).  Not raising does not
        mean it will commit: a forwarded proposal can be lost; match applied entries to
        proposals by something in ``data``."""
        self._check_idle()
        self.raft.step(Message(MessageType.PROPOSE, to=self.raft.id, sender=self.raft.id,
                               entries=(Entry(0, 0, EntryKind.NORMAL, data),)))

    def propose_conf_change(self, change: ConfChange) -> None:
        """Propose one membership change.  On a leader, raises ConfChangeRefused when a
        change is still pending or the change is invalid for the current configuration."""
        self._check_idle()
        self.raft.step(Message(MessageType.PROPOSE, to=self.raft.id, sender=self.raft.id,
                               entries=(Entry(0, 0, EntryKind.CONF_CHANGE, change.encode()),)))

    def read_index(self, context: bytes) -> None:
        """Ask for a linearizable read point; a ReadState with ``context`` comes out in a
        later Ready.  ``context`` must be unique among this node's requests.  A request may
        be dropped (no leader): the host retries after a timeout."""
        self._check_idle()
        self.raft.step(Message(MessageType.READ_INDEX, to=self.raft.id, sender=self.raft.id,
                               context=context))

    def transfer_leadership(self, target: NodeId) -> None:
        """Ask the leader to hand leadership to ``target`` (3.10); proposals are refused
        until it succeeds or an election timeout passes."""
        self._check_idle()
        self.raft.step(Message(MessageType.TRANSFER_LEADER, to=self.raft.id,
                               sender=self.raft.id, index=target))

    def report_unreachable(self, node: NodeId) -> None:
        self._check_idle()
        self.raft.report_unreachable(node)

    def report_snapshot(self, node: NodeId, ok: bool) -> None:
        self._check_idle()
        self.raft.report_snapshot(node, ok)

    # -- output ------------------------------------------------------------------------------

    def has_ready(self) -> bool:
        raft = self.raft
        return bool(raft.soft_state() != self._previous_soft
                    or raft.hard_state() != self._previous_hard
                    or raft.log.unstable.entries or raft.log.unstable.snapshot
                    or raft.log.has_next_committed_entries()
                    or raft.messages or raft.read_states)

    def ready(self) -> Ready:
        if self._outstanding is not None:
            raise AssertionError("ready() called again before advance()")
        raft = self.raft
        soft = raft.soft_state()
        hard = raft.hard_state()
        rd = Ready(
            soft_state=soft if soft != self._previous_soft else None,
            hard_state=hard if hard != self._previous_hard else None,
            entries=list(raft.log.unstable.entries),
            snapshot=raft.log.unstable.snapshot,
            committed_entries=raft.log.next_committed_entries(
                raft.config.max_committed_size_per_ready),
            messages=raft.messages,
            read_states=raft.read_states,
        )
        raft.messages = []
        raft.read_states = []
        rd.must_sync = bool(rd.entries or rd.snapshot or (
            rd.hard_state is not None and (rd.hard_state.term != self._previous_hard.term
                                           or rd.hard_state.vote != self._previous_hard.vote)))
        self._outstanding = rd
        return rd

    def advance(self, rd: Ready) -> None:
        """The host has persisted, sent and applied ``rd``."""
        if rd is not self._outstanding:
            raise AssertionError("advance() with a Ready that is not the outstanding one")
        self._outstanding = None
        raft = self.raft
        if rd.soft_state is not None:
            self._previous_soft = rd.soft_state
        if rd.hard_state is not None:
            self._previous_hard = rd.hard_state
        if rd.snapshot is not None:
            raft.log.stable_snapshot_to(rd.snapshot.meta.index)
            raft.log.applied = max(raft.log.applied, rd.snapshot.meta.index)
        if rd.entries:
            last = rd.entries[-1]
            raft.log.stable_to(last.index, last.term)
        if rd.snapshot is not None or rd.entries:
            raft.on_persisted()
        for entry in rd.committed_entries:
            if entry.kind is EntryKind.CONF_CHANGE:
                raft.apply_conf_change(ConfChange.decode(entry.data))
        if rd.committed_entries:
            raft.log.applied_to(rd.committed_entries[-1].index)
            raft.on_applied()

    # -- inspection --------------------------------------------------------------------------

    def status(self) -> Status:
        raft = self.raft
        progress = {}
        if raft.role is Role.LEADER:
            progress = {node: FollowerStatus(p.match, p.next, p.state, p.learner)
                        for node, p in raft.tracker.progress.items()}
        return Status(raft.id, raft.hard_state(), raft.soft_state(), raft.log.applied,
                      raft.log.last_index(), raft.tracker.conf, raft.lead_transferee, progress)
