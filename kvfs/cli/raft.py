"""``kvfs raft ...``: run and operate the bundled Raft store.

``kvfs raft serve`` runs one member until SIGINT/SIGTERM (see :mod:`kvfs.raftkv.member`);
``kvfs raft status`` asks every member named in a ``raft://`` URL how it is doing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
from collections.abc import Iterator
from typing import Any

import trio

from kvfs.kv.api import EngineUnavailable, KVError
from kvfs.raftkv.client import RaftClientEngine, client_ssl_context
from kvfs.raftkv.member import (
    MemberConfig,
    parse_client_endpoints,
    parse_initial_cluster,
    parse_member_url,
    serve,
)
from kvfs.raftkv.url import parse_raft_url
from kvfs.volume import VolumeError


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    p = sub.add_parser("raft", help="run and operate the bundled Raft store",
                       description="Run and operate the bundled Raft store.")
    raft_sub = p.add_subparsers(dest="raft_command", metavar="RAFT_COMMAND", required=True)
    s = raft_sub.add_parser(
        "serve", help="run one member of a Raft store cluster",
        description="Run one member of a Raft store cluster until SIGINT or SIGTERM.")
    s.add_argument("--name", required=True, help="this member's name in --initial-cluster")
    s.add_argument("--data-dir", required=True, help="this member's data directory")
    s.add_argument("--listen-peer", required=True, metavar="URL",
                   help="where peers reach this member: http(s)://HOST:PORT")
    s.add_argument("--listen-client", required=True, metavar="URL",
                   help="where clients (mounts) reach this member: http(s)://HOST:PORT")
    s.add_argument("--initial-cluster", required=True, metavar="NAME=URL,...",
                   help="every member's name and peer URL")
    s.add_argument("--initial-cluster-clients", default="", metavar="NAME=HOST:PORT,...",
                   help="every member's client address, for pointing clients at the leader")
    s.add_argument("--initial-cluster-token", required=True, metavar="TOKEN",
                   help="the cluster's name; members of another token are refused")
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
    s.set_defaults(run=run_serve)
    st = raft_sub.add_parser(
        "status", help="each member's role, term, commit and applied index, and lag",
        description="Ask every member named in RAFT_URL (raft://HOST:PORT,...[/PREFIX]"
                    "[?cacert=&cert=&key=&timeout=]) for its status.")
    st.add_argument("url", metavar="RAFT_URL")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.set_defaults(run=run_status)
    return p


def run(args: argparse.Namespace) -> int:
    return int(args.run(args))


def run_serve(args: argparse.Namespace) -> int:
    config = MemberConfig(
        name=args.name,
        data_dir=args.data_dir,
        listen_peer=parse_member_url(args.listen_peer, "--listen-peer"),
        listen_client=parse_member_url(args.listen_client, "--listen-client"),
        initial_cluster=parse_initial_cluster(args.initial_cluster),
        cluster_token=args.initial_cluster_token,
        new_cluster=args.initial_cluster_state == "new",
        cacert=args.cacert, cert=args.cert, key=args.key,
        tick_seconds=args.tick_ms / 1000, election_ticks=args.election_ticks,
        snapshot_every=args.snapshot_count,
        client_endpoints=parse_client_endpoints(args.initial_cluster_clients),
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
        leaves = list(_leaves(group))
        if len(leaves) == 1 and isinstance(leaves[0], Exception):
            raise leaves[0] from None
        raise
    return 0


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


def run_status(args: argparse.Namespace) -> int:
    url = args.url
    head, sep, query = url.partition("?")
    if head.startswith("raft://") and "/" not in head[len("raft://"):]:
        url = head + "/status" + sep + query  # the prefix does not matter here
    try:
        parsed = parse_raft_url(url)
        context = client_ssl_context(parsed) if parsed.tls else None
    except ValueError as e:
        raise VolumeError(str(e)) from None

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
