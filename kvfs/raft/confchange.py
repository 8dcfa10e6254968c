"""Applying one membership change to a configuration (dissertation 4.1, 4.2.1).

A change is applied when its entry is *applied* (as etcd's raft does), on every member, so
the outcome must be a pure function of the configuration and the change: a change that is
not valid against the configuration it meets is a no-op everywhere.  The leader refuses to
propose a change while another is pending (see ``Raft.pending_conf_index``), which with the
one-server-at-a-time rule keeps every two consecutive configurations' majorities overlapping.

Rules:
  * ADD_VOTER adds a voter or promotes a learner; adding an existing voter is a no-op.
  * ADD_LEARNER adds a learner or demotes a voter (one voter fewer: still a single change).
  * REMOVE removes a voter or a learner.
  * No change may leave the configuration without a voter.
"""

from __future__ import annotations

from kvfs.raft.types import ConfChange, ConfChangeKind, ConfState


class ConfChangeInvalid(ValueError):
    """The change cannot apply to the configuration."""


def check(conf: ConfState, change: ConfChange) -> None:
    """Raise :class:`ConfChangeInvalid` if ``change`` is not a real change of ``conf``."""
    node = change.node
    if node <= 0:
        raise ConfChangeInvalid(f"node id must be positive, not {node}")
    if change.kind is ConfChangeKind.ADD_VOTER and node in conf.voters:
        raise ConfChangeInvalid(f"node {node} is already a voter")
    if change.kind is ConfChangeKind.ADD_LEARNER and node in conf.learners:
        raise ConfChangeInvalid(f"node {node} is already a learner")
    if change.kind is ConfChangeKind.REMOVE and node not in conf.members():
        raise ConfChangeInvalid(f"node {node} is not a member")
    if change.kind is not ConfChangeKind.ADD_VOTER and conf.voters == {node}:
        raise ConfChangeInvalid(f"node {node} is the last voter")


def apply(conf: ConfState, change: ConfChange) -> ConfState:
    """``conf`` after ``change``; unchanged when the change is invalid for it."""
    try:
        check(conf, change)
    except ConfChangeInvalid:
        return conf
    voters = set(conf.voters)
    learners = set(conf.learners)
    node = change.node
    voters.discard(node)
    learners.discard(node)
    if change.kind is ConfChangeKind.ADD_VOTER:
        voters.add(node)
    elif change.kind is ConfChangeKind.ADD_LEARNER:
        learners.add(node)
    return ConfState(frozenset(voters), frozenset(learners))
