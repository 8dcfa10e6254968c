"""The command line: every bad input is one line on stderr, a non-zero exit, no change."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest
import trio
from mounting import Mount, kvfs

from kvfs.meta.keys import ROOT_INO
from kvfs.volume import open_volume


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


def _root_attr(store: Path) -> tuple[int, int, int]:
    async def go() -> tuple[int, int, int]:
        vol = await open_volume(str(store))
        try:
            a = await vol.meta.getattr(ROOT_INO)
        finally:
            await vol.aclose()
        return a.mode, a.uid, a.gid

    return trio.run(go)


def test_root_made_as_mkfs_makes_it(volume: Path, tmp_path: Path) -> None:
    # Before: drwxrwxrwx, so with allow_other any local user could write at the top.
    assert _root_attr(volume) == (stat.S_IFDIR | 0o755, os.geteuid(), os.getegid())
    store = tmp_path / "shared"
    kvfs("format", str(store), "shared", "--root-mode", "1770", "--root-owner", "nobody:33")
    assert _root_attr(store) == (stat.S_IFDIR | 0o1770, 65534, 33)
    before = tree_digest(store)
    assert_one_line_error(kvfs("format", str(store), "shared", "--force", "--root-mode", "700",
                               check=False), "chmod")
    assert tree_digest(store) == before


@pytest.mark.parametrize("option, value, words", [
    ("--root-mode", "0955", ["--root-mode", "octal"]),
    ("--root-mode", "17777", ["--root-mode", "7777"]),
    ("--root-mode", "rwx", ["--root-mode"]),
    ("--root-owner", "1000", ["--root-owner", "UID:GID"]),
    ("--root-owner", ":5", ["--root-owner"]),
    ("--root-owner", "no-such-user-here:0", ["no user"]),
    ("--root-owner", "0:no-such-group-here", ["no group"]),
    ("--root-owner", "4294967295:0", ["--root-owner"]),
])
def test_format_bad_root_options(tmp_path: Path, option: str, value: str,
                                 words: list[str]) -> None:
    store = tmp_path / "s"
    assert_one_line_error(kvfs("format", str(store), "v", option, value, check=False), *words)
    assert not store.exists()


@pytest.mark.mount
def test_other_users_cannot_write_at_the_top(volume: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:  # pytest's tmp_path is closed to others
        os.chmod(tmp, 0o755)
        m = Mount(str(volume), Path(tmp) / "mnt")  # allow_other: the default as root
        try:
            (m.mountpoint / "sub").mkdir()
            os.chmod(m.mountpoint / "sub", 0o777)
            nobody = {"user": 65534, "group": 65534, "capture_output": True, "text": True}
            res = subprocess.run(["touch", str(m.mountpoint / "sub" / "f")], **nobody)  # type: ignore[call-overload]
            assert res.returncode == 0, res.stderr  # the mount is reachable ...
            res = subprocess.run(["touch", str(m.mountpoint / "top")], **nobody)  # type: ignore[call-overload]
            assert res.returncode != 0 and "Permission denied" in res.stderr, res  # ... its top not
            m.unmount()
        finally:
            m.cleanup()
