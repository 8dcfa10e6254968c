"""Unit tests of the Raft core's small parts: storage, log, quorum arithmetic, membership
changes, flow control.  Whole-node behaviour is pinned by the scripted interaction tests
(``tests/raft_testdata``) and the simulator (``kvfs.raftsim``)."""

from __future__ import annotations

import random

import pytest

from kvfs.raft import (
    ConfChange,
    ConfChangeKind,
    ConfState,
    Entry,
    HardState,
    LogCompacted,
    LogUnavailable,
    MemoryStorage,
    Message,
    MessageType,
    NodeId,
    RawNode,
    bootstrap,
    confchange,
    quorum,
)
from kvfs.raft.core import Config
from kvfs.raft.log import RaftLog
from kvfs.raft.progress import Progress, ProgressState

N1, N2, N3, N4 = NodeId(1), NodeId(2), NodeId(3), NodeId(4)


def entries(*terms: int, start: int = 1) -> list[Entry]:
    return [Entry(term, start + i) for i, term in enumerate(terms)]


def test_storage_append_replaces_a_conflicting_suffix() -> None:
    storage = MemoryStorage()
    storage.append(entries(1, 1, 1))
    storage.append(entries(2, 2, start=2))
    assert [storage.term(i) for i in (1, 2, 3)] == [1, 2, 2]
    assert storage.last_index() == 3
    with pytest.raises(ValueError):
        storage.append(entries(2, start=9))


def test_storage_compaction_keeps_the_last_compacted_term() -> None:
    storage = MemoryStorage()
    storage.append(entries(1, 1, 2, 2))
    storage.create_snapshot(3, ConfState(frozenset({N1})), b"state")
    storage.compact(3)
    assert storage.first_index() == 4
    assert storage.term(3) == 2
    with pytest.raises(LogCompacted):
        storage.term(2)
    with pytest.raises(LogCompacted):
        storage.entries(3, 5)
    with pytest.raises(LogUnavailable):
        storage.term(5)
    with pytest.raises(ValueError):
        storage.compact(4)  # no snapshot covers index 4 yet


def test_log_append_refuses_to_rewrite_committed_entries() -> None:
    log = RaftLog(MemoryStorage())
    log.append(entries(1, 1, 1))
    log.commit_to(2)
    with pytest.raises(AssertionError):
        log.append([Entry(3, 2)])


def test_log_maybe_append_keeps_matching_entries_and_truncates_on_conflict() -> None:
    log = RaftLog(MemoryStorage())
    log.append(entries(1, 1, 1, 1))
    # Matching entries are kept even when the message is shorter than our log.
    assert log.maybe_append(1, 1, 0, (Entry(1, 2),)) == 2
    assert log.last_index() == 4
    # A conflict at 3 truncates from 3.
    assert log.maybe_append(2, 1, 3, (Entry(2, 3),)) == 3
    assert [log.term(i) for i in range(1, 4)] == [1, 1, 2]
    assert log.last_index() == 3 and log.committed == 3
    # A mismatching predecessor is rejected.
    assert log.maybe_append(3, 1, 3, (Entry(2, 4),)) is None


def test_commit_only_counts_entries_of_the_current_term() -> None:
    """Dissertation 3.6.2 (Figure 3.7): a leader of term 3 must not commit a term-2 entry
    by counting replicas, only by committing a term-3 entry after it."""
    log = RaftLog(MemoryStorage())
    log.append(entries(1, 2))
    assert not log.maybe_commit(2, 3)
    assert log.committed == 0
    log.append([Entry(3, 3)])
    assert log.maybe_commit(3, 3)
    assert log.committed == 3


def test_find_conflict_by_term_skips_whole_terms() -> None:
    log = RaftLog(MemoryStorage())
    log.append(entries(1, 1, 3, 3, 3, 5, 5))
    assert log.find_conflict_by_term(7, 4) == 5
    assert log.find_conflict_by_term(7, 2) == 2
    assert log.find_conflict_by_term(7, 0) == 0
    assert log.find_conflict_by_term(9, 5) == 7  # beyond our log: start from our end


def test_quorum_commit_index_is_the_majority_match() -> None:
    voters = {N1, N2, N3}
    assert quorum.committed_index(voters, {N1: 5, N2: 3, N3: 1}) == 3
    assert quorum.committed_index(voters, {N1: 5}) == 0
    assert quorum.committed_index({N1, N2, N3, N4}, {N1: 9, N2: 7, N3: 5, N4: 1}) == 5


def test_vote_result() -> None:
    voters = {N1, N2, N3}
    assert quorum.vote_result(voters, {N1: True}) is quorum.VoteResult.PENDING
    assert quorum.vote_result(voters, {N1: True, N2: True}) is quorum.VoteResult.WON
    assert quorum.vote_result(voters, {N1: True, N2: False, N3: False}) \
        is quorum.VoteResult.LOST
    assert quorum.vote_result(voters, {N1: True, N4: True}) is quorum.VoteResult.PENDING


def test_conf_change_rules() -> None:
    conf = ConfState(frozenset({N1, N2}), frozenset({N3}))
    promote = ConfChange(ConfChangeKind.ADD_VOTER, N3)
    assert confchange.apply(conf, promote) == ConfState(frozenset({N1, N2, N3}), frozenset())
    demote = ConfChange(ConfChangeKind.ADD_LEARNER, N2)
    assert confchange.apply(conf, demote) == ConfState(frozenset({N1}), frozenset({N2, N3}))
    with pytest.raises(confchange.ConfChangeInvalid):
        confchange.check(ConfState(frozenset({N1})), ConfChange(ConfChangeKind.REMOVE, N1))
    # An invalid change applies as a no-op on every member.
    assert confchange.apply(conf, ConfChange(ConfChangeKind.REMOVE, N4)) == conf
    assert ConfChange.decode(promote.encode()) == promote


def test_replicate_window_pauses_when_full_and_resumes_on_ack() -> None:
    progress = Progress(next_index=1, max_inflight=2)
    progress.maybe_update(0)
    progress.become_replicate()
    progress.sent_entries(3, 3)
    progress.sent_entries(5, 2)
    assert progress.is_paused() and progress.next == 6
    progress.maybe_update(3)
    progress.inflights.free_to(3)
    assert not progress.is_paused()


def test_probe_sends_one_append_at_a_time_and_backs_off_on_reject() -> None:
    progress = Progress(next_index=10, max_inflight=4)
    progress.sent_entries(12, 3)
    assert progress.state is ProgressState.PROBE and progress.is_paused()
    assert not progress.maybe_decrease_to(5, 3)  # not the probe we sent
    assert progress.maybe_decrease_to(9, 6)
    assert progress.next == 7 and not progress.is_paused()


def test_a_single_node_commits_only_after_persisting() -> None:
    storage = MemoryStorage()
    bootstrap(storage, [N1])
    node = RawNode(Config(N1), storage, random.Random(1))

    def handle() -> list[Entry]:
        rd = node.ready()
        storage.append(rd.entries)
        if rd.hard_state:
            storage.set_hard_state(rd.hard_state)
        node.advance(rd)
        return rd.committed_entries

    handle()  # applies the bootstrap configuration
    node.campaign()
    while node.has_ready():
        handle()
    node.propose(b"x")
    rd = node.ready()
    assert [e.data for e in rd.entries] == [b"x"]
    assert rd.committed_entries == []  # not persisted yet: no quorum
    storage.append(rd.entries)
    node.advance(rd)
    assert [e.data for e in handle()] == [b"x"]
    assert storage.hard_state == HardState(term=2, vote=N1, commit=3)


# -- regressions found by the simulator (docs/raft.md lists them) ---------------------------


def _node_on(storage: MemoryStorage, node: NodeId = N1) -> RawNode:
    return RawNode(Config(node), storage, random.Random(1))


def test_a_restart_does_not_reapply_what_its_snapshot_holds() -> None:
    """A disk compacted short of its snapshot (entries kept for slow followers) restarts
    applied at the snapshot, not at the first kept entry (simulator seed 0)."""
    storage = MemoryStorage()
    storage.append(entries(*([1] * 10)))
    storage.set_hard_state(HardState(term=1, commit=10))
    storage.create_snapshot(8, ConfState(frozenset({N1})), b"state at 8")
    storage.compact(5)
    node = _node_on(storage)
    assert node.raft.log.applied == 8
    assert [e.index for e in node.ready().committed_entries] == [9, 10]


def test_a_torn_hard_state_does_not_leave_a_node_behind_its_log() -> None:
    """Entries of term 5 persisted, the hard state of term 5 after them lost: the node
    restarts in term 5 with no vote, not in its older term 4 (simulator seed 44)."""
    storage = MemoryStorage()
    bootstrap(storage, [N1, N2, N3])
    storage.set_hard_state(HardState(term=4, vote=N2, commit=3))
    storage.append([Entry(5, 4)])
    node = _node_on(storage)
    assert (node.raft.term, node.raft.vote) == (5, 0)


def test_a_proposal_forwarded_back_to_its_origin_is_dropped_quietly() -> None:
    """A peer message never raises out of step(), even a proposal whose sender is this
    node, forwarded around while leadership moved (simulator seeds 41 and 188)."""
    storage = MemoryStorage()
    bootstrap(storage, [N1, N2, N3])
    node = _node_on(storage)
    node.step(Message(MessageType.PROPOSE, to=N1, sender=N1, entries=(Entry(0, 0),)))
    assert not node.raft.messages  # no leader: dropped, not forwarded


def test_a_vote_request_of_an_older_term_is_rejected_with_ours() -> None:
    """Dissertation Figure 3.1: a stale candidate must learn the newer term, or it may never
    catch up (simulator seed 987658298)."""
    storage = MemoryStorage()
    bootstrap(storage, [N1, N2, N3])
    storage.set_hard_state(HardState(term=5, commit=3))
    node = _node_on(storage)
    for kind in (MessageType.VOTE, MessageType.PRE_VOTE):
        node.step(Message(kind, to=N1, sender=N2, term=3, log_term=1, index=3))
        reply = node.raft.messages.pop()
        assert reply.reject and reply.term == 5 and reply.to == N2
