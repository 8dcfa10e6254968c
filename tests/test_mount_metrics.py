"""Every mount serves Prometheus metrics: real mounts, scraped over HTTP, checked by promtool.

A mount of an embedded volume and two mounts of one etcd volume do file operations; their
endpoints are found from the mount's log and checked against the sockets the daemon
listens on, scraped, parsed, and run through ``promtool check metrics`` (Debian's
``prometheus`` package; the test fails when it is missing).  The counters must show the
operations done, the bytes written and read, engine commits, the watch on etcd, the volume
and a live session.  Also: two mounts on one host listen on two ports; a taken port moves
the endpoint up; ``-o metrics=off`` listens nowhere; a bad ``-o metrics=`` value, or an
address that cannot be bound, is one line and exit 1, with nothing mounted.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from etcd_cluster import Member, etcd_procs, etcd_single, unique_prefix
from mounting import KVFS, Mount, is_mounted, kvfs
from prometheus_client.parser import text_string_to_metric_families
from waiting import listening_ports

from kvfs.fuse.metrics import PORT_TRIES

pytestmark = pytest.mark.mount

__all__ = ["etcd_procs", "etcd_single"]  # fixtures used by this module

_ENDPOINT = re.compile(r"metrics on http://127\.0\.0\.1:(\d+)/metrics")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


# -- helpers ---------------------------------------------------------------------------------


def endpoint_port(m: Mount) -> int:
    """The metrics port ``m`` logged, checked against what its daemon listens on."""
    found = _ENDPOINT.findall(m.log_path.read_text())
    assert len(found) == 1, f"no (single) metrics endpoint logged: {m.log_path.read_text()}"
    port = int(found[0])
    assert port in listening_ports(m.pid), f"daemon does not listen on logged port {port}"
    return port


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return str(resp.read().decode())


def promtool_check(text: str) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: install Debian's prometheus package (install.sh)"
    res = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, f"promtool check metrics:\n{res.stdout}{res.stderr}"
    assert not (res.stdout + res.stderr).strip(), res.stdout + res.stderr  # no lint either


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name`` over every sample whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def file_work(root: Path, size: int) -> None:
    """Operations of many kinds: the ones the embedded and etcd tests then look for."""
    (root / "d").mkdir()
    data = os.urandom(size)
    (root / "d" / "f").write_bytes(data)
    assert (root / "d" / "f").read_bytes() == data
    os.rename(root / "d" / "f", root / "d" / "g")
    os.symlink("g", root / "d" / "link")
    assert sorted(os.listdir(root / "d")) == ["g", "link"]
    try:
        os.getxattr(root / "d" / "g", "user.none")
        raise AssertionError("getxattr of a missing attribute succeeded")
    except OSError as e:
        assert e.errno == errno.ENODATA
    assert not (root / "d" / "missing").exists()
    os.unlink(root / "d" / "link")
    os.statvfs(root)


def check_common(s: Samples, size: int, name: str, engine: str) -> None:
    for op in ("mkdir", "create", "write", "flush", "release", "open", "read", "rename",
               "symlink", "readdir", "getxattr", "unlink", "lookup", "statfs"):
        assert value(s, "kvfs_fuse_ops_total", op=op) >= 1, f"no {op} counted"
        assert value(s, "kvfs_fuse_op_duration_seconds_count", op=op) == \
            value(s, "kvfs_fuse_ops_total", op=op)
    assert value(s, "kvfs_fuse_errors_total", op="getxattr", errno="ENODATA") >= 1
    assert value(s, "kvfs_written_bytes_total") >= size
    assert value(s, "kvfs_read_bytes_total") >= size
    assert value(s, "kvfs_engine_commits_total") >= 5
    assert total(s, "kvfs_engine_request_duration_seconds_count", call="commit") >= 5
    assert value(s, "kvfs_session_up") == 1
    assert value(s, "kvfs_engine_reachable") == 1
    assert value(s, "kvfs_used_bytes") >= size
    assert value(s, "kvfs_used_inodes") >= 2
    assert value(s, "kvfs_free_bytes") > 0
    info = [ls for (n, ls), v in s.items() if n == "kvfs_volume_info" and v == 1]
    assert len(info) == 1 and dict(info[0])["name"] == name
    assert dict(info[0])["engine"] == engine
    assert value(s, "kvfs_block_cache_hits_total") + \
        value(s, "kvfs_block_cache_misses_total") >= 1
    assert value(s, "kvfs_block_store_errors_total") == 0


@contextmanager
def mounted(url: str, base: Path, *names: str, options: tuple[str, ...] = ()
            ) -> Iterator[list[Mount]]:
    ms: list[Mount] = []
    try:
        for n in names:
            ms.append(Mount(url, base / n, *options))
        yield ms
        for m in ms:
            m.unmount()
    finally:
        for m in reversed(ms):
            m.cleanup()


# -- the tests -------------------------------------------------------------------------------


def test_embedded_mount_serves_metrics(tmp_path: Path) -> None:
    store = tmp_path / "store"
    kvfs("format", str(store), "metrics")
    size = 300_000
    with mounted(str(store), tmp_path, "m") as (m,):
        port = endpoint_port(m)
        file_work(m.mountpoint, size)
        # Read again with the kernel's pages dropped: the block cache answers.
        os.posix_fadvise(fd := os.open(m.mountpoint / "d" / "g", os.O_RDONLY), 0, 0,
                         os.POSIX_FADV_DONTNEED)
        os.close(fd)
        (m.mountpoint / "d" / "g").read_bytes()
        text = scrape(port)
        promtool_check(text)
        s = parse(text)
        print(f"embedded mount: port {port}, {len(text)} bytes, {len(s)} samples")
        check_common(s, size, "metrics", "embedded")
        assert value(s, "kvfs_engine_conflicts_total") == 0  # one mount, nobody to race
        # Counters only grow.
        (m.mountpoint / "more").write_bytes(b"x" * 1000)
        later = parse(scrape(port))
        assert value(later, "kvfs_written_bytes_total") == \
            value(s, "kvfs_written_bytes_total") + 1000
        assert value(later, "kvfs_fuse_ops_total", op="create") == \
            value(s, "kvfs_fuse_ops_total", op="create") + 1


def test_etcd_mounts_serve_metrics(etcd_single: Member, tmp_path: Path) -> None:
    url = f"etcd://{etcd_single.endpoint}/{unique_prefix('metrics')}"
    kvfs("format", url, "emetrics")
    size = 200_000
    with mounted(url, tmp_path, "a", "b") as (a, b):
        port_a, port_b = endpoint_port(a), endpoint_port(b)
        assert port_a != port_b  # two mounts on one host: two ports
        file_work(a.mountpoint, size)
        assert (b.mountpoint / "d" / "g").stat().st_size == size
        assert len((b.mountpoint / "d" / "g").read_bytes()) == size
        # A's own commits come back through its watch; wait for the watch to time some.
        # A commit whose event beats its answer is not timed, and under load every one of
        # file_work's may, so A goes on committing (a chmod) until one is timed.
        deadline = time.monotonic() + 30
        mode = 0o644
        while True:
            text_a = scrape(port_a)
            s_a = parse(text_a)
            if value(s_a, "kvfs_watch_lag_seconds_count") > 0:
                break
            assert time.monotonic() < deadline, "the watch timed none of A's commits"
            mode ^= 0o020
            os.chmod(a.mountpoint / "d" / "g", mode)
            time.sleep(0.1)
        promtool_check(text_a)
        check_common(s_a, size, "emetrics", "etcd")
        lag = value(s_a, "kvfs_watch_lag_seconds_sum") / value(s_a,
                                                                "kvfs_watch_lag_seconds_count")
        print(f"etcd mount A: port {port_a}, watch lag mean {lag * 1000:.2f} ms over "
              f"{value(s_a, 'kvfs_watch_lag_seconds_count'):.0f} commits; engine commit "
              f"mean {1000 * value(s_a, 'kvfs_engine_request_duration_seconds_sum', call='commit') / value(s_a, 'kvfs_engine_request_duration_seconds_count', call='commit'):.2f} ms")  # noqa: E501
        text_b = scrape(port_b)
        promtool_check(text_b)
        s_b = parse(text_b)
        print(f"etcd mount B: port {port_b}")
        assert value(s_b, "kvfs_watch_events_total") >= 1  # A's changes reached B
        assert value(s_b, "kvfs_read_bytes_total") >= size
        assert value(s_b, "kvfs_fuse_ops_total", op="lookup") >= 1
        assert value(s_b, "kvfs_session_up") == 1


def test_own_changes_leave_the_kernels_caches_alone(etcd_single: Member,
                                                   tmp_path: Path) -> None:
    """What a mount created it can stat without asking its daemon: its own changes come
    back through its watch -- often before the commit's answer -- and must not be taken
    for another mount's, which would drop the kernel's cached entries and attributes."""
    url = f"etcd://{etcd_single.endpoint}/{unique_prefix('ownchg')}"
    kvfs("format", url, "ownchg")
    with mounted(url, tmp_path, "a", "b") as (a, _):
        port = endpoint_port(a)
        d = a.mountpoint / "d"
        d.mkdir()
        names = [d / f"f{i}" for i in range(300)]
        for p in names:
            os.close(os.open(p, os.O_CREAT | os.O_WRONLY, 0o644))
        os.rename(names[0], d / "renamed")
        os.unlink(names[1])
        kept = names[2:]
        # The kernel itself drops the attributes of a directory it changed and of a
        # renamed inode (their times changed): those it asks for again, once.
        d.stat()
        (d / "renamed").stat()
        before = parse(scrape(port))
        for p in kept:
            p.stat()
        after = parse(scrape(port))
        for op in ("lookup", "getattr"):
            asked = value(after, "kvfs_fuse_ops_total", op=op) - \
                value(before, "kvfs_fuse_ops_total", op=op)
            assert asked == 0, f"{asked:.0f} {op} requests for {len(kept)} files just made"


def test_taken_port_moves_up(tmp_path: Path) -> None:
    store = tmp_path / "store"
    kvfs("format", str(store), "taken")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with mounted(str(store), tmp_path, "m", options=(f"metrics=127.0.0.1:{port}",)) as (m,):
            used = endpoint_port(m)
            assert port < used <= port + PORT_TRIES
            assert f"(127.0.0.1:{port} was taken)" in m.log_path.read_text()
            promtool_check(scrape(used))


def test_metrics_off_listens_nowhere(tmp_path: Path) -> None:
    store = tmp_path / "store"
    kvfs("format", str(store), "off")
    with mounted(str(store), tmp_path, "m", options=("metrics=off",)) as (m,):
        (m.mountpoint / "f").write_bytes(b"data")
        assert listening_ports(m.pid) == set()
        assert "metrics on" not in m.log_path.read_text()


@pytest.mark.parametrize("option, message", [
    ("metrics=nonsense", "option metrics must look like HOST:PORT or off, not 'nonsense'"),
    ("metrics=", "option metrics must look like HOST:PORT or off, not ''"),
    ("metrics=127.0.0.1:70000", "option metrics must look like HOST:PORT or off"),
    ("metrics=:9567", "option metrics must look like HOST:PORT or off"),
    # A documentation address (RFC 5737), not this host's: it cannot be bound.
    ("metrics=192.0.2.1:9567", "option metrics=192.0.2.1:9567: cannot listen"),
])
def test_bad_metrics_option_is_one_line(tmp_path: Path, option: str, message: str) -> None:
    store = tmp_path / "store"
    kvfs("format", str(store), "bad")
    mp = tmp_path / "m"
    mp.mkdir()
    for background in ((), ("-d",)):
        res = subprocess.run([*KVFS, "mount", *background, "-o", option, str(store), str(mp)],
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 1, res
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"kvfs: error: {message}"), res.stderr
        assert not is_mounted(mp)
