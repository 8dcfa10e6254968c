"""``kvfs raft serve --listen-metrics``: the health and Prometheus metrics port of a Raft
store member, on real processes on loopback.

A three-member cluster takes writes through ``raft://``; every member's ``/health`` answers
200 and its ``/metrics`` parses as the Prometheus text format with the expected names
(fsync histogram counted, commit index past the writes, exactly one leader).  With two
members stopped, the survivor's ``/health`` turns 503.  ``--listen-metrics off`` listens on
nothing beyond the peer and client ports, the default address is skipped with a warning
when busy, and a bad or busy ``--listen-metrics`` is one line and a non-zero exit.
"""

from __future__ import annotations

import json
import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from raft_cluster import NAMES, MemberProcesses, loopback_addresses
from test_raft_serve import Cluster, run_kvfs
from waiting import listening_ports

from kvfs.benchmarks.launch import free_ports
from kvfs.kv.api import Put
from kvfs.raftkv.httpserver import serve_http
from kvfs.raftkv.metrics import DEFAULT_LISTEN_METRICS
from kvfs.volume import open_engine

WRITES = 30

EXPECTED = (
    "kvfs_raft_wal_fsync_duration_seconds_bucket",
    "kvfs_raft_wal_fsync_duration_seconds_count",
    "kvfs_raft_snapshot_save_duration_seconds_count",
    "kvfs_raft_commit_duration_seconds_bucket",
    "kvfs_raft_commit_duration_seconds_sum",
    "kvfs_raft_leader_changes_seen_total",
    "kvfs_raft_has_leader",
    "kvfs_raft_is_leader",
    "kvfs_raft_proposals_committed",
    "kvfs_raft_proposals_applied",
    "kvfs_raft_proposals_pending",
    "kvfs_raft_proposals_failed_total",
    "kvfs_raft_term",
    "kvfs_raft_commit_index",
    "kvfs_raft_applied_index",
    "kvfs_raft_state_size_bytes",
    "kvfs_raft_quota_bytes",
    "kvfs_raft_peer_messages_sent_total",
    "kvfs_raft_peer_messages_received_total",
)


class MetricsCluster(Cluster):
    """The serve tests' cluster, each member with a metrics port."""

    def __init__(self, base: Path) -> None:
        super().__init__(base)
        self.metrics = dict(zip(NAMES, free_ports(3), strict=True))

    def argv(self, name: str) -> list[str]:
        return [*super().argv(name), "--listen-metrics", f"127.0.0.1:{self.metrics[name]}"]

    def get(self, name: str, path: str) -> tuple[int, str]:
        return http_get(self.metrics[name], path)


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def parse(text: str) -> dict[str, float]:
    """Prometheus text format -> {"name{labels}": value}, checking every line's shape."""
    samples: dict[str, float] = {}
    typed: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("counter", "gauge", "histogram"), line
            assert (kind == "counter") == name.endswith("_total"), line
            typed.add(name)
            continue
        if line.startswith("# HELP "):
            continue
        m = re.fullmatch(r'([a-z_]+)(\{[a-z]+="[^"]*"\})? (\S+)', line)
        assert m, f"not a sample line: {line!r}"
        base = re.sub(r"_(bucket|sum|count)$", "", m.group(1))
        assert m.group(1) in typed or base in typed, f"sample without a TYPE: {line!r}"
        samples[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return samples


def value(samples: dict[str, float], name: str) -> float:
    """A sample's value, or the sum over its labelled samples."""
    if name in samples:
        return samples[name]
    labelled = [v for k, v in samples.items() if k.startswith(name + "{")]
    assert labelled, f"{name} missing"
    return sum(labelled)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[MetricsCluster]:
    with MetricsCluster(tmp_path) as c:
        yield c


def wait_for(status: int, cluster: MetricsCluster, name: str, timeout: float = 60
             ) -> tuple[float, str]:
    """Poll ``name``'s /health until it answers ``status``; (seconds taken, body)."""
    started = time.monotonic()
    while True:
        code, body = cluster.get(name, "/health")
        if code == status:
            return time.monotonic() - started, body
        assert time.monotonic() - started < timeout, f"{name} /health stays {code}: {body}"
        time.sleep(0.1)


async def test_health_and_metrics_of_a_cluster_and_of_a_survivor(
        cluster: MetricsCluster) -> None:
    kv = await open_engine(cluster.url())
    try:
        for i in range(WRITES):
            assert (await kv.commit([], [Put(b"k%03d" % i, b"v" * 100)])).succeeded
    finally:
        await kv.aclose()
    for name in NAMES:
        _, body = wait_for(200, cluster, name)
        assert json.loads(body) == {"health": "true"}
    scraped = {}
    for name in NAMES:
        code, text = cluster.get(name, "/metrics")
        assert code == 200
        samples = parse(text)
        for expected in EXPECTED:
            value(samples, expected)  # present
        assert samples['kvfs_raft_wal_fsync_duration_seconds_bucket{le="+Inf"}'] == \
            samples["kvfs_raft_wal_fsync_duration_seconds_count"] > 0
        assert samples["kvfs_raft_commit_index"] >= WRITES
        assert samples["kvfs_raft_applied_index"] <= samples["kvfs_raft_commit_index"]
        assert samples["kvfs_raft_has_leader"] == 1
        assert samples["kvfs_raft_term"] >= 1
        assert samples["kvfs_raft_proposals_pending"] == 0
        assert samples["kvfs_raft_quota_bytes"] == 2 << 30
        assert value(samples, "kvfs_raft_peer_messages_sent_total") > 0
        assert samples["kvfs_raft_leader_changes_seen_total"] >= 1
        scraped[name] = samples
    assert sum(s["kvfs_raft_is_leader"] for s in scraped.values()) == 1
    # Every acknowledged write was proposed through some member, and timed there.
    assert sum(s["kvfs_raft_commit_duration_seconds_count"] for s in scraped.values()) >= WRITES
    # Alike on every member; the keys carry the volume's prefix besides their 4 bytes.
    sizes = {s["kvfs_raft_state_size_bytes"] for s in scraped.values()}
    assert len(sizes) == 1 and sizes.pop() >= WRITES * (4 + 100), sizes
    for name, samples in scraped.items():
        syncs = samples["kvfs_raft_wal_fsync_duration_seconds_count"]
        mean = samples["kvfs_raft_wal_fsync_duration_seconds_sum"] / syncs
        print(f"{name}: {syncs:.0f} synced disk saves, mean {1000 * mean:.2f} ms")
    code, _ = cluster.get(NAMES[0], "/nothing")
    assert code == 404

    # The majority goes: the survivor soon knows no leader, and says so.
    survivor = NAMES[2]
    for name in NAMES[:2]:
        cluster.kill(name)
    took, body = wait_for(503, cluster, survivor)
    assert json.loads(body)["health"] == "false" and "leader" in json.loads(body)["reason"]
    code, text = cluster.get(survivor, "/metrics")
    assert code == 200 and parse(text)["kvfs_raft_has_leader"] == 0
    print(f"/health turned 503 {took:.1f} s after the majority was killed")


def one_member(tmp_path: Path, *extra: str) -> tuple[MemberProcesses, list[str]]:
    """Member m1 of a cluster of its own under ``tmp_path`` on loopback, not started, and
    its command line (with ``extra`` flags)."""
    member = MemberProcesses(tmp_path, "t", loopback_addresses(("m1",)))
    argv = member.serve_argv("m1", "--name", "m1", "--listen-peer", member.peer_url("m1"),
                             "--listen-client", f"http://{member.endpoint('m1')}",
                             "--initial-cluster", f"m1={member.peer_url('m1')}",
                             "--initial-cluster-token", member.token, *extra)
    return member, argv


def own_ports(member: MemberProcesses) -> set[int]:
    """The peer and client ports of ``one_member``'s m1: all it may listen on."""
    a = member.addresses["m1"]
    return {a.peer_port, a.client_port}


def test_listen_metrics_off_listens_on_nothing_more(tmp_path: Path) -> None:
    member, argv = one_member(tmp_path, "--listen-metrics", "off")
    with member:
        member.launch("m1", argv)
        assert listening_ports(member.procs["m1"].pid) == own_ports(member)


def test_a_busy_default_metrics_address_is_skipped_with_a_warning(tmp_path: Path) -> None:
    host, port = DEFAULT_LISTEN_METRICS.rsplit(":", 1)
    holder = socket.socket()
    try:
        holder.bind((host, int(port)))
        holder.listen()
    except OSError:
        pass  # already busy, which is what this test needs
    try:
        member, argv = one_member(tmp_path)
        with member:
            member.launch("m1", argv)
            assert listening_ports(member.procs["m1"].pid) == own_ports(member)
        assert "no health and metrics port" in (tmp_path / "m1.log").read_text()
    finally:
        holder.close()


def test_bad_or_busy_listen_metrics_is_one_line(tmp_path: Path) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        cases = {"nonsense": "HOST:PORT", "127.0.0.1:99999": "HOST:PORT",
                 "127.0.0.1:": "HOST:PORT",
                 f"127.0.0.1:{busy.getsockname()[1]}": "--listen-metrics"}
        for address, expected in cases.items():
            _, argv = one_member(tmp_path, "--listen-metrics", address)
            proc = run_kvfs(*argv[3:])
            assert proc.returncode == 1, proc.stderr
            assert proc.stderr.startswith("kvfs: error:") and expected in proc.stderr, \
                proc.stderr
            assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    finally:
        busy.close()
    bad_quota = run_kvfs(*one_member(tmp_path, "--quota-bytes", "-1")[1][3:])
    assert bad_quota.returncode == 1 and "--quota-bytes" in bad_quota.stderr, bad_quota.stderr
    assert len(bad_quota.stderr.strip().splitlines()) == 1


async def test_the_http_server_answers_only_well_formed_gets() -> None:
    """The port's HTTP server on its own: a silent client holds up nobody, other methods,
    garbage and unknown paths get their status, a failing route is a 500."""
    def boom() -> tuple[int, str, bytes]:
        raise RuntimeError("route failed")

    routes = {"/ok": lambda: (200, "text/plain", b"fine\n"), "/boom": boom}
    async with trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = await nursery.start(serve_http, listeners, routes)

        async def ask(request: bytes) -> bytes:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                await stream.send_all(request)
                answer = b""
                while chunk := await stream.receive_some(65536):
                    answer += chunk
                return answer

        silent = await trio.open_tcp_stream("127.0.0.1", port)  # sends nothing
        ok = await ask(b"GET /ok?x=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert ok.startswith(b"HTTP/1.1 200 OK\r\n") and ok.endswith(b"\r\n\r\nfine\n")
        assert b"Content-Length: 5\r\n" in ok
        head = await ask(b"HEAD /ok HTTP/1.0\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and head.endswith(b"\r\n\r\n")
        assert (await ask(b"POST /ok HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 405")
        assert (await ask(b"GET /no HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 404")
        assert (await ask(b"garbage\r\n\r\n")).startswith(b"HTTP/1.1 400")
        try:  # a 400, or a reset: the server closes with the rest unread
            assert (await ask(b"GET /" + b"x" * 20000)).startswith(b"HTTP/1.1 400")
        except trio.BrokenResourceError:
            pass
        assert (await ask(b"GET /boom HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 500")
        await silent.aclose()
        nursery.cancel_scope.cancel()
