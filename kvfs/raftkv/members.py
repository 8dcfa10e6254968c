"""The Raft store's member table: who the members are and where peers and clients reach them.

The table is replicated state.  It changes only by applying committed membership-change
entries, on every member in log order, so every member that has applied index *i* holds
the same table; it is part of every state machine snapshot
(:mod:`kvfs.raftkv.statemachine`), so a member restored from a snapshot knows everyone.

Each change entry is a :class:`~kvfs.raft.ConfChange` whose ``context`` is a
:class:`ChangeContext` (msgpack): the member's name, peer URL and client address when it
is added (as etcd's conf-change context carries its member), and the proposing client's
``(client_id, seq)`` so the proposer can match the applied entry to its request and a
retry is answered with the first result.  A new cluster's bootstrap entries
(:func:`bootstrap_entries`) carry the names and addresses of ``--initial-cluster`` and
``--initial-cluster-clients``, so the table of a new cluster is built by the same rule as
later changes.

Invariants:
  * The table's voters and learners are always exactly the core's configuration: a change
    is applied with the core's own rule (:func:`kvfs.raft.confchange.apply`), so one that
    is invalid for the configuration it meets is a no-op here as in the core.
  * A promotion (ADD_VOTER of a learner) or demotion keeps the member's name and
    addresses; an add with no context (a data directory bootstrapped before contexts
    existed) makes a member with an empty name and no addresses -- the host then keeps
    the addresses it was started with.
  * Decoding a context never fails: a context that does not decode is taken as empty, the
    same on every member.

Nothing here does I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

import msgpack

from kvfs.kv.api import KVError
from kvfs.raft import (
    ConfChange,
    ConfChangeKind,
    ConfState,
    Entry,
    EntryKind,
    HardState,
    NodeId,
    confchange,
)


class MemberConfigError(KVError):
    """A member's configuration (or a membership request) cannot work; nothing changed."""


@dataclass(frozen=True, slots=True)
class PeerURL:
    host: str
    port: int
    tls: bool

    def __str__(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"


def parse_member_url(text: str, what: str) -> PeerURL:
    """``http://HOST:PORT`` or ``https://HOST:PORT`` (https: mutual TLS)."""
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        raise MemberConfigError(f"{what} must look like https://HOST:PORT, not {text!r}")
    try:
        port = parts.port
    except ValueError:
        port = None
    if not port:
        raise MemberConfigError(f"{what} {text!r} needs a port")
    return PeerURL(parts.hostname, port, parts.scheme == "https")


def parse_client_address(text: str, what: str) -> str:
    """``HOST:PORT`` (or a URL of it): where clients reach a member, as ``host:port``."""
    url = parse_member_url(text if "://" in text else f"http://{text}", what)
    return f"{url.host}:{url.port}"


def member_id(name: str, cluster_token: str) -> NodeId:
    """A member's Raft id: 63 bits of a hash of the token and the name (never 0)."""
    digest = hashlib.blake2b(f"{cluster_token}\0{name}".encode(), digest_size=8).digest()
    return NodeId(int.from_bytes(digest, "big") >> 1 | 1)


def check_name(name: str, what: str = "a member name") -> None:
    if not name or "," in name or "=" in name or name != name.strip():
        raise MemberConfigError(f"{what} {name!r} must be non-empty, without , = or "
                                "surrounding spaces")


@dataclass(frozen=True, slots=True)
class Member:
    id: NodeId
    name: str         # "" when added without a context
    peer_url: str     # "http(s)://HOST:PORT", or "" when unknown
    client_url: str   # "HOST:PORT", or "" when unknown
    learner: bool

    def label(self) -> str:
        """How messages name the member."""
        return self.name or f"{self.id:x}"

    def to_wire(self) -> list[Any]:
        return [int(self.id), self.name, self.peer_url, self.client_url, self.learner]

    @classmethod
    def from_wire(cls, item: list[Any]) -> Member:
        mid, name, peer, client, learner = item
        return cls(NodeId(int(mid)), str(name), str(peer), str(client), bool(learner))


@dataclass(frozen=True, slots=True)
class ChangeContext:
    """What a membership-change entry carries besides (kind, id); see module docstring."""

    name: str = ""
    peer_url: str = ""
    client_url: str = ""
    client_id: int = 0
    seq: int = 0

    def encode(self) -> bytes:
        fields = {"name": self.name, "peer_url": self.peer_url,
                  "client_url": self.client_url, "client_id": self.client_id,
                  "seq": self.seq}
        return msgpack.packb({k: v for k, v in fields.items() if v}, use_bin_type=True)

    @classmethod
    def decode(cls, data: bytes) -> ChangeContext:
        if not data:
            return cls()
        try:
            raw = msgpack.unpackb(data, raw=False)
            out = cls(str(raw.get("name", "")), str(raw.get("peer_url", "")),
                      str(raw.get("client_url", "")), int(raw.get("client_id", 0)),
                      int(raw.get("seq", 0)))
        except Exception:  # noqa: BLE001 - any undecodable context is "no context"
            return cls()
        if not (0 <= out.client_id < 1 << 63 and 0 <= out.seq < 1 << 63):
            return cls()
        return out


@dataclass(slots=True)
class MemberTable:
    """The replicated member table (see module docstring)."""

    members: dict[NodeId, Member] = field(default_factory=dict)

    def __iter__(self) -> Iterator[Member]:
        return iter(sorted(self.members.values(), key=lambda m: (m.name, m.id)))

    def __len__(self) -> int:
        return len(self.members)

    def get(self, mid: int) -> Member | None:
        return self.members.get(NodeId(mid))

    def conf_state(self) -> ConfState:
        return ConfState(frozenset(m.id for m in self.members.values() if not m.learner),
                         frozenset(m.id for m in self.members.values() if m.learner))

    def apply(self, change: ConfChange, context: ChangeContext) -> bool:
        """Apply one committed change; False (and nothing changed) when the core's rules
        make it a no-op for this configuration."""
        conf = self.conf_state()
        after = confchange.apply(conf, change)
        if after == conf:
            return False
        node = change.node
        if change.kind is ConfChangeKind.REMOVE:
            del self.members[node]
            return True
        learner = change.kind is ConfChangeKind.ADD_LEARNER
        known = self.members.get(node)
        if known is not None:
            self.members[node] = replace(known, learner=learner)
        else:
            self.members[node] = Member(node, context.name, context.peer_url,
                                        context.client_url, learner)
        return True

    def fill_addresses(self, node: NodeId, peer_url: str, client_url: str) -> bool:
        """Record the addresses of a member the table knows without them (one bootstrapped
        as the embedded store, which has no peers); addresses already known are kept.
        False when nothing changed."""
        known = self.members.get(node)
        if known is None:
            return False
        filled = replace(known, peer_url=known.peer_url or peer_url,
                         client_url=known.client_url or client_url)
        if filled == known:
            return False
        self.members[node] = filled
        return True

    def find(self, target: str) -> Member | None:
        """The member named ``target``, or whose id (hex, as listed) is ``target``."""
        for member in self.members.values():
            if member.name and member.name == target:
                return member
        try:
            return self.members.get(NodeId(int(target, 16)))
        except ValueError:
            return None

    def by_peer_url(self, url: str) -> Member | None:
        for member in self.members.values():
            if member.peer_url == url:
                return member
        return None

    def to_wire(self) -> list[list[Any]]:
        return [m.to_wire() for m in self]

    @classmethod
    def from_wire(cls, items: Iterable[list[Any]]) -> MemberTable:
        members = [Member.from_wire(item) for item in items]
        return cls({m.id: m for m in members})

    def client_endpoints(self) -> dict[NodeId, str]:
        return {m.id: m.client_url for m in self.members.values() if m.client_url}


@dataclass(frozen=True, slots=True)
class MembersChanged:
    """What a member-table listener is told after the table changed: ``removed`` is the
    member a REMOVE took out; ``replaced`` means the whole table was replaced (a snapshot
    was installed), so anyone not in it is gone."""

    table: MemberTable
    removed: NodeId | None = None
    replaced: bool = False


def initial_table(cluster_token: str, peers: Mapping[str, PeerURL],
                  clients: Mapping[str, str]) -> MemberTable:
    """The table of a new cluster: every member of ``--initial-cluster``, a voter."""
    table = MemberTable()
    for name, url in peers.items():
        mid = member_id(name, cluster_token)
        table.members[mid] = Member(mid, name, str(url), clients.get(name, ""), False)
    return table


def bootstrap_entries(table: MemberTable) -> tuple[list[Entry], HardState]:
    """A new cluster's first log entries and hard state: one committed ADD_VOTER per member
    at term 1, in id order, each with the member's name and addresses as its context --
    the same entries on every initial member (cf. :func:`kvfs.raft.bootstrap_state`)."""
    members = sorted(table.members.values(), key=lambda m: m.id)
    if not members:
        raise ValueError("bootstrap needs at least one member")
    entries = [Entry(1, i + 1, EntryKind.CONF_CHANGE, ConfChange(
        ConfChangeKind.ADD_VOTER, m.id,
        ChangeContext(m.name, m.peer_url, m.client_url).encode()).encode())
        for i, m in enumerate(members)]
    return entries, HardState(term=1, commit=len(entries))
