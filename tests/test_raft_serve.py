"""``kvfs raft serve`` as real processes on loopback: a three-member cluster keeps every
acknowledged write while its leader is killed with SIGKILL again and again, members
converge to the same state, and bad configurations are refused with one line.

``KVFS_RAFT_KILLS`` sets how many leaders are killed (default 3; the closing run of the
Raft cluster work uses more).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from raft_cluster import (
    NAMES,
    Address,
    MemberProcesses,
    RaftCluster,
    loopback_addresses,
)

from kvfs.benchmarks.launch import free_ports
from kvfs.kv.api import KVEngine, Put
from kvfs.raftkv.member import member_id
from kvfs.volume import open_engine

KILLS = int(os.environ.get("KVFS_RAFT_KILLS", "3"))
TOKEN = "test-serve"


class Cluster(RaftCluster):
    """The serve tests' three members on loopback: 50 ms ticks, default elections (10
    ticks), a snapshot every 200 entries."""

    def __init__(self, base: Path) -> None:
        super().__init__(base, TOKEN, loopback_addresses(NAMES), tick_ms=50,
                         snapshot_count=200)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with Cluster(tmp_path) as c:
        yield c


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
    member = MemberProcesses(tmp_path, "first", {"m1": Address("127.0.0.1", peer, client)})
    flags = ["--name", "m1", "--listen-peer", f"http://127.0.0.1:{peer}",
             "--listen-client", f"http://127.0.0.1:{client}",
             "--initial-cluster", f"m1=http://127.0.0.1:{peer}"]
    with member:
        member.launch("m1", member.serve_argv("m1", *flags, "--initial-cluster-token",
                                              "first"), wait=False)
        deadline = time.monotonic() + 30
        while not (tmp_path / "m1" / "IDENTITY").exists():
            assert time.monotonic() < deadline and member.procs["m1"].poll() is None
            time.sleep(0.05)
    other = run_kvfs("raft", "serve", "--data-dir", str(tmp_path / "m1"), *flags,
                     "--initial-cluster-token", "second")
    assert other.returncode == 1
    assert other.stderr.startswith("kvfs: error:") and len(other.stderr.splitlines()) == 1
    assert "first" in other.stderr or "cluster" in other.stderr, other.stderr


def test_raft_status_shows_every_member_and_who_is_unreachable(cluster: Cluster) -> None:
    url = "raft://" + ",".join(cluster.endpoint(n) for n in NAMES)
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
    assert f"{cluster.endpoint('m3')}: unreachable" in proc.stdout, proc.stdout
    bad = run_kvfs("raft", "status", "raft://nowhere")
    assert bad.returncode == 1 and bad.stderr.startswith("kvfs: error:"), bad.stderr
    assert len(bad.stderr.splitlines()) == 1, bad.stderr
