"""``kvfs dump`` and ``kvfs load``: a tree of real files carried embedded → etcd → raft://
byte for byte, damaged dump files refused with their offset, and bad input refused with
one line and nothing changed.

The round trip builds ``KVFS_DUMP_FILES`` small files (default 2,000, so the suite stays
short; the acceptance run is ``KVFS_DUMP_FILES=10000``) through a mount of
an embedded volume -- sixteen writers side by side, so the store's group commit keeps it
to about half a minute -- plus hard links, symlinks, a FIFO, xattrs, owners, modes and
times; dumps it with its data, loads it into etcd, dumps that, loads it into a one-member
``kvfs raft serve``, mounts the result beside the source and compares them with
``diff -r --no-dereference`` and a walk of every attribute but atime (inode numbers
included: a load keeps them).  Timings are printed (``pytest -s``); with 10,000 files the
round trip takes about 2.5 minutes here, most of it the two walks through FUSE.
Bigger runs: ``KVFS_DUMP_FILES=100000 pytest tests/test_dump_load.py``.

The 1 GiB memory figure is measured by hand (docs/operations.md, "Dump and load").
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from etcd_cluster import Member, etcd_procs, etcd_single, unique_prefix
from mounting import Mount, fsck, kvfs
from raft_cluster import RaftCluster, loopback_addresses

from kvfs.dump.dump import POLICY, segments
from kvfs.dump.format import MAGIC
from kvfs.meta import keys

__all__ = ["etcd_procs", "etcd_single"]  # fixtures used by name

FILES = int(os.environ.get("KVFS_DUMP_FILES", "2000"))
WRITERS = 16

_WRITER = """
import os, sys
top, first, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(first, first + count):
    with open(os.path.join(top, f"f{i}"), "wb") as f:
        f.write(b"%d\\n" % i * (1 + i % 7))
"""


def _build_tree(root: Path) -> None:
    """FILES small files in WRITERS directories, and one of every kind of thing a dump
    must carry."""
    per = -(-FILES // WRITERS)
    procs = []
    for w in range(WRITERS):
        d = root / f"w{w}"
        d.mkdir()
        first, count = w * per, max(0, min(per, FILES - w * per))
        procs.append(subprocess.Popen([sys.executable, "-c", _WRITER, str(d), str(first),
                                       str(count)]))
    for p in procs:
        assert p.wait() == 0
    extra = root / "extra"
    extra.mkdir(mode=0o750)
    big = extra / "big"
    big.write_bytes(os.urandom(3 << 20))  # several blocks
    (extra / "sparse").write_bytes(b"")
    with open(extra / "sparse", "r+b") as f:
        f.seek(5 << 20)
        f.write(b"end")
    os.link(big, extra / "big-link")
    os.link(root / "w0" / "f0", extra / "f0-link")
    os.symlink("big", extra / "sym")
    os.symlink("/nowhere/at/all", extra / "dangling")
    os.mkfifo(extra / "fifo", 0o640)
    os.setxattr(big, "user.colour", b"blue")
    os.setxattr(extra, "user.empty", b"")
    os.setxattr(extra / "sym", "trusted.t", b"\x00\xff", follow_symlinks=False)
    os.chown(big, 1234, 5678)
    os.chown(extra / "sym", 42, 43, follow_symlinks=False)
    os.chmod(min((root / "w1").iterdir()), 0o4711)
    os.utime(root / "w2", ns=(1_000_000_000, 1_234_567_891_011))
    os.utime(big, ns=(2_000_000_000, 987_654_321_123))
    # A file that changes leaves history versions and retained slices behind.
    hist = extra / "changing"
    for n in range(3):
        hist.write_bytes(b"version %d\n" % n)


def _walk(root: Path) -> Iterator[tuple[str, tuple[object, ...]]]:
    """Every path under ``root`` with what must survive: type and mode, owner, size,
    links, inode, mtime and ctime, xattrs, symlink target."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in [".", *sorted(dirnames), *sorted(filenames)]:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            xattrs = {a: os.getxattr(p, a, follow_symlinks=False)
                      for a in sorted(os.listxattr(p, follow_symlinks=False))}
            target = os.readlink(p) if os.path.islink(p) else None
            yield os.path.relpath(p, root), (st.st_mode, st.st_uid, st.st_gid, st.st_size,
                                             st.st_nlink, st.st_ino, st.st_mtime_ns,
                                             st.st_ctime_ns, xattrs, target)


def _timed(what: str, *args: str) -> float:
    t = time.monotonic()
    res = kvfs(*args, timeout=600)
    took = time.monotonic() - t
    print(f"{what}: {took:.1f} s ({res.stderr.strip().splitlines()[-1]})")
    return took


def test_round_trip_embedded_etcd_raft(tmp_path: Path, etcd_single: Member) -> None:
    src = str(tmp_path / "src")
    kvfs("format", src, "vol")
    m = Mount(src, tmp_path / "mnt")
    try:
        t = time.monotonic()
        _build_tree(tmp_path / "mnt")
        print(f"\nbuilt {FILES} files through a mount in {time.monotonic() - t:.1f} s")
        m.unmount()
    except BaseException:
        m.cleanup()
        raise

    d1, d2 = tmp_path / "one.dump", tmp_path / "two.dump"
    etcd_url = f"etcd://{etcd_single.endpoint}/{unique_prefix('dump')}"
    _timed("dump embedded", "dump", src, str(d1), "--with-data")
    _timed("load etcd", "load", etcd_url, str(d1))
    _timed("dump etcd", "dump", etcd_url, str(d2), "--with-data")
    (tmp_path / "raft").mkdir()
    with RaftCluster(tmp_path / "raft", "dumptest", loopback_addresses(("m1",))) as cluster:
        raft_url = cluster.url(prefix="vol", timeout=60)
        _timed("load raft", "load", raft_url, str(d2))
        fsck(raft_url)
        a = Mount(src, tmp_path / "a")
        b = Mount(raft_url, tmp_path / "b")
        try:
            res = subprocess.run(["diff", "-r", "--no-dereference", str(tmp_path / "a"),
                                  str(tmp_path / "b")], capture_output=True, text=True)
            # diff does not compare special files; it names each FIFO pair (the walk
            # below compares them).
            real = [line for line in res.stdout.splitlines()
                    if not line.endswith(" is a fifo") or " is a fifo while file " not in line]
            assert res.returncode in (0, 1) and not real and not res.stderr, \
                "\n".join(real[-20:]) + res.stderr
            left, right = dict(_walk(tmp_path / "a")), dict(_walk(tmp_path / "b"))
            assert len(left) > FILES
            assert left.keys() == right.keys()
            differ = [p for p in left if left[p] != right[p]]
            assert not differ, [(p, left[p], right[p]) for p in differ[:5]]
            assert left["extra/big"][1:3] == (1234, 5678)
            assert left["extra/big"][4] == left["extra/big-link"][4] == 2
            log = kvfs("log", str(tmp_path / "b" / "extra" / "changing")).stdout
            assert log.count("write") + log.count("create") >= 3, log
        finally:
            for mount in (a, b):
                mount.cleanup()


# -- damaged files, bad input ----------------------------------------------------------


@pytest.fixture(scope="module")
def small_dump(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The dump of a small embedded volume with a few files (written through its mount)."""
    d = tmp_path_factory.mktemp("small")
    kvfs("format", str(d / "src"), "small")
    m = Mount(str(d / "src"), d / "mnt")
    try:
        for i in range(20):
            (d / "mnt" / f"f{i}").write_bytes(os.urandom(100 + 1000 * i))
        m.unmount()
    except BaseException:
        m.cleanup()
        raise
    kvfs("dump", str(d / "src"), str(d / "small.dump"), "--with-data")
    return d / "small.dump"


def _record_offsets(data: bytes) -> list[int]:
    out, at = [], len(MAGIC)
    while at < len(data):
        out.append(at)
        at += 1 + 4 + int.from_bytes(data[at + 1:at + 5], "big") + 8
    return out


def _refused(url: str, dump: Path, *extra: str) -> str:
    res = kvfs("load", url, str(dump), *extra, check=False)
    assert res.returncode == 1, res
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kvfs: error: "), res.stderr
    return lines[0]


def test_truncated_dump_refused_with_offset(tmp_path: Path, small_dump: Path) -> None:
    data = small_dump.read_bytes()
    offsets = _record_offsets(data)
    cut = offsets[len(offsets) // 2] + 7  # inside a record
    bad = tmp_path / "cut.dump"
    bad.write_bytes(data[:cut])
    msg = _refused(str(tmp_path / "t"), bad)
    assert f"truncated at offset {cut}" in msg, msg
    assert f"record at offset {offsets[len(offsets) // 2]}" in msg, msg
    assert not (tmp_path / "t").exists()  # nothing made
    bad.write_bytes(data[:offsets[-1]])  # every record but the trailer
    assert "no trailer" in _refused(str(tmp_path / "t"), bad)
    assert not (tmp_path / "t").exists()


def test_corrupted_dump_refused_with_offset(tmp_path: Path, small_dump: Path) -> None:
    data = bytearray(small_dump.read_bytes())
    offsets = _record_offsets(bytes(data))
    at = offsets[3]
    data[at + 20] ^= 0x40
    bad = tmp_path / "bad.dump"
    bad.write_bytes(bytes(data))
    msg = _refused(str(tmp_path / "t"), bad)
    assert f"record at offset {at}: checksum mismatch" in msg, msg
    assert not (tmp_path / "t").exists()
    bad.write_bytes(b"not a dump at all")
    assert "not a kvfs dump file" in _refused(str(tmp_path / "t"), bad)


def test_damaged_dump_from_a_pipe_leaves_nothing(tmp_path: Path, small_dump: Path) -> None:
    """From stdin there is no pre-pass: the load finds the damage late and removes every
    key and block it wrote."""
    data = bytearray(small_dump.read_bytes())
    offsets = _record_offsets(bytes(data))
    data[offsets[-2] + 10] ^= 0x01  # the last record before the trailer
    bucket = tmp_path / "bucket"
    target = str(tmp_path / "t")
    cmd = [sys.executable, "-m", "kvfs.cli.main", "load", target, "-",
           "--storage", "file", "--bucket", str(bucket)]
    res = subprocess.run(cmd, input=bytes(data), capture_output=True, timeout=120)
    assert res.returncode == 1
    assert f"record at offset {offsets[-2]}: checksum mismatch" in res.stderr.decode()
    assert not os.path.exists(target)
    left = [p for p in bucket.rglob("*") if p.is_file()] if bucket.exists() else []
    assert left == []
    # The intact file from a pipe loads.
    res = subprocess.run(cmd, input=small_dump.read_bytes(), capture_output=True, timeout=120)
    assert res.returncode == 0, res.stderr
    fsck(target)


def test_load_refuses_a_non_empty_engine(tmp_path: Path, small_dump: Path,
                                         etcd_single: Member) -> None:
    for url in (str(tmp_path / "v"), f"etcd://{etcd_single.endpoint}/{unique_prefix('full')}"):
        kvfs("format", url, "other")
        kvfs("dump", url, str(tmp_path / "before.dump"))
        assert "not empty" in _refused(url, small_dump)
        kvfs("dump", url, str(tmp_path / "after.dump"))
        # The same keys and values: only the header's creation time may differ.
        assert (tmp_path / "before.dump").stat().st_size == \
            (tmp_path / "after.dump").stat().st_size
        fsck(url)


@pytest.mark.parametrize("args,expected", [
    (["load", "bogus://x/y", "{dump}"], "unsupported metadata URL scheme"),
    (["load", "etcd://", "{dump}"], ""),
    (["load", "etcd://127.0.0.1:notaport/p", "{dump}"], ""),
    (["load", "{tmp}/t", "{tmp}/missing.dump"], "missing.dump"),
    (["load", "{tmp}/t", "{tmp}"], "is a directory"),
    (["load", "{tmp}/t", "{dump}", "--storage", "s3"], "unknown storage"),
    (["load", "{tmp}/t", "{dump}", "--storage", "etcd", "--bucket", "/x"], "--storage etcd"),
    (["load", "{tmp}/t", "{dump}", "--storage", "file"], "--bucket"),
    (["dump", "bogus://x/y", "{tmp}/out.dump"], "unsupported metadata URL scheme"),
    (["dump", "{tmp}/nothing", "{tmp}/out.dump"], "no kvfs volume"),
    (["dump", "{tmp}/nothing", "{tmp}/no/such/dir/out.dump"], ""),
])
def test_bad_input_is_one_line(tmp_path: Path, small_dump: Path, args: list[str],
                               expected: str) -> None:
    argv = [a.format(tmp=tmp_path, dump=small_dump) for a in args]
    before = sorted(os.listdir(tmp_path))
    res = kvfs(*argv, check=False)
    assert res.returncode == 1, res
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kvfs: error: "), res.stderr
    assert expected in lines[0]
    assert sorted(os.listdir(tmp_path)) == before  # nothing made, no temporary left


def test_metadata_only_dump_needs_the_blocks_bucket(tmp_path: Path) -> None:
    """Without --with-data the dump holds no blocks; loaded with the source's file bucket,
    the copy reads the same data."""
    bucket = tmp_path / "bucket"
    src = str(tmp_path / "src")
    kvfs("format", src, "meta", "--storage", "file", "--bucket", str(bucket))
    m = Mount(src, tmp_path / "mnt")
    try:
        payload = os.urandom(200_000)
        (tmp_path / "mnt" / "f").write_bytes(payload)
        m.unmount()
    except BaseException:
        m.cleanup()
        raise
    d = tmp_path / "meta.dump"
    kvfs("dump", src, str(d))
    assert d.stat().st_size < 50_000
    assert "no data blocks" in _refused(str(tmp_path / "kvcopy"), d)
    copy = str(tmp_path / "copy")
    kvfs("load", copy, str(d), "--storage", "file", "--bucket", str(bucket))
    fsck(copy)
    m = Mount(copy, tmp_path / "mnt2")
    try:
        assert (tmp_path / "mnt2" / "f").read_bytes() == payload
        m.unmount()
    except BaseException:
        m.cleanup()
        raise


def test_every_key_kind_has_a_dump_policy() -> None:
    assert {k.name for k in keys.KEY_KINDS} == POLICY.keys()
    ranges = segments()
    for kind in keys.KEY_KINDS:
        inside = any(start <= kind.prefix and (end == b"\x00" or kind.prefix < end)
                     for start, end in ranges)
        assert inside == (POLICY[kind.name] == "copy"), kind.name
