"""Real mounts: a kvfs daemon serving an embedded store through the kernel."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from mounting import Mount, fsck, kvfs

pytestmark = pytest.mark.mount


@pytest.fixture
def volume(tmp_path: Path) -> str:
    store = tmp_path / "store"
    kvfs("format", str(store), "test")
    return str(store)


@pytest.fixture
def mounted(volume: str, tmp_path: Path):
    m = Mount(volume, tmp_path / "mnt")
    yield m
    m.cleanup()


def _doc_sample() -> list[Path]:
    """A few MB of real files from /usr/share/doc: many small files, some larger."""
    root = Path("/usr/share/doc")
    picked = [d for d in sorted(root.iterdir()) if d.is_dir()][:40]
    assert picked, "/usr/share/doc is empty"
    return picked


def _diff(a: Path, b: Path) -> None:
    res = subprocess.run(["diff", "-r", "--no-dereference", str(a), str(b)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-1000:]


def test_copy_tree_survives_remount(volume: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for d in _doc_sample():
        subprocess.run(["cp", "-a", str(d), str(src)], check=True)
    m = Mount(volume, tmp_path / "mnt")
    try:
        subprocess.run(["cp", "-a", str(src), str(m.mountpoint / "doc")], check=True)
        _diff(src, m.mountpoint / "doc")
        m.unmount()
        fsck(volume)
        m = Mount(volume, tmp_path / "mnt")
        _diff(src, m.mountpoint / "doc")
        # metadata survives too: modes, owners and times as cp -a left them
        for p in src.rglob("*"):
            want = p.lstat()
            got = (m.mountpoint / "doc" / p.relative_to(src)).lstat()
            assert (got.st_mode, got.st_uid, got.st_gid) == (
                want.st_mode, want.st_uid, want.st_gid), p
            if not p.is_dir():
                assert got.st_size == want.st_size, p
            if not p.is_symlink():
                assert got.st_mtime_ns == want.st_mtime_ns, p
        m.unmount()
    finally:
        m.cleanup()


def test_large_sparse_file_and_truncate(mounted: Mount) -> None:
    f = mounted.mountpoint / "sparse"
    with open(f, "wb") as fh:
        fh.seek(3 << 30)  # past 2 GiB and across many 64 MiB chunks
        fh.write(b"tail")
        fh.seek(70 << 20)
        fh.write(b"x" * 100_000)
    assert f.stat().st_size == (3 << 30) + 4
    with open(f, "rb") as fh:
        fh.seek((70 << 20) - 10)
        assert fh.read(20) == bytes(10) + b"x" * 10
        fh.seek(3 << 30)
        assert fh.read() == b"tail"
    os.truncate(f, (70 << 20) + 5)
    os.truncate(f, 80 << 20)
    with open(f, "rb") as fh:
        fh.seek(70 << 20)
        assert fh.read(10) == b"xxxxx" + bytes(5)


def test_df_counts_data_written_not_file_lengths(mounted: Mount) -> None:
    # Before: a 1-byte write at 256 PiB showed the volume 100% full.
    with open(mounted.mountpoint / "sparse", "wb") as fh:
        fh.seek((1 << 58) - 1)
        fh.write(b"x")
    st = os.statvfs(mounted.mountpoint)
    assert (st.f_blocks - st.f_bfree) * st.f_frsize < 1 << 20
    assert st.f_bavail > st.f_blocks // 2


def test_unlinked_open_file_stays_usable(mounted: Mount) -> None:
    f = mounted.mountpoint / "gone"
    with open(f, "w+b") as fh:
        fh.write(b"still here")
        fh.flush()
        os.unlink(f)
        assert not f.exists()
        fh.write(b", and more")
        fh.flush()
        fh.seek(0)
        assert fh.read() == b"still here, and more"
    assert os.listdir(mounted.mountpoint) == []


def test_sigterm_flushes_and_unmounts(volume: str, tmp_path: Path) -> None:
    m = Mount(volume, tmp_path / "mnt")
    try:
        (m.mountpoint / "f").write_bytes(b"data" * 1000)
        assert m.terminate() == 0
        assert not (m.mountpoint / "f").exists()  # unmounted
        m = Mount(volume, tmp_path / "mnt")
        assert (m.mountpoint / "f").read_bytes() == b"data" * 1000
        m.unmount()
    finally:
        m.cleanup()
    fsck(volume)


def test_name_max(mounted: Mount) -> None:
    ok = mounted.mountpoint / ("a" * 255)
    ok.write_bytes(b"")
    with pytest.raises(OSError) as e:
        (mounted.mountpoint / ("a" * 256)).write_bytes(b"")
    assert e.value.errno == errno.ENAMETOOLONG


def test_file_storage_volume(tmp_path: Path) -> None:
    store, bucket = tmp_path / "meta", tmp_path / "blocks"
    kvfs("format", str(store), "filevol", "--storage", "file", "--bucket", str(bucket),
         "--block-size", "64")
    m = Mount(str(store), tmp_path / "mnt")
    try:
        data = os.urandom(1 << 20)
        (m.mountpoint / "blob").write_bytes(data)
        assert (m.mountpoint / "blob").read_bytes() == data
        assert any(bucket.rglob("*_*_*")), "blocks should land in the bucket directory"
        m.unmount()
    finally:
        m.cleanup()
    fsck(str(store))
    shutil.rmtree(bucket)
    res = kvfs("fsck", str(store), check=False)
    assert res.returncode != 0 and "missing" in res.stdout
