"""The operational commands on ``raft://``: one three-member Raft cluster on loopback
(``kvfs raft serve`` processes, started once for the module), each test on a volume prefix
of its own, every command a real ``python -m kvfs.cli.main`` process and every mount a real
FUSE mount.

* a mount serves Prometheus metrics that ``promtool check metrics`` accepts and that count
  the operations done, labelled ``engine="raft"``;
* ``kvfs info`` of a file, ``kvfs stats --json`` for one interval while files are written,
  ``kvfs config`` shown and changed under a live mount, ``kvfs destroy`` refused while
  the volume is mounted, then done (no key left under the prefix);
* ``kvfs log``, ``diff`` and ``restore`` of a file;
* ``kvfs deploy`` of a small tree through one mount, a second mount sees it whole, and
  ``kvfs watch --once`` there checks and reloads it;
* the fault injection of tests/test_fsck_repair.py: a clean fsck, then a flipped block
  byte, a cut chunk record, a wrong nlink, a dangling entry, a gone session's hold and a
  leaked block, found by fsck, the metadata repaired by ``--repair``, and the gc report,
  ``--min-age 0`` and ``--delete``;
* ``kvfs dump`` of a volume and ``kvfs load`` into a fresh prefix of the same cluster, the
  two mounted and compared with ``diff -r --no-dereference``.

Members run with the RaftCluster defaults: a 100 ms tick and 10-tick elections (one
second or more), generous for a loaded two-core machine.  About 20 s on this machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from mounting import Mount, kvfs
from raft_cluster import RaftCluster, loopback_addresses, wait_leader
from test_fsck_repair import _fault_injection
from test_info_stats_config import (
    all_keys,
    check_file_info,
    check_stats,
    refused,
    stats_while_writing,
)
from test_mount_metrics import check_common, endpoint_port, file_work, parse, promtool_check, scrape

pytestmark = pytest.mark.mount

TOKEN = "raft-commands"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RaftCluster]:
    base = tmp_path_factory.mktemp("raft")
    with RaftCluster(base, TOKEN, loopback_addresses(("m1", "m2", "m3"))) as c:
        yield c


def url_of(cluster: RaftCluster, prefix: str) -> str:
    """A raft:// URL of every member and the volume prefix ``prefix``; its timeout covers an
    election on a loaded machine."""
    return cluster.url(prefix=prefix, timeout=60)


def wait_for(what: str, ready: Callable[[], bool], timeout: float = 30) -> None:
    """Poll ``ready()`` until it is true; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert time.monotonic() < deadline, f"{what}: not within {timeout:g} s"
        time.sleep(0.05)


def tree_of(root: Path) -> dict[str, bytes]:
    """Relative path -> content (files) or ``b"-> target"`` (symlinks), every entry."""
    out: dict[str, bytes] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = b"-> " + os.readlink(p).encode()
            elif p.is_file():
                out[rel] = p.read_bytes()
            else:
                out[rel] = b"<dir>"
    return out


def test_metrics(cluster: RaftCluster, tmp_path: Path) -> None:
    url = url_of(cluster, "metrics")
    kvfs("format", url, "rmetrics")
    m = Mount(url, tmp_path / "m")  # metrics on by default, on a loopback port
    try:
        size = 300_000
        file_work(m.mountpoint, size)
        text = scrape(endpoint_port(m))
        promtool_check(text)
        check_common(parse(text), size, "rmetrics", "raft")
        m.unmount()
    finally:
        m.cleanup()


def test_info_stats_config_destroy(cluster: RaftCluster, tmp_path: Path) -> None:
    url = url_of(cluster, "info")
    kvfs("format", url, "rinfo", "--block-size", "256")
    uuid = json.loads(kvfs("config", url, "--json").stdout)["uuid"]
    m = Mount(url, tmp_path / "m", "metrics=off")
    try:
        root = m.mountpoint
        size = 600_000
        (root / "f").write_bytes(os.urandom(size))
        i = json.loads(kvfs("info", str(root / "f"), "--json").stdout)
        check_file_info(i, size, 256 * 1024)

        views = stats_while_writing(m, count=1)
        check_stats(views)

        assert "history:" in kvfs("config", url).stdout
        changed = json.loads(kvfs("config", url, "--json", "--history-days", "2").stdout)
        assert changed["history"]["days"] == 2
        assert json.loads(kvfs("config", url, "--json").stdout)["history"]["days"] == 2

        before = all_keys(url)
        line = refused("destroy", url, uuid, "--yes", says="1 live session(s)")
        assert str(root) in line, line
        assert all_keys(url) == before  # nothing destroyed
        assert (root / "f").stat().st_size == size
        m.unmount()
    finally:
        m.cleanup()
    out = kvfs("destroy", url, uuid, "--yes").stdout
    assert "destroyed volume rinfo" in out, out
    assert all_keys(url) == []
    refused("config", url, says="not a formatted kvfs volume")


def test_log_diff_restore(cluster: RaftCluster, tmp_path: Path) -> None:
    url = url_of(cluster, "history")
    kvfs("format", url, "rhist", "--history-versions", "100")
    m = Mount(url, tmp_path / "m", "metrics=off")
    try:
        f = m.mountpoint / "site.conf"
        f.write_text("listen 80;\nroot /srv;\n")
        f.write_text("listen 8080;\nroot /srv;\n")
        log = json.loads(kvfs("log", "--json", str(f)).stdout)
        assert log["path"] == "/site.conf" and len(log["versions"]) == 2, log
        diff = kvfs("diff", str(f)).stdout
        assert "-listen 80;" in diff and "+listen 8080;" in diff, diff
        first = log["versions"][0]["revision"]
        kvfs("restore", str(f), "--rev", str(first))
        assert f.read_text() == "listen 80;\nroot /srv;\n"
        kinds = [line.split()[5] for line in kvfs("log", str(f)).stdout.splitlines()[1:]]
        assert len(kinds) == 3, kinds  # the restore is a version too
        m.unmount()
    finally:
        m.cleanup()


def test_deploy_and_watch(cluster: RaftCluster, tmp_path: Path) -> None:
    url = url_of(cluster, "deploy")
    kvfs("format", url, "rdeploy")
    src = tmp_path / "src"
    (src / "conf.d").mkdir(parents=True)
    for n in range(12):
        (src / "conf.d" / f"site{n}.conf").write_text(f"server {{ listen {8000 + n}; }}\n")
    (src / "nginx.conf").write_bytes(os.urandom(200_000))
    os.symlink("conf.d/site0.conf", src / "default")
    expected = tree_of(src)

    a = Mount(url, tmp_path / "a", "metrics=off")
    b = Mount(url, tmp_path / "b", "metrics=off")
    try:
        (a.mountpoint / "etc").mkdir()
        (a.mountpoint / "etc" / "nginx").mkdir()
        (a.mountpoint / "etc" / "nginx" / "old.conf").write_text("old\n")
        wait_for("b sees the old tree",
                 lambda: (b.mountpoint / "etc" / "nginx" / "old.conf").exists())
        out = kvfs("deploy", str(src), str(a.mountpoint / "etc" / "nginx"),
                   "--grace", "1.5").stdout
        assert out.startswith(f"deployed {src} to {a.mountpoint}/etc/nginx: 14 files"), out
        target = b.mountpoint / "etc" / "nginx"
        wait_for("b sees the new tree", lambda: not (target / "old.conf").exists())
        assert tree_of(target) == expected
        assert tree_of(a.mountpoint / "etc" / "nginx") == expected

        reloaded = tmp_path / "reloaded"
        res = kvfs("watch", str(target), "--check", f"test -f {target}/nginx.conf",
                   "--reload", f"touch {reloaded}", "--once", check=False)
        assert res.returncode == 0, res.stderr
        assert reloaded.exists()
        for m in (a, b):
            m.unmount()
    finally:
        for m in (b, a):
            m.cleanup()


async def test_fsck_repair_and_gc(cluster: RaftCluster, tmp_path: Path) -> None:
    await _fault_injection(url_of(cluster, "fsck"), tmp_path)


def test_dump_and_load(cluster: RaftCluster, tmp_path: Path) -> None:
    url, copy = url_of(cluster, "dumpsrc"), url_of(cluster, "dumpcopy")
    kvfs("format", url, "rdump")
    m = Mount(url, tmp_path / "src", "metrics=off")
    try:
        root = m.mountpoint
        (root / "d").mkdir()
        for n in range(40):
            (root / "d" / f"f{n}").write_bytes(os.urandom(n * 97))
        (root / "big").write_bytes(os.urandom(1_500_000))  # several blocks
        os.link(root / "big", root / "big-link")
        os.symlink("d/f3", root / "sym")
        os.setxattr(root / "big", "user.colour", b"blue")
        os.chmod(root / "d" / "f5", 0o600)
        m.unmount()
    finally:
        m.cleanup()
    dump = tmp_path / "vol.dump"
    kvfs("dump", url, str(dump), "--with-data")
    kvfs("load", copy, str(dump))
    kvfs("fsck", copy)
    a = Mount(url, tmp_path / "a", "metrics=off")
    b = Mount(copy, tmp_path / "b", "metrics=off")
    try:
        res = subprocess.run(["diff", "-r", "--no-dereference", str(a.mountpoint),
                              str(b.mountpoint)], capture_output=True, text=True)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr
        assert os.getxattr(b.mountpoint / "big", "user.colour") == b"blue"
        assert os.stat(b.mountpoint / "big").st_nlink == 2
        assert os.stat(b.mountpoint / "d" / "f5").st_mode & 0o777 == 0o600
        for mount in (a, b):
            mount.unmount()
    finally:
        for mount in (b, a):
            mount.cleanup()
    print(f"dump of a raft:// volume: {dump.stat().st_size} bytes")


async def test_cluster_still_has_a_leader(cluster: RaftCluster) -> None:
    """The members outlived every command above (a command must never take one down)."""
    name, _ = await wait_leader(cluster)
    assert name in cluster.names
