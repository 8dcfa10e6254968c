"""A Raft store member as a process: configuration, identity, and the wiring of its parts.

``kvfs raft serve`` builds a :class:`MemberConfig` from its flags and calls :func:`serve`,
which opens (or creates and bootstraps) the member's data directory, then runs the node
loop, the peer transport and the client server in one nursery until cancelled.

Membership.  A new cluster (``--initial-cluster-state new``, empty data directory)
bootstraps its first log entries with the names and addresses of ``--initial-cluster``
and ``--initial-cluster-clients`` (:func:`~kvfs.raftkv.members.bootstrap_entries`), so the
replicated member table starts from them.  A member joining an existing cluster
(``existing``, empty data directory) writes nothing but its identity and waits for the
leader to send it the log or a snapshot.  From then on the member table, not the flags,
says where everyone is: the peer transport and the client-endpoint map (the leader hints)
follow every change of it -- a member added is dialed, a member removed is forgotten and
refused.  Until the table holds anything (a joining member before its first snapshot or
entries), the transport dials the peers of ``--initial-cluster``.  A member whose own peer
URL in the table differs from the one ``--initial-cluster`` gives it is refused, at start
or as soon as it learns the table.

Member ids are derived from the member's name and the cluster token
(:func:`member_id`), so every member computes the same id for a name from the same
``--initial-cluster`` flag, and two clusters with different tokens never share ids.

A configuration that cannot work is refused with :class:`MemberConfigError`, one line,
before anything is written: a bad URL or name, this member missing from the initial
cluster, a data directory of another cluster or member, TLS half configured.
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass, field

import trio

from kvfs.kv.api import KVError
from kvfs.kv.watchhub import WatchHub
from kvfs.raft import Config, NodeId
from kvfs.raftkv.disk import IDENTITY, RaftDisk, read_identity
from kvfs.raftkv.embedded import RAFT_DIR
from kvfs.raftkv.httpserver import parse_address
from kvfs.raftkv.members import (
    MemberConfigError,
    MembersChanged,
    PeerURL,
    bootstrap_entries,
    initial_table,
    member_id,
    parse_client_address,
    parse_member_url,
)
from kvfs.raftkv.metrics import (
    DEFAULT_QUOTA_BYTES,
    RaftMetrics,
    RaftObserver,
    open_metrics_port,
    serve_metrics,
)
from kvfs.raftkv.node import RaftNode
from kvfs.raftkv.server import RaftServer, server_ssl_context
from kvfs.raftkv.statemachine import ReplicatedKV
from kvfs.raftkv.transport import PeerTransport, tls_contexts
from kvfs.raftkv.values import MemberValues

log = logging.getLogger(__name__)


__all__ = ["MemberConfig", "MemberConfigError", "PeerURL", "member_id",
           "parse_client_endpoints", "parse_initial_cluster", "parse_member_url", "serve"]


def parse_client_endpoints(text: str) -> dict[str, str]:
    """``NAME=HOST:PORT,...`` (or ``NAME=URL``): where clients reach each member."""
    endpoints: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise MemberConfigError(
                f"--initial-cluster-clients entries look like NAME=HOST:PORT, not {item!r}")
        endpoints[name] = parse_client_address(value, f"the client address of {name!r}")
    return endpoints


def parse_initial_cluster(text: str) -> dict[str, PeerURL]:
    """``NAME=URL,NAME=URL,...``."""
    members: dict[str, PeerURL] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, url = item.partition("=")
        if not sep or not name:
            raise MemberConfigError(
                f"--initial-cluster entries look like NAME=https://HOST:PORT, not {item!r}")
        if name in members:
            raise MemberConfigError(f"--initial-cluster names {name!r} twice")
        members[name] = parse_member_url(url, f"the peer URL of {name!r}")
    if not members:
        raise MemberConfigError("--initial-cluster is empty")
    return members


@dataclass(frozen=True, slots=True)
class MemberConfig:
    name: str
    data_dir: str
    listen_peer: PeerURL
    listen_client: PeerURL
    initial_cluster: dict[str, PeerURL]
    cluster_token: str
    new_cluster: bool
    cacert: str | None = None
    cert: str | None = None
    key: str | None = None
    tick_seconds: float = 0.1
    election_ticks: int = 10
    snapshot_every: int = 10_000
    # Other members' client endpoints (name -> "host:port"), so a member that is not the
    # leader can point a client at the one that is.
    client_endpoints: dict[str, str] = field(default_factory=dict)
    # The health and metrics port, "HOST:PORT" (None: none).  Optional: the address is a
    # default, not asked for, so a busy port is logged and the member runs without it.
    listen_metrics: str | None = None
    listen_metrics_optional: bool = False
    # Keys and values held beyond which writes are refused (0: no quota); see the space
    # quota in kvfs.raftkv.statemachine.
    quota_bytes: int = DEFAULT_QUOTA_BYTES

    def validate(self) -> None:
        if not self.name or "," in self.name or "=" in self.name:
            raise MemberConfigError(f"--name {self.name!r} must be non-empty, without , or =")
        if not self.cluster_token:
            raise MemberConfigError("--initial-cluster-token must not be empty")
        if self.name not in self.initial_cluster:
            raise MemberConfigError(
                f"--initial-cluster does not name this member ({self.name!r})")
        tls = {self.listen_peer.tls, self.listen_client.tls}
        tls |= {url.tls for url in self.initial_cluster.values()}
        files = [self.cacert, self.cert, self.key]
        if True in tls and not all(files):
            raise MemberConfigError("https URLs need --cacert, --cert and --key")
        if any(files) and False in tls:
            raise MemberConfigError("--cacert/--cert/--key need https URLs for every member")
        for path in filter(None, files):
            if not os.path.isfile(path):
                raise MemberConfigError(f"no such file: {path}")
        ids = [member_id(name, self.cluster_token) for name in self.initial_cluster]
        if len(set(ids)) != len(ids):
            raise MemberConfigError("two member names hash to one id; rename one")
        unknown = set(self.client_endpoints) - set(self.initial_cluster)
        if unknown:
            raise MemberConfigError(
                f"--initial-cluster-clients names members not in --initial-cluster: "
                f"{', '.join(sorted(unknown))}")
        if not (0 < self.tick_seconds <= 10 and self.election_ticks >= 2):
            raise MemberConfigError("need 0 < tick <= 10 s and at least 2 election ticks")
        if self.listen_metrics is not None:
            try:
                parse_address(self.listen_metrics, "--listen-metrics")
            except ValueError as e:
                raise MemberConfigError(str(e)) from None
        if self.quota_bytes < 0:
            raise MemberConfigError("--quota-bytes must be 0 (no quota) or a number of bytes")

    @property
    def id(self) -> NodeId:
        return member_id(self.name, self.cluster_token)

    def peer_addresses(self) -> dict[NodeId, tuple[str, int]]:
        return {member_id(name, self.cluster_token): (url.host, url.port)
                for name, url in self.initial_cluster.items() if name != self.name}

    def initial_endpoints(self) -> dict[int, str]:
        """Client endpoints by member id, from the flags (the table overrides them)."""
        endpoints: dict[int, str] = {member_id(name, self.cluster_token): endpoint
                     for name, endpoint in self.client_endpoints.items()}
        endpoints[self.id] = f"{self.listen_client.host}:{self.listen_client.port}"
        return endpoints


def open_disk(config: MemberConfig, metrics: RaftObserver | None = None) -> RaftDisk:
    """The member's data directory: opened if it exists, else created (and, for a new
    cluster, bootstrapped with the initial members as voters)."""
    identity = os.path.join(config.data_dir, IDENTITY)
    if os.path.exists(identity):
        return RaftDisk.open(config.data_dir, cluster_token=config.cluster_token,
                             member_id=config.id, keep_entries=config.snapshot_every,
                             metrics=metrics)
    disk = RaftDisk.create(config.data_dir, config.cluster_token, config.id,
                           keep_entries=config.snapshot_every, metrics=metrics)
    if config.new_cluster:
        table = initial_table(config.cluster_token, config.initial_cluster,
                              config.client_endpoints)
        entries, hard_state = bootstrap_entries(table)
        try:
            disk.save(hard_state, entries, None, True)
        except BaseException:
            disk.close()
            raise
    return disk


class _Membership:
    """Keeps the transport's peers and the client-endpoint map in step with the member
    table (see the module docstring)."""

    def __init__(self, config: MemberConfig, transport: PeerTransport,
                 endpoints: dict[int, str]) -> None:
        self.config = config
        self.transport = transport
        self.endpoints = endpoints
        self.mismatch: str | None = None
        self.mismatched = trio.Event()

    def changed(self, change: MembersChanged) -> None:
        me = self.config.id
        table = change.table
        for member in table:
            if member.id == me:
                mine = str(self.config.initial_cluster[self.config.name])
                if member.peer_url and member.peer_url != mine and self.mismatch is None:
                    self.mismatch = (f"the member table says {self.config.name}'s peer URL "
                                     f"is {member.peer_url}, not {mine} as "
                                     "--initial-cluster has it")
                    self.mismatched.set()
                continue
            if member.peer_url:
                url = parse_member_url(member.peer_url, f"the peer URL of {member.label()}")
                self.transport.set_peer(member.id, (url.host, url.port))
            if member.client_url:
                self.endpoints[member.id] = member.client_url
        if change.replaced and len(table):
            log.info("raft member %s: the member table now is a snapshot's (%d members)",
                     self.config.name, len(table))
        gone = set()
        if change.removed is not None:
            gone.add(change.removed)
        if change.replaced and len(table):
            gone |= {peer for peer in self.transport.peers if table.get(peer) is None}
        for peer in gone - {me}:
            log.info("raft member %s: member %x left the cluster", self.config.name, peer)
            self.transport.remove_peer(NodeId(peer))
            self.endpoints.pop(peer, None)


async def serve(config: MemberConfig, *,
                task_status: trio.TaskStatus[tuple[int, int]] = trio.TASK_STATUS_IGNORED
                ) -> None:
    """Run the member until cancelled; started with the bound (peer, client) ports."""
    config.validate()
    metrics = RaftMetrics()
    disk = await trio.to_thread.run_sync(open_disk, config, metrics)
    try:
        metrics_port = await open_metrics_port(config.listen_metrics,
                                               optional=config.listen_metrics_optional)
        peer_tls = client_tls = None
        if config.cacert and config.cert and config.key:
            peer_tls = tls_contexts(config.cacert, config.cert, config.key)
            client_tls = server_ssl_context(config.cert, config.key, config.cacert)
        values = await trio.to_thread.run_sync(MemberValues, disk.directory)
        kv = ReplicatedKV(values=values)
        transport = PeerTransport(config.id, config.cluster_token,
                                  (config.listen_peer.host, config.listen_peer.port),
                                  config.peer_addresses(), tls=peer_tls)
        endpoints = config.initial_endpoints()
        membership = _Membership(config, transport, endpoints)
        kv.member_listeners.append(membership.changed)
        node = RaftNode(Config(config.id, election_tick=config.election_ticks),
                        disk, kv, WatchHub(kv.load_value), rng=random.Random(),
                        transport=transport, tick_seconds=config.tick_seconds,
                        snapshot_every=config.snapshot_every, metrics=metrics,
                        quota_bytes=config.quota_bytes)
        transport.attach(node)
        server = RaftServer(node, ssl_context=client_tls, client_endpoints=endpoints,
                            cluster_token=config.cluster_token)
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            # Apply what the disk holds committed before talking to anyone: the member
            # table in it must agree with this member's own peer URL.
            await node.wait_applied(disk.storage.initial_state()[0].commit,
                                    deadline=trio.current_time() + 60)
            if membership.mismatch is not None:
                raise MemberConfigError(membership.mismatch)
            peer_address = await nursery.start(transport.run)
            client_port = await nursery.start(server.serve, config.listen_client.host,
                                              config.listen_client.port)
            log.info("raft member %s (id %x) of cluster %r: peers on %s:%d, clients on "
                     "%s:%d", config.name, config.id, config.cluster_token,
                     config.listen_peer.host, peer_address[1], config.listen_client.host,
                     client_port)
            if metrics_port is not None:
                nursery.start_soon(serve_metrics, metrics_port, metrics, node, transport,
                                   config.quota_bytes)
            task_status.started((peer_address[1], client_port))
            nursery.start_soon(_record_own_addresses, node, config)
            await membership.mismatched.wait()
            raise MemberConfigError(f"{membership.mismatch}; stopping")
    finally:
        disk.close()


async def _record_own_addresses(node: RaftNode, config: MemberConfig) -> None:
    """A member the table knows without addresses -- the embedded store's member, served
    for the first time -- records the ones it was started with, so that members added
    later can reach it."""
    me = node.kv.members.get(config.id)
    if me is None or (me.peer_url and me.client_url):
        return
    client = f"{config.listen_client.host}:{config.listen_client.port}"
    command = ("member_addresses", int(config.id), str(config.listen_peer), client)
    try:
        await node.submit(int.from_bytes(os.urandom(8), "big") >> 1 | 1, 1, command,
                          deadline=trio.current_time() + 600)
    except KVError as exc:
        log.warning("raft member %s: could not record its addresses in the member table "
                    "(%s); restart it to try again", config.name, exc)
        return
    log.info("raft member %s: recorded its peer URL %s and client address %s in the member "
             "table", config.name, config.listen_peer, client)


def resolve_data_dir(data_dir: str) -> str:
    """``data_dir``, or the Raft member directory of the embedded volume it names."""
    embedded = os.path.join(data_dir, RAFT_DIR)
    if (not os.path.exists(os.path.join(data_dir, IDENTITY))
            and os.path.exists(os.path.join(embedded, IDENTITY))):
        return embedded
    return data_dir


def existing_token(data_dir: str) -> str | None:
    """The cluster token of the member data directory ``data_dir``, if it is one."""
    if not os.path.exists(os.path.join(data_dir, IDENTITY)):
        return None
    return read_identity(data_dir).cluster_token
