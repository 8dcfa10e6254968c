"""What a member does for the operator's requests: membership changes, leadership transfer,
and a consistent snapshot of the replicated state.

:class:`MemberAdmin` serves the ``member_*``, ``transfer_leader`` and ``snapshot`` ops of
the client protocol (:mod:`kvfs.raftkv.protocol`) for :mod:`kvfs.raftkv.server`.

Rules (etcd's, where etcd has one):
  * A membership change is proposed by the leader only (:class:`NotLeader` otherwise: the
    client follows the leader hint), after a read barrier -- so its checks see every change
    committed before the request, and a new leader has applied its term's first entry (the
    core refuses changes before that) -- and returns once the change is applied here.
  * ``add`` refuses a name, id or peer URL already in the table, and a peer URL whose
    scheme (http or https) differs from the cluster's: TLS is all or nothing.
  * ``promote`` refuses a voter, and a learner that is far behind the leader: its matched
    index must be at least 90% of the leader's commit index (etcd's rule), so promoting
    it does not stall the quorum while it catches up.
  * ``remove`` refuses to take out the only voter.
  * Every change is proposed under the client's ``(client_id, seq)``: a request re-sent
    after a broken connection, whose first copy was applied, is answered with success
    instead of being refused as a duplicate (a re-sent ``remove`` answers member id 0:
    the member is no longer in the table to name).
  * ``transfer_leader`` needs a voter; any member may serve it (the core forwards it to the
    leader) and it returns when this member sees the target lead.

Refusals raise :class:`~kvfs.raftkv.members.MemberConfigError` (a KVError): one line,
nothing changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import trio
import xxhash

from kvfs.kv.api import KVError
from kvfs.raft import ConfChange, ConfChangeKind, NodeId, Role
from kvfs.raftkv.members import (
    ChangeContext,
    Member,
    MemberConfigError,
    check_name,
    member_id,
    parse_client_address,
    parse_member_url,
)
from kvfs.raftkv.node import RaftNode

PROMOTE_READY = 0.9  # a learner's match must reach this share of the leader's commit


class NotLeader(Exception):
    """A request only the leader serves reached another member."""


@dataclass(frozen=True, slots=True)
class SnapshotData:
    index: int
    data: bytes

    @property
    def hash(self) -> str:
        return f"{xxhash.xxh64_intdigest(self.data):016x}"


class MemberAdmin:
    def __init__(self, node: RaftNode, cluster_token: str) -> None:
        self.node = node
        self.cluster_token = cluster_token

    # -- reads -------------------------------------------------------------------------------

    async def member_list(self, deadline: float) -> dict[str, Any]:
        await self.node.read_barrier(deadline=deadline)
        return {"members": self.node.kv.members.to_wire(), "leader": int(self.node.leader),
                "cluster_token": self.cluster_token}

    async def snapshot(self, deadline: float) -> SnapshotData:
        """The state machine (member table included) as of a read barrier: every write
        acknowledged before the request is in it."""
        await self.node.read_barrier(deadline=deadline)
        kv = self.node.kv
        # No checkpoint between the two: the data is exactly the state at that index.  Any
        # value this member keeps in a file of its own goes into the data itself.
        return SnapshotData(kv.applied_index, kv.materialize(kv.snapshot()))

    # -- membership changes ------------------------------------------------------------------

    async def _leader_barrier(self, deadline: float) -> None:
        if self.node.role is not Role.LEADER:
            raise NotLeader
        await self.node.read_barrier(deadline=deadline)
        if self.node.role is not Role.LEADER:
            raise NotLeader

    def _applied_before(self, client_id: int, seq: int) -> bool:
        session = self.node.kv.sessions.get(client_id)
        return session is not None and session[0] >= seq

    def _find(self, target: str) -> Member:
        member = self.node.kv.members.find(target)
        if member is None:
            raise MemberConfigError(f"no member named {target!r} (nor with that id)")
        return member

    async def _change(self, kind: ConfChangeKind, node: NodeId, context: ChangeContext,
                      deadline: float) -> None:
        result = await self.node.submit_conf_change(
            ConfChange(kind, node, context.encode()), client_id=context.client_id,
            seq=context.seq, deadline=deadline)
        if not result.succeeded:
            # Another change got there first and made this one a no-op.
            raise KVError("the membership change was applied as a no-op: the configuration "
                          "changed meanwhile; list the members and try again")

    async def member_add(self, args: dict[str, Any], deadline: float) -> dict[str, Any]:
        name, learner = args["name"], args["learner"]
        client_id, seq = args["client_id"], args["seq"]
        check_name(name)
        peer = str(parse_member_url(args["peer_url"], "the peer URL"))
        client = parse_client_address(args["client_url"], "the client URL")
        mid = member_id(name, self.cluster_token)
        await self._leader_barrier(deadline)
        table = self.node.kv.members
        if not self._applied_before(client_id, seq):
            if any(m.name == name for m in table):
                raise MemberConfigError(f"member {name!r} already exists")
            if table.get(mid) is not None:
                raise MemberConfigError(f"member id {mid:x} of {name!r} is already in the "
                                        "cluster (its member was added without a name)")
            holder = table.by_peer_url(peer)
            if holder is not None:
                raise MemberConfigError(f"peer URL {peer} is already member "
                                        f"{holder.label()}'s")
            schemes = {m.peer_url.partition(":")[0] for m in table if m.peer_url}
            if schemes and schemes != {peer.partition(":")[0]}:
                raise MemberConfigError(f"the cluster's peer URLs are "
                                        f"{'/'.join(sorted(schemes))}, not {peer}")
            kind = ConfChangeKind.ADD_LEARNER if learner else ConfChangeKind.ADD_VOTER
            await self._change(kind, mid, ChangeContext(name, peer, client, client_id, seq),
                               deadline)
        return {"member": int(mid), "members": self.node.kv.members.to_wire(),
                "cluster_token": self.cluster_token}

    async def member_promote(self, args: dict[str, Any], deadline: float) -> dict[str, Any]:
        client_id, seq = args["client_id"], args["seq"]
        await self._leader_barrier(deadline)
        member = self._find(args["target"])
        if not self._applied_before(client_id, seq):
            if not member.learner:
                raise MemberConfigError(f"member {member.label()} is already a voter")
            status = self.node.rawnode.status()
            progress = status.progress.get(member.id)
            match = progress.match if progress is not None else 0
            commit = status.hard_state.commit
            if match < PROMOTE_READY * commit:
                raise MemberConfigError(
                    f"learner {member.label()} is not caught up with the leader (it has "
                    f"{match} of {commit} committed entries); promote it once it has")
            await self._change(ConfChangeKind.ADD_VOTER, member.id,
                               ChangeContext(client_id=client_id, seq=seq), deadline)
        return {"member": int(member.id)}

    async def member_remove(self, args: dict[str, Any], deadline: float) -> dict[str, Any]:
        client_id, seq = args["client_id"], args["seq"]
        await self._leader_barrier(deadline)
        if self._applied_before(client_id, seq):
            return {"member": 0}  # a re-sent request: done, and the member is gone
        member = self._find(args["target"])
        if self.node.kv.members.conf_state().voters == {member.id}:
            raise MemberConfigError(f"member {member.label()} is the cluster's only voter; "
                                    "removing it would leave nobody to decide anything")
        await self._change(ConfChangeKind.REMOVE, member.id,
                           ChangeContext(client_id=client_id, seq=seq), deadline)
        return {"member": int(member.id)}

    # -- leadership --------------------------------------------------------------------------

    async def transfer_leader(self, target: str, deadline: float) -> dict[str, Any]:
        member = self._find(target)
        if member.learner:
            raise MemberConfigError(f"member {member.label()} is a learner; only a voter "
                                    "can lead (promote it first)")
        node = self.node
        tick = node.tick_seconds
        while node.leader != member.id:
            if trio.current_time() >= deadline:
                raise KVError(f"leadership did not move to {member.label()} in time")
            node.transfer_leadership(member.id)
            # The core gives a transfer an election timeout; ask again after that.
            retry_at = min(deadline, trio.current_time() + node.retry_interval())
            while node.leader != member.id and trio.current_time() < retry_at:
                await trio.sleep(tick)
        return {"leader": int(member.id)}
