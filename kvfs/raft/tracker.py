"""The current configuration, and per-member progress and votes as a leader or candidate sees
them (dissertation 3.4, 3.5, 4.1).

Invariants: ``progress`` has exactly one entry per member of ``conf``; a member's
``Progress.learner`` says whether it is in ``conf.learners``; votes count only voters.
"""

from __future__ import annotations

from kvfs.raft import quorum
from kvfs.raft.progress import Progress
from kvfs.raft.types import ConfState, NodeId


class ProgressTracker:
    def __init__(self, conf: ConfState, max_inflight: int) -> None:
        self.max_inflight = max_inflight
        self.conf = ConfState()
        self.progress: dict[NodeId, Progress] = {}
        self.votes: dict[NodeId, bool] = {}
        self.set_conf(conf, next_index=1)

    def set_conf(self, conf: ConfState, next_index: int) -> None:
        """Switch to ``conf``: new members start probing at ``next_index``; members that stay
        keep their progress; removed members are forgotten."""
        for node in list(self.progress):
            if node not in conf.members():
                del self.progress[node]
        for node in conf.members():
            progress = self.progress.get(node)
            if progress is None:
                progress = Progress(next_index, self.max_inflight)
                # A new member counts as active until the next check-quorum round, so adding
                # one does not make the leader step down at once.
                progress.recent_active = True
                self.progress[node] = progress
            progress.learner = node in conf.learners
        self.conf = conf

    @property
    def voters(self) -> frozenset[NodeId]:
        return self.conf.voters

    def is_voter(self, node: NodeId) -> bool:
        return node in self.conf.voters

    def committed(self) -> int:
        return quorum.committed_index(
            self.conf.voters, {n: p.match for n, p in self.progress.items()})

    def reset_votes(self) -> None:
        self.votes = {}

    def record_vote(self, node: NodeId, granted: bool) -> None:
        self.votes.setdefault(node, granted)

    def tally(self) -> quorum.VoteResult:
        return quorum.vote_result(self.conf.voters, self.votes)

    def quorum_active(self, leader: NodeId) -> bool:
        """Whether a majority was heard from since the last round; resets the marks."""
        active = {n for n, p in self.progress.items() if p.recent_active or n == leader}
        for node, progress in self.progress.items():
            progress.recent_active = node == leader
        return quorum.has_quorum(self.conf.voters, active)
