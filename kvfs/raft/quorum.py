"""Majority arithmetic over a set of voters (dissertation 3.4 elections, 3.6 commitment).

Single-server membership changes (dissertation 4.1) keep one voter set at a time: any two
majorities of configurations that differ by one server overlap, so no joint quorum is needed.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping

from kvfs.raft.types import NodeId


class VoteResult(enum.Enum):
    PENDING = "pending"
    WON = "won"
    LOST = "lost"


def majority(voters: Collection[NodeId]) -> int:
    return len(voters) // 2 + 1


def committed_index(voters: Collection[NodeId], match: Mapping[NodeId, int]) -> int:
    """The highest index that a majority of ``voters`` has matched."""
    if not voters:
        raise AssertionError("a configuration without voters has no quorum")
    matched = sorted((match.get(v, 0) for v in voters), reverse=True)
    return matched[majority(voters) - 1]


def vote_result(voters: Collection[NodeId], votes: Mapping[NodeId, bool]) -> VoteResult:
    granted = sum(1 for v in voters if votes.get(v) is True)
    rejected = sum(1 for v in voters if votes.get(v) is False)
    need = majority(voters)
    if granted >= need:
        return VoteResult.WON
    if len(voters) - rejected < need:
        return VoteResult.LOST
    return VoteResult.PENDING


def has_quorum(voters: Collection[NodeId], active: Collection[NodeId]) -> bool:
    return sum(1 for v in voters if v in active) >= majority(voters)
