"""The command line: every bad input is one line on stderr, a non-zero exit, no change."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from mounting import Mount, kvfs


def tree_digest(root: Path) -> str:
    """A digest of every file name and content under ``root`` (to prove nothing changed)."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def assert_one_line_error(res, *words: str) -> None:  # type: ignore[no-untyped-def]
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("kvfs: error: "), lines[0]
    for w in words:
        assert w in lines[0], lines[0]
    assert "Traceback" not in res.stderr


@pytest.fixture
def volume(tmp_path: Path) -> Path:
    store = tmp_path / "store"
    kvfs("format", str(store), "cli")
    return store


@pytest.mark.parametrize("cmd", ["", "format", "mount", "umount", "status", "fsck"])
def test_help_and_version(cmd: str) -> None:
    args = [cmd] if cmd else []
    assert "usage" in kvfs(*args, "--help").stdout
    assert kvfs(*args, "--version").stdout.startswith("kvfs ")


def test_format_twice_refused(volume: Path) -> None:
    before = tree_digest(volume)
    assert_one_line_error(kvfs("format", str(volume), "other", check=False), "already")
    assert tree_digest(volume) == before


def test_format_bad_inputs(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    assert_one_line_error(kvfs("format", str(f), "v", check=False), "not a directory")
    assert_one_line_error(kvfs("format", str(tmp_path / "s"), "bad name!", check=False),
                          "invalid volume name")
    assert_one_line_error(kvfs("format", str(tmp_path / "s"), "v", "--block-size", "4096",
                               check=False), "block size")
    assert_one_line_error(kvfs("format", str(tmp_path / "s"), "v", "--storage", "file",
                               check=False), "--bucket")
    assert_one_line_error(kvfs("format", "etcd2://h/x", "v", check=False), "scheme")


def test_mount_unformatted(tmp_path: Path) -> None:
    (tmp_path / "mnt").mkdir()
    res = kvfs("mount", str(tmp_path / "nothing"), str(tmp_path / "mnt"), check=False)
    assert_one_line_error(res, "kvfs format")
    assert not (tmp_path / "nothing").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    res = kvfs("mount", "-d", str(empty), str(tmp_path / "mnt"), check=False)
    assert_one_line_error(res)
    assert list(empty.iterdir()) == []


def test_mount_bad_mountpoints(volume: Path, tmp_path: Path) -> None:
    before = tree_digest(volume)
    res = kvfs("mount", str(volume), str(tmp_path / "missing"), check=False)
    assert_one_line_error(res, "does not exist")
    (tmp_path / "afile").write_text("")
    res = kvfs("mount", "-d", str(volume), str(tmp_path / "afile"), check=False)
    assert_one_line_error(res, "not a directory")
    assert tree_digest(volume) == before


def test_mount_busy_store_and_mountpoint(volume: Path, tmp_path: Path) -> None:
    m = Mount(str(volume), tmp_path / "mnt")
    try:
        (m.mountpoint / "keep").write_bytes(b"kept")
        (tmp_path / "mnt2").mkdir()
        res = kvfs("mount", "-d", str(volume), str(tmp_path / "mnt2"), check=False)
        assert_one_line_error(res, "in use", f"pid {m.pid}")
        other = tmp_path / "other"
        kvfs("format", str(other), "other")
        res = kvfs("mount", "-d", str(other), str(m.mountpoint), check=False)
        assert_one_line_error(res, "already a mountpoint")
        status = kvfs("status", str(volume)).stdout
        assert f"pid {m.pid}" in status
        assert (m.mountpoint / "keep").read_bytes() == b"kept"
        m.unmount()
    finally:
        m.cleanup()


def test_umount_not_mounted(tmp_path: Path) -> None:
    assert_one_line_error(kvfs("umount", str(tmp_path), check=False), "not a kvfs mount")


def test_status_shows_format(volume: Path) -> None:
    out = kvfs("status", str(volume)).stdout
    assert "volume cli" in out and "sessions: 0" in out
    assert_one_line_error(kvfs("status", str(volume.parent / "none"), check=False))


def test_background_mount_returns_when_live(volume: Path, tmp_path: Path) -> None:
    mp = tmp_path / "mnt"
    mp.mkdir()
    kvfs("mount", "-d", "--log", str(tmp_path / "log"), str(volume), str(mp))
    try:
        assert os.path.ismount(mp)  # live the moment the command returned
        (mp / "x").write_text("hi")
    finally:
        kvfs("umount", str(mp))


@pytest.mark.mount
def test_mount_over_files_says_so(volume: Path, tmp_path: Path) -> None:
    """Mounting over a non-empty directory proceeds (as mount(8) and libfuse 3 do) and
    warns in one line that its files are hidden; ``-o nonempty`` says it is intended."""
    mp = tmp_path / "etc-nginx"
    mp.mkdir()
    (mp / "nginx.conf").write_text("local")
    for opts, warned in (([], True), (["-o", "nonempty"], False)):
        res = kvfs("mount", "-d", "--log", str(tmp_path / "log"), *opts, str(volume), str(mp))
        try:
            assert os.path.ismount(mp)
            assert not (mp / "nginx.conf").exists()  # hidden under the mount
            lines = [ln for ln in res.stderr.splitlines() if "not empty" in ln]
            if warned:
                assert len(lines) == 1 and str(mp) in lines[0], res.stderr
            else:
                assert lines == [], res.stderr
        finally:
            kvfs("umount", str(mp))
        assert (mp / "nginx.conf").read_text() == "local"
