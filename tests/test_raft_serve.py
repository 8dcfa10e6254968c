"""``kvfs raft serve`` as real processes on loopback: a three-member cluster keeps every
acknowledged write while its leader is killed with SIGKILL again and again, members
converge to the same state, and bad configurations are refused with one line.

``KVFS_RAFT_KILLS`` sets how many leaders are killed (default 3; the closing run of the
Raft cluster work uses more).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from kvfs.kv.api import KVEngine, Put
from kvfs.raftkv.member import member_id
from kvfs.volume import open_engine

KILLS = int(os.environ.get("KVFS_RAFT_KILLS", "3"))
TOKEN = "test-serve"
NAMES = ("m1", "m2", "m3")


def free_ports(count: int) -> list[int]:
    sockets = []
    for _ in range(count):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


class Cluster:
    def __init__(self, base: Path) -> None:
        self.base = base
        ports = free_ports(6)
        self.peer = dict(zip(NAMES, ports[:3], strict=True))
        self.client = dict(zip(NAMES, ports[3:], strict=True))
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def argv(self, name: str) -> list[str]:
        initial = ",".join(f"{n}=http://127.0.0.1:{p}" for n, p in self.peer.items())
        clients = ",".join(f"{n}=127.0.0.1:{p}" for n, p in self.client.items())
        return [sys.executable, "-m", "kvfs.cli.main", "raft", "serve", "--name", name,
                "--data-dir", str(self.base / name),
                "--listen-peer", f"http://127.0.0.1:{self.peer[name]}",
                "--listen-client", f"http://127.0.0.1:{self.client[name]}",
                "--initial-cluster", initial, "--initial-cluster-clients", clients,
                "--initial-cluster-token", TOKEN, "--tick-ms", "50",
                "--snapshot-count", "200"]

    def start(self, name: str) -> None:
        log = open(self.base / f"{name}.log", "ab")  # noqa: SIM115 - owned by the process
        self.procs[name] = subprocess.Popen(self.argv(name), stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.procs[name].poll() is None, (self.base / f"{name}.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", self.client[name]), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"{name} did not start listening")

    def kill(self, name: str) -> None:
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def stop_all(self) -> None:
        for proc in self.procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()

    def url(self, *names: str) -> str:
        endpoints = ",".join(f"127.0.0.1:{self.client[n]}" for n in names or NAMES)
        return f"raft://{endpoints}/vol?timeout=20"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        for name in NAMES:
            c.start(name)
        yield c
    finally:
        c.stop_all()


async def leader_name(kv: KVEngine) -> str:
    by_id = {member_id(n, TOKEN): n for n in NAMES}
    with trio.fail_after(30):
        while True:
            status = await kv.status()  # type: ignore[attr-defined]
            if status["leader"] in by_id:
                return by_id[status["leader"]]
            await trio.sleep(0.05)


async def member_state(cluster: Cluster, name: str, revision: int) -> list[tuple[bytes, bytes]]:
    """Every key of one member, read through that member alone once it has caught up."""
    kv = await open_engine(cluster.url(name))
    try:
        with trio.fail_after(30):
            while await kv.current_revision() < revision:
                await trio.sleep(0.05)
        result = await kv.range(b"", b"\x00")
        return [(item.key, item.value) for item in result.kvs]
    finally:
        await kv.aclose()


async def test_acknowledged_writes_survive_repeated_leader_kills(cluster: Cluster) -> None:
    kv = await open_engine(cluster.url())
    acknowledged: dict[bytes, bytes] = {}
    resumed: list[float] = []
    try:
        n = 0
        for round_ in range(KILLS):
            for _ in range(40):
                key, value = b"k%05d" % n, b"round %d" % round_
                assert (await kv.commit([], [Put(key, value)])).succeeded
                acknowledged[key] = value
                n += 1
            victim = await leader_name(kv)
            cluster.kill(victim)
            killed_at = trio.current_time()
            # Writes go on with the other two (the client fails over and retries)...
            for i in range(20):
                key, value = b"k%05d" % n, b"after killing %s" % victim.encode()
                assert (await kv.commit([], [Put(key, value)])).succeeded
                acknowledged[key] = value
                n += 1
                if i == 0:
                    resumed.append(trio.current_time() - killed_at)
            # ...and the killed member comes back and catches up (past a snapshot, too).
            cluster.start(victim)
        revision = await kv.current_revision()
        result = await kv.range(b"", b"\x00")
        assert {item.key: item.value for item in result.kvs} == acknowledged
        # A figure, not an assertion (run with -s to see it).
        print(f"first write after each leader kill took {[round(t, 2) for t in sorted(resumed)]} s")
    finally:
        await kv.aclose()
    states = [await member_state(cluster, name, revision) for name in NAMES]
    assert states[0] == states[1] == states[2]
    assert dict(states[0]) == acknowledged


def run_kvfs(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kvfs.cli.main", *args],
                          capture_output=True, text=True, timeout=60)


def test_bad_configurations_are_refused_with_one_line(tmp_path: Path) -> None:
    peer, client = free_ports(2)
    base = ["raft", "serve", "--name", "m1", "--data-dir", str(tmp_path / "m1"),
            "--listen-peer", f"http://127.0.0.1:{peer}",
            "--listen-client", f"http://127.0.0.1:{client}"]
    cases = {
        "does not name this member": ["--initial-cluster", f"m2=http://127.0.0.1:{peer}",
                                      "--initial-cluster-token", "t"],
        "must look like": ["--initial-cluster", "m1=ftp://x", "--initial-cluster-token", "t"],
        "need --cacert": ["--initial-cluster", f"m1=https://127.0.0.1:{peer}",
                          "--initial-cluster-token", "t"],
    }
    for expected, extra in cases.items():
        proc = run_kvfs(*base, *extra)
        assert proc.returncode == 1, proc.stderr
        assert proc.stderr.startswith("kvfs: error:") and expected in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert not (tmp_path / "m1").exists()


def test_a_data_dir_of_another_cluster_is_refused(tmp_path: Path) -> None:
    peer, client = free_ports(2)
    argv = ["raft", "serve", "--name", "m1", "--data-dir", str(tmp_path / "m1"),
            "--listen-peer", f"http://127.0.0.1:{peer}",
            "--listen-client", f"http://127.0.0.1:{client}",
            "--initial-cluster", f"m1=http://127.0.0.1:{peer}"]
    proc = subprocess.Popen([sys.executable, "-m", "kvfs.cli.main", *argv,
                             "--initial-cluster-token", "first"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "m1" / "IDENTITY").exists():
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    other = run_kvfs(*argv, "--initial-cluster-token", "second")
    assert other.returncode == 1
    assert other.stderr.startswith("kvfs: error:") and len(other.stderr.splitlines()) == 1
    assert "first" in other.stderr or "cluster" in other.stderr, other.stderr


def test_raft_status_shows_every_member_and_who_is_unreachable(cluster: Cluster) -> None:
    url = "raft://" + ",".join(f"127.0.0.1:{cluster.client[n]}" for n in NAMES)
    ids = {f"{member_id(n, TOKEN):x}" for n in NAMES}
    deadline = time.monotonic() + 30
    while True:
        proc = run_kvfs("raft", "status", url)
        assert proc.returncode == 0, proc.stderr
        if "none known" not in proc.stdout or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    lines = proc.stdout.splitlines()
    assert lines[0].split()[1] in ids, proc.stdout
    assert sum(" leader " in line for line in lines[1:]) == 1, proc.stdout
    assert len(lines) == 4 and all("lag" in line for line in lines[1:]), proc.stdout
    cluster.kill("m3")
    proc = run_kvfs("raft", "status", url)
    assert proc.returncode == 0, proc.stderr
    assert f"127.0.0.1:{cluster.client['m3']}: unreachable" in proc.stdout, proc.stdout
    bad = run_kvfs("raft", "status", "raft://nowhere")
    assert bad.returncode == 1 and bad.stderr.startswith("kvfs: error:"), bad.stderr
    assert len(bad.stderr.splitlines()) == 1, bad.stderr
