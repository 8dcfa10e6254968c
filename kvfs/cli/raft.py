"""``kvfs raft ...``: run and operate the bundled Raft store.

``kvfs raft serve`` runs one member until SIGINT/SIGTERM (see :mod:`kvfs.raftkv.member`);
``kvfs raft status`` asks every member named in a ``raft://`` URL how it is doing.

The operator's commands, shaped like etcdctl's (the rules they follow are in
:mod:`kvfs.raftkv.admin`, the file format in :mod:`kvfs.raftkv.snapfile`):

* ``kvfs raft member list|add|promote|remove RAFT_URL ...`` -- the replicated member
  table, and changes to it through the leader (found from any member the URL names);
  ``add`` prints the ``kvfs raft serve`` flags the new member must be started with;
* ``kvfs raft transfer-leader RAFT_URL NAME|ID`` -- hand leadership to a voter and wait
  until it leads;
* ``kvfs raft snapshot save RAFT_URL FILE`` -- a consistent snapshot (after a read
  barrier), written atomically with its xxh64;
* ``kvfs raft snapshot restore FILE --name ... --data-dir ... --initial-cluster ...
  --initial-cluster-token ...`` (offline) -- a new member's data directory holding the
  snapshot's state, run once per member of the new cluster.

``RAFT_URL`` is ``raft://HOST:PORT,...[/PREFIX][?cacert=&cert=&key=&timeout=]`` (the prefix
is optional and unused); every command gives up after the URL's ``timeout`` (default 30 s).
Every refusal is one line on stderr and a non-zero exit status, with nothing changed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import signal
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

from kvfs.kv.api import EngineUnavailable, KVError
from kvfs.outage import exception_leaves
from kvfs.raftkv.client import RaftClientEngine, client_ssl_context
from kvfs.raftkv.member import (
    MemberConfig,
    MemberConfigError,
    existing_token,
    parse_client_endpoints,
    parse_initial_cluster,
    parse_member_url,
    resolve_data_dir,
    serve,
)
from kvfs.raftkv.members import Member
from kvfs.raftkv.metrics import DEFAULT_LISTEN_METRICS, DEFAULT_QUOTA_BYTES
from kvfs.raftkv.snapfile import restore_member, write_snapshot_file
from kvfs.raftkv.url import RaftURL, parse_raft_url
from kvfs.volume import VolumeError

T = TypeVar("T")


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    p = sub.add_parser("raft", help="run and operate the bundled Raft store",
                       description="Run and operate the bundled Raft store.")
    raft_sub = p.add_subparsers(dest="raft_command", metavar="RAFT_COMMAND", required=True)
    s = raft_sub.add_parser(
        "serve", help="run one member of a Raft store cluster",
        description="Run one member of a Raft store cluster until SIGINT or SIGTERM.")
    s.add_argument("--name", required=True, help="this member's name in --initial-cluster")
    s.add_argument("--data-dir", required=True,
                   help="this member's data directory, or an embedded volume's directory")
    s.add_argument("--listen-peer", required=True, metavar="URL",
                   help="where peers reach this member: http(s)://HOST:PORT")
    s.add_argument("--listen-client", required=True, metavar="URL",
                   help="where clients (mounts) reach this member: http(s)://HOST:PORT")
    s.add_argument("--initial-cluster", required=True, metavar="NAME=URL,...",
                   help="every member's name and peer URL")
    s.add_argument("--initial-cluster-clients", default="", metavar="NAME=HOST:PORT,...",
                   help="every member's client address, for pointing clients at the leader")
    s.add_argument("--initial-cluster-token", default="", metavar="TOKEN",
                   help="the cluster's name; members of another token are refused (an "
                        "existing data directory's own by default)")
    s.add_argument("--initial-cluster-state", choices=("new", "existing"), default="new",
                   help="new: bootstrap a cluster; existing: join one (default: new)")
    s.add_argument("--cacert", help="CA certificate (https URLs: mutual TLS)")
    s.add_argument("--cert", help="this member's certificate")
    s.add_argument("--key", help="this member's private key")
    s.add_argument("--tick-ms", type=int, default=100, help="Raft tick (default 100 ms)")
    s.add_argument("--election-ticks", type=int, default=10,
                   help="election timeout in ticks (default 10)")
    s.add_argument("--snapshot-count", type=int, default=10_000,
                   help="applied entries between snapshots (default 10000)")
    s.add_argument("--listen-metrics", metavar="HOST:PORT|off",
                   help="plain HTTP port for /health and Prometheus /metrics (default "
                        f"{DEFAULT_LISTEN_METRICS}, skipped with a warning when that is busy; "
                        "off: none)")
    s.add_argument("--quota-bytes", type=int, default=DEFAULT_QUOTA_BYTES, metavar="N",
                   help="refuse writes that would grow the keys and values held beyond N "
                        "bytes (mounts get ENOSPC; deletes still work); default "
                        f"{DEFAULT_QUOTA_BYTES} (2 GiB), 0: no quota")
    s.set_defaults(run=run_serve)
    st = raft_sub.add_parser(
        "status", help="each member's role, term, commit and applied index, and lag",
        description="Ask every member named in RAFT_URL (raft://HOST:PORT,...[/PREFIX]"
                    "[?cacert=&cert=&key=&timeout=]) for its status.")
    st.add_argument("url", metavar="RAFT_URL")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.set_defaults(run=run_status)

    m = raft_sub.add_parser("member", help="list and change the cluster's members",
                            description="List and change the members of a Raft store "
                                        "cluster (through its leader).")
    m_sub = m.add_subparsers(dest="member_command", metavar="MEMBER_COMMAND", required=True)
    ml = m_sub.add_parser("list", help="every member: id, name, URLs, voter or learner, "
                                       "leader", description="List the cluster's members.")
    ml.add_argument("url", metavar="RAFT_URL")
    ml.add_argument("--json", action="store_true", help="machine-readable output")
    ml.set_defaults(run=run_member_list)
    ma = m_sub.add_parser(
        "add", help="add a member and print the flags to start it with",
        description="Add a member to the cluster, then print the kvfs raft serve flags it "
                    "must be started with (with an empty --data-dir).")
    ma.add_argument("url", metavar="RAFT_URL")
    ma.add_argument("name", metavar="NAME", help="the new member's name")
    ma.add_argument("--peer-url", required=True, metavar="URL",
                    help="where the other members reach it: http(s)://HOST:PORT")
    ma.add_argument("--client-url", required=True, metavar="HOST:PORT",
                    help="where clients reach it")
    ma.add_argument("--learner", action="store_true",
                    help="add it as a learner (no vote until promoted)")
    ma.set_defaults(run=run_member_add)
    for command, helptext in (("promote", "make a learner that has caught up a voter"),
                              ("remove", "remove a member")):
        mc = m_sub.add_parser(command, help=helptext, description=helptext.capitalize() + ".")
        mc.add_argument("url", metavar="RAFT_URL")
        mc.add_argument("target", metavar="NAME|ID", help="the member's name or hex id")
        mc.set_defaults(run=run_member_change, change=command)

    t = raft_sub.add_parser(
        "transfer-leader", help="hand leadership to a voter",
        description="Ask the leader to hand leadership to a voter and wait until it has.")
    t.add_argument("url", metavar="RAFT_URL")
    t.add_argument("target", metavar="NAME|ID", help="the voter's name or hex id")
    t.set_defaults(run=run_transfer_leader)

    sn = raft_sub.add_parser("snapshot", help="save a snapshot, or restore a member from one",
                             description="Save a consistent snapshot of a Raft store, or "
                                         "make a new member's data directory from one.")
    sn_sub = sn.add_subparsers(dest="snapshot_command", metavar="SNAPSHOT_COMMAND",
                               required=True)
    ss = sn_sub.add_parser("save", help="write a consistent snapshot to FILE",
                           description="Fetch a consistent snapshot (after a read barrier) "
                                       "and write it to FILE atomically with its xxh64.")
    ss.add_argument("url", metavar="RAFT_URL")
    ss.add_argument("file", metavar="FILE")
    ss.set_defaults(run=run_snapshot_save)
    sr = sn_sub.add_parser(
        "restore", help="make a new member's data directory from a snapshot file (offline)",
        description="Make a new member's data directory holding the snapshot's state, as "
                    "member NAME of the cluster --initial-cluster.  Run it once per member "
                    "with the same flags, then start each with kvfs raft serve.")
    sr.add_argument("file", metavar="FILE")
    sr.add_argument("--name", required=True, help="this member's name in --initial-cluster")
    sr.add_argument("--data-dir", required=True, help="the new data directory (must not "
                                                       "exist, or be empty)")
    sr.add_argument("--initial-cluster", required=True, metavar="NAME=URL,...",
                    help="every member of the new cluster and its peer URL")
    sr.add_argument("--initial-cluster-clients", default="", metavar="NAME=HOST:PORT,...",
                    help="every member's client address")
    sr.add_argument("--initial-cluster-token", required=True, metavar="TOKEN",
                    help="the new cluster's token")
    sr.set_defaults(run=run_snapshot_restore)
    return p


def run(args: argparse.Namespace) -> int:
    return int(args.run(args))


def run_serve(args: argparse.Namespace) -> int:
    # An embedded volume's directory is served as its member (DIR/raft); an existing member
    # directory knows its cluster token.
    data_dir = resolve_data_dir(args.data_dir)
    token = args.initial_cluster_token or existing_token(data_dir)
    if not token:
        raise MemberConfigError("--initial-cluster-token is required for a new member "
                                "(an existing data directory knows its own)")
    config = MemberConfig(
        name=args.name,
        data_dir=data_dir,
        listen_peer=parse_member_url(args.listen_peer, "--listen-peer"),
        listen_client=parse_member_url(args.listen_client, "--listen-client"),
        initial_cluster=parse_initial_cluster(args.initial_cluster),
        cluster_token=token,
        new_cluster=args.initial_cluster_state == "new",
        cacert=args.cacert, cert=args.cert, key=args.key,
        tick_seconds=args.tick_ms / 1000, election_ticks=args.election_ticks,
        snapshot_every=args.snapshot_count,
        client_endpoints=parse_client_endpoints(args.initial_cluster_clients),
        listen_metrics=(None if args.listen_metrics == "off"
                        else args.listen_metrics or DEFAULT_LISTEN_METRICS),
        listen_metrics_optional=args.listen_metrics is None,
        quota_bytes=args.quota_bytes,
    )
    config.validate()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                nursery.start_soon(serve, config)
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break

    try:
        trio.run(main)
    except BaseExceptionGroup as group:
        # A refusal at start-up (another cluster's data dir, a port in use) is one error
        # inside the nursery: surface it alone, so it becomes kvfs's one-line message.
        leaves = list(exception_leaves(group))
        if len(leaves) == 1 and isinstance(leaves[0], Exception):
            raise leaves[0] from None
        raise
    return 0


def _admin_url(url: str) -> tuple[RaftURL, Any]:
    """A RAFT_URL whose prefix is optional (it does not matter to these commands), and its
    TLS context."""
    head, sep, query = url.partition("?")
    if head.startswith("raft://") and "/" not in head[len("raft://"):]:
        url = head + "/status" + sep + query
    try:
        parsed = parse_raft_url(url)
        return parsed, client_ssl_context(parsed) if parsed.tls else None
    except ValueError as e:
        raise VolumeError(str(e)) from None


def _with_engine(url: str, call: Callable[[RaftClientEngine], Awaitable[T]]) -> T:
    """Run ``call`` on an engine that follows the leader wherever the members say it is."""
    parsed, context = _admin_url(url)

    async def main() -> T:
        engine = RaftClientEngine(parsed, context, follow_hints=True)
        try:
            return await call(engine)
        finally:
            await engine.aclose()

    return trio.run(main)


def _members(wire: list[list[Any]]) -> list[Member]:
    return [Member.from_wire(item) for item in wire]


def run_member_list(args: argparse.Namespace) -> int:
    answer = _with_engine(args.url, lambda engine: engine.member_list())
    members = _members(answer["members"])
    leader = answer["leader"]
    if args.json:
        print(json.dumps({"cluster_token": answer["cluster_token"],
                          "leader": f"{leader:x}" if leader else None,
                          "members": [{"id": f"{m.id:x}", "name": m.name,
                                       "peer_url": m.peer_url, "client_url": m.client_url,
                                       "learner": m.learner, "leader": m.id == leader}
                                      for m in members]}, indent=2))
        return 0
    rows = [("ID", "NAME", "PEER URL", "CLIENT URL", "ROLE", "LEADER")]
    rows += [(f"{m.id:x}", m.name or "?", m.peer_url or "?", m.client_url or "?",
              "learner" if m.learner else "voter", "yes" if m.id == leader else "no")
             for m in members]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
              .rstrip())
    return 0


def run_member_add(args: argparse.Namespace) -> int:
    answer = _with_engine(args.url, lambda engine: engine.member_add(
        args.name, args.peer_url, args.client_url, learner=args.learner))
    members = _members(answer["members"])
    new = next(m for m in members if m.id == answer["member"])
    scheme = new.peer_url.partition(":")[0]
    flags = ["--name", new.name, "--listen-peer", new.peer_url,
             "--listen-client", f"{scheme}://{new.client_url}",
             "--initial-cluster", ",".join(f"{m.name}={m.peer_url}" for m in members
                                           if m.name and m.peer_url),
             "--initial-cluster-clients", ",".join(f"{m.name}={m.client_url}"
                                                   for m in members
                                                   if m.name and m.client_url),
             "--initial-cluster-token", answer["cluster_token"],
             "--initial-cluster-state", "existing"]
    role = "learner" if new.learner else "voter"
    print(f"added member {new.name} (id {new.id:x}) as a {role}; start it with an empty "
          "--data-dir (and the cluster's TLS files, if any) and these flags:")
    print(shlex.join(flags))
    return 0


def run_member_change(args: argparse.Namespace) -> int:
    if args.change == "promote":
        done = _with_engine(args.url, lambda engine: engine.member_promote(args.target))
        print(f"promoted member {args.target} (id {done:x}) to a voter")
    else:
        done = _with_engine(args.url, lambda engine: engine.member_remove(args.target))
        print(f"removed member {args.target}" + (f" (id {done:x})" if done else ""))
    return 0


def run_transfer_leader(args: argparse.Namespace) -> int:
    leader = _with_engine(args.url, lambda engine: engine.transfer_leader(args.target))
    print(f"member {args.target} (id {leader:x}) is the leader")
    return 0


def run_snapshot_save(args: argparse.Namespace) -> int:
    index, data, _ = _with_engine(args.url, lambda engine: engine.snapshot())
    written = write_snapshot_file(args.file, index, data)
    print(f"saved the snapshot at index {index} to {args.file}: {len(data)} bytes of state, "
          f"xxh64 {written.hash}")
    return 0


def run_snapshot_restore(args: argparse.Namespace) -> int:
    restored = restore_member(
        args.file, name=args.name, data_dir=args.data_dir,
        initial_cluster=parse_initial_cluster(args.initial_cluster),
        cluster_token=args.initial_cluster_token,
        client_endpoints=parse_client_endpoints(args.initial_cluster_clients))
    print(f"restored index {restored.index} ({restored.keys} keys) into {args.data_dir} as "
          f"member {args.name} of cluster {args.initial_cluster_token} "
          f"({restored.members} members); start it with kvfs raft serve")
    return 0


def run_status(args: argparse.Namespace) -> int:
    parsed, context = _admin_url(args.url)

    async def ask(endpoint: str) -> dict[str, Any]:
        one = dataclasses.replace(parsed, endpoints=(endpoint,),
                                  timeout=min(parsed.timeout, 5.0))
        engine = RaftClientEngine(one, context)
        try:
            return {"endpoint": endpoint, **await engine.status()}
        except KVError as e:
            return {"endpoint": endpoint, "error": str(e).splitlines()[0]}
        finally:
            await engine.aclose()

    async def main() -> list[dict[str, Any]]:
        return [await ask(endpoint) for endpoint in parsed.endpoints]

    members = trio.run(main)
    reachable = [m for m in members if "error" not in m]
    if not reachable:
        raise EngineUnavailable(f"no member of {parsed.describe()} answered: "
                                f"{members[-1]['error']}")
    commit = max(m["commit"] for m in reachable)
    for m in reachable:
        m["lag"] = commit - m["applied"]
    if args.json:
        print(json.dumps({"members": members}, indent=2))
        return 0
    leaders = {m["leader"] for m in reachable if m["leader"]}
    print(f"leader: {', '.join(f'{x:x}' for x in sorted(leaders)) or 'none known'}")
    for m in members:
        if "error" in m:
            print(f"  {m['endpoint']}: unreachable ({m['error']})")
        else:
            print(f"  {m['endpoint']}: member {m['member']:x} {m['role']} term {m['term']} "
                  f"commit {m['commit']} applied {m['applied']} lag {m['lag']}")
    return 0
