"""Real ``kvfs raft serve`` member processes for the tests of the Raft store.

:class:`MemberProcesses` is the one place the tests start, wait for, kill (SIGKILL), pause
(SIGSTOP/SIGCONT) and stop member processes: each member has a name, an :class:`Address`
(its host, peer and client ports, optionally a command prefix such as ``ip netns exec NS``
for a member in a network namespace) and its data directory ``BASE/NAME``; a test gives
the serve flags.  :class:`RaftCluster` is a cluster of fixed membership started with the
same flags everywhere, for the serve, metrics and fault tests (``test_raft_crash``;
``test_raft_partition`` and ``test_raft_linearizable`` on a :class:`BridgedCluster`, whose
members are in network namespaces, see ``tests/raft_netns.py``).  The async helpers ask
members for their status one at a time and compute a digest of one member's state read
through that member alone, so tests can tell whether members converged.

Invariants: a member's process is only ever signalled by its PID, and
:meth:`MemberProcesses.stop_all` (run on leaving a ``with`` block) ends every process
started (a paused one is continued first); each member logs to ``BASE/NAME.log``, whose
tail is shown when it fails to start.
"""

from __future__ import annotations

import dataclasses
import hashlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import trio
from raft_netns import BridgedHosts

from kvfs.benchmarks.launch import free_ports
from kvfs.kv.api import KVError
from kvfs.raftkv.client import RaftClientEngine
from kvfs.raftkv.member import member_id
from kvfs.raftkv.url import parse_raft_url

NAMES = ("m1", "m2", "m3")


@dataclass(frozen=True, slots=True)
class Address:
    """Where one member listens, and the command prefix that puts it on that host."""

    host: str
    peer_port: int
    client_port: int
    wrap: tuple[str, ...] = ()

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.host}:{self.peer_port}"


def loopback_addresses(names: Sequence[str] = NAMES) -> dict[str, Address]:
    ports = free_ports(2 * len(names))
    return {name: Address("127.0.0.1", ports[2 * i], ports[2 * i + 1])
            for i, name in enumerate(names)}


class MemberProcesses:
    """``kvfs raft serve`` processes of the members ``addresses`` (name -> :class:`Address`,
    more may be added) of a cluster with token ``token``, under ``base``.

    A ``with`` block stops every started member when it ends.
    """

    def __init__(self, base: Path, token: str,
                 addresses: Mapping[str, Address] | None = None) -> None:
        self.base = base
        self.token = token
        self.addresses = dict(addresses or {})
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.paused: set[str] = set()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop_all()

    def add_loopback(self, *names: str) -> None:
        """Give ``names`` loopback addresses on free ports."""
        self.addresses.update(loopback_addresses(names))

    def peer_url(self, name: str) -> str:
        return self.addresses[name].peer_url

    def endpoint(self, name: str) -> str:
        return self.addresses[name].endpoint

    def serve_argv(self, name: str, *flags: str) -> list[str]:
        """The command line of member ``name`` with data directory ``BASE/NAME``."""
        return [*self.addresses[name].wrap, sys.executable, "-m", "kvfs.cli.main", "raft",
                "serve", "--data-dir", str(self.base / name), *flags]

    def new_cluster_flags(self, name: str, names: Sequence[str]) -> list[str]:
        """The flags of member ``name`` of a new cluster of ``names``."""
        return ["--name", name, "--listen-peer", self.peer_url(name),
                "--listen-client", f"http://{self.endpoint(name)}",
                "--initial-cluster", ",".join(f"{n}={self.peer_url(n)}" for n in names),
                "--initial-cluster-clients", ",".join(f"{n}={self.endpoint(n)}"
                                                      for n in names),
                "--initial-cluster-token", self.token]

    def log_tail(self, name: str, size: int = 3000) -> str:
        path = self.base / f"{name}.log"
        return path.read_text(errors="replace")[-size:] if path.exists() else "(no log)"

    def launch(self, name: str, argv: list[str], *, wait: bool = True) -> None:
        """Start ``name`` as ``argv`` and (with ``wait``) wait until it listens."""
        assert name not in self.procs, f"{name} is running"
        with open(self.base / f"{name}.log", "ab") as log:
            # The wrapper (ip netns exec) execs python: the PID is the member's own.
            self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=log)
        if wait:
            self.wait_listening(name)

    def wait_listening(self, name: str, timeout: float = 60) -> None:
        a = self.addresses[name]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self.procs[name]
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited with {proc.returncode}:\n"
                                     f"{self.log_tail(name)}")
            try:
                socket.create_connection((a.host, a.client_port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"{name} did not listen within {timeout} s:\n"
                             f"{self.log_tail(name)}")

    def kill(self, *names: str) -> None:
        """SIGKILL members (default: every running one) back to back, then reap them."""
        names = names or tuple(self.procs)
        procs = [self.procs.pop(name) for name in names]
        for proc in procs:
            proc.send_signal(signal.SIGKILL)
        for proc in procs:
            proc.wait()
        self.paused -= set(names)

    def pause(self, name: str) -> None:
        self.procs[name].send_signal(signal.SIGSTOP)
        self.paused.add(name)

    def resume(self, name: str) -> None:
        self.paused.discard(name)
        self.procs[name].send_signal(signal.SIGCONT)

    def stop_all(self) -> None:
        for name in list(self.paused):
            self.resume(name)
        for proc in self.procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()

    def url(self, *names: str, timeout: float = 20, prefix: str = "vol") -> str:
        """A raft:// URL of ``names`` (default: all)."""
        endpoints = ",".join(self.endpoint(n) for n in names or self.addresses)
        return f"raft://{endpoints}/{prefix}?timeout={timeout:g}"

    def engine(self, *names: str, timeout: float = 20) -> RaftClientEngine:
        """A client of ``names`` (default: all), not yet connected: unlike ``open_engine``
        it needs no leader to be created."""
        return RaftClientEngine(parse_raft_url(self.url(*names, timeout=timeout)))


class RaftCluster(MemberProcesses):
    """Members ``addresses`` (name -> :class:`Address`) of one new cluster under ``base``,
    all started with the same flags.  A ``with`` block starts every member first.

    ``tick_ms`` and ``election_ticks`` are the members' Raft timing; tests on a loaded
    two-core machine keep the election timeout at a second or more.
    """

    def __init__(self, base: Path, token: str, addresses: Mapping[str, Address], *,
                 tick_ms: int = 100, election_ticks: int = 10,
                 snapshot_count: int = 500) -> None:
        super().__init__(base, token, addresses)
        self.names = tuple(self.addresses)
        self.tick_ms = tick_ms
        self.election_ticks = election_ticks
        self.snapshot_count = snapshot_count
        self.ids = {name: int(member_id(name, token)) for name in self.names}
        self.by_id = {i: name for name, i in self.ids.items()}

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop_all()
            raise
        return self

    @property
    def election_timeout(self) -> float:
        """The shortest election timeout in seconds (randomized up to twice this)."""
        return self.tick_ms * self.election_ticks / 1000

    def argv(self, name: str) -> list[str]:
        return self.serve_argv(name, *self.new_cluster_flags(name, self.names),
                               "--tick-ms", str(self.tick_ms),
                               "--election-ticks", str(self.election_ticks),
                               "--snapshot-count", str(self.snapshot_count))

    def start(self, *names: str) -> None:
        """Start members (default: all) at once and wait until each listens."""
        names = names or self.names
        for name in names:
            self.launch(name, self.argv(name), wait=False)
        for name in names:
            self.wait_listening(name)


class BridgedCluster(RaftCluster):
    """A :class:`RaftCluster` of ``names``, each member in a network namespace of its own
    on one bridge (``net``, see ``tests/raft_netns.py``), for partitions.  Leaving a
    ``with`` block (or failing to start in one) stops the members, then deletes the
    namespaces."""

    def __init__(self, base: Path, token: str, names: Sequence[str] = NAMES,
                 **timing: int) -> None:
        self.net = BridgedHosts(names)
        # Fixed ports: a namespace has no other listener.
        super().__init__(base, token, {name: Address(self.net.addr[name], 7380, 7379,
                                                     self.net.wrap(name))
                                       for name in names}, **timing)

    def __enter__(self) -> Self:
        try:
            return super().__enter__()
        except BaseException:
            self.net.delete()
            raise

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            super().__exit__(kind, exc, tb)
        finally:
            self.net.delete()


async def status(cluster: MemberProcesses, name: str,
                 timeout: float = 2.0) -> dict[str, Any] | None:
    """``name``'s own status (member, leader, role, term, commit, applied), None if it
    does not answer within ``timeout`` seconds."""
    engine = cluster.engine(name, timeout=timeout)
    try:
        return await engine.status()
    except KVError:
        return None
    finally:
        await engine.aclose()


async def wait_leader(cluster: MemberProcesses, among: Sequence[str] = (),
                      timeout: float = 60) -> tuple[str, int]:
    """The name and term of a member of ``among`` (default: all) that says it leads."""
    among = among or tuple(cluster.addresses)
    with trio.fail_after(timeout):
        while True:
            for name in among:
                s = await status(cluster, name)
                if s is not None and s["role"] == "leader":
                    return name, int(s["term"])
            await trio.sleep(0.1)


@dataclass(frozen=True, slots=True)
class Digest:
    """What one member holds at one revision: the key count and a hash of every key's
    value, mod and create revision."""

    member: str
    revision: int
    keys: int
    sha: str

    def same_state(self, other: Digest) -> bool:
        return dataclasses.replace(self, member="") == dataclasses.replace(other, member="")


async def member_items(cluster: RaftCluster, name: str, revision: int,
                       timeout: float = 60) -> tuple[int, list[tuple[bytes, bytes, int, int]]]:
    """Every key of the volume as ``name`` alone holds it, once it has applied
    ``revision``: (revision read at, [(key, value, mod, create)])."""
    engine = cluster.engine(name, timeout=timeout)
    try:
        with trio.fail_after(timeout):
            while await engine.current_revision() < revision:
                await trio.sleep(0.05)
        result = await engine.range(b"", b"\x00")
        assert not result.more
        return result.revision, [(kv.key, kv.value, kv.mod_revision, kv.create_revision)
                                 for kv in result.kvs]
    finally:
        await engine.aclose()


async def member_digest(cluster: RaftCluster, name: str, revision: int) -> Digest:
    at, items = await member_items(cluster, name, revision)
    h = hashlib.sha256()
    for key, value, mod, create in items:
        h.update(b"%d:%s%d:%s%d,%d;" % (len(key), key, len(value), value, mod, create))
    return Digest(name, at, len(items), h.hexdigest())


async def converged_digests(cluster: RaftCluster, names: Sequence[str] = ()) -> list[Digest]:
    """Each member's digest at the cluster's current revision (read through all members,
    so no write may run meanwhile)."""
    engine = cluster.engine(timeout=60)
    try:
        revision = await engine.current_revision()
    finally:
        await engine.aclose()
    return [await member_digest(cluster, name, revision) for name in names or cluster.names]
