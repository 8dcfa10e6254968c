"""A three-member kvfs Raft store of real ``kvfs raft serve`` processes, for the fault
tests (``test_raft_crash``, ``test_raft_partition``, ``test_raft_linearizable``).

:class:`RaftCluster` starts, kills (SIGKILL), pauses (SIGSTOP/SIGCONT) and stops members,
each on its own host address and optionally wrapped in a command prefix (``ip netns exec
NS`` for a member in a network namespace, see ``tests/raft_netns.py``).  The async helpers
ask members for their status one at a time and compute a digest of one member's state read
through that member alone, so tests can tell whether members converged.

Invariants: a member's process is only ever signalled by its PID, and
:meth:`RaftCluster.stop_all` ends every process the cluster started (a paused one is
continued first); each member logs to ``BASE/NAME.log``, whose tail is shown when it fails
to start.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from kvfs.kv.api import KVError
from kvfs.raftkv.client import RaftClientEngine
from kvfs.raftkv.member import member_id
from kvfs.raftkv.url import parse_raft_url

NAMES = ("m1", "m2", "m3")


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    sockets = []
    for _ in range(count):
        s = socket.socket()
        s.bind((host, 0))
        sockets.append(s)
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


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


def loopback_addresses(names: Sequence[str] = NAMES) -> dict[str, Address]:
    ports = free_ports(2 * len(names))
    return {name: Address("127.0.0.1", ports[2 * i], ports[2 * i + 1])
            for i, name in enumerate(names)}


class RaftCluster:
    """Members ``addresses`` (name -> :class:`Address`) of one cluster under ``base``.

    ``tick_ms`` and ``election_ticks`` are the members' Raft timing; tests on a loaded
    two-core machine keep the election timeout at a second or more.
    """

    def __init__(self, base: Path, token: str, addresses: Mapping[str, Address], *,
                 tick_ms: int = 100, election_ticks: int = 10,
                 snapshot_count: int = 500) -> None:
        self.base = base
        self.token = token
        self.addresses = dict(addresses)
        self.names = tuple(self.addresses)
        self.tick_ms = tick_ms
        self.election_ticks = election_ticks
        self.snapshot_count = snapshot_count
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.paused: set[str] = set()
        self.ids = {name: int(member_id(name, token)) for name in self.names}
        self.by_id = {i: name for name, i in self.ids.items()}

    @property
    def election_timeout(self) -> float:
        """The shortest election timeout in seconds (randomized up to twice this)."""
        return self.tick_ms * self.election_ticks / 1000

    def argv(self, name: str) -> list[str]:
        a = self.addresses[name]
        initial = ",".join(f"{n}=http://{x.host}:{x.peer_port}"
                           for n, x in self.addresses.items())
        clients = ",".join(f"{n}={x.endpoint}" for n, x in self.addresses.items())
        return [*a.wrap, sys.executable, "-m", "kvfs.cli.main", "raft", "serve",
                "--name", name, "--data-dir", str(self.base / name),
                "--listen-peer", f"http://{a.host}:{a.peer_port}",
                "--listen-client", f"http://{a.host}:{a.client_port}",
                "--initial-cluster", initial, "--initial-cluster-clients", clients,
                "--initial-cluster-token", self.token, "--tick-ms", str(self.tick_ms),
                "--election-ticks", str(self.election_ticks),
                "--snapshot-count", str(self.snapshot_count)]

    def log_tail(self, name: str, size: int = 3000) -> str:
        path = self.base / f"{name}.log"
        return path.read_text(errors="replace")[-size:] if path.exists() else "(no log)"

    def spawn(self, name: str) -> None:
        """Start ``name``'s process without waiting for it to listen."""
        assert name not in self.procs, f"{name} is running"
        with open(self.base / f"{name}.log", "ab") as log:
            # The wrapper (ip netns exec) execs python: the PID is the member's own.
            self.procs[name] = subprocess.Popen(self.argv(name), stdout=log, stderr=log,
                                                cwd=os.getcwd())

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

    def start(self, *names: str) -> None:
        """Start members (default: all) at once and wait until each listens."""
        names = names or self.names
        for name in names:
            self.spawn(name)
        for name in names:
            self.wait_listening(name)

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
        endpoints = ",".join(self.addresses[n].endpoint for n in names or self.names)
        return f"raft://{endpoints}/{prefix}?timeout={timeout:g}"

    def engine(self, *names: str, timeout: float = 20) -> RaftClientEngine:
        """A client of ``names`` (default: all), not yet connected: unlike ``open_engine``
        it needs no leader to be created."""
        return RaftClientEngine(parse_raft_url(self.url(*names, timeout=timeout)))


async def status(cluster: RaftCluster, name: str, timeout: float = 2.0) -> dict[str, Any] | None:
    """``name``'s own status (member, leader, role, term, commit, applied), None if it
    does not answer within ``timeout`` seconds."""
    engine = cluster.engine(name, timeout=timeout)
    try:
        return await engine.status()
    except KVError:
        return None
    finally:
        await engine.aclose()


async def wait_leader(cluster: RaftCluster, among: Sequence[str] = (),
                      timeout: float = 60) -> tuple[str, int]:
    """The name and term of a member of ``among`` (default: all) that says it leads."""
    among = among or cluster.names
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
