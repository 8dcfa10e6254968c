"""``kvfs info``, ``stats``, ``config`` and ``destroy`` on real mounts, embedded and etcd,
and every bad input they must refuse with one line, exit 1 and nothing changed.

* embedded, blocks in a ``file`` bucket: info of a file (its blocks exist in the bucket
  under the names info gives), a symlink and a directory; stats while files are written;
  config and destroy refused while mounted (naming the mount); after unmounting, config
  shows and changes the history settings, and destroy removes the bucket's blocks and the
  store;
* etcd, blocks in an ``etcd`` bucket: info and stats (the watch's lag shows), config
  changes the settings under a live mount, destroy refused while the session lives (it is
  listed) and, once unmounted, leaves neither prefix any key;
* bad input: malformed URLs, unknown schemes, unformatted and newer-version volumes (a
  format record of version 99), a wrong UUID (another volume's), paths outside a mount,
  bad flag values.

About 30 s on the 2-core machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import msgpack
import pytest
import trio
from etcd_cluster import Member, etcd_procs, etcd_single, unique_prefix
from mounting import KVFS, Mount, kvfs

from kvfs.kv.api import Put
from kvfs.meta import keys
from kvfs.volume import open_engine

pytestmark = pytest.mark.mount

__all__ = ["etcd_procs", "etcd_single"]  # fixtures used by this module


def refused(*args: str, says: str) -> str:
    """Run ``kvfs ARGS``: exit 1 with one ``kvfs: error:`` line containing ``says``."""
    res = kvfs(*args, check=False)
    assert res.returncode == 1, f"kvfs {' '.join(args)}: exit {res.returncode}\n{res.stderr}"
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("kvfs: error: "), res.stderr
    assert says in lines[0], lines[0]
    assert res.stdout == ""
    return lines[0]


def info(path: Path) -> dict:  # type: ignore[type-arg]
    return dict(json.loads(kvfs("info", str(path), "--json").stdout))


def config(url: str, *flags: str) -> dict:  # type: ignore[type-arg]
    return dict(json.loads(kvfs("config", url, "--json", *flags).stdout))


def all_keys(url: str) -> list[bytes]:
    """Every key of the volume's keyspace (an etcd prefix)."""
    async def go() -> list[bytes]:
        kv = await open_engine(url)
        try:
            res = await kv.range(b"", b"\x00", keys_only=True)
            return [item.key for item in res.kvs]
        finally:
            await kv.aclose()
    return trio.run(go)


def put_raw(url: str, key: bytes, value: bytes) -> None:
    async def go() -> None:
        kv = await open_engine(url)
        try:
            await kv.commit([], [Put(key, value)])
        finally:
            await kv.aclose()
    trio.run(go)


def stats_while_writing(m: Mount, count: int = 3) -> list[dict]:  # type: ignore[type-arg]
    """``kvfs stats --json`` over ``count`` intervals while files are written and read."""
    proc = subprocess.Popen([*KVFS, "stats", str(m.mountpoint), "--json", "--interval",
                             "0.5", "--count", str(count)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    i = 0
    while proc.poll() is None:
        f = m.mountpoint / f"busy{i % 20}"
        f.write_bytes(os.urandom(20_000))
        f.read_bytes()
        i += 1
        time.sleep(0.01)
    out, err = proc.communicate()
    assert proc.returncode == 0, err
    views = [json.loads(line) for line in out.splitlines()]
    assert len(views) == count
    return views


def check_stats(views: list[dict]) -> None:  # type: ignore[type-arg]
    written = sum(v["written_bytes_per_s"] * v["interval"] for v in views)
    assert written > 0
    assert any("write" in v["fuse"] and v["fuse"]["write"]["per_s"] > 0 for v in views)
    assert any("commit" in v["engine"] for v in views)
    assert all(v["session_up"] and v["engine_reachable"] for v in views)
    for v in views:
        for r in [*v["fuse"].values(), *v["engine"].values()]:
            assert r["per_s"] > 0 and r["mean_ms"] >= 0
    busiest = max(views, key=lambda v: v["written_bytes_per_s"])
    print(f"stats: {busiest['written_bytes_per_s'] / 1024:.0f} KiB/s written, write mean "
          f"{busiest['fuse'].get('write', {}).get('mean_ms', 0):.3f} ms, commit mean "
          f"{busiest['engine'].get('commit', {}).get('mean_ms', 0):.3f} ms, watch lag "
          f"{'-' if busiest['watch_lag_ms'] is None else format(busiest['watch_lag_ms'], '.2f')}"
          " ms")


def check_file_info(i: dict, size: int, block_size: int) -> None:  # type: ignore[type-arg]
    assert i["attributes"]["type"] == "file" and i["attributes"]["size"] == size
    assert i["block_size"] == block_size
    slices = [s for c in i["chunks"] for s in c["slices"] if s["id"]]
    assert sum(s["len"] for s in slices) >= size
    blocks = [b for s in slices for b in s["blocks"]]
    assert len(blocks) == i["blocks"] >= -(-size // block_size)
    for s in slices:
        assert sum(int(b.rsplit("_", 1)[1]) for b in s["blocks"]) == s["size"]
    assert i["history"]["versions"] >= 1


# -- embedded ---------------------------------------------------------------------------------


def test_embedded(tmp_path: Path) -> None:
    store, bucket = tmp_path / "store", tmp_path / "bucket"
    url = str(store)
    kvfs("format", url, "emb", "--storage", "file", "--bucket", str(bucket),
         "--block-size", "64")
    uuid = config(url)["uuid"]
    m = Mount(url, tmp_path / "m", "metrics=off")
    try:
        root = m.mountpoint
        size = 200_000
        (root / "d").mkdir()
        (root / "d" / "f").write_bytes(os.urandom(size))
        os.symlink("d/f", root / "l")

        i = info(root / "d" / "f")
        assert i["inode"] == os.stat(root / "d" / "f").st_ino
        assert i["path"] == "/d/f"
        check_file_info(i, size, 64 * 1024)
        for s in i["chunks"][0]["slices"]:
            for b in s["blocks"]:
                assert (bucket / b).is_file(), f"block {b} is not in the bucket"
        assert i["block_store"].endswith(f"dir:{bucket})")
        human = kvfs("info", str(root / "d" / "f")).stdout
        assert "/d/f: inode" in human and "block chunks/" in human
        assert info(root / "l")["target"] == "d/f"
        d = info(root / "d")
        assert d["attributes"]["type"] == "directory" and "chunks" not in d
        assert info(root)["path"] == "/"
        refused("info", str(root / "d" / "missing"), says="/d/missing: No such file")
        refused("info", str(tmp_path), says="is not inside a kvfs mount")

        check_stats(stats_while_writing(m))
        human = kvfs("stats", str(root), "--count", "1", "--interval", "0.2").stdout
        assert "FUSE OPERATION" in human and "ENGINE CALL" in human
        refused("stats", str(root), "--interval", "0", says="invalid --interval")
        refused("stats", str(tmp_path), says="is not inside a kvfs mount")

        # The embedded store is held by its mount: name the mount.
        refused("config", url, says=f"is mounted at {root}")
        refused("config", url, "--history-days", "1", says=f"is mounted at {root}")
        refused("destroy", url, "whatever", "--yes", says=f"is mounted at {root}")
        assert (root / "d" / "f").stat().st_size == size
        m.unmount()
    finally:
        m.cleanup()

    shown = config(url)
    assert (shown["name"], shown["uuid"], shown["changed"]) == ("emb", uuid, False)
    assert shown["history"]["enabled"]
    changed = config(url, "--history", "/etc,/srv", "--history-versions", "3")
    assert changed["changed"] and changed["history"]["paths"] == ["/etc", "/srv"]
    assert changed["history"]["versions"] == 3
    assert changed["history"]["days"] == shown["history"]["days"]
    assert "history: /etc,/srv kept" in kvfs("config", url).stdout
    for flags, says in ((["--history-days", "-1"], "invalid --history-days"),
                        (["--history-versions", "0"], "invalid --history-versions"),
                        (["--history", "relative"], "relative")):
        refused("config", url, *flags, says=says)
    assert config(url)["history"] == changed["history"]  # nothing changed
    off = config(url, "--history-days", "0")
    assert not off["history"]["enabled"]

    refused("destroy", url, uuid, says="pass --yes")  # stdin is not a terminal
    other = tmp_path / "other"
    kvfs("format", str(other), "emb2")
    other_uuid = config(str(other))["uuid"]
    refused("destroy", url, other_uuid, "--yes", says="is not the UUID of volume emb")
    assert config(url)["uuid"] == uuid  # nothing destroyed
    assert any((bucket / "chunks").rglob("*_*_*"))

    out = kvfs("destroy", url, uuid, "--yes").stdout
    assert "destroyed volume emb" in out
    assert not (bucket / "chunks").exists() and bucket.is_dir()
    assert store.is_dir() and os.listdir(store) == []
    refused("config", url, says="no kvfs volume here")
    refused("destroy", url, uuid, "--yes", says="no kvfs volume here")
    assert config(str(other))["name"] == "emb2"  # the other volume is untouched


# -- etcd -------------------------------------------------------------------------------------


def test_etcd(etcd_single: Member, tmp_path: Path) -> None:
    url = f"etcd://{etcd_single.endpoint}/{unique_prefix('info')}"
    bucket = f"etcd://{etcd_single.endpoint}/{unique_prefix('infoblocks')}"
    kvfs("format", url, "etc", "--storage", "etcd", "--bucket", bucket, "--block-size", "256")
    uuid = config(url)["uuid"]
    m = Mount(url, tmp_path / "m", "metrics=off")
    try:
        root = m.mountpoint
        size = 600_000
        (root / "f").write_bytes(os.urandom(size))
        i = info(root / "f")
        check_file_info(i, size, 256 * 1024)
        assert "EtcdEngine" in i["block_store"] or "etcd" in i["block_store"]
        block_keys = set(all_keys(bucket))
        for s in i["chunks"][0]["slices"]:
            for b in s["blocks"]:
                assert keys.block(b) in block_keys, f"block {b} is not in the bucket"

        views = stats_while_writing(m, count=4)
        check_stats(views)
        assert any(v["watch_lag_ms"] is not None for v in views), "no watch lag measured"

        # Settings change under a live mount (it re-reads them within 60 s).
        assert config(url, "--history-days", "2")["history"]["days"] == 2
        before = all_keys(url)
        line = refused("destroy", url, uuid, "--yes", says="1 live session(s)")
        assert str(root) in line and f"pid {m.pid}" in line
        assert all_keys(url) == before  # nothing destroyed
        assert (root / "f").stat().st_size == size
        m.unmount()
    finally:
        m.cleanup()
    assert all_keys(bucket)
    out = kvfs("destroy", url, uuid, "--yes").stdout
    assert "destroyed volume etc" in out
    assert all_keys(url) == [] and all_keys(bucket) == []
    refused("config", url, says="not a formatted kvfs volume")
    refused("status", url, says="not a formatted kvfs volume")


# -- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize("url, says", [
    ("nope://host/x", "unsupported metadata URL scheme 'nope'"),
    ("etcd://", "etcd URL needs a volume prefix"),
    ("etcd://127.0.0.1:notaport/x", "etcd"),
    ("raft://", "raft"),
])
def test_malformed_urls(url: str, says: str) -> None:
    refused("config", url, says=says)
    refused("destroy", url, "00000000-0000-0000-0000-000000000000", "--yes", says=says)


def test_unformatted_and_newer_volumes(etcd_single: Member, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    for cmd in (["config", str(empty)], ["destroy", str(empty), "x", "--yes"]):
        refused(*cmd, says="no kvfs volume here")
    assert os.listdir(empty) == []
    fresh = f"etcd://{etcd_single.endpoint}/{unique_prefix('unformatted')}"
    refused("config", fresh, says="not a formatted kvfs volume")
    refused("destroy", fresh, "x", "--yes", says="not a formatted kvfs volume")
    assert all_keys(fresh) == []

    newer = f"etcd://{etcd_single.endpoint}/{unique_prefix('newer')}"
    kvfs("format", newer, "newer")
    record = msgpack.unpackb(_raw(newer, keys.SETTING))
    uuid = record["uuid"]
    record["version"] = 99
    put_raw(newer, keys.SETTING, msgpack.packb(record))
    before = all_keys(newer)
    refused("config", newer, says="volume format 99 is newer than this kvfs")
    refused("config", newer, "--history-days", "1", says="volume format 99 is newer")
    refused("destroy", newer, uuid, "--yes", says="volume format 99 is newer")
    assert all_keys(newer) == before
    assert msgpack.unpackb(_raw(newer, keys.SETTING))["version"] == 99


def _raw(url: str, key: bytes) -> bytes:
    async def go() -> bytes:
        kv = await open_engine(url)
        try:
            item = await kv.get(key)
            assert item is not None
            return item.value
        finally:
            await kv.aclose()
    return trio.run(go)
