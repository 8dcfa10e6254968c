"""The Raft state machine of one node: roles, terms, elections, replication, reads, transfers.

This is the algorithm and nothing else.  It reacts to ``tick()`` and ``step(message)`` by
changing its state and queueing messages in ``self.messages``; :class:`~kvfs.raft.rawnode.
RawNode` packs that into a Ready for the host.  It reads the persisted log through a
:class:`~kvfs.raft.storage.Storage` and never writes it.  Randomness comes from the
``random.Random`` passed in, time from the number of ticks.

What it implements, by dissertation (Ongaro 2014) section:
  * 3.3-3.4 terms, roles, elections with randomized timeouts; 3.6.1 the election restriction.
  * 3.5 log replication, with the fast backtrack of rejected appends by term.
  * 3.6.2 a leader commits by counting replicas only for entries of its current term.
  * 3.8 persistence: messages leave only in a Ready, after what they depend on is persisted;
    the leader counts its own log in quorums only once it is persisted (10.2.1 lets the
    leader write in parallel with its followers: here the host's sync and the sends happen
    in the same Ready).
  * 3.10 leadership transfer (TIMEOUT_NOW once the target's log is caught up).
  * 4.1 single-server membership changes, applied when their entry is applied, at most one
    pending; 4.2.1 learners; 4.2.2 a removed leader leads on without counting itself, hands
    leadership to the most up-to-date voter and so steps down;
    4.2.3 and 9.6 pre-vote and ignoring votes while a leader is known (disruptive servers).
  * 5.1 snapshots: a follower behind the compacted log is sent the leader's snapshot.
  * 6.2 check-quorum: a leader that has not heard from a majority for an election timeout
    steps down.
  * 6.4 linearizable reads by ReadIndex, deferred until the leader has committed an entry of
    its own term.  Lease reads (6.4.1) are deliberately not offered: they trust bounded clock
    drift, and the simulator cannot check that assumption.
  * 10.2.2 batching (entries per message up to ``max_size_per_msg``) and pipelining (at most
    ``max_inflight`` appends in flight per follower).

Invariants (checked by the simulator after every step):
  * ``log.applied <= log.committed <= log.last_index()``, and ``committed`` never decreases.
  * ``vote`` is only set in the current ``term``; a node grants one vote per term.
  * As leader: ``lead == id`` and ``role is LEADER``; own progress ``match`` is the last
    persisted index of the leader's log.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from kvfs.raft import confchange, quorum
from kvfs.raft.log import RaftLog
from kvfs.raft.progress import ProgressState
from kvfs.raft.quorum import VoteResult
from kvfs.raft.readonly import ReadOnly
from kvfs.raft.storage import LogCompacted, LogUnavailable, Storage
from kvfs.raft.tracker import ProgressTracker
from kvfs.raft.types import (
    NO_NODE,
    ConfChange,
    Entry,
    EntryKind,
    HardState,
    Message,
    MessageType,
    NodeId,
    ReadState,
    Role,
    Snapshot,
    SoftState,
)

# Marks a vote request sent because of a leadership transfer: receivers grant it even while
# they still hear from the old leader (dissertation 3.10).
TRANSFER_CONTEXT = b"transfer"

# Vote requests, and the response type each is answered with.
_VOTE_REQUESTS = {MessageType.VOTE: MessageType.VOTE_RESPONSE,
                  MessageType.PRE_VOTE: MessageType.PRE_VOTE_RESPONSE}

# Messages a node forwards to its leader without a term of their own.
_FORWARDED = {MessageType.PROPOSE, MessageType.READ_INDEX, MessageType.TRANSFER_LEADER}


class ProposalDropped(Exception):
    """A proposal was not appended: no leader known, or leadership is being transferred."""


class ConfChangeRefused(ProposalDropped):
    """A membership change was refused: another is pending, or it is not a valid change."""


@dataclass(frozen=True, slots=True)
class Config:
    """Tuning of one node.  Ticks are the host's unit of time (e.g. 100 ms)."""

    id: NodeId
    election_tick: int = 10       # followers campaign after [election_tick, 2*election_tick)
    heartbeat_tick: int = 1       # a leader heartbeats every heartbeat_tick ticks
    max_size_per_msg: int = 1 << 20
    max_inflight: int = 256
    max_committed_size_per_ready: int = 0  # 0: no limit
    pre_vote: bool = True
    check_quorum: bool = True

    def validate(self) -> None:
        if self.id <= 0:
            raise ValueError("node id must be positive")
        if self.heartbeat_tick <= 0 or self.election_tick <= self.heartbeat_tick:
            raise ValueError("need 0 < heartbeat_tick < election_tick")
        if self.max_inflight <= 0:
            raise ValueError("max_inflight must be positive")


class Raft:
    def __init__(self, config: Config, storage: Storage, rng: random.Random) -> None:
        config.validate()
        self.config = config
        self.id = config.id
        self.rng = rng
        self.log = RaftLog(storage)
        hard_state, conf_state = storage.initial_state()
        self.tracker = ProgressTracker(conf_state, config.max_inflight)
        self.term = 0
        self.vote = NO_NODE
        self.role = Role.FOLLOWER
        self.lead = NO_NODE
        self.lead_transferee = NO_NODE
        # Ticks left to honour a TIMEOUT_NOW that arrived before a committed membership
        # change was applied (see on_applied).
        self.transfer_campaign_ticks = 0
        # Index of the last membership change proposed; no new one until it is applied.
        self.pending_conf_index = 0
        self.read_only = ReadOnly()
        self.pending_reads: list[Message] = []  # ReadIndex before a current-term commit
        self.messages: list[Message] = []
        self.read_states: list[ReadState] = []
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = config.election_tick
        if hard_state != HardState():
            if hard_state.commit > self.log.last_index():
                raise AssertionError(
                    f"persisted commit {hard_state.commit} beyond the persisted log "
                    f"(last index {self.log.last_index()})")
            # A snapshot persisted without the hard state after it (a torn write) is
            # committed all the same: commit_to keeps the higher of the two.
            self.log.commit_to(hard_state.commit)
            self.term = hard_state.term
            self.vote = hard_state.vote
        if self.log.last_term() > self.term:
            # A torn write persisted entries (or a snapshot) of a newer term but lost the hard
            # state after them.  No vote of that term can have left (messages go out only
            # after the whole Ready is persisted), so adopt the term with no vote rather
            # than act in a term older than our own log.
            self.term = self.log.last_term()
            self.vote = NO_NODE
        self.become_follower(self.term, NO_NODE)

    # -- state the host sees -----------------------------------------------------------------

    def hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.committed)

    def soft_state(self) -> SoftState:
        return SoftState(self.lead, self.role)

    def promotable(self) -> bool:
        """Whether this node may campaign: it is a voter of the configuration it applied."""
        return self.tracker.is_voter(self.id)

    def persisted_index(self) -> int:
        """The last index of this node's log that is persisted and still part of it."""
        if self.log.unstable.snapshot is not None:
            return 0
        return min(self.log.storage.last_index(), self.log.unstable.offset - 1)

    # -- role changes ------------------------------------------------------------------------

    def _reset(self, term: int) -> None:
        if term != self.term:
            self.term = term
            self.vote = NO_NODE
        self.lead = NO_NODE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = (
            self.config.election_tick + self.rng.randrange(self.config.election_tick))
        self.lead_transferee = NO_NODE
        self.transfer_campaign_ticks = 0
        self.tracker.reset_votes()
        last = self.log.last_index()
        for progress in self.tracker.progress.values():
            progress.match = 0
            progress.become_probe()
            progress.next = last + 1
            progress.recent_active = False
        self.pending_conf_index = 0
        self.read_only = ReadOnly()
        self.pending_reads = []

    def become_follower(self, term: int, lead: NodeId) -> None:
        self._reset(term)
        self.lead = lead
        self.role = Role.FOLLOWER

    def become_pre_candidate(self) -> None:
        # Pre-vote changes neither term nor vote: a node that cannot win disturbs nobody.
        if self.role is Role.LEADER:
            raise AssertionError("a leader cannot become a pre-candidate")
        self.tracker.reset_votes()
        self.lead = NO_NODE
        self.role = Role.PRE_CANDIDATE

    def become_candidate(self) -> None:
        if self.role is Role.LEADER:
            raise AssertionError("a leader cannot become a candidate")
        self._reset(self.term + 1)
        self.vote = self.id
        self.role = Role.CANDIDATE

    def become_leader(self) -> None:
        if self.role is not Role.CANDIDATE:
            raise AssertionError("only a candidate becomes leader")
        self._reset(self.term)
        self.lead = self.id
        self.role = Role.LEADER
        for progress in self.tracker.progress.values():
            progress.recent_active = True
        own = self.tracker.progress.get(self.id)
        if own is not None:
            own.become_replicate()
            own.match = self.persisted_index()
            own.next = self.log.last_index() + 1
        # An empty entry of the new term lets earlier entries commit (3.6.2) and lets
        # ReadIndex serve reads (6.4).
        self._append_entries([Entry(term=0, index=0)])
        # The log may hold an uncommitted membership change from an earlier term: no new
        # one until all of it and this term's first entry are applied -- the fix for the
        # single-server change bug reported on raft-dev in 2015.
        self.pending_conf_index = self.log.last_index()
        self._hand_over_if_removed()

    # -- time --------------------------------------------------------------------------------

    def tick(self) -> None:
        if self.role is Role.LEADER:
            self._tick_heartbeat()
        else:
            self._tick_election()

    def _past_election_timeout(self) -> bool:
        return self.election_elapsed >= self.randomized_election_timeout

    def _tick_election(self) -> None:
        self.election_elapsed += 1
        if self.transfer_campaign_ticks:
            self.transfer_campaign_ticks -= 1
        if self._past_election_timeout():
            if self.promotable():
                self.election_elapsed = 0
                self.hup()
            elif self.role is not Role.FOLLOWER:
                # A non-voter's election (see _step_vote_request) that did not finish in time
                # is given up; a voter's next request starts another.
                self.become_follower(self.term, NO_NODE)

    def _tick_heartbeat(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.config.election_tick:
            self.election_elapsed = 0
            if self.config.check_quorum and not self.tracker.quorum_active(self.id):
                self.become_follower(self.term, NO_NODE)
                return
            # A transfer that did not finish within an election timeout is abandoned.
            self.lead_transferee = NO_NODE
            self._hand_over_if_removed()
        if self.role is Role.LEADER and self.heartbeat_elapsed >= self.config.heartbeat_tick:
            self.heartbeat_elapsed = 0
            self._broadcast_heartbeat(self.read_only.last_pending_key() or b"")

    # -- elections (3.4, 9.6) ----------------------------------------------------------------

    def _has_unapplied_conf_change(self) -> bool:
        if self.log.committed <= self.log.applied:
            return False
        lo = max(self.log.applied + 1, self.log.first_index())
        return any(e.kind is EntryKind.CONF_CHANGE
                   for e in self.log.slice(lo, self.log.committed + 1))

    def hup(self, *, transfer: bool = False, removed: bool = False) -> None:
        """Start an election (pre-vote first, unless a leader asked us to take over).
        ``removed``: as a non-voter that must hand over (see _step_vote_request)."""
        if self.role is Role.LEADER or not (self.promotable() or removed):
            return
        if removed and (self.tracker.is_voter(self.id) or not self.tracker.voters):
            return
        if self._has_unapplied_conf_change():
            # The configuration to campaign in is not known until those are applied.
            return
        if self.config.pre_vote and not transfer:
            self._campaign(MessageType.PRE_VOTE, transfer=False)
        else:
            self._campaign(MessageType.VOTE, transfer=transfer)

    def _campaign(self, kind: MessageType, *, transfer: bool) -> None:
        if kind is MessageType.PRE_VOTE:
            self.become_pre_candidate()
            term = self.term + 1
        else:
            self.become_candidate()
            term = self.term
        self.tracker.record_vote(self.id, True)
        if self.tracker.tally() is VoteResult.WON:
            # A single voter wins at once.
            if kind is MessageType.PRE_VOTE:
                self._campaign(MessageType.VOTE, transfer=transfer)
            else:
                self.become_leader()
            return
        last = self.log.last_index()
        for voter in sorted(self.tracker.voters):
            if voter == self.id:
                continue
            self._send(Message(kind, to=voter, sender=self.id, term=term,
                               log_term=self.log.last_term(), index=last,
                               context=TRANSFER_CONTEXT if transfer else b""))

    # -- messages ----------------------------------------------------------------------------

    def _send(self, message: Message) -> None:
        self.messages.append(message)

    def _reply(self, to: NodeId, type: MessageType, **fields: object) -> None:
        fields.setdefault("term", self.term)
        self._send(Message(type, to=to, sender=self.id, **fields))  # type: ignore[arg-type]

    def step(self, m: Message) -> None:
        """Handle one message: from a peer, or a local request built by RawNode."""
        if m.term == 0:
            if m.type not in _FORWARDED:
                return  # a termless peer message is malformed: ignore it
        elif m.term > self.term:
            if m.type in _VOTE_REQUESTS:
                forced = m.context == TRANSFER_CONTEXT
                in_lease = (self.config.check_quorum and self.lead != NO_NODE
                            and self.election_elapsed < self.config.election_tick)
                if in_lease and not forced:
                    # We heard from a leader within the minimum election timeout: this
                    # candidate is disruptive (4.2.3); ignore it, do not even bump our term.
                    return
            if m.type is MessageType.PRE_VOTE:
                pass  # a pre-vote never changes our term
            elif m.type is MessageType.PRE_VOTE_RESPONSE and not m.reject:
                pass  # granted pre-votes carry the future term; we bump it when we win
            elif m.type in (MessageType.APPEND, MessageType.HEARTBEAT, MessageType.SNAPSHOT):
                self.become_follower(m.term, m.sender)
            else:
                self.become_follower(m.term, NO_NODE)
        elif m.term < self.term:
            if m.type in (MessageType.APPEND, MessageType.HEARTBEAT):
                # A stale leader: tell it our term so it steps down.  Without this, a node
                # whose term rose while partitioned could never rejoin under check-quorum.
                self._reply(m.sender, MessageType.APPEND_RESPONSE)
            elif m.type in _VOTE_REQUESTS:
                # Reject with our term (dissertation figure 3.1), so a candidate that fell
                # behind adopts it: ignored, a candidate whose only reachable voter's term is
                # pushed ahead by a third node's campaigns never catches up.
                self._reply(m.sender, _VOTE_REQUESTS[m.type], reject=True)
            return

        if m.type in _VOTE_REQUESTS:
            self._step_vote_request(m)
        elif self.role is Role.LEADER:
            self._step_leader(m)
        elif self.role is Role.FOLLOWER:
            self._step_follower(m)
        else:
            self._step_candidate(m)

    def _step_vote_request(self, m: Message) -> None:
        can_vote = (self.vote == m.sender
                    or (self.vote == NO_NODE and self.lead == NO_NODE)
                    or (m.type is MessageType.PRE_VOTE and m.term > self.term))
        response = _VOTE_REQUESTS[m.type]
        if can_vote and self.log.is_up_to_date(m.index, m.log_term):
            # Grants carry the candidate's term, so a pre-candidate counts them.
            self._reply(m.sender, response, term=m.term)
            if m.type is MessageType.VOTE:
                self.election_elapsed = 0
                self.vote = m.sender
        else:
            self._reply(m.sender, response, reject=True)
            if (can_vote and not self.promotable() and self.role is not Role.LEADER
                    and self.tracker.is_voter(m.sender)):
                # We were removed or demoted, yet a voter that has not learned the change is
                # committed still counts us -- and cannot win without our vote, which our
                # longer log withholds.  Lead just long enough to bring it up to date and
                # hand over (4.2.2); our configuration's voters elect us, which is safe for
                # the same reason a removed leader may lead on.
                self.hup(removed=True)

    # -- follower ----------------------------------------------------------------------------

    def _step_follower(self, m: Message) -> None:
        t = m.type
        if t is MessageType.PROPOSE:
            if self.lead == NO_NODE:
                self._drop_proposal(m, "no leader")
                return
            self._send(Message(t, to=self.lead, sender=m.sender, entries=m.entries))
        elif t in (MessageType.APPEND, MessageType.HEARTBEAT, MessageType.SNAPSHOT):
            self.election_elapsed = 0
            self.lead = m.sender
            if t is MessageType.APPEND:
                self._handle_append(m)
            elif t is MessageType.HEARTBEAT:
                self._handle_heartbeat(m)
            else:
                self._handle_snapshot(m)
        elif t in (MessageType.TRANSFER_LEADER, MessageType.READ_INDEX):
            if self.lead != NO_NODE:
                self._send(Message(t, to=self.lead, sender=m.sender, context=m.context,
                                   index=m.index))
        elif t is MessageType.TIMEOUT_NOW:
            if self._has_unapplied_conf_change():
                # The change that made this transfer necessary (the leader's own removal)
                # may be committed but not yet applied here: campaign once it is, if that
                # happens within an election timeout.
                self.transfer_campaign_ticks = self.config.election_tick
            else:
                self.hup(transfer=True)
        elif t is MessageType.READ_INDEX_RESPONSE:
            self.read_states.append(ReadState(m.index, m.context))

    def _handle_append(self, m: Message) -> None:
        if m.index < self.log.committed:
            self._reply(m.sender, MessageType.APPEND_RESPONSE, index=self.log.committed)
            return
        last = self.log.maybe_append(m.index, m.log_term, m.commit, m.entries)
        if last is not None:
            self._reply(m.sender, MessageType.APPEND_RESPONSE, index=last)
            return
        # Point the leader at the last entry that can match: our last index, or earlier,
        # past every entry with a term above the leader's entry at that position.
        hint = self.log.find_conflict_by_term(min(m.index, self.log.last_index()), m.log_term)
        self._reply(m.sender, MessageType.APPEND_RESPONSE, index=m.index, reject=True,
                    reject_hint=hint, log_term=self.log.term_or_zero(hint))

    def _handle_heartbeat(self, m: Message) -> None:
        # The leader sends min(commit, what we matched), so this is within our log.
        self.log.commit_to(m.commit)
        self._reply(m.sender, MessageType.HEARTBEAT_RESPONSE, context=m.context)

    def _handle_snapshot(self, m: Message) -> None:
        assert m.snapshot is not None
        if self.restore(m.snapshot):
            self._reply(m.sender, MessageType.APPEND_RESPONSE, index=self.log.last_index())
        else:
            self._reply(m.sender, MessageType.APPEND_RESPONSE, index=self.log.committed)

    def restore(self, snapshot: Snapshot) -> bool:
        """Replace our log with a leader's snapshot (5.1); False if it is not newer than
        what we have committed.  A snapshot whose configuration does not list us is
        installed all the same: a server added after the leader's latest snapshot needs it,
        and the change that adds it follows in the log."""
        meta = snapshot.meta
        if meta.index <= self.log.committed:
            return False
        if self.log.match_term(meta.index, meta.term):
            # We already hold that entry: the snapshot only tells us it is committed.
            self.log.commit_to(meta.index)
            return False
        self.log.restore(snapshot)
        self.tracker = ProgressTracker(meta.conf_state, self.config.max_inflight)
        return True

    # -- candidate ---------------------------------------------------------------------------

    def _step_candidate(self, m: Message) -> None:
        t = m.type
        if t is MessageType.PROPOSE:
            self._drop_proposal(m, "no leader (election in progress)")
        elif t in (MessageType.APPEND, MessageType.HEARTBEAT, MessageType.SNAPSHOT):
            # A leader of our term exists (higher terms were handled in step()).
            self.become_follower(m.term, m.sender)
            self._step_follower(m)
        elif t in (MessageType.VOTE_RESPONSE, MessageType.PRE_VOTE_RESPONSE):
            mine = (MessageType.PRE_VOTE_RESPONSE if self.role is Role.PRE_CANDIDATE
                    else MessageType.VOTE_RESPONSE)
            if t is not mine:
                return
            self.tracker.record_vote(m.sender, not m.reject)
            result = self.tracker.tally()
            if result is VoteResult.WON:
                if self.role is Role.PRE_CANDIDATE:
                    self._campaign(MessageType.VOTE, transfer=False)
                else:
                    self.become_leader()
                    self._broadcast_append()
            elif result is VoteResult.LOST:
                self.become_follower(self.term, NO_NODE)

    # -- leader ------------------------------------------------------------------------------

    def _drop_proposal(self, m: Message, why: str) -> None:
        if m.sender == self.id:
            raise ProposalDropped(why)
        # A forwarded proposal is dropped silently: its client will time out and retry.

    def _step_leader(self, m: Message) -> None:
        t = m.type
        if t is MessageType.PROPOSE:
            self._propose(m)
            return
        if t is MessageType.READ_INDEX:
            self._read_index(m)
            return
        if t is MessageType.TRANSFER_LEADER:
            self._transfer_leader(NodeId(m.index))
            return
        progress = self.tracker.progress.get(m.sender)
        if progress is None:
            return
        if t is MessageType.APPEND_RESPONSE:
            progress.recent_active = True
            if m.reject:
                probe = m.reject_hint
                if m.log_term > 0:
                    probe = self.log.find_conflict_by_term(m.reject_hint, m.log_term)
                if progress.maybe_decrease_to(m.index, probe):
                    if progress.state is ProgressState.REPLICATE:
                        progress.become_probe()
                    self._send_append(m.sender)
                return
            was_paused = progress.is_paused()
            # In probe, an answer at the match we already knew answers the probe all the
            # same: the logs agree up to there, so replication resumes (etcd does the same).
            # Without this, an up-to-date follower stayed paused until a heartbeat answer.
            at_match = progress.state is ProgressState.PROBE and m.index == progress.match
            if not progress.maybe_update(m.index) and not at_match:
                return
            if progress.state is ProgressState.PROBE:
                progress.become_replicate()
            elif (progress.state is ProgressState.SNAPSHOT
                  and progress.match + 1 >= self.log.first_index()):
                # The follower has the snapshot, or otherwise everything our log no longer
                # holds: replication can resume from the log.
                progress.become_probe()
                progress.become_replicate()
            elif progress.state is ProgressState.REPLICATE:
                progress.inflights.free_to(m.index)
            if self._maybe_commit():
                self._broadcast_append()
            elif was_paused:
                self._send_append(m.sender)
            while self._send_append(m.sender, send_empty=False):
                pass
            if m.sender == self.lead_transferee and progress.match == self.log.last_index():
                self._reply(m.sender, MessageType.TIMEOUT_NOW)
        elif t is MessageType.HEARTBEAT_RESPONSE:
            progress.recent_active = True
            progress.probe_sent = False
            if progress.state is ProgressState.REPLICATE and progress.inflights.full():
                # Appends may have been lost: free one slot so replication can resume.
                progress.inflights.free_first()
            if progress.match < self.log.last_index():
                self._send_append(m.sender)
            if m.context:
                self._ack_read(m.sender, m.context)

    def _propose(self, m: Message) -> None:
        if self.id not in self.tracker.progress:
            self._drop_proposal(m, "this node was removed from the cluster")
            return
        if self.lead_transferee != NO_NODE:
            self._drop_proposal(m, f"leadership is moving to {self.lead_transferee}")
            return
        entries = list(m.entries)
        for position, entry in enumerate(entries):
            if entry.kind is not EntryKind.CONF_CHANGE:
                continue
            refusal = self._conf_change_refusal(ConfChange.decode(entry.data))
            if refusal is not None:
                if m.sender == self.id:
                    raise ConfChangeRefused(refusal)
                entries[position] = Entry(term=0, index=0)  # keeps the batch's shape
            else:
                self.pending_conf_index = self.log.last_index() + position + 1
        self._append_entries(entries)
        self._broadcast_append()

    def _conf_change_refusal(self, change: ConfChange) -> str | None:
        if self.pending_conf_index > self.log.applied:
            return (f"membership change at index {self.pending_conf_index} is not applied "
                    f"yet (applied: {self.log.applied})")
        try:
            confchange.check(self.tracker.conf, change)
        except confchange.ConfChangeInvalid as e:
            return str(e)
        return None

    def _append_entries(self, entries: list[Entry]) -> None:
        last = self.log.last_index()
        self.log.append([Entry(self.term, last + i + 1, e.kind, e.data)
                         for i, e in enumerate(entries)])
        # Our own match advances only once the host has persisted these (see advance).

    def on_persisted(self) -> None:
        """The host persisted part of the log: as leader, count it toward commitment."""
        if self.role is not Role.LEADER:
            return
        own = self.tracker.progress.get(self.id)
        if own is None:
            return
        if own.maybe_update(self.persisted_index()) and self._maybe_commit():
            self._broadcast_append()

    def _maybe_commit(self) -> bool:
        committed_before = self.log.committed
        if not self.log.maybe_commit(self.tracker.committed(), self.term):
            return False
        if self.log.term_or_zero(committed_before) != self.term and self.pending_reads:
            # The first entry of this term is committed: deferred reads may go ahead.
            pending, self.pending_reads = self.pending_reads, []
            for request in pending:
                self._read_index(request)
        return True

    def _send_append(self, to: NodeId, *, send_empty: bool = True) -> bool:
        """Send ``to`` what it lacks, or our snapshot if that is compacted.  False if
        nothing was sent (the follower is paused, or there was nothing and ``send_empty``
        is off)."""
        if to == self.id:
            return False
        progress = self.tracker.progress[to]
        if progress.is_paused():
            return False
        previous = progress.next - 1
        try:
            previous_term = self.log.term(previous)
            entries = self.log.entries_from(progress.next, self.config.max_size_per_msg)
        except (LogCompacted, LogUnavailable):
            return self._send_snapshot(to)
        if not entries and not send_empty:
            return False
        self._reply(to, MessageType.APPEND, index=previous, log_term=previous_term,
                    entries=tuple(entries), commit=self.log.committed)
        progress.sent_entries(previous + len(entries), len(entries))
        return True

    def _send_snapshot(self, to: NodeId) -> bool:
        snapshot = self.log.snapshot()
        if snapshot.meta.index == 0:
            return False
        self._reply(to, MessageType.SNAPSHOT, snapshot=snapshot)
        self.tracker.progress[to].become_snapshot(snapshot.meta.index)
        return True

    def _broadcast_append(self) -> None:
        for node in sorted(self.tracker.progress):
            self._send_append(node)

    def _broadcast_heartbeat(self, context: bytes) -> None:
        for node, progress in sorted(self.tracker.progress.items()):
            if node == self.id:
                continue
            self._reply(node, MessageType.HEARTBEAT,
                        commit=min(progress.match, self.log.committed), context=context)

    def report_snapshot(self, to: NodeId, ok: bool) -> None:
        """The host's transport delivered (or failed to deliver) a snapshot to ``to``."""
        progress = self.tracker.progress.get(to)
        if self.role is not Role.LEADER or progress is None:
            return
        if progress.state is not ProgressState.SNAPSHOT:
            return
        if not ok:
            progress.pending_snapshot = 0
        progress.become_probe()
        # Wait for the follower's answer to the snapshot before probing again.
        progress.probe_sent = ok

    def report_unreachable(self, to: NodeId) -> None:
        progress = self.tracker.progress.get(to)
        if self.role is Role.LEADER and progress is not None:
            if progress.state is ProgressState.REPLICATE:
                progress.become_probe()

    # -- leadership transfer (3.10) ----------------------------------------------------------

    def _transfer_leader(self, target: NodeId) -> None:
        if target == self.id or not self.tracker.is_voter(target):
            return
        if self.lead_transferee == target:
            return
        self.lead_transferee = target
        # The transfer must finish within one election timeout, or it is abandoned.
        self.election_elapsed = 0
        if self.tracker.progress[target].match == self.log.last_index():
            self._reply(target, MessageType.TIMEOUT_NOW)
        else:
            self._send_append(target)

    # -- linearizable reads (6.4) ------------------------------------------------------------

    def _read_index(self, m: Message) -> None:
        if self.log.term_or_zero(self.log.committed) != self.term:
            # Our commit index may be behind the last leader's until an entry of our own
            # term commits; answer then.
            self.pending_reads.append(m)
            return
        if self.tracker.voters == {self.id}:
            self._answer_read(m.sender, self.log.committed, m.context)
            return
        key = self.read_only.add(self.log.committed, m.sender, m.context)
        self._broadcast_heartbeat(key)
        if self.tracker.is_voter(self.id):
            self._ack_read(self.id, key)

    def _ack_read(self, node: NodeId, key: bytes) -> None:
        acks = self.read_only.ack(node, key)
        if acks is None or not quorum.has_quorum(self.tracker.voters, acks):
            return
        for request in self.read_only.release_through(key):
            self._answer_read(request.requester, request.index, request.context)

    def _answer_read(self, requester: NodeId, index: int, context: bytes) -> None:
        if requester == self.id:
            self.read_states.append(ReadState(index, context))
        else:
            self._reply(requester, MessageType.READ_INDEX_RESPONSE, index=index,
                        context=context)

    # -- membership (4.1, 4.2) ---------------------------------------------------------------

    def apply_conf_change(self, change: ConfChange) -> None:
        """The host applied a membership change entry: switch configuration."""
        conf = confchange.apply(self.tracker.conf, change)
        self.tracker.set_conf(conf, self.log.last_index() + 1)
        if self.lead_transferee != NO_NODE and not self.tracker.is_voter(self.lead_transferee):
            self.lead_transferee = NO_NODE
        if self.role is not Role.LEADER:
            return
        # A leader removed (or demoted) by the change keeps managing the new configuration,
        # without counting itself (4.2.2), and hands leadership to the most up-to-date voter.
        # Stepping down at once could leave the cluster leaderless for good: the remaining
        # voters may not yet know the change is committed, so they still count us -- and
        # cannot be elected without our vote, which our longer log may withhold.
        if self._maybe_commit():
            self._broadcast_append()
        else:
            for node in sorted(self.tracker.progress):
                progress = self.tracker.progress[node]
                if node != self.id and progress.match == 0 and not progress.probe_sent:
                    self._send_append(node)
        self._hand_over_if_removed()

    def _hand_over_if_removed(self) -> None:
        """As a leader that is no longer a voter, transfer leadership (3.10) to the voter
        with the longest matching log; retried every election timeout until one takes over
        (its vote request's higher term makes us a follower)."""
        if (self.role is not Role.LEADER or self.tracker.is_voter(self.id)
                or self.lead_transferee != NO_NODE or not self.tracker.voters):
            return
        target = max(self.tracker.voters,
                     key=lambda n: (self.tracker.progress[n].match, -n))
        self._transfer_leader(target)

    def on_applied(self) -> None:
        """The host applied committed entries: honour a deferred TIMEOUT_NOW."""
        if self.transfer_campaign_ticks and not self._has_unapplied_conf_change():
            self.transfer_campaign_ticks = 0
            self.hup(transfer=True)
