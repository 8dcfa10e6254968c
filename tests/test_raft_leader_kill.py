"""A mount writing and fsyncing files on a three-member Raft store while its leader is killed
with SIGKILL again and again: writes resume each time (the figure is printed), no
acknowledged file is lost or wrong, ``kvfs fsck`` is clean, and every killed member comes
back and catches up -- by a snapshot, since it stays down while the log is compacted past
what it holds (``--snapshot-count`` is small) -- to the same state as the others.

``KVFS_RAFT_KILLS`` sets how many leaders are killed (default 3; the closing run of the
Raft cluster work uses 10).
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import trio
from mounting import Mount, kvfs
from raft_cluster import RaftCluster, loopback_addresses, member_items, wait_leader

KILLS = int(os.environ.get("KVFS_RAFT_KILLS", "3"))
FILES_WHILE_DOWN = 40  # files written while a killed member is down: past a compaction


class FileWriter(threading.Thread):
    """Writes file after file (write, fsync, close) and records what was acknowledged."""

    def __init__(self, root: Path) -> None:
        super().__init__(daemon=True)
        self.root = root
        root.mkdir()
        self.acked: list[tuple[str, str, float]] = []  # (name, sha256, when acknowledged)
        self.errors: list[str] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.stopping.is_set():
            name, data = f"f{n:05d}", os.urandom(1000 + n % 5000)
            try:
                fd = os.open(self.root / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                try:
                    os.write(fd, data)
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as exc:
                self.errors.append(f"{name}: {exc}")
            else:
                self.acked.append((name, hashlib.sha256(data).hexdigest(), time.monotonic()))
            n += 1

    def wait_for(self, count: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while len(self.acked) < count:
            assert not self.errors, self.errors[:5]
            assert time.monotonic() < deadline, f"only {len(self.acked)} of {count} files"
            time.sleep(0.02)


def test_a_mount_keeps_writing_through_leader_kills(tmp_path: Path) -> None:
    with RaftCluster(tmp_path, "leader-kill", loopback_addresses(),
                     snapshot_count=20) as cluster:
        _run(cluster, tmp_path)


def _run(cluster: RaftCluster, tmp_path: Path) -> None:
    mount = None
    try:
        url = cluster.url()
        kvfs("format", url, "lk")
        mount = Mount(url, tmp_path / "mnt")
        writer = FileWriter(mount.mountpoint / "files")
        writer.start()
        resumed: list[float] = []
        for _ in range(KILLS):
            writer.wait_for(len(writer.acked) + 10)
            victim, _ = trio.run(wait_leader, cluster)
            cluster.kill(victim)
            killed_at = time.monotonic()
            acked_before = len(writer.acked)
            writer.wait_for(acked_before + 1)
            resumed.append(writer.acked[acked_before][2] - killed_at)
            writer.wait_for(acked_before + FILES_WHILE_DOWN)
            cluster.start(victim)
        writer.wait_for(len(writer.acked) + 10)
        writer.stopping.set()
        writer.join(60)
        assert not writer.errors, writer.errors[:5]
        for name, sha, _ in writer.acked:
            data = (writer.root / name).read_bytes()
            assert hashlib.sha256(data).hexdigest() == sha, f"{name} is wrong"
        mount.unmount()
        mount = None
        assert kvfs("fsck", url).returncode == 0
        print(f"{len(writer.acked)} files acknowledged; first file after each leader kill "
              f"took {[round(t, 2) for t in sorted(resumed)]} s")

        async def states() -> list[list[tuple[bytes, bytes, int, int]]]:
            engine = cluster.engine()
            try:
                revision = await engine.current_revision()
            finally:
                await engine.aclose()
            return [(await member_items(cluster, name, revision))[1]
                    for name in cluster.names]

        first, *others = trio.run(states)
        assert all(state == first for state in others), "members differ"
        installed = [name for name in cluster.names
                     if "installing the leader's snapshot" in cluster.log_tail(name, 10**7)]
        assert installed, "no restarted member caught up by a snapshot"
    finally:
        if mount is not None:
            mount.unmount()
