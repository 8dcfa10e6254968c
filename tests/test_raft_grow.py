"""Growing an embedded volume into a three-member Raft cluster, with no reformat and no
dump/load: a volume formatted and written through a real mount as an embedded store is
served by ``kvfs raft serve --data-dir VOLUME_DIR`` (its member ``default``, cluster token
taken from the directory), records its own addresses in the member table, takes two
members with ``kvfs raft member add`` (which catch up by snapshot: the log is compacted
every few entries, so the snapshot carries the values the first member keeps in files),
and keeps every file -- large ones included -- when its first member is killed.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from mounting import Mount
from mounting import kvfs as kvfs_cli
from test_raft_ops import Members, add_flags, caught_up, member_list, ok, refused


@pytest.fixture
def members(tmp_path: Path) -> Iterator[Members]:
    with Members(tmp_path, "unused") as m:  # the embedded volume brings its own token
        yield m


def write_tree(root: Path) -> dict[str, str]:
    """An /etc-like tree with one file of several blocks; returns path -> sha256."""
    files = {f"conf.d/site{i}.conf": f"server {{ listen {8000 + i}; }}\n".encode() * (i + 1)
             for i in range(20)}
    files["blob.bin"] = os.urandom(3 * 1024 * 1024 + 123)  # over the value-file threshold
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return {rel: hashlib.sha256(data).hexdigest() for rel, data in files.items()}


def tree_of(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in root.rglob("*") if p.is_file()}


def test_an_embedded_volume_grows_to_three_members(members: Members, tmp_path: Path) -> None:
    m = members
    volume = tmp_path / "m1"  # the volume directory is member m1's data directory
    kvfs_cli("format", str(volume), "grown")
    mount = Mount(str(volume), tmp_path / "mnt")
    try:
        expected = write_tree(mount.mountpoint)
    finally:
        mount.unmount()

    # Served as it is: member "default", the token from the directory.
    m.add_loopback("m1", "m2", "m3")
    m.start("m1", ["--name", "default", "--listen-peer", m.peer_url("m1"),
                   "--listen-client", f"http://{m.endpoint('m1')}",
                   "--initial-cluster", f"default={m.peer_url('m1')}"], snapshot_count=5)
    url = m.url("m1")
    deadline = time.monotonic() + 60  # it records its addresses, which it lacked
    while True:
        (me,) = member_list(m, "m1")["members"]
        if me["peer_url"] or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert (me["name"], me["peer_url"], me["client_url"]) == (
        "default", m.peer_url("m1"), m.endpoint("m1"))

    # Two members join, with the flags `member add` prints.
    flags = add_flags(ok("raft", "member", "add", url, "m2", "--peer-url", m.peer_url("m2"),
                         "--client-url", m.endpoint("m2"), "--learner"))
    assert flags[flags.index("--initial-cluster") + 1] == \
        f"default={m.peer_url('m1')},m2={m.peer_url('m2')}"
    m.start("m2", flags, snapshot_count=5)  # far behind a compacted log: a snapshot
    trio.run(caught_up, m, "m2", "m1")
    ok("raft", "member", "promote", url, "m2")
    m.start("m3", add_flags(ok("raft", "member", "add", url, "m3", "--peer-url",
                               m.peer_url("m3"), "--client-url", m.endpoint("m3"))),
            snapshot_count=5)
    trio.run(caught_up, m, "m3", "m1")
    assert sorted(x["name"] for x in member_list(m, "m2")["members"]) == ["default", "m2", "m3"]

    # The first member dies; the volume lives on in the two others, whole.
    m.kill("m1")
    raft_url = f"raft://{m.endpoint('m2')},{m.endpoint('m3')}/default?timeout=20"
    mount = Mount(raft_url, tmp_path / "mnt2")
    try:
        assert tree_of(mount.mountpoint) == expected
        (mount.mountpoint / "after").write_text("written on the grown cluster\n")
    finally:
        mount.unmount()
    assert kvfs_cli("fsck", raft_url).returncode == 0

    # The volume directory is a cluster member now: mounting it as embedded is refused.
    (tmp_path / "mnt3").mkdir()
    refused("mount", str(volume), str(tmp_path / "mnt3"), expect="raft://")
