"""The trash (docs/trash.md) on real mounts, embedded and etcd.

* What goes in: an unlinked file (same inode, mode and content, under
  ``/.trash/HOUR/<parent>-<ino>-<name>``), a file a rename replaced, a symlink; what does
  not: a file that keeps another hard link, a directory.  A file unlinked while open shows
  ``nlink`` 0 through its descriptor and stays usable.
* The namespace: readdir of the root hides ``.trash``, a lookup finds it (mode 0700); a
  non-root user cannot enter it; nothing can be created in it (EPERM) and ``.trash`` cannot
  be made, removed or renamed; ``mv`` out of it restores a file; removing an entry there
  deletes it for good.
* Purging: entries planted in an hour three days old (through the volume's own
  ``Metadata``, with its clock set back -- no waiting) go at the next mount's start while
  the current hour stays; on etcd with two mounts, a ``kvfs config --trash-days`` change
  reaches both at once (they watch the format record), and only the mount holding the
  purger role purges.  ``--trash-days 0``: nothing is kept, ``df`` gives the space back,
  and turning the trash off on a live volume empties it.
* fsck finds the volume clean with the trash full, and ``kvfs config`` and ``kvfs format``
  show and check the setting.

About 30 s on the 2-core machine.
"""

from __future__ import annotations

import os
import stat
import subprocess
import time
from pathlib import Path

import pytest
import trio
from etcd_cluster import Member, etcd_procs, etcd_single, unique_prefix
from mounting import Mount, fsck, kvfs
from waiting import wait_until

import kvfs.meta.metadata as metadata_module
from kvfs.meta import trash
from kvfs.meta.keys import ROOT_INO
from kvfs.meta.metadata import ROOT_CTX
from kvfs.meta.records import now_ns
from kvfs.volume import open_volume

pytestmark = pytest.mark.mount

__all__ = ["etcd_procs", "etcd_single"]  # fixtures used by this module

NOBODY = 65534


def trashed(root: Path) -> dict[str, Path]:
    """Every entry of the trash, by name."""
    return {e.name: e for hour in (root / ".trash").iterdir() for e in hour.iterdir()}


def entry_of(root: Path, ino: int) -> Path:
    """The trash entry of inode ``ino`` (exactly one)."""
    found = [p for name, p in trashed(root).items() if name.split("-")[1] == str(ino)]
    assert len(found) == 1, f"inode {ino} in the trash: {found}"
    return found[0]


def as_nobody(cwd: Path, *cmd: str) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` as uid/gid 65534 in ``cwd`` (entered before the ids change, so the
    root-only directories above a test's tmp_path are no obstacle)."""
    return subprocess.run(list(cmd), cwd=cwd, user=NOBODY, group=NOBODY, extra_groups=[],
                          capture_output=True, text=True, timeout=30)


def used_bytes(root: Path) -> int:
    st = os.statvfs(root)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def exercise(root: Path) -> None:
    """What every engine must do (module docstring, first two points)."""
    hour = trash.hour_name(trash.hour_of(time.time())).decode()
    (root / "d").mkdir()
    f = root / "d" / "f"
    f.write_bytes(b"first")
    f.chmod(0o640)
    ino, dino = f.stat().st_ino, (root / "d").stat().st_ino
    f.unlink()
    e = entry_of(root, ino)
    assert e.name == f"{dino}-{ino}-f" and e.parent.name in (hour, trash.hour_name(
        trash.hour_of(time.time())).decode())  # (the hour may have turned meanwhile)
    st = e.stat()
    assert (st.st_ino, stat.S_IMODE(st.st_mode), st.st_nlink) == (ino, 0o640, 0)
    assert e.read_bytes() == b"first"

    # A rename over a file trashes the file it replaced.
    old, new = root / "old", root / "new"
    old.write_text("replaced")
    new.write_text("replacing")
    old_ino = old.stat().st_ino
    new.rename(old)
    assert old.read_text() == "replacing"
    assert entry_of(root, old_ino).read_text() == "replaced"

    # A file that keeps another link is not trashed; its last link is.
    h = root / "h"
    h.write_text("linked")
    os.link(h, root / "h2")
    hino = h.stat().st_ino
    h.unlink()
    assert not [n for n in trashed(root) if n.split("-")[1] == str(hino)]
    (root / "h2").unlink()
    assert entry_of(root, hino).name == f"{ROOT_INO}-{hino}-h2"

    # Symlinks go in too; directories do not.
    (root / "s").symlink_to("target")
    sino = os.lstat(root / "s").st_ino
    (root / "s").unlink()
    assert os.readlink(entry_of(root, sino)) == "target"
    (root / "emptydir").mkdir()
    (root / "emptydir").rmdir()

    # Unlinked while open: nlink 0 through the descriptor, still readable and writable.
    fd = os.open(root / "open", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        os.write(fd, b"abc")
        os.unlink(root / "open")
        assert os.fstat(fd).st_nlink == 0
        os.write(fd, b"def")
        assert os.pread(fd, 6, 0) == b"abcdef"
    finally:
        os.close(fd)

    # The namespace: hidden from readdir, found by lookup, root's only.
    assert ".trash" not in os.listdir(root)
    top = (root / ".trash").stat()
    assert stat.S_ISDIR(top.st_mode) and stat.S_IMODE(top.st_mode) == 0o700
    assert (top.st_uid, top.st_gid) == (0, 0)
    assert as_nobody(root, "ls", ".trash").returncode != 0
    assert as_nobody(root, "cat", f".trash/{e.parent.name}/{e.name}").returncode != 0
    for make in (lambda: (root / ".trash" / "x").write_text("x"),
                 lambda: (e.parent / "x").write_text("x"),
                 lambda: (e.parent / "sub").mkdir(),
                 lambda: (root / "old").rename(e.parent / "x")):
        with pytest.raises(PermissionError):
            make()
    with pytest.raises(FileExistsError):
        (root / ".trash").mkdir()
    with pytest.raises(PermissionError):
        (root / ".trash").rmdir()
    with pytest.raises(PermissionError):
        (root / ".trash").rename(root / "elsewhere")

    # Restore by mv; removal from the trash is for good.
    e.rename(root / "d" / "f")
    assert (root / "d" / "f").read_bytes() == b"first"
    assert (root / "d" / "f").stat().st_nlink == 1
    gone = entry_of(root, old_ino)
    gone.unlink()
    assert not gone.exists()
    assert not [n for n in trashed(root) if n.split("-")[1] == str(old_ino)]


def plant(url: str, names: list[bytes], days_ago: float) -> None:
    """Trash files named ``names`` as if they had been removed ``days_ago`` days ago,
    through the volume's own Metadata (the volume unmounted, or on a shared engine)."""
    then = now_ns() - int(days_ago * 86400 * 10**9)

    async def go() -> None:
        vol = await open_volume(url)
        try:
            vol.meta.trash_days = 1
            for name in names:
                await vol.meta.create(ROOT_CTX, ROOT_INO, name, stat.S_IFREG | 0o644)
                await vol.meta.unlink(ROOT_INO, name)
            await vol.meta.usage.flush()
        finally:
            await vol.aclose()

    clock = metadata_module.now_ns
    metadata_module.now_ns = lambda: then  # type: ignore[assignment]
    try:
        trio.run(go)
    finally:
        metadata_module.now_ns = clock  # type: ignore[assignment]


def old_hour(days_ago: float) -> str:
    return trash.hour_name(trash.hour_of(time.time() - days_ago * 86400)).decode()


def test_embedded(tmp_path: Path) -> None:
    url = str(tmp_path / "store")
    out = kvfs("format", url, "trash").stdout
    assert "trash kept 1 days in /.trash" in out
    m = Mount(url, tmp_path / "m", "metrics=off")
    try:
        exercise(m.mountpoint)
        m.unmount()
    finally:
        m.cleanup()
    fsck(url)  # with the trash full

    # Purge: an hour three days old goes at the mount's start, the current one stays.
    plant(url, [b"old1", b"old2"], 3)
    assert old_hour(3) in hours(url)
    fsck(url)
    m = Mount(url, tmp_path / "m", "metrics=off")
    try:
        root = m.mountpoint
        wait_until(lambda: old_hour(3) not in os.listdir(root / ".trash"), "old hour purged")
        assert trashed(root), "the current hour's entries were purged too"
        assert "took the trash purger role" in m.log_path.read_text()
        m.unmount()
    finally:
        m.cleanup()
    fsck(url)
    conf = kvfs("config", url).stdout
    assert "trash kept 1 days in /.trash" in conf


def hours(url: str) -> list[str]:
    """The hour directories of an unmounted volume's trash, read from its engine."""
    async def go() -> list[str]:
        vol = await open_volume(url)
        try:
            return [e.name.decode() for e in await vol.meta.readdir(trash.TRASH_INO)]
        finally:
            await vol.aclose()

    return trio.run(go)


def test_off_frees_space(tmp_path: Path) -> None:
    url = str(tmp_path / "store")
    assert "trash off" in kvfs("format", url, "notrash", "--trash-days", "0").stdout
    m = Mount(url, tmp_path / "m", "metrics=off")
    try:
        root = m.mountpoint
        (root / "big").write_bytes(os.urandom(4 << 20))
        wait_until(lambda: used_bytes(root) >= 4 << 20, "df counts the file")
        (root / "big").unlink()
        wait_until(lambda: used_bytes(root) < 1 << 20, "df gives the space back")
        assert (root / ".trash").is_dir() and trashed(root) == {}
        m.unmount()
    finally:
        m.cleanup()
    fsck(url)


def test_settings_checked(tmp_path: Path) -> None:
    for flags in (["--trash-days", "-1"], ["--trash-days", "40000"]):
        res = kvfs("format", str(tmp_path / "s"), "v", *flags, check=False)
        assert res.returncode == 1 and "invalid --trash-days" in res.stderr
        assert not (tmp_path / "s").exists()
    url = str(tmp_path / "s2")
    kvfs("format", url, "v")
    res = kvfs("config", url, "--trash-days", "-2", check=False)
    assert res.returncode == 1 and "invalid --trash-days" in res.stderr
    assert "trash kept 3 days" in kvfs("config", url, "--trash-days", "3").stdout
    assert "trash kept 3 days" in kvfs("format", url, "v", "--force").stdout


def test_etcd_two_mounts(etcd_single: Member, tmp_path: Path) -> None:
    url = f"etcd://{etcd_single.endpoint}/{unique_prefix('trash')}"
    kvfs("format", url, "etrash")
    # orphan_grace=1: the data of a file removed for good goes a second later, not 60 s.
    a = Mount(url, tmp_path / "a", "metrics=off,orphan_grace=1")
    b = Mount(url, tmp_path / "b", "metrics=off,orphan_grace=1")
    try:
        exercise(a.mountpoint)
        # The other mount sees the trash as it is.
        wait_until(lambda: trashed(b.mountpoint).keys() == trashed(a.mountpoint).keys(),
                   "the trash seen alike on both mounts")

        # Old entries, then a settings change both mounts follow at once: only the
        # purger role's holder removes them.
        plant(url, [b"planted"], 3)
        assert old_hour(3) in os.listdir(a.mountpoint / ".trash")
        kvfs("config", url, "--trash-days", "2")
        wait_until(lambda: old_hour(3) not in os.listdir(a.mountpoint / ".trash"),
                   "old hour purged")
        for m in (a, b):
            def applied(log_path: Path = m.log_path) -> bool:
                return "trash: now kept 2 days" in log_path.read_text()

            wait_until(applied, "the change reached the mount")
        logs = [m.log_path.read_text() for m in (a, b)]
        assert sum("took the trash purger role" in log for log in logs) == 1
        assert sum("trash: removed" in log for log in logs) == 1
        assert [("took the trash purger role" in log) for log in logs] == \
            [("trash: removed" in log) for log in logs]
        assert trashed(a.mountpoint), "current entries were purged too"

        # Usage counts trashed files; turning the trash off empties it and frees them.
        (a.mountpoint / "big").write_bytes(os.urandom(4 << 20))
        wait_until(lambda: used_bytes(a.mountpoint) >= 4 << 20, "df counts the file")
        (a.mountpoint / "big").unlink()
        time.sleep(2.5)  # the usage counters settle (every mount adds its deltas each second)
        assert used_bytes(a.mountpoint) >= 4 << 20, "a trashed file's space was freed"
        kvfs("config", url, "--trash-days", "0")
        wait_until(lambda: not os.listdir(a.mountpoint / ".trash"), "trash emptied")
        wait_until(lambda: used_bytes(a.mountpoint) < 1 << 20, "df gives the space back")
        (b.mountpoint / "later").write_text("x")
        (b.mountpoint / "later").unlink()
        assert not os.listdir(b.mountpoint / ".trash")
        a.unmount()
        b.unmount()
    finally:
        a.cleanup()
        b.cleanup()
    fsck(url)
